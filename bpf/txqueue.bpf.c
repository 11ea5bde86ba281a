// SPDX-License-Identifier: GPL-2.0
/* txqueue family: which transmit queue the kernel picks for each flow, and packets received for
 * another host (PACKET_OTHERHOST).
 *
 * net_dev_start_xmit sees every skb handed to a driver with the queue netdev_core_pick_tx
 * chose (skb->queue_mapping): it counts per (netns, interface, queue) and keeps each socket
 * flow's current queue in an LRU map, sampling an event when a flow changes queue. Where
 * fentry/fexit or kprobes exist, netdev_pick_tx itself is hooked too, which tells a queue kept
 * from the socket (sk_tx_queue_mapping) from a re-pick by XPS or by hash (__netdev_pick_tx).
 * Packets for another host are counted where IPv4 and IPv6 drop them, kfree_skb with reason
 * OTHERHOST (ip_rcv_core, ip6_rcv_core): a drop, so nothing runs for the packets the host
 * keeps. Kernels without that reason use netif_receive_skb, which runs for every received skb.
 * Counters are per-CPU; only rate-limited samples reach user space. */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define PACKET_OTHERHOST 3
#define NO_QUEUE_MAPPING 0xffff
#define XPS_CPUS 0
#define ETH_ALEN 6

enum event_kind {
	EVENT_FLOW_MOVED = 0,
	EVENT_OTHERHOST = 1,
	EVENT_KIND_MAX = 2,
};

enum counter {
	COUNTER_SAMPLED_OUT = 0,     /* + event kind */
	COUNTER_RINGBUF_FULL = 2,    /* + event kind */
	COUNTER_QUEUE_KEYS_FULL = 4, /* packets not counted: no room in queue_counts */
	COUNTER_IF_KEYS_FULL = 5,    /* interface events not counted: no room in if_counts */
	COUNTER_MAX = 6,
};

#define TCPACK_SAMPLED_EVENTS
#include "events.h"

/* How netdev_pick_tx chose, as far as its inputs tell (see pick_exit). */
enum pick_selector {
	PICK_UNKNOWN = 0, /* the pick hook is not attached, or saw another skb */
	PICK_SOCKET = 1,  /* kept the queue recorded in the socket (no re-pick) */
	PICK_XPS = 2,     /* re-picked with an XPS CPU map for the sending CPU */
	PICK_HASH = 3,    /* re-picked without one: skb_tx_hash */
	PICK_MAX = 4,
};

struct queue_key {
	__u32 netns; /* ifindex is only unique per netns */
	__u32 ifindex;
	__u32 queue; /* skb->queue_mapping */
	__u32 _pad;
};

struct queue_value {
	__u64 packets; /* segments: a GSO skb counts gso_segs, as qdiscs and NICs count */
	__u64 xmits;   /* skbs handed to the driver */
	__u64 bytes;   /* skb->len */
	__u32 real_num_tx_queues;
	__u32 _pad;
	char ifname[16];
};

/* A direct-mapped per-CPU cache in front of queue_counts: a packet whose (netns, interface,
 * queue) holds its slot is counted there with no hash lookup. A slot is claimed by the first
 * key, already in queue_counts, that finds it empty, and kept until user space clears it for
 * a namespace that is gone; keys that find their slot taken count in queue_counts. User
 * space adds a slot's counts to its key's entry there. */
#define QUEUE_SLOTS 256

struct queue_slot {
	struct queue_key key; /* key.ifindex 0: empty (no interface has index 0) */
	struct queue_value value;
};

struct if_key {
	__u32 netns;
	__u32 ifindex;
};

struct if_value {
	__u64 flow_moves;       /* tracked flows seen on another queue than before */
	__u64 otherhost;        /* skbs received with pkt_type PACKET_OTHERHOST */
	__u64 picks[PICK_MAX];  /* netdev_pick_tx calls by enum pick_selector */
	char ifname[16];
};

/* Keyed by socket, not by 5-tuple: a 16-byte key hashes in a fraction of the time, and the
 * tuple is read once, when the flow is first seen. The key is the socket's address (the cookie
 * helper refuses skb->sk, an rcu pointer, on 6.18); a later socket at the same address is told
 * apart by flow_value.ident. */
