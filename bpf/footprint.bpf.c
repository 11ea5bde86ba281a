// SPDX-License-Identifier: GPL-2.0
/* Footprint family: for the flows the user names, how many packets reached each layer of the
 * receive and transmit paths, and why the kernel freed those it dropped (per-layer
 * counts, where a packet of the flow was last seen).
 *
 * Every layer parses the packet where that layer keeps its headers, matches it against the
 * configured flows (const volatile, rewritten at load: the collector reloads by restarting)
 * and counts it in a per-CPU array indexed by (flow, layer, direction), so there is no key
 * to run out of. Counts are in segments (gso_segs), not skbs: GRO merges and GSO splits
 * packets between layers, and counting skbs would look like loss.
 *
 * Arming (attach: on_traffic): until a flow's packet shows up, only the sentinel layers are
 * attached (net_dev_queue, netif_receive_skb, and kfree_skb, which runs only for drops), so an
 * idle flow costs two program runs per packet instead of one per layer. A sentinel that
 * matches a packet while unarmed sets arm.wanted and counts the packet as unobserved; user
 * space then attaches the other layers and sets arm.armed. Every layer counts only while armed,
 * so all layers start counting at one moment and the loss view compares like with like. */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_FLOWS 64
#define ETH_HLEN 14
#define NETDEV_TX_OK 0

/* Layers, in path order. Kept in step with internal/footprint (layers). */
enum layer {
	LAYER_NET_DEV_QUEUE = 0,      /* __dev_queue_xmit: handed to the device's qdisc */
	LAYER_NET_DEV_START_XMIT = 1, /* the qdisc let it go: handed to the driver */
	LAYER_NET_DEV_XMIT = 2,       /* the driver took it (NETDEV_TX_OK) */
	LAYER_ETH_TYPE_TRANS = 3,     /* a driver received it (the driver layer) */
	LAYER_NAPI_GRO_RECEIVE = 4,   /* NAPI driver handed it to GRO */
	LAYER_NETIF_RX = 5,           /* non-NAPI driver queued it to the CPU backlog */
	LAYER_NETIF_RECEIVE_SKB = 6,  /* __netif_receive_skb_core: the core receive path */
	LAYER_TCP_V4_RCV = 7,         /* L4 entry points */
	LAYER_TCP_V6_RCV = 8,
	LAYER_UDP_RCV = 9,
	LAYER_UDPV6_RCV = 10,
	LAYER_SK_FILTER = 11, /* sk_filter_trim_cap: delivered to a socket, before its filter */
	LAYER_TCP_PROBE = 12, /* tcp_rcv_established: data on an established connection */
	LAYER_MAX = 13,
};

/* Where a layer's skb keeps the network header. */
enum l3_at {
	L3_AT_NETWORK_HEADER = 0, /* head + network_header: set on TX and from L3 up */
	L3_AT_DATA = 1,           /* data: RX after eth_type_trans, before the core resets the header */
	L3_AT_AFTER_ETH = 2,      /* data + ETH_HLEN: in eth_type_trans, data is the MAC header */
};

/* One configured flow. Addresses are compared under their masks as two 64-bit words; IPv4
 * sits in the first 4 bytes, as in struct ip_tuple. Zero fields match anything. */
struct flow_spec {
	__u64 local[2];
	__u64 local_mask[2];
	__u64 peer[2];
	__u64 peer_mask[2];
	__u16 local_port; /* host order */
	__u16 peer_port;
	__u16 l3proto; /* ETH_P_IP, ETH_P_IPV6 */
	__u8 l4proto;  /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 _pad;
};

struct layer_count {
	__u64 packets; /* segments: skb_segs */
};

struct drop_key {
	__u64 location; /* return address in the function that freed the skb */
	__u32 reason;   /* enum skb_drop_reason */
	__u16 flow;
	__u8 direction; /* of the flow: local -> peer is transmit */
	__u8 rx;        /* 1: freed on the receive path (skb_iif set), 0: transmit path */
};

/* An skb that reached the driver, waiting for net_dev_xmit to say whether the driver took it.
 * After ndo_start_xmit the skb may already be freed or forwarded (veth hands it to the peer),
 * so net_dev_xmit compares the pointer and never reads the skb. */
