// SPDX-License-Identifier: GPL-2.0
/* Drops family: where and why the kernel frees packets it did not deliver (skb:kfree_skb),
 * side by side with TCP retransmits and resets. Everything is counted in per-CPU maps;
 * only rate-limited samples go to user space as events. */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

enum event_kind {
	EVENT_DROP = 0,
	EVENT_RETRANSMIT = 1,
	EVENT_RESET_SENT = 2,
	EVENT_RESET_RECEIVED = 3,
	EVENT_KIND_MAX = 4,
};

enum counter {
	COUNTER_SAMPLED_OUT = 0,     /* + event kind: events the token bucket refused */
	COUNTER_RINGBUF_FULL = 4,    /* + event kind: events the ring buffer had no room for */
	COUNTER_DROP_KEYS_FULL = 8,  /* drops not counted: no room in drop_counts */
	COUNTER_TCP_KEYS_FULL = 9,   /* TCP events not counted: no room in tcp_counts */
	COUNTER_MAX = 10,
};

#define TCPACK_SAMPLED_EVENTS
#include "events.h"

struct drop_key {
	__u64 location; /* return address inside the function that freed the skb */
	__u32 netns;    /* netns inode: ifindex is only unique per netns */
	__u32 ifindex;
	__u32 reason;   /* enum skb_drop_reason, named from kernel BTF in user space */
	__u16 l3proto;
	__u8 l4proto;
	__u8 _pad;
};

struct drop_value {
	__u64 packets;
	__u64 bytes;
	char ifname[16]; /* IFNAMSIZ; copied once per CPU slot, so user space needs no netns walk */
};

struct tcp_event_key {
	__u32 netns;
	__u32 kind;   /* enum event_kind */
	__u32 reason; /* enum sk_rst_reason for resets sent, where the kernel has it */
	__u16 l3proto;
	__u8 state;
	__u8 _pad;
};

struct event {
	__u64 ts_ns; /* bpf_ktime_get_ns */
	__u64 location;
	__u32 kind;
	__u32 reason;
	__u32 netns;
	__u32 ifindex;
	__u32 len;
	__u8 state;
	__u8 _pad[3];
	struct flow flow;
	char ifname[16];
};

/* bpf2go emits Go types only for what the object references. */
const struct event *unused_event __attribute__((unused));
const struct drop_key *unused_drop_key __attribute__((unused));
const struct drop_value *unused_drop_value __attribute__((unused));
const struct tcp_event_key *unused_tcp_event_key __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* the loader sets the configured bound */
	__type(key, struct drop_key);
	__type(value, struct drop_value);
} drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tcp_event_key);
	__type(value, __u64);
} tcp_counts SEC(".maps");

static __always_inline struct event *new_event(__u32 kind)
{
	struct event *e = reserve_event(kind, sizeof(*e));

	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	return e;
}

static __always_inline void count_drop(const struct drop_key *key, const struct net_device *dev,
				       __u32 len)
{
	struct drop_value *v = bpf_map_lookup_elem(&drop_counts, key);

	if (!v) {
		struct drop_value zero = {};

		long err = bpf_map_update_elem(&drop_counts, key, &zero, BPF_NOEXIST);

		/* EEXIST: another CPU inserted the key first, and the lookup below finds it. Any
		 * other error (E2BIG when full, ENOMEM) loses this count: say so. */
		if (err && err != -EEXIST) {
			count_in(&counters, COUNTER_DROP_KEYS_FULL);
			return;
		}
		v = bpf_map_lookup_elem(&drop_counts, key);
		if (!v)
			return;
	}
	if (!v->ifname[0] && dev)
		BPF_CORE_READ_STR_INTO(&v->ifname, dev, name);
	/* per-CPU slot: no atomics needed */
	v->packets++;
	v->bytes += len;
}

static __always_inline int handle_kfree_skb(bool typed, struct sk_buff *skb, void *location,
					    __u32 reason, struct sock *rx_sk)
{
	struct net_device *dev = KREAD(typed, skb, dev);
	/* On RX drops skb->sk is NULL; rx_sk (6.8+) is the socket the packet was meant for.
	 * Loaded once: the verifier rejects re-reading skb->sk as an rcu pointer. */
	struct sock *sk = KREAD(typed, skb, sk);
	struct flow f = {};
	__u32 len = KREAD(typed, skb, len);

	if (!sk)
		sk = rx_sk;
	if (!flow_from_skb(typed, &f, skb) && sk) {
		/* No parsable headers yet (early TX path): the socket says what flow it is. */
		flow_from_sock(typed, &f, sk);
		f.l4proto = tcp_state_of(typed, sk) ? IPPROTO_TCP : KREAD(typed, sk, sk_protocol);
		f.direction = DIRECTION_TRANSMIT;
	}

	struct drop_key key = {
		.location = (__u64)location,
		.netns = dev ? netns_of_dev(typed, dev) : netns_of_sock(typed, sk),
		.ifindex = dev ? KREAD(typed, dev, ifindex) : 0,
		.reason = reason,
		.l3proto = f.l3proto,
		.l4proto = f.l4proto,
	};
	count_drop(&key, dev, len);

	struct event *e = new_event(EVENT_DROP);
	if (!e)
		return 0;
	e->location = key.location;
	e->reason = reason;
	e->netns = key.netns;
	e->ifindex = key.ifindex;
	e->len = len;
	e->state = tcp_state_of(typed, sk);
	e->flow = f;
	if (dev)
		BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	submit_batched(&events, e);
	return 0;
}