struct flow_key {
	__u64 sock;
	__u32 ifindex; /* stacked devices (vlan over a NIC) each pick a queue for the same flow */
	__u32 netns;
};

/* Written only when the flow first appears, moves, or first sends in a new epoch: a packet
 * that changes nothing writes nothing, so the entry's cache line is not bounced between the
 * CPUs one flow sends from. */
struct flow_value {
	struct flow flow;
	__u64 ident; /* local port, peer port, low 32 bits of the peer address: see sock_ident */
	__u64 moves;
	__u32 epoch; /* flow_epoch when it last sent: user space advances it at each read */
	__u16 queue;
	__u16 _pad;
};

/* A direct-mapped per-CPU memory of the flows this CPU sent last, so that a packet that changes
 * nothing costs no lookup in the shared flow map. An entry is trusted only while flow_writes
 * still holds the count it saw: every write of a queue into the flow map (a new flow, a move)
 * advances that count, so no CPU keeps believing in a queue another CPU has seen change. */
#define FLOW_CACHE_SLOTS 256

struct flow_cache_entry {
	__u64 sock;
	__u64 ident;
	__u32 ifindex;
	__u32 netns;
	__u32 epoch;
	__u32 writes; /* flow_writes when this CPU last checked the flow map */
	__u16 queue;
	__u16 _pad[3];
};

struct moved_event {
	__u64 ts_ns;
	__u32 kind; /* EVENT_FLOW_MOVED */
	__u32 netns;
	__u32 ifindex;
	__u16 old_queue;
	__u16 new_queue;
	__u32 real_num_tx_queues;
	__u8 ooo_okay;
	__u8 selector;
	__u8 _pad[2];
	struct flow flow;
	char ifname[16];
};

struct otherhost_event {
	__u64 ts_ns;
	__u32 kind; /* EVENT_OTHERHOST */
	__u32 netns;
	__u32 ifindex;
	__u32 len;
	__u16 l3proto; /* ethertype (host order) */
	__u8 dst_mac[ETH_ALEN];
	__u8 src_mac[ETH_ALEN];
	__u8 dev_mac[ETH_ALEN];
	__u8 src_addr[16];
	__u8 dst_addr[16];
	char ifname[16];
};

/* What the pick hook's entry saw, for its exit, and its verdict for net_dev_start_xmit. */
struct pick_slot {
	__u64 skb;
	__u16 old_queue; /* sk_tx_queue_mapping before the pick; NO_QUEUE_MAPPING if none */
	__u8 ooo_okay;
	__u8 selector;   /* set by the exit; 0 until then */
	__u32 _pad;
	__u64 dev;       /* for the kretprobe, which has no arguments */
};

const struct queue_slot *unused_queue_slot __attribute__((unused));
const struct queue_key *unused_queue_key __attribute__((unused));
const struct queue_value *unused_queue_value __attribute__((unused));
const struct if_key *unused_if_key __attribute__((unused));
const struct if_value *unused_if_value __attribute__((unused));
const struct flow_key *unused_flow_key __attribute__((unused));
const struct flow_value *unused_flow_value __attribute__((unused));
const struct moved_event *unused_moved_event __attribute__((unused));
const struct otherhost_event *unused_otherhost_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* the loader sets the configured bound */
	__type(key, struct queue_key);
	__type(value, struct queue_value);
} queue_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QUEUE_SLOTS);
	__type(key, __u32);
	__type(value, struct queue_slot);
} queue_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct if_key);
	__type(value, struct if_value);
} if_counts SEC(".maps");

/* Shared between CPUs: a flow's packets may leave from any CPU, and a move is a change seen
 * from one packet to the next whichever CPU sent them. LRU: old flows make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pick_slot);
} pick_slots SEC(".maps");

/* One entry, the current epoch: which flows sent since user space last read the flow map
 * (per_packet), or which sent in the current sampling window (kernel_stats). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct flow_cache_entry);
} flow_cache SEC(".maps");

/* One entry: how many times a queue was written into the flow map (see flow_cache_entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_writes SEC(".maps");

/* kernel_stats mode: the per-packet hooks run only in sampling windows; user space advances
 * flow_epoch as each opens. Set by the loader. */