struct xmit_slot {
	__u64 skb;
	__u32 segs;
	__u16 flow;
	__u8 direction;
	__u8 _pad;
};

#define XMIT_SLOTS 8 /* per CPU; xmit nests (tunnels) at most XMIT_RECURSION_LIMIT deep */
struct xmit_pending {
	struct xmit_slot slots[XMIT_SLOTS];
	__u32 next;
};

const volatile __u32 n_flows = 0;
/* attach: always: every layer attached and counting from the start; no arming. */
const volatile bool always_armed = false;

struct arm_state {
	__u32 armed;  /* set by user space once every layer is attached */
	__u32 wanted; /* set by a sentinel that matched a packet while unarmed */
};
const volatile struct flow_spec flows[MAX_FLOWS] = {};

const struct flow_spec *unused_flow_spec __attribute__((unused));
const struct layer_count *unused_layer_count __attribute__((unused));
const struct drop_key *unused_drop_key __attribute__((unused));
const struct arm_state *unused_arm_state __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct arm_state);
} arm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_FLOWS * LAYER_MAX * 2); /* the loader sizes it to the flows */
	__type(key, __u32);
	__type(value, struct layer_count);
} layer_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024); /* the loader sets the configured bound */
	__type(key, struct drop_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xmit_pending);
} xmit_pending SEC(".maps");

#define COUNTER_DROP_KEYS_FULL 0
#define COUNTER_UNOBSERVED 1 /* packets a sentinel matched while the other layers were detached */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline struct arm_state *arm_state(void)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&arm, &k);
}

/* Layers other than the sentinels are attached only while armed, but may run in the moment
 * between their attach and the arm flag: they check it first, before parsing. */
static __always_inline bool counting(void)
{
	if (always_armed)
		return true;
	struct arm_state *a = arm_state();
	return a && a->armed;
}

/* A packet of a named flow was seen: say whether to count it. While unarmed, a sentinel asks
 * for the other layers (written once, not per packet) and counts the packet as unobserved. */
static __always_inline bool note_match(bool sentinel)
{
	if (always_armed)
		return true;
	struct arm_state *a = arm_state();
	if (!a)
		return false;
	if (a->armed)
		return true; /* idle is seen from user space: the counts stop changing */
	if (sentinel) {
		if (!a->wanted)
			a->wanted = 1;
		count_in(&counters, COUNTER_UNOBSERVED);
	}
	return false;
}

static __always_inline bool addr_in(const __u8 *a, const volatile __u64 *net, const volatile __u64 *mask)
{
	const __u64 *w = (const __u64 *)a;

	return ((w[0] ^ net[0]) & mask[0]) == 0 && ((w[1] ^ net[1]) & mask[1]) == 0;
}

/* The first configured flow the packet belongs to, or -1. The packet is oriented against the
 * flow: local -> peer is transmit, peer -> local is receive, whichever path it is on. When both
 * orientations match (a wildcard flow, or loopback), the path decides. */
static __always_inline int match_flow(const struct ip_tuple *t, __u16 l3proto, __u8 path_dir, __u8 *dir)
{
	__u16 sport = bpf_ntohs(t->sport), dport = bpf_ntohs(t->dport);

	for (__u32 i = 0; i < MAX_FLOWS; i++) {
		if (i >= n_flows)
			break;
		const volatile struct flow_spec *f = &flows[i];

		if (f->l4proto && f->l4proto != t->l4proto)
			continue;
		if (f->l3proto && f->l3proto != l3proto)
			continue;
		bool out = (!f->local_port || f->local_port == sport) && (!f->peer_port || f->peer_port == dport) &&
			   addr_in(t->src, f->local, f->local_mask) && addr_in(t->dst, f->peer, f->peer_mask);
		bool in = (!f->local_port || f->local_port == dport) && (!f->peer_port || f->peer_port == sport) &&
			  addr_in(t->dst, f->local, f->local_mask) && addr_in(t->src, f->peer, f->peer_mask);
		if (out && in)
			*dir = path_dir;
		else if (out)
			*dir = DIRECTION_TRANSMIT;
		else if (in)
			*dir = DIRECTION_RECEIVE;
		else
			continue;
		return i;
	}
	return -1;
}