static __always_inline void count_tcp(__u32 kind, __u32 reason, __u32 netns, __u16 l3proto,
				      __u8 state)
{
	struct tcp_event_key key = {
		.netns = netns,
		.kind = kind,
		.reason = reason,
		.l3proto = l3proto,
		.state = state,
	};
	__u64 *v = bpf_map_lookup_elem(&tcp_counts, &key);

	if (!v) {
		__u64 zero = 0;

		long err = bpf_map_update_elem(&tcp_counts, &key, &zero, BPF_NOEXIST);

		if (err && err != -EEXIST) {
			count_in(&counters, COUNTER_TCP_KEYS_FULL);
			return;
		}
		v = bpf_map_lookup_elem(&tcp_counts, &key);
		if (!v)
			return;
	}
	(*v)++;
}

/* Retransmits and resets: sk is the connection's socket; for a reset sent in reply to a
 * packet that matched no socket, sk is NULL and the offending packet gives the flow. */
static __always_inline int handle_tcp(bool typed, __u32 kind, const struct sock *sk,
				      const struct sk_buff *skb, __u32 reason)
{
	struct flow f = {};
	__u32 netns = 0;
	__u8 state = 0;

	if (sk) {
		flow_from_sock(typed, &f, sk);
		f.l4proto = IPPROTO_TCP;
		netns = netns_of_sock(typed, sk);
		state = KREAD(typed, sk, __sk_common.skc_state);
	} else if (skb) {
		flow_from_skb(typed, &f, skb);
		netns = netns_of_dev(typed, KREAD(typed, skb, dev));
	}
	count_tcp(kind, reason, netns, f.l3proto, state);

	struct event *e = new_event(kind);
	if (!e)
		return 0;
	e->reason = reason;
	e->netns = netns;
	e->state = state;
	e->flow = f;
	if (skb) {
		struct net_device *dev = KREAD(typed, skb, dev);

		e->len = KREAD(typed, skb, len);
		if (dev) {
			e->ifindex = KREAD(typed, dev, ifindex);
			BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
		}
	}
	submit_batched(&events, e);
	return 0;
}

/* Each tracepoint gets a tp_btf entry (preferred: typed, cheapest) and a raw_tp entry (for
 * kernels or setups where BTF-typed attach is refused); `typed` tells the shared body which
 * way to read kernel memory (see KREAD).
 * Variants differ in how many arguments they touch, because a program that reads an argument
 * the running kernel's tracepoint lacks is rejected at load ("doesn't have 4-th argument"):
 * the loader picks the variant from the tracepoint's arity in kernel BTF. */

/* kfree_skb(skb, location, reason, rx_sk): 6.8+ */
TCPACK_TRACEPOINT("kfree_skb", kfree_skb_rx_sk,
		  ARGS(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
		       struct sock *rx_sk),
		  return handle_kfree_skb(typed, skb, location, reason, rx_sk);)

/* kfree_skb(skb, location, reason): 5.17 - 6.7 */
TCPACK_TRACEPOINT("kfree_skb", kfree_skb,
		  ARGS(struct sk_buff *skb, void *location, enum skb_drop_reason reason),
		  return handle_kfree_skb(typed, skb, location, reason, NULL);)

/* tcp_retransmit_skb(sk, skb[, err]): err is not needed, so one variant fits all. */
TCPACK_TRACEPOINT("tcp_retransmit_skb", tcp_retransmit_skb,
		  ARGS(const struct sock *sk, const struct sk_buff *skb),
		  return handle_tcp(typed, EVENT_RETRANSMIT, sk, skb, 0);)

/* tcp_send_reset(sk, skb, reason): 6.10+ */
TCPACK_TRACEPOINT("tcp_send_reset", tcp_send_reset_reason,
		  ARGS(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason),
		  return handle_tcp(typed, EVENT_RESET_SENT, sk, skb, reason);)

/* tcp_send_reset(sk, skb): before 6.10 the kernel gives no reason. */
TCPACK_TRACEPOINT("tcp_send_reset", tcp_send_reset,
		  ARGS(const struct sock *sk, const struct sk_buff *skb),
		  return handle_tcp(typed, EVENT_RESET_SENT, sk, skb, 0);)

TCPACK_TRACEPOINT("tcp_receive_reset", tcp_receive_reset, ARGS(struct sock *sk),
		  return handle_tcp(typed, EVENT_RESET_RECEIVED, sk, NULL, 0);)
