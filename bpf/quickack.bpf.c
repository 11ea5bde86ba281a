// SPDX-License-Identifier: GPL-2.0
/* Forced quick ACK: make the sockets a user names acknowledge every segment at once,
 * without a kernel module and without touching the application.
 *
 * bpf_setsockopt(TCP_QUICKACK) does not exist, so the forcing is indirect (notes/kernel.md):
 *   - route mode: stamp SO_MARK on the socket; user space installs `ip rule fwmark M lookup T`
 *     and mirrors the routes into table T with `quickack 1`, so the socket's next route lookup
 *     caches RTAX_QUICKACK (icsk_ack.dst_quick_ack) and every ACK leaves at once;
 *   - bounded mode: TCP_BPF_DELACK_MAX at its minimum (2 jiffies), for hosts without policy
 *     routing. Delayed ACKs still happen, but wait at most that long.
 * Sockets are chosen at establishment (sock_ops), when already open at start (iter/tcp), or
 * when the application opts in with setsockopt(TCP_QUICKACK, 3) (cgroup/setsockopt). */
#include "common.h"
#include "selector.h"

char LICENSE[] SEC("license") = "GPL";

#define SOL_SOCKET 1
#define SO_MARK 36
#define SOL_TCP 6
#define TCP_QUICKACK 12
#define TCP_BPF_DELACK_MAX 1003

#define MAX_TARGETS 256

enum mechanism {
	MECHANISM_MARK = 1,       /* SO_MARK -> policy table with quickack 1 */
	MECHANISM_DELACK_MAX = 2, /* TCP_BPF_DELACK_MAX */
};

enum force_event_kind {
	FORCE_APPLIED = 1,
	FORCE_RELEASED = 2,
	FORCE_REFUSED = 3,
};

/* Why a socket that matched a target was not forced. */
enum refusal {
	REFUSAL_NONE = 0,
	/* A loopback or local peer is routed by the `local` table (rule 0) before any fwmark
	 * rule: the mark would change nothing. */
	REFUSAL_LOCAL_PEER = 1,
	REFUSAL_HAS_MARK = 2,   /* the socket already carries someone else's mark */
	REFUSAL_SETSOCKOPT = 3, /* bpf_setsockopt failed: err says why */
	REFUSAL_MAX = 4,
};

enum origin {
	ORIGIN_ESTABLISHED = 1, /* sock_ops, at connection establishment */
	ORIGIN_EXISTING = 2,    /* iter/tcp, open before the receiver started */
	ORIGIN_OPT_IN = 3,      /* the application's setsockopt(TCP_QUICKACK, 3) */
	ORIGIN_RELEASE = 4,     /* iter/tcp at shutdown, undoing the forcing */
};

/* A named socket (quickack.sockets): addresses v4-mapped, a zero address and port on one
 * side for "any" (a listener named by pid+fd has no peer: its accepted sockets match). */
struct tuple_key {
	__u32 netns;
	__u16 local_port;
	__u16 peer_port;
	__u8 local_addr[16];
	__u8 peer_addr[16];
};

struct forced_sock {
	__u32 target;
	__u8 mechanism;
	__u8 origin;
	__u16 _pad;
};

struct target_stats {
	__u64 applied;
	__u64 released;
	__u64 refused[REFUSAL_MAX];
};

struct force_event {
	__u64 ts_ns;
	__u32 netns;
	__u32 target;
	__s32 err;
	__u8 kind;
	__u8 mechanism;
	__u8 refusal;
	__u8 origin;
	struct flow flow;
};

const struct force_event *unused_force_event __attribute__((unused));
const struct target_stats *unused_target_stats __attribute__((unused));
const struct tuple_key *unused_tuple_key __attribute__((unused));

/* MECHANISM_MARK or MECHANISM_DELACK_MAX. */
const volatile __u8 mechanism = MECHANISM_MARK;
const volatile __u32 force_mark = 0;
/* TCP_BPF_DELACK_MAX in us: forced (one jiffy + 1 us rounds up to the 2-jiffy minimum) and
 * the kernel default (TCP_DELACK_MAX, 200 ms) it is given back at release. */