const volatile bool sampled_windows = false;

/* Bitfields (pkt_type, ooo_okay) moved between bytes across kernels: CO-RE relocates them. */
#define KREAD_BITFIELD(typed, s, field) \
	((typed) ? BPF_CORE_READ_BITFIELD(s, field) : BPF_CORE_READ_BITFIELD_PROBED(s, field))

static __always_inline struct if_value *if_counts_for(bool typed, __u32 netns,
						      const struct net_device *dev)
{
	struct if_key key = { .netns = netns, .ifindex = KREAD(typed, dev, ifindex) };
	struct if_value *v = bpf_map_lookup_elem(&if_counts, &key);

	if (v)
		return v;
	struct if_value zero = {};
	long err = bpf_map_update_elem(&if_counts, &key, &zero, BPF_NOEXIST);

	/* EEXIST: another CPU inserted it first; anything else (E2BIG when full) loses the count. */
	if (err && err != -EEXIST) {
		count_in(&counters, COUNTER_IF_KEYS_FULL);
		return NULL;
	}
	v = bpf_map_lookup_elem(&if_counts, &key);
	if (v && !v->ifname[0])
		BPF_CORE_READ_STR_INTO(&v->ifname, dev, name);
	return v;
}

static __always_inline void add_to_queue(bool typed, struct queue_value *v, const struct net_device *dev,
					 __u32 segs, __u32 len)
{
	/* per-CPU: no atomics needed */
	v->packets += segs;
	v->xmits++;
	v->bytes += len;
	v->real_num_tx_queues = KREAD(typed, dev, real_num_tx_queues);
}

static __always_inline void count_queue(bool typed, const struct queue_key *key,
					const struct net_device *dev, __u32 segs, __u32 len)
{
	__u32 idx = (key->ifindex * 16 + key->queue + key->netns * 7) & (QUEUE_SLOTS - 1);
	struct queue_slot *slot = bpf_map_lookup_elem(&queue_slots, &idx);

	if (slot && slot->key.ifindex == key->ifindex && slot->key.queue == key->queue &&
	    slot->key.netns == key->netns) {
		add_to_queue(typed, &slot->value, dev, segs, len);
		return;
	}
	/* queue_counts holds every key, so its bound is the family's: a slot only caches the
	 * counting of a key that has its entry there. */
	struct queue_value *v = bpf_map_lookup_elem(&queue_counts, key);

	if (!v) {
		struct queue_value zero = {};
		long err = bpf_map_update_elem(&queue_counts, key, &zero, BPF_NOEXIST);

		if (err && err != -EEXIST) {
			count_in(&counters, COUNTER_QUEUE_KEYS_FULL);
			return;
		}
		v = bpf_map_lookup_elem(&queue_counts, key);
		if (!v)
			return;
		BPF_CORE_READ_STR_INTO(&v->ifname, dev, name);
	}
	if (slot && !slot->key.ifindex) {
		slot->key = *key;
		add_to_queue(typed, &slot->value, dev, segs, len);
		return;
	}
	add_to_queue(typed, v, dev, segs, len);
}

/* Flows are connected full sockets (TCP, connected UDP): those whose queue the kernel records
 * in sk_tx_queue_mapping. Unconnected UDP sockets and the per-netns control socket that sends
 * resets and timewait ACKs have no peer port; their packets are counted per queue only. */
static __always_inline void fill_flow(bool typed, struct flow *f, const struct sock *sk)
{
	flow_from_sock(typed, f, sk);
	f->l4proto = KREAD(typed, sk, sk_protocol);
	f->direction = DIRECTION_TRANSMIT;
}

/* The pick hook's verdict on this skb, if it saw it last on this CPU. With a qdisc that queues
 * the skb, the transmit may come later or on another CPU: then the verdict is unknown. */