/* The flow of the skb at a layer whose headers are at `at`; -1 if it is none of ours. */
static __always_inline int skb_flow(bool typed, const struct sk_buff *skb, enum l3_at at, __u8 path_dir, __u8 *dir)
{
	struct ip_tuple t = {};
	const unsigned char *l3;
	__u16 proto;

	if (at == L3_AT_AFTER_ETH) {
		const unsigned char *data = KREAD(typed, skb, data);
		__be16 h_proto;

		/* eth_type_trans computes skb->protocol: read the frame's own ethertype. */
		if (bpf_probe_read_kernel(&h_proto, sizeof(h_proto), data + 12))
			return -1;
		proto = bpf_ntohs(h_proto);
		l3 = data + ETH_HLEN;
	} else if (at == L3_AT_DATA) {
		proto = bpf_ntohs(KREAD(typed, skb, protocol));
		l3 = KREAD(typed, skb, data);
	} else {
		__u16 nh = KREAD(typed, skb, network_header);

		if (nh == (__u16)~0U)
			return -1;
		proto = bpf_ntohs(KREAD(typed, skb, protocol));
		l3 = KREAD(typed, skb, head) + nh;
	}
	if (!read_ip_tuple(typed, l3, proto, &t))
		return -1;
	return match_flow(&t, proto, path_dir, dir);
}

static __always_inline void bump(__u32 flow, __u32 layer, __u8 dir, __u32 segs)
{
	__u32 idx = (flow * LAYER_MAX + layer) * 2 + (dir == DIRECTION_RECEIVE ? 1 : 0);
	struct layer_count *c = bpf_map_lookup_elem(&layer_counts, &idx);

	if (c)
		c->packets += segs;
}

static __always_inline int count_layer(bool typed, const struct sk_buff *skb, enum l3_at at, __u32 layer,
				       __u8 path_dir)
{
	bool sentinel = layer == LAYER_NET_DEV_QUEUE || layer == LAYER_NETIF_RECEIVE_SKB;
	__u8 dir = 0;

	if (!sentinel && !counting())
		return 0;
	int flow = skb_flow(typed, skb, at, path_dir, &dir);

	if (flow >= 0 && note_match(sentinel))
		bump(flow, layer, dir, skb_segs(typed, skb));
	return 0;
}

static __always_inline int start_xmit(bool typed, const struct sk_buff *skb)
{
	__u8 dir = 0;

	if (!counting())
		return 0;
	int flow = skb_flow(typed, skb, L3_AT_NETWORK_HEADER, DIRECTION_TRANSMIT, &dir);

	if (flow < 0 || !note_match(false))
		return 0;
	__u32 segs = skb_segs(typed, skb);
	bump(flow, LAYER_NET_DEV_START_XMIT, dir, segs);

	__u32 k = 0;
	struct xmit_pending *p = bpf_map_lookup_elem(&xmit_pending, &k);
	if (!p)
		return 0;
	struct xmit_slot *s = &p->slots[p->next & (XMIT_SLOTS - 1)];
	p->next++;
	s->skb = (__u64)skb;
	s->segs = segs;
	s->flow = flow;
	s->direction = dir;
	return 0;
}

static __always_inline int xmit_done(bool typed, const struct sk_buff *skb, int rc)
{
	__u32 k = 0;
	struct xmit_pending *p = bpf_map_lookup_elem(&xmit_pending, &k);

	(void)typed; /* the skb is never read here: see struct xmit_slot */
	if (!p || !counting())
		return 0;
	for (int i = 0; i < XMIT_SLOTS; i++) {
		struct xmit_slot *s = &p->slots[i];

		if (s->skb != (__u64)skb)
			continue;
		s->skb = 0;
		/* NETDEV_TX_BUSY: the qdisc requeues it and start_xmit will see it again. */
		if (rc == NETDEV_TX_OK)
			bump(s->flow, LAYER_NET_DEV_XMIT, s->direction, s->segs);
		return 0;
	}
	return 0;
}