const volatile __s32 delack_max_forced_us = 4001;
const volatile __s32 delack_max_default_us = 200000;
/* Target id of the opt-in convention; 0: the cgroup/setsockopt program lets everything by. */
const volatile __u32 opt_in_target = 0;
const volatile __s32 opt_in_value = 3;
/* Whether quickack.sockets named any: three hash lookups saved per connection otherwise. */
const volatile __u8 has_tuples = 0;

/* The cgroup/setsockopt hook only has the netns cookie (bpf_skc_to_tcp_sock is not
 * available there): cookie -> netns inode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u32);
} force_netns_cookies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tuple_key);
	__type(value, __u32);
} force_tuples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct forced_sock);
} forced_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct target_stats);
} target_counts SEC(".maps");

enum counter {
	COUNTER_RINGBUF_FULL = 0,
	COUNTER_MAX = 1,
};

/* Forcing events are rare (one per connection at most) and each one matters: no sampling,
 * but still batched wakeups. */
#define EVENTS_RINGBUF_BYTES (1 << 18)
#include "events.h"

static __always_inline struct target_stats *stats_of(__u32 target)
{
	return bpf_map_lookup_elem(&target_counts, &target);
}

static __always_inline void emit(__u8 kind, __u32 target, __u32 netns, const struct flow *f,
				 __u8 refusal, __s32 err, __u8 origin)
{
	struct force_event *e = reserve_record(sizeof(*e), COUNTER_RINGBUF_FULL);

	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->netns = netns;
	e->target = target;
	e->err = err;
	e->kind = kind;
	e->mechanism = mechanism;
	e->refusal = refusal;
	e->origin = origin;
	__builtin_memcpy(&e->flow, f, sizeof(*f));
	submit_batched(&events, e);
}

/* A named socket: the exact tuple; the local side alone, with its address or any address
 * (a listener bound to 0.0.0.0 or ::); the peer side alone. */
static __always_inline __u32 match_tuple(__u32 netns, const struct flow *f)
{
	struct tuple_key k = {.netns = netns, .local_port = f->local_port, .peer_port = f->peer_port};
	__u32 *t;

	v4_mapped(k.local_addr, f->local_addr, f->l3proto);
	v4_mapped(k.peer_addr, f->peer_addr, f->l3proto);
	t = bpf_map_lookup_elem(&force_tuples, &k);
	if (t)
		return *t;
	k.peer_port = 0;
	__builtin_memset(k.peer_addr, 0, 16);
	t = bpf_map_lookup_elem(&force_tuples, &k);
	if (t)
		return *t;
	__builtin_memset(k.local_addr, 0, 16);
	t = bpf_map_lookup_elem(&force_tuples, &k);
	if (t)
		return *t;
	k.local_port = 0;
	k.peer_port = f->peer_port;
	v4_mapped(k.peer_addr, f->peer_addr, f->l3proto);
	t = bpf_map_lookup_elem(&force_tuples, &k);
	return t ? *t : 0;
}

/* The first configured target the socket matches (local port, peer port, named socket,
 * peer CIDR), or 0. */
static __always_inline __u32 match_target(__u32 netns, const struct flow *f)
{
	__u32 id = select_by_port(netns, f->local_port, f->peer_port);

	if (id)
		return id;
	if (has_tuples) {
		id = match_tuple(netns, f);
		if (id)
			return id;
	}
	return select_by_peer(netns, f);
}

static __always_inline bool is_loopback(const __u8 *a, __u16 l3proto)
{
	if (l3proto == ETH_P_IP)
		return a[0] == 127;
	/* ::1 and v4-mapped 127/8 */
	bool zero10 = true;
	for (int i = 0; i < 10; i++)
		zero10 = zero10 && a[i] == 0;
	if (zero10 && a[10] == 0xff && a[11] == 0xff)
		return a[12] == 127;
	bool zero15 = zero10 && a[10] == 0 && a[11] == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0;
	return zero15 && a[15] == 1;
}