static __always_inline __u8 pick_selector_for(const struct sk_buff *skb)
{
	__u32 zero = 0;
	struct pick_slot *s = bpf_map_lookup_elem(&pick_slots, &zero);

	if (!s || s->skb != (__u64)skb)
		return PICK_UNKNOWN;
	/* Consumed: a later skb at the same address (slab reuse) on a one-queue device, where
	 * nothing picks, must not inherit this verdict. */
	s->skb = 0;
	return s->selector;
}

static __always_inline __u64 sock_ident(bool typed, const struct sock *sk, __u16 family)
{
	__u32 peer = family == AF_INET ? KREAD(typed, sk, __sk_common.skc_daddr) :
					 KREAD(typed, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[3]);

	return (__u64)KREAD(typed, sk, __sk_common.skc_num) << 48 |
	       (__u64)KREAD(typed, sk, __sk_common.skc_dport) << 32 | peer;
}

static __always_inline void track_flow(bool typed, __u32 netns, const struct net_device *dev,
				       const struct sk_buff *skb, struct sock *sk, __u16 queue)
{
	if (!KREAD(typed, sk, __sk_common.skc_dport))
		return;
	/* A timewait or request socket is a socket of its own at another address, and the kernel
	 * keeps no queue in it: its packets (a SYN-ACK, the last ACK) count per queue only, so
	 * that one connection stays one flow. */
	__u8 state = KREAD(typed, sk, __sk_common.skc_state);
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return;
	__u16 family = KREAD(typed, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	struct flow_key key = {
		.sock = (__u64)sk,
		.ifindex = KREAD(typed, dev, ifindex),
		.netns = netns,
	};
	__u8 selector = pick_selector_for(skb);
	__u32 zero = 0;
	__u32 *epoch = bpf_map_lookup_elem(&flow_epoch, &zero);
	__u32 *writes = bpf_map_lookup_elem(&flow_writes, &zero);
	if (!epoch || !writes)
		return;

	__u64 ident = sock_ident(typed, sk, family);
	/* Read once: the entry is filled below with the count this check was made under, so a
	 * write by another CPU in between makes the next packet check again. */
	__u32 seen_writes = *writes;
	__u32 idx = (__u32)(ident ^ ident >> 32 ^ ident >> 48 ^ key.ifindex) & (FLOW_CACHE_SLOTS - 1);
	struct flow_cache_entry *c = bpf_map_lookup_elem(&flow_cache, &idx);
	if (c && c->sock == key.sock && c->ident == ident && c->ifindex == key.ifindex &&
	    c->netns == netns && c->queue == queue && c->epoch == *epoch && c->writes == seen_writes)
		return;

	struct flow_value *v = bpf_map_lookup_elem(&flows, &key);
	if (!v || v->ident != ident) {
		struct flow_value nv = {.ident = ident, .queue = queue, .epoch = *epoch};
		fill_flow(typed, &nv.flow, sk);
		bpf_map_update_elem(&flows, &key, &nv, BPF_ANY);
		/* An entry evicted and written again may hold another queue than a CPU remembers. */
		__sync_fetch_and_add(writes, 1);
		return;
	}
	if (v->epoch != *epoch) {
		v->epoch = *epoch;
		/* A window's first packet of a flow: where the flow went between windows is not
		 * known, so a queue other than the last window's is its queue now, not a move that
		 * this packet's ooo_okay and pick would wrongly explain. The walks count that change. */
		if (sampled_windows) {
			if (v->queue != queue) {
				v->queue = queue;
				__sync_fetch_and_add(writes, 1);
			}
			return;
		}
	}
	__u16 old = v->queue;
	if (old == queue) {
		if (c) {
			c->sock = key.sock;
			c->ident = ident;
			c->ifindex = key.ifindex;
			c->netns = netns;
			c->queue = queue;
			c->epoch = *epoch;
			c->writes = seen_writes;
		}
		return;
	}
	/* Two CPUs may see the move at once: each counts and reports it, as each saw it. */
	v->queue = queue;
	__sync_fetch_and_add(writes, 1);
	__sync_fetch_and_add(&v->moves, 1);
	struct if_value *iv = if_counts_for(typed, netns, dev);
	if (iv)
		iv->flow_moves++;

	struct moved_event *e = reserve_event(EVENT_FLOW_MOVED, sizeof(*e));
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = EVENT_FLOW_MOVED;
	e->netns = netns;
	e->ifindex = key.ifindex;
	e->old_queue = old;
	e->new_queue = queue;
	e->real_num_tx_queues = KREAD(typed, dev, real_num_tx_queues);
	e->ooo_okay = KREAD_BITFIELD(typed, skb, ooo_okay);
	e->selector = selector;
	e->flow = v->flow;
	BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	submit_batched(&events, e);
}

static __always_inline int handle_xmit(bool typed, struct sk_buff *skb, struct net_device *dev)
{
	if (!dev)
		return 0;
	__u32 netns = netns_of_dev(typed, dev);
	__u16 queue = KREAD(typed, skb, queue_mapping);
	__u32 segs = skb_segs(typed, skb);
	struct queue_key key = {
		.netns = netns,
		.ifindex = KREAD(typed, dev, ifindex),
		.queue = queue,
	};

	count_queue(typed, &key, dev, segs, KREAD(typed, skb, len));
	/* Loaded once: re-reading skb->sk is an rcu pointer the verifier will not offset. */
	struct sock *sk = KREAD(typed, skb, sk);
	if (sk)
		track_flow(typed, netns, dev, skb, sk, queue);
	return 0;
}

/* eth_type_trans has classified the frame by the time netif_receive_skb fires: skb->data is
 * past the Ethernet header, mac_header points at it; network_header is set only later. */
static __always_inline int handle_receive(bool typed, struct sk_buff *skb)
{
	if (KREAD_BITFIELD(typed, skb, pkt_type) != PACKET_OTHERHOST)
		return 0;
	struct net_device *dev = KREAD(typed, skb, dev);
	if (!dev)
		return 0;
	__u32 netns = netns_of_dev(typed, dev);
	struct if_value *iv = if_counts_for(typed, netns, dev);
	if (iv)
		iv->otherhost++;

	struct otherhost_event *e = reserve_event(EVENT_OTHERHOST, sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = EVENT_OTHERHOST;
	e->netns = netns;
	e->ifindex = KREAD(typed, dev, ifindex);
	e->len = KREAD(typed, skb, len);
	e->l3proto = bpf_ntohs(KREAD(typed, skb, protocol));
	BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	bpf_probe_read_kernel(e->dev_mac, ETH_ALEN, KREAD(typed, dev, dev_addr));

	unsigned char *head = KREAD(typed, skb, head);
	unsigned char *data = KREAD(typed, skb, data);
	__u16 mac = KREAD(typed, skb, mac_header);
	if (head && mac != (__u16)~0U) {
		__u8 eth[2 * ETH_ALEN];

		if (!bpf_probe_read_kernel(eth, sizeof(eth), head + mac)) {
			__builtin_memcpy(e->dst_mac, eth, ETH_ALEN);
			__builtin_memcpy(e->src_mac, eth + ETH_ALEN, ETH_ALEN);
		}
	}
	if (e->l3proto == ETH_P_IP) {
		struct iphdr ip;

		if (!bpf_probe_read_kernel(&ip, sizeof(ip), data) && ip.version == 4) {
			__builtin_memcpy(e->src_addr, &ip.saddr, 4);
			__builtin_memcpy(e->dst_addr, &ip.daddr, 4);
		}
	} else if (e->l3proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (!bpf_probe_read_kernel(&ip6, sizeof(ip6), data) && ip6.version == 6) {
			__builtin_memcpy(e->src_addr, &ip6.saddr, 16);
			__builtin_memcpy(e->dst_addr, &ip6.daddr, 16);
		}
	}
	submit_batched(&events, e);
	return 0;
}


TCPACK_TRACEPOINT("net_dev_start_xmit", net_dev_start_xmit,
		  ARGS(struct sk_buff *skb, struct net_device *dev),
		  return handle_xmit(typed, skb, dev);)

TCPACK_TRACEPOINT("netif_receive_skb", netif_receive_skb, ARGS(struct sk_buff *skb),
		  return handle_receive(typed, skb);)

/* The drop IPv4 and IPv6 make of a packet for another host. The loader picks this only where
 * enum skb_drop_reason has OTHERHOST; the first three arguments are on every such kernel. */
static __always_inline int handle_drop(bool typed, struct sk_buff *skb, enum skb_drop_reason reason)
{
	if (!bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_OTHERHOST) ||
	    reason != bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_OTHERHOST))
		return 0;
	return handle_receive(typed, skb);
}

