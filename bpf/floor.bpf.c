// SPDX-License-Identifier: GPL-2.0
/* Programs that do nothing, on the hooks the footprint family attaches on a kernel without
 * fentry or kprobes (this project's CI): seven run for every packet of a veth path, kfree_skb
 * for every drop. `make bench` attaches them
 * in its `floor` mode: what a program run costs before it does any work, the floor under
 * every per-packet program of every family. */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/net_dev_queue")
int BPF_PROG(floor_queue) { return 0; }
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(floor_start_xmit) { return 0; }
SEC("tp_btf/net_dev_xmit")
int BPF_PROG(floor_xmit) { return 0; }
SEC("tp_btf/netif_rx")
int BPF_PROG(floor_netif_rx) { return 0; }
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(floor_receive_skb) { return 0; }
SEC("tp_btf/tcp_probe")
int BPF_PROG(floor_tcp_probe) { return 0; }
SEC("tp_btf/napi_gro_receive_entry")
int BPF_PROG(floor_napi_gro) { return 0; }
SEC("tp_btf/kfree_skb")
int BPF_PROG(floor_kfree_skb) { return 0; }
SEC("cgroup_skb/ingress")
int floor_sk_filter(struct __sk_buff *skb) { return 1; }