/* A peer the `local` table routes: loopback, or this host's own address (a connection to
 * one's own address picks it as the source too). */
static __always_inline bool local_peer(const struct flow *f)
{
	if (is_loopback(f->peer_addr, f->l3proto))
		return true;
	for (int i = 0; i < 16; i++)
		if (f->local_addr[i] != f->peer_addr[i])
			return false;
	return true;
}

/* Why the socket cannot be forced before trying, or REFUSAL_NONE. */
static __always_inline __u8 precheck(const struct flow *f, __u32 sk_mark)
{
	if (mechanism != MECHANISM_MARK)
		return REFUSAL_NONE;
	if (local_peer(f))
		return REFUSAL_LOCAL_PEER;
	if (sk_mark && sk_mark != force_mark)
		return REFUSAL_HAS_MARK;
	return REFUSAL_NONE;
}

/* Each program type hands bpf_setsockopt a different context, hence a macro. */
#define SET_FORCING(ctx)                                                                           \
	({                                                                                         \
		int __v = mechanism == MECHANISM_MARK ? (int)force_mark : delack_max_forced_us;     \
		mechanism == MECHANISM_MARK ? bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &__v, sizeof(__v)) \
					    : bpf_setsockopt(ctx, SOL_TCP, TCP_BPF_DELACK_MAX, &__v, sizeof(__v)); \
	})

/* Account for one forcing attempt: err is bpf_setsockopt's result, refusal the precheck's. */
static __always_inline void record(void *sk, __u32 netns, const struct flow *f, __u32 target, __u8 origin,
				   __u8 refusal, long err)
{
	struct target_stats *s = stats_of(target);

	if (refusal == REFUSAL_NONE && err)
		refusal = REFUSAL_SETSOCKOPT;
	if (refusal != REFUSAL_NONE) {
		if (s && refusal < REFUSAL_MAX)
			s->refused[refusal]++;
		emit(FORCE_REFUSED, target, netns, f, refusal, err, origin);
		return;
	}
	struct forced_sock *fs = bpf_sk_storage_get(&forced_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (fs) {
		fs->target = target;
		fs->mechanism = mechanism;
		fs->origin = origin;
	}
	if (s)
		s->applied++;
	emit(FORCE_APPLIED, target, netns, f, REFUSAL_NONE, 0, origin);
}

SEC("sockops")
int quickack_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return 1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	__u32 netns = netns_of_sock(true, (struct sock *)tp);
	if (!netns_selected(netns))
		return 1;
	struct flow f = {.l4proto = IPPROTO_TCP};
	flow_from_sock(true, &f, (struct sock *)tp);
	__u32 target = match_target(netns, &f);
	if (!target)
		return 1;
	__u8 refusal = precheck(&f, tp->inet_conn.icsk_inet.sk.sk_mark);
	long err = refusal ? 0 : SET_FORCING(skops);
	record(bsk, netns, &f, target, ORIGIN_ESTABLISHED, refusal, err);
	return 1;
}

/* 1 while the receiver shuts down: the iterator then undoes the forcing instead. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} iter_release SEC(".maps");

/* Runs in the netns whose sockets it walks (the iterator takes the reader's netns). */
SEC("iter/tcp")
int quickack_existing(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = iter_tcp_sock(ctx);
	if (!tp)
		return 0;
	struct sock *sk = (struct sock *)tp;
	__u32 netns = netns_of_sock(true, sk);
	struct flow f = {.l4proto = IPPROTO_TCP};
	flow_from_sock(true, &f, sk);

	__u32 zero = 0;
	__u32 *release = bpf_map_lookup_elem(&iter_release, &zero);
	if (release && *release) {
		struct forced_sock *fs = bpf_sk_storage_get(&forced_socks, sk, 0, 0);
		if (!fs)
			return 0;
		int v = 0;
		long err;
		if (fs->mechanism == MECHANISM_MARK)
			err = bpf_setsockopt(tp, SOL_SOCKET, SO_MARK, &v, sizeof(v));
		else {
			v = delack_max_default_us;
			err = bpf_setsockopt(tp, SOL_TCP, TCP_BPF_DELACK_MAX, &v, sizeof(v));
		}
		struct target_stats *s = stats_of(fs->target);
		if (s)
			s->released++;
		emit(FORCE_RELEASED, fs->target, netns, &f, REFUSAL_NONE, err, ORIGIN_RELEASE);
		bpf_sk_storage_delete(&forced_socks, sk);
		return 0;
	}

	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	if (!netns_selected(netns))
		return 0;
	if (bpf_sk_storage_get(&forced_socks, sk, 0, 0))
		return 0; /* forced at establishment already */
	__u32 target = match_target(netns, &f);
	if (!target)
		return 0;
	__u8 refusal = precheck(&f, sk->sk_mark);
	long err = refusal ? 0 : SET_FORCING(tp);
	record(sk, netns, &f, target, ORIGIN_EXISTING, refusal, err);
	return 0;
}