TCPACK_TRACEPOINT("kfree_skb", kfree_skb_otherhost,
		  ARGS(struct sk_buff *skb, void *location, enum skb_drop_reason reason),
		  return handle_drop(typed, skb, reason);)

/* netdev_pick_tx(dev, skb, sb_dev) runs __netdev_pick_tx's logic: keep the socket's queue
 * unless it has none, it is out of range, or skb->ooo_okay says nothing of the socket is still
 * in flight below it; then get_xps_queue, else skb_tx_hash. The entry records what decides
 * whether it re-picks: the exit alone cannot, the socket's queue is overwritten by then. */
static __always_inline void pick_entry(bool typed, struct net_device *dev, struct sk_buff *skb)
{
	__u32 zero = 0;
	struct pick_slot *s = bpf_map_lookup_elem(&pick_slots, &zero);

	if (!s)
		return;
	struct sock *sk = KREAD(typed, skb, sk);
	s->skb = (__u64)skb;
	s->old_queue = sk ? KREAD(typed, sk, __sk_common.skc_tx_queue_mapping) : NO_QUEUE_MAPPING;
	s->ooo_okay = KREAD_BITFIELD(typed, skb, ooo_okay);
	s->selector = PICK_UNKNOWN;
	s->dev = (__u64)dev;
}

