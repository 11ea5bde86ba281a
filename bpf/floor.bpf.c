// SPDX-License-Identifier: GPL-2.0
/* Programs that do nothing, on the hooks the footprint family attaches on a kernel without
 * fentry or kprobes (this project's CI): seven run for every packet of a veth path, kfree_skb
 * for every drop. `make bench` attaches them in its `floor` mode: what a program run costs
 * before it does any work, the floor under every per-packet program of every family.
 * Its floor_<mode> modes attach only the hooks that run per packet in that mode (acks_all:
 * tcp_probe and sock_ops; footprint_idle: the two sentinels; txqueue: net_dev_start_xmit):
 * what a family's design costs with nothing done in its programs. */
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

/* Asks for the callbacks ack_sockops asks for, on every socket: the header-option callback,
 * which then runs twice for every segment sent (from tcp_current_mss and for the segment),
 * and the state callback. */
SEC("sockops")
int floor_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}