static __always_inline int drop(bool typed, const struct sk_buff *skb, void *location, __u32 reason)
{
	__u8 path_dir = KREAD(typed, skb, skb_iif) ? DIRECTION_RECEIVE : DIRECTION_TRANSMIT;
	__u8 dir = 0;
	int flow = skb_flow(typed, skb, L3_AT_NETWORK_HEADER, path_dir, &dir);

	/* A sentinel too: a flow whose packets all vanish before netif_receive_skb still arms. */
	if (flow < 0 || !note_match(true))
		return 0;
	struct drop_key key = {
		.location = (__u64)location,
		.reason = reason,
		.flow = flow,
		.direction = dir,
		.rx = path_dir == DIRECTION_RECEIVE,
	};
	__u64 *v = bpf_map_lookup_elem(&drop_counts, &key);
	if (!v) {
		__u64 zero = 0;
		long err = bpf_map_update_elem(&drop_counts, &key, &zero, BPF_NOEXIST);

		if (err && err != -EEXIST) {
			count_in(&counters, COUNTER_DROP_KEYS_FULL);
			return 0;
		}
		v = bpf_map_lookup_elem(&drop_counts, &key);
		if (!v)
			return 0;
	}
	*v += skb_segs(typed, skb);
	return 0;
}

/* Each layer gets a typed entry (tp_btf or fentry: plain loads) and an untyped one (raw_tp or
 * kprobe: probe reads); `typed` tells the shared body which (see KREAD). Tracepoints use
 * TCPACK_TRACEPOINT (common.h). Names start with fp_ so the programs can be found by name (the
 * kernel keeps 15 characters). */
#define FP_FUNCTION(fn, name, args, body)                                                       \
	SEC("fentry/" fn) int BPF_PROG(fp_##name##_fentry, args) { const bool typed = true; body } \
	SEC("kprobe/" fn) int BPF_KPROBE(fp_##name##_kprobe, args) { const bool typed = false; body }

/* Transmit path. net_dev_queue fires inside __dev_queue_xmit, which dev_queue_xmit calls. */
TCPACK_TRACEPOINT("net_dev_queue", fp_net_dev_queue, ARGS(struct sk_buff *skb),
	      return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_NET_DEV_QUEUE, DIRECTION_TRANSMIT);)
FP_FUNCTION("__dev_queue_xmit", dev_queue_xmit, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_NET_DEV_QUEUE, DIRECTION_TRANSMIT);)
TCPACK_TRACEPOINT("net_dev_start_xmit", fp_start_xmit, ARGS(struct sk_buff *skb), return start_xmit(typed, skb);)
TCPACK_TRACEPOINT("net_dev_xmit", fp_xmit, ARGS(struct sk_buff *skb, int rc), return xmit_done(typed, skb, rc);)

/* Receive path. */
FP_FUNCTION("eth_type_trans", eth_type_trans, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_AFTER_ETH, LAYER_ETH_TYPE_TRANS, DIRECTION_RECEIVE);)
TCPACK_TRACEPOINT("napi_gro_receive_entry", fp_napi_gro, ARGS(struct sk_buff *skb),
	      return count_layer(typed, skb, L3_AT_DATA, LAYER_NAPI_GRO_RECEIVE, DIRECTION_RECEIVE);)
FP_FUNCTION("napi_gro_receive", napi_gro_receive, ARGS(struct napi_struct *napi, struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_DATA, LAYER_NAPI_GRO_RECEIVE, DIRECTION_RECEIVE);)
TCPACK_TRACEPOINT("netif_rx", fp_netif_rx, ARGS(struct sk_buff *skb),
	      return count_layer(typed, skb, L3_AT_DATA, LAYER_NETIF_RX, DIRECTION_RECEIVE);)
/* Fires at the top of __netif_receive_skb_core, before it resets the
 * network header: data is where the header is. */
TCPACK_TRACEPOINT("netif_receive_skb", fp_netif_receive_skb, ARGS(struct sk_buff *skb),
	      return count_layer(typed, skb, L3_AT_DATA, LAYER_NETIF_RECEIVE_SKB, DIRECTION_RECEIVE);)