/* get_xps_queue with num_tc 0 looks up xps_maps[XPS_CPUS]->attr_map[sender_cpu - 1]: if that
 * holds a map, XPS chose (barring a queue beyond real_num_tx_queues). The receive-queue map
 * (XPS_RXQS, tried first when configured) is not looked at. Always probe reads: kprobes and
 * fexit alike, and attr_map is a flexible array indexed at run time. */
static __always_inline bool xps_maps_cpu(const struct net_device *dev, const struct sk_buff *skb)
{
	struct xps_dev_maps *maps = BPF_CORE_READ(dev, xps_maps[XPS_CPUS]);

	if (!maps)
		return false;
	__u32 cpu = BPF_CORE_READ(skb, sender_cpu) - 1;
	__u32 nr_ids = BPF_CORE_READ(maps, nr_ids);
	__s16 num_tc = BPF_CORE_READ(maps, num_tc);

	if (cpu >= nr_ids || num_tc != 1 || BPF_CORE_READ(dev, num_tc))
		return false; /* traffic classes: which class's map applies is not worked out here */
	struct xps_map *map = NULL;
	bpf_probe_read_kernel(&map, sizeof(map), (void *)maps + bpf_core_field_offset(maps->attr_map) +
							 (__u64)cpu * sizeof(map));
	return map && BPF_CORE_READ(map, len) > 0;
}

static __always_inline void pick_exit(bool typed, struct net_device *dev, struct sk_buff *skb)
{
	__u32 zero = 0;
	struct pick_slot *s = bpf_map_lookup_elem(&pick_slots, &zero);

	if (!s || s->skb != (__u64)skb || !dev)
		return;
	__u32 real = KREAD(typed, dev, real_num_tx_queues);
	__u8 selector = PICK_SOCKET;

	if (s->old_queue == NO_QUEUE_MAPPING || s->ooo_okay || s->old_queue >= real)
		selector = xps_maps_cpu(dev, skb) ? PICK_XPS : PICK_HASH;
	s->selector = selector;
	struct if_value *iv = if_counts_for(typed, netns_of_dev(typed, dev), dev);
	if (iv && selector < PICK_MAX)
		iv->picks[selector]++;
}

