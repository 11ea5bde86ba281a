/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by every tcpack probe family: the flow tuple, netns lookups, packet parsing,
 * per-CPU event rate limiting and batched ring-buffer submission. */
#ifndef TCPACK_COMMON_H
#define TCPACK_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define NSEC_PER_SEC 1000000000ULL
#define EEXIST 17

/* KREAD reads a kernel field. Where the verifier knows the pointer's BTF type (tp_btf, fentry)
 * it is a plain CO-RE load; elsewhere (raw_tp, kprobe) a probe read, ~20 ns each, which made
 * the kfree_skb program cost ~490 ns per drop when it used probe reads only. `typed` is always
 * a literal passed down always-inline calls, so clang drops the other branch before the
 * verifier sees it. */
#define KREAD(typed, src, ...) ((typed) ? ___arrow(src, __VA_ARGS__) : BPF_CORE_READ(src, __VA_ARGS__))

/* One tracepoint body, two programs: tp_btf (typed: plain loads) where the kernel has BTF for
 * the tracepoint, raw_tp (probe reads) otherwise; the loader keeps whichever attaches. The
 * argument list goes in ARGS() so its commas survive the macro. */
#define TCPACK_TRACEPOINT(tp, name, args, body)                                           \
	SEC("tp_btf/" tp) int BPF_PROG(name##_btf, args) { const bool typed = true; body }  \
	SEC("raw_tp/" tp) int BPF_PROG(name##_raw, args) { const bool typed = false; body }
#define ARGS(...) __VA_ARGS__

enum direction {
	DIRECTION_UNKNOWN = 0,
	DIRECTION_RECEIVE = 1,
	DIRECTION_TRANSMIT = 2,
};

enum tuple_source {
	TUPLE_NONE = 0,
	TUPLE_PACKET = 1,
	TUPLE_SOCKET = 2,
};

/* A flow as seen from this host: local and peer, whichever way the packet went. */
struct flow {
	__u8 local_addr[16];
	__u8 peer_addr[16];
	__u16 local_port; /* host order */
	__u16 peer_port;  /* host order */
	__u16 l3proto;    /* ETH_P_IP, ETH_P_IPV6, 0 when unknown */
	__u8 l4proto;     /* IPPROTO_* */
	__u8 direction;   /* enum direction */
	__u8 source;      /* enum tuple_source */
	__u8 _pad[3];
};

/* Knobs the loader rewrites before load (libbpf-tools style), shared by every family. */
const volatile __u64 event_rate_per_sec = 100;     /* per CPU and event kind */
const volatile __u32 event_kinds_enabled = ~0U;    /* bit per event kind; 0 bits cost nothing */
const volatile __u64 event_burst = 100;            /* tokens a quiet CPU may save up */
const volatile __u64 event_refill_cap_ns = NSEC_PER_SEC; /* burst * 1e9 / rate: a full refill */
const volatile __u64 ringbuf_wakeup_bytes = 65536; /* wake the reader only above this backlog */

/* Token bucket in nano-tokens so refills stay integer: one event costs NSEC_PER_SEC. */
struct event_bucket {
	__u64 tokens;
	__u64 last_ns;
};

static __always_inline bool take_event_token(struct event_bucket *b)
{
	if (!b || !event_rate_per_sec)
		return false;
	__u64 now = bpf_ktime_get_ns();
	__u64 elapsed = now - b->last_ns;
	__u64 full = event_burst * NSEC_PER_SEC;

	b->last_ns = now;
	if (elapsed >= event_refill_cap_ns) {
		b->tokens = full;
	} else {
		b->tokens += elapsed * event_rate_per_sec;
		if (b->tokens > full)
			b->tokens = full;
	}
	if (b->tokens < NSEC_PER_SEC)
		return false;
	b->tokens -= NSEC_PER_SEC;
	return true;
}

/* A wakeup per record costs ~6 us here (notes/kernel.md): only wake the reader once a batch
 * is pending; it also polls with a deadline, so a lone record is never stranded. */
static __always_inline void submit_batched(void *ringbuf, void *record)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(ringbuf, BPF_RB_AVAIL_DATA) >= ringbuf_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(record, flags);
}

static __always_inline void count_in(void *percpu_array, __u32 index)
{
	__u64 *c = bpf_map_lookup_elem(percpu_array, &index);

	if (c)
		(*c)++;
}

static __always_inline __u32 netns_of_dev(bool typed, const struct net_device *dev)
{
	return dev ? KREAD(typed, dev, nd_net.net, ns.inum) : 0;
}

static __always_inline __u32 netns_of_sock(bool typed, const struct sock *sk)
{
	return sk ? KREAD(typed, sk, __sk_common.skc_net.net, ns.inum) : 0;
}

/* The full TCP socket an iter/tcp walk is at; NULL for request and timewait sockets. */
static __always_inline struct tcp_sock *iter_tcp_sock(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	return skc ? bpf_skc_to_tcp_sock(skc) : NULL;
}

/* Fill the flow from the socket: valid for full, request and timewait sockets alike
 * because it reads sock_common only. */
static __always_inline void flow_from_sock(bool typed, struct flow *f, const struct sock *sk)
{
	__u16 family = KREAD(typed, sk, __sk_common.skc_family);

	f->local_port = KREAD(typed, sk, __sk_common.skc_num);
	f->peer_port = bpf_ntohs(KREAD(typed, sk, __sk_common.skc_dport));
	if (!f->local_port) {
		/* A socket moved to TCP_CLOSE has given its port back (inet_put_port zeroes
		 * skc_num) by the time tcp_disconnect sends its reset; inet_sport still holds it.
		 * Only full sockets reach here: request and timewait sockets keep skc_num. It lies
		 * beyond struct sock, so it is always a probe read. */
		f->local_port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	}
	if (family == AF_INET) {
		__u32 local = KREAD(typed, sk, __sk_common.skc_rcv_saddr);
		__u32 peer = KREAD(typed, sk, __sk_common.skc_daddr);

		__builtin_memcpy(f->local_addr, &local, 4);
		__builtin_memcpy(f->peer_addr, &peer, 4);
		f->l3proto = ETH_P_IP;
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&f->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&f->peer_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		f->l3proto = ETH_P_IPV6;
	}
	f->source = TUPLE_SOCKET;
}

/* Since 6.2: a typed, read-only view of any kernel address, which the verifier turns into a
 * plain load guarded by the exception table instead of a helper call (~25 ns less per packet
 * on this project's VMs). Weak: on older kernels the loader leaves it unresolved and the
 * branch that uses it is dead code the verifier never walks. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#define tcpack_ksym_exists(sym) (!!(sym))

/* Addresses, ports and protocol of an IPv4 or IPv6 packet. */
struct ip_tuple {
	__u8 src[16]; /* IPv4 in the first 4 bytes, the rest 0 */
	__u8 dst[16];
	__be16 sport; /* network order; 0 when not TCP/UDP or not the first fragment */
	__be16 dport;
	__u8 l4proto;
	__u8 _pad[3];
} __attribute__((aligned(8)));

/* read_ip_tuple with plain loads through bpf_rdonly_cast (typed programs on 6.2+): no helper
 * call per header. */
static __always_inline bool read_ip_tuple_cast(const unsigned char *l3, __u16 proto, struct ip_tuple *t)
{
	__u32 l4off = 0;

	if (proto == ETH_P_IP) {
		struct iphdr *ip = bpf_rdonly_cast(l3, bpf_core_type_id_kernel(struct iphdr));

		if (BPF_CORE_READ_BITFIELD(ip, version) != 4)
			return false;
		__u32 saddr = ip->saddr, daddr = ip->daddr;
		__builtin_memcpy(t->src, &saddr, 4);
		__builtin_memcpy(t->dst, &daddr, 4);
		t->l4proto = ip->protocol;
		if (!(ip->frag_off & bpf_htons(0x1fff))) /* else not the first fragment: no L4 header */
			l4off = BPF_CORE_READ_BITFIELD(ip, ihl) * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = bpf_rdonly_cast(l3, bpf_core_type_id_kernel(struct ipv6hdr));
		__u32 *src = (__u32 *)t->src, *dst = (__u32 *)t->dst;

		if (BPF_CORE_READ_BITFIELD(ip6, version) != 6)
			return false;
		/* 32-bit loads: the verifier allows no load wider than the array element. */
		for (int i = 0; i < 4; i++) {
			src[i] = ip6->saddr.in6_u.u6_addr32[i];
			dst[i] = ip6->daddr.in6_u.u6_addr32[i];
		}
		t->l4proto = ip6->nexthdr;
		l4off = sizeof(struct ipv6hdr);
	} else {
		return false;
	}
	if (l4off && (t->l4proto == IPPROTO_TCP || t->l4proto == IPPROTO_UDP)) {
		/* TCP and UDP both start with the two ports. */
		struct udphdr *uh = bpf_rdonly_cast(l3 + l4off, bpf_core_type_id_kernel(struct udphdr));

		t->sport = uh->source;
		t->dport = uh->dest;
	}
	return true;
}

/* Read the IP and L4 headers of a packet whose network header is at l3 in kernel memory;
 * proto is the ethertype (host order). Shared by every family that parses packets at
 * different layers: each knows where its layer keeps the network header.
 * IPv6 extension headers are not walked: l4proto is the first next-header. */
static __always_inline bool read_ip_tuple(bool typed, const unsigned char *l3, __u16 proto, struct ip_tuple *t)
{
	if (typed && tcpack_ksym_exists(bpf_rdonly_cast))
		return read_ip_tuple_cast(l3, proto, t);

	/* One probe read takes the ports too when they follow a 20-byte IPv4 header or the IPv6
	 * header: a helper call is most of what parsing costs, and footprint parses every packet
	 * at every layer. The 4 bytes past a short packet's end are still skb memory (the linear
	 * buffer ends in skb_shared_info) and only read as ports for TCP and UDP. */
	__be16 ports[2] = {};
	__u32 l4off;

	if (proto == ETH_P_IP) {
		struct {
			struct iphdr ip;
			__be16 ports[2];
		} h;

		if (bpf_probe_read_kernel(&h, sizeof(h), l3) || h.ip.version != 4)
			return false;
		__builtin_memcpy(t->src, &h.ip.saddr, 4);
		__builtin_memcpy(t->dst, &h.ip.daddr, 4);
		t->l4proto = h.ip.protocol;
		l4off = h.ip.ihl * 4;
		if (h.ip.frag_off & bpf_htons(0x1fff))
			l4off = 0; /* not the first fragment: no L4 header */
		if (l4off == sizeof(h.ip)) {
			ports[0] = h.ports[0];
			ports[1] = h.ports[1];
		} else if (l4off && (t->l4proto == IPPROTO_TCP || t->l4proto == IPPROTO_UDP)) {
			bpf_probe_read_kernel(ports, sizeof(ports), l3 + l4off);
		}
	} else if (proto == ETH_P_IPV6) {
		struct {
			struct ipv6hdr ip6;
			__be16 ports[2];
		} h;

		if (bpf_probe_read_kernel(&h, sizeof(h), l3) || h.ip6.version != 6)
			return false;
		__builtin_memcpy(t->src, &h.ip6.saddr, 16);
		__builtin_memcpy(t->dst, &h.ip6.daddr, 16);
		t->l4proto = h.ip6.nexthdr;
		ports[0] = h.ports[0];
		ports[1] = h.ports[1];
	} else {
		return false;
	}

	if (t->l4proto == IPPROTO_TCP || t->l4proto == IPPROTO_UDP) {
		t->sport = ports[0];
		t->dport = ports[1];
	}
	return true;
}

/* Wire packets in the skb, as qdisc_bstats_update counts them: gso_segs for a GSO or GRO-merged
 * skb, else 1.
 * skb_shinfo lies at head + end, past what BTF types: a probe read, one for both fields,
 * which sit side by side (gso_size, gso_segs) in every kernel's skb_shared_info. */
static __always_inline __u32 skb_segs(bool typed, const struct sk_buff *skb)
{
	unsigned char *head = KREAD(typed, skb, head);
	struct skb_shared_info *shinfo = (void *)(head + KREAD(typed, skb, end));
	__u16 gso[2] = {};

	if (typed && tcpack_ksym_exists(bpf_rdonly_cast)) {
		struct skb_shared_info *si =
			bpf_rdonly_cast(shinfo, bpf_core_type_id_kernel(struct skb_shared_info));

		if (!si->gso_size)
			return 1;
		return si->gso_segs ? si->gso_segs : 1;
	}
	if (bpf_core_field_offset(shinfo->gso_segs) != bpf_core_field_offset(shinfo->gso_size) + 2) {
		if (!BPF_CORE_READ(shinfo, gso_size))
			return 1;
		__u16 segs = BPF_CORE_READ(shinfo, gso_segs);
		return segs ? segs : 1;
	}
	bpf_probe_read_kernel(gso, sizeof(gso), &shinfo->gso_size);
	if (!gso[0])
		return 1;
	return gso[1] ? gso[1] : 1;
}

/* Parse the IP and L4 headers of the skb. skb_iif is set only when the packet arrived on an
 * interface (__netif_receive_skb_core), which tells whether the source is the peer or us. */
static __always_inline bool flow_from_skb(bool typed, struct flow *f, const struct sk_buff *skb)
{
	unsigned char *head = KREAD(typed, skb, head);
	__u16 nh = KREAD(typed, skb, network_header);
	__u16 proto = bpf_ntohs(KREAD(typed, skb, protocol));
	struct ip_tuple t = {};

	if (nh == (__u16)~0U || !head)
		return false;
	if (!read_ip_tuple(typed, head + nh, proto, &t))
		return false;

	f->l3proto = proto;
	f->l4proto = t.l4proto;
	f->source = TUPLE_PACKET;
	if (KREAD(typed, skb, skb_iif)) {
		f->direction = DIRECTION_RECEIVE;
		__builtin_memcpy(f->local_addr, t.dst, 16);
		__builtin_memcpy(f->peer_addr, t.src, 16);
		f->local_port = bpf_ntohs(t.dport);
		f->peer_port = bpf_ntohs(t.sport);
	} else {
		f->direction = DIRECTION_TRANSMIT;
		__builtin_memcpy(f->local_addr, t.src, 16);
		__builtin_memcpy(f->peer_addr, t.dst, 16);
		f->local_port = bpf_ntohs(t.sport);
		f->peer_port = bpf_ntohs(t.dport);
	}
	return true;
}

/* TCP state of a socket, or 0 when it is not a TCP socket. Request and timewait sockets
 * only have sock_common, so sk_protocol is read only for full sockets. */
static __always_inline __u8 tcp_state_of(bool typed, const struct sock *sk)
{
	if (!sk)
		return 0;
	__u8 state = KREAD(typed, sk, __sk_common.skc_state);
	if (state == TCP_NEW_SYN_RECV || state == TCP_TIME_WAIT)
		return state;
	if (KREAD(typed, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return state;
}

#endif /* TCPACK_COMMON_H */