FP_FUNCTION("tcp_v4_rcv", tcp_v4_rcv, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_TCP_V4_RCV, DIRECTION_RECEIVE);)
FP_FUNCTION("tcp_v6_rcv", tcp_v6_rcv, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_TCP_V6_RCV, DIRECTION_RECEIVE);)
FP_FUNCTION("udp_rcv", udp_rcv, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_UDP_RCV, DIRECTION_RECEIVE);)
FP_FUNCTION("udpv6_rcv", udpv6_rcv, ARGS(struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_UDPV6_RCV, DIRECTION_RECEIVE);)
FP_FUNCTION("sk_filter_trim_cap", sk_filter, ARGS(struct sock *sk, struct sk_buff *skb),
	    return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_SK_FILTER, DIRECTION_RECEIVE);)
TCPACK_TRACEPOINT("tcp_probe", fp_tcp_probe, ARGS(struct sock *sk, struct sk_buff *skb),
	      return count_layer(typed, skb, L3_AT_NETWORK_HEADER, LAYER_TCP_PROBE, DIRECTION_RECEIVE);)

/* Where neither fentry nor kprobes work, the socket-delivery layer is the cgroup inet ingress
 * hook: sk_filter_trim_cap runs it first, for every packet delivered to a TCP or UDP socket of
 * the cgroup (attached at the root: all of them). It only observes: it always lets the packet
 * through. Its skb starts at the network header. */
SEC("cgroup_skb/ingress")
int fp_sk_filter_cgroup(struct __sk_buff *skb)
{
	if (!counting())
		return 1;
	struct ip_tuple t = {};
	__u16 proto = bpf_ntohs(skb->protocol);
	__be16 ports[2] = {};

	/* As in read_ip_tuple: one load takes the ports too when they follow the fixed header. */
	if (proto == ETH_P_IP) {
		struct {
			struct iphdr ip;
			__be16 ports[2];
		} h = {};

		if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) && bpf_skb_load_bytes(skb, 0, &h.ip, sizeof(h.ip)))
			return 1;
		if (h.ip.version != 4)
			return 1;
		__builtin_memcpy(t.src, &h.ip.saddr, 4);
		__builtin_memcpy(t.dst, &h.ip.daddr, 4);
		t.l4proto = h.ip.protocol;
		if (h.ip.ihl == 5) {
			ports[0] = h.ports[0];
			ports[1] = h.ports[1];
		} else {
			bpf_skb_load_bytes(skb, (h.ip.ihl * 4) & 0x3f, ports, sizeof(ports));
		}
	} else if (proto == ETH_P_IPV6) {
		struct {
			struct ipv6hdr ip6;
			__be16 ports[2];
		} h = {};

		if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) && bpf_skb_load_bytes(skb, 0, &h.ip6, sizeof(h.ip6)))
			return 1;
		if (h.ip6.version != 6)
			return 1;
		__builtin_memcpy(t.src, &h.ip6.saddr, 16);
		__builtin_memcpy(t.dst, &h.ip6.daddr, 16);
		t.l4proto = h.ip6.nexthdr;
		ports[0] = h.ports[0];
		ports[1] = h.ports[1];
	} else {
		return 1;
	}
	if (t.l4proto == IPPROTO_TCP || t.l4proto == IPPROTO_UDP) {
		t.sport = ports[0];
		t.dport = ports[1];
	}
	__u8 dir = 0;
	int flow = match_flow(&t, proto, DIRECTION_RECEIVE, &dir);
	if (flow >= 0 && note_match(false))
		bump(flow, LAYER_SK_FILTER, dir, skb->gso_segs ? skb->gso_segs : 1);
	return 1;
}

/* The terminal layer: the kernel freed the packet without delivering it, and says why. Only
 * the first three arguments are read, which every kernel with drop reasons (5.17+) passes. */
TCPACK_TRACEPOINT("kfree_skb", fp_kfree_skb,
	      ARGS(struct sk_buff *skb, void *location, enum skb_drop_reason reason),
	      return drop(typed, skb, location, reason);)