SEC("fentry/netdev_pick_tx")
int BPF_PROG(pick_tx_fentry, struct net_device *dev, struct sk_buff *skb)
{
	pick_entry(true, dev, skb);
	return 0;
}

SEC("fexit/netdev_pick_tx")
int BPF_PROG(pick_tx_fexit, struct net_device *dev, struct sk_buff *skb)
{
	pick_exit(true, dev, skb);
	return 0;
}

SEC("kprobe/netdev_pick_tx")
int BPF_KPROBE(pick_tx_kprobe, struct net_device *dev, struct sk_buff *skb)
{
	pick_entry(false, dev, skb);
	return 0;
}

/* A kretprobe has no arguments: the entry's slot gives them. Nothing else picks on this CPU
 * between the two: netdev_pick_tx runs with bottom halves off and calls nothing that transmits. */
SEC("kretprobe/netdev_pick_tx")
int BPF_KRETPROBE(pick_tx_kretprobe)
{
	__u32 zero = 0;
	struct pick_slot *s = bpf_map_lookup_elem(&pick_slots, &zero);

	if (!s)
		return 0;
	pick_exit(false, (struct net_device *)s->dev, (struct sk_buff *)s->skb);
	return 0;
}

/* kernel_stats mode: each connected TCP socket's current transmit queue, as the kernel
 * records it in the socket (sk_tx_queue_mapping, set by netdev_pick_tx when it picks a queue
 * for the socket's packets), and the interface of its cached route, walked each collection in
 * each namespace. No program on the packet path: a flow that changed queue twice between two
 * walks shows one change, or none. */
struct flow_walk_record {
	struct flow flow;
	__u32 netns;
	__u32 ifindex;
	__u16 queue;
	__u16 _pad;
	__u32 _pad2;
};

const struct flow_walk_record *unused_flow_walk_record __attribute__((unused));

/* The transmit queue the kernel recorded in a socket and the interface of its cached route;
 * false when it has not both. */
static __always_inline bool sock_tx_queue(const struct sock *sk, __u16 *queue, __u32 *ifindex)
{
	*queue = sk->__sk_common.skc_tx_queue_mapping;
	if (*queue == NO_QUEUE_MAPPING)
		return false;
	/* The cached route is an RCU pointer: probe reads. */
	struct dst_entry *dst = BPF_CORE_READ(sk, sk_dst_cache);
	if (!dst)
		return false;
	*ifindex = BPF_CORE_READ(dst, dev, ifindex);
	return true;
}

SEC("iter/tcp")
int txq_flow_walk(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = iter_tcp_sock(ctx);
	if (!tp)
		return 0;
	struct sock *sk = (struct sock *)tp;
	__u8 state = sk->__sk_common.skc_state;
	if (state == TCP_LISTEN || state == TCP_CLOSE || state == TCP_SYN_SENT)
		return 0;
	struct flow_walk_record r = {};
	if (!sock_tx_queue(sk, &r.queue, &r.ifindex))
		return 0;
	r.netns = netns_of_sock(true, sk);
	flow_from_sock(true, &r.flow, sk);
	r.flow.l4proto = IPPROTO_TCP;
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

/* A connection's queue when it closes, for the next walk: a connection that changed queue
 * after the last walk and closed before the next still counts its change. Written at the
 * close (a rare event per connection), read and emptied by user space at each walk. */
struct closed_flow_key {
	struct flow flow;
	__u32 netns;
	__u32 _pad;
};

struct closed_flow_value {
	__u32 ifindex;
	__u16 queue;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct closed_flow_key);
	__type(value, struct closed_flow_value);
} closed_flows SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(txq_flow_closed, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate != TCP_CLOSE || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct closed_flow_value v = {};
	if (!sock_tx_queue(sk, &v.queue, &v.ifindex))
		return 0;
	struct closed_flow_key k = {.netns = netns_of_sock(true, sk)};
	flow_from_sock(true, &k.flow, sk);
	k.flow.l4proto = IPPROTO_TCP;
	bpf_map_update_elem(&closed_flows, &k, &v, BPF_ANY);
	return 0;
}