/* The opt-in convention: setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, 3) asks for quick ACKs for
 * the socket's whole life, not just until the next read. The kernel still sees a non-zero
 * TCP_QUICKACK, which is what it would have done anyway. */
SEC("cgroup/setsockopt")
int quickack_opt_in(struct bpf_sockopt *ctx)
{
	if (!opt_in_target || ctx->level != SOL_TCP || ctx->optname != TCP_QUICKACK)
		goto pass;
	int *val = ctx->optval;
	if ((void *)(val + 1) > ctx->optval_end || *val != opt_in_value)
		goto pass;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		goto pass;
	__u64 cookie = bpf_get_netns_cookie(ctx);
	__u32 *netns = bpf_map_lookup_elem(&force_netns_cookies, &cookie);
	if (!netns)
		goto pass;
	__u32 ns = *netns;
	if (bpf_sk_storage_get(&forced_socks, sk, 0, 0))
		goto pass;
	/* Every field is read once, unconditionally and at a constant offset: clang otherwise
	 * merges the IPv4 and IPv6 branches into pointer arithmetic on the bpf_sock, which the
	 * verifier refuses. */
	__u32 family = sk->family;
	__u32 l4 = sk->src_ip4, p4 = sk->dst_ip4;
	__u32 l6[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
	__u32 p6[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]};
	barrier_var(l4);
	barrier_var(p4);
	for (int i = 0; i < 4; i++) {
		barrier_var(l6[i]);
		barrier_var(p6[i]);
	}
	struct flow f = {.l4proto = IPPROTO_TCP, .local_port = sk->src_port,
			 .peer_port = bpf_ntohs(sk->dst_port), .source = TUPLE_SOCKET};
	if (family == AF_INET) {
		__builtin_memcpy(f.local_addr, &l4, 4);
		__builtin_memcpy(f.peer_addr, &p4, 4);
		f.l3proto = ETH_P_IP;
	} else {
		__builtin_memcpy(f.local_addr, l6, 16);
		__builtin_memcpy(f.peer_addr, p6, 16);
		f.l3proto = ETH_P_IPV6;
	}
	__u8 refusal = precheck(&f, sk->mark);
	long err = refusal ? 0 : SET_FORCING(sk);
	record(sk, ns, &f, opt_in_target, ORIGIN_OPT_IN, refusal, err);
pass:
	/* 1: let the kernel's own setsockopt run too. */
	return 1;
}

/* Forced sockets that close give their forcing back; only they have storage, so for every
 * other socket this costs one lookup per state change. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(quickack_closed, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate != TCP_CLOSE)
		return 0;
	struct forced_sock *fs = bpf_sk_storage_get(&forced_socks, (struct sock *)sk, 0, 0);
	if (!fs)
		return 0;
	struct flow f = {.l4proto = IPPROTO_TCP};
	flow_from_sock(true, &f, sk);
	struct target_stats *s = stats_of(fs->target);
	if (s)
		s->released++;
	emit(FORCE_RELEASED, fs->target, netns_of_sock(true, sk), &f, REFUSAL_NONE, 0, fs->origin);
	bpf_sk_storage_delete(&forced_socks, (struct sock *)sk);
	return 0;
}
