// SPDX-License-Identifier: GPL-2.0
/* ACK family, in two tiers.
 *
 * Counts, with no program on the packet path (always on): per (netns, service port, role),
 * the segments every socket sent and received, as the socket itself counts them (segs_out,
 * data_segs_out, data_segs_in), folded in by a walk of the family's socket storage each
 * collection and once more when the socket closes (inet_sock_set_state); and the ACKs the
 * delayed-ACK timer sent, seen at each timer expiry (the handler where fentry or kprobes
 * exist, else timer_expire_entry filtered to tcp_delack_timer). sock_ops runs once per
 * connection, at establishment, to give the socket its storage and its service port; an
 * iter/tcp walk at start does the same for sockets that were already open.
 *
 * Per segment (opt-in, per_segment): for the sockets in scope, every ACK this host sends,
 * how long the oldest unacknowledged data waited for it, and why it was sent when it was.
 * Without kprobes the decision points (__tcp_ack_snd_check, tcp_send_delayed_ack, ...) are
 * out of reach, so the family observes their outcome (notes/kernel.md, "Observing ACKs"):
 *   - sock_ops at establishment asks for the header-option callback, which then runs for
 *     every segment the socket transmits;
 *   - tp_btf/tcp_probe (start of tcp_rcv_established) timestamps data arrivals;
 *   - at each ACK the socket's icsk_ack state says which rule sent it, and its lock whether
 *     the application's own call (its read) sent it.
 * Where fentry or kprobes exist, tcp_send_delayed_ack is observed as well: __tcp_ack_snd_check
 * chose to delay the ACK (counted). */
#include "common.h"
#include "selector.h"

char LICENSE[] SEC("license") = "GPL";

#define SOL_SOCKET 1
#define SOL_TCP 6
#define TCP_FLAG_ACK 0x10
#define ICSK_ACK_TIMER 2
#define NSEC_PER_USEC 1000ULL

/* Why an ACK that acknowledged new data was sent when it was. */
enum ack_cause {
	CAUSE_PIGGYBACK = 0,  /* carried on a data segment */
	CAUSE_ROUTE = 1,      /* the route says quickack (icsk_ack.dst_quick_ack or the dst metric) */
	CAUSE_QUICK = 2,      /* quick-ACK mode: quota left and not pingpong */
	CAUSE_APP_READ = 3,   /* the application's read (tcp_cleanup_rbuf), sent with the socket owned */
	CAUSE_TIMER = 4,      /* the delayed-ACK timer fired */
	CAUSE_ARRIVAL = 5,    /* on data arrival: two full segments, out of order, ACK_NOW */
	CAUSE_MAX = 6,
};

#define HIST_BUCKETS 24 /* log2 microseconds: [0] < 1 us, [i] < 2^i us, [23] >= 4.2 s */

/* Whose port a socket's statistics go under: the listener's for a socket accepted here,
 * the peer's for one that connected out, so an ephemeral port never becomes a key. */
enum ack_role {
	ROLE_SERVER = 0,
	ROLE_CLIENT = 1,
};

struct ack_key {
	__u32 netns;
	__u16 server_port;
	__u8 role;
	__u8 _pad;
};

struct ack_stats {
	/* Counts, from the sockets' own counters (walk and close) and timer expiries. */
	__u64 segs_out;      /* every segment sent: data, pure ACKs, SYN, FIN, RST */
	__u64 data_segs_out; /* segments sent with data */
	__u64 data_segs_in;  /* segments received with data */
	__u64 forced_segs_out;      /* segs_out of sockets tcpack forces */
	__u64 forced_data_segs_out; /* data_segs_out of those */
	__u64 timer_acks;    /* ACKs the delayed-ACK timer sent (TcpExtDelayedACKs) */
	__u64 timer_deferred; /* expiries that found the application holding the socket */
	__u64 sockets_established; /* sockets counted from their establishment */
	__u64 sockets_existing;    /* sockets already open at the start, counted from then */
	/* Per segment, while those hooks are attached. */
	__u64 by_cause[CAUSE_MAX]; /* ACKs that acknowledged new data */
	__u64 other_acks;          /* pure ACKs with nothing new: window updates, duplicates */
	__u64 segs_acked;          /* data segments those ACKs covered */
	__u64 delay_sum_ns;
	__u64 delay_hist[HIST_BUCKETS];
	__u64 quota_spent; /* ACKs that used the last quick-ACK of the quota */
	__u64 forced;      /* ACKs sent by sockets the quickack family forces */
	__u64 delayed_decisions; /* tcp_send_delayed_ack calls: the kernel chose to delay */
};

/* Per-socket state, on every socket in scope. */
struct ack_sock {
	/* What the walk or the close has counted of the socket's own counters. */
	__u32 seen_segs_out;
	__u32 seen_data_segs_out;
	__u32 seen_data_segs_in;
	__u32 netns;
	__u32 stats_id; /* 1 + its key's index in ack_counts; 0: no room */
	__u8 live;      /* counted open in socks_in_scope until it closes */
	__u8 closed;    /* its last counts are in */
	/* Sampling windows: data arrived before this window opened, unseen by tcp_probe, so the
	 * socket's next ACK is not timed. */
	__u8 skip_next;
	__u8 _pad;
	/* Per segment. */
	__u64 first_unacked_ns; /* arrival of the oldest data not yet acknowledged */
	__u64 last_rx_ns;
	__u32 unacked;          /* data segments received since the last ACK */
	__u32 _pad2;
};

/* What the walk writes per socket for user space: the socket's quick-ACK mode, in the
 * kernel's order of precedence (tcp_in_quickack_mode), and whether tcpack forces it. */
enum ack_mode {
	MODE_ROUTE = 0,    /* the route says quickack */
	MODE_QUICK = 1,    /* quick ACKs left in the quota, not pingpong */
	MODE_PINGPONG = 2, /* interactive: ACKs wait to ride on the reply */
	MODE_DELAYED = 3,  /* quota spent: ACKs wait for a second segment, a read or the timer */
};

struct ack_walk_record {
	__u32 stats_id;
	__u8 mode;
	__u8 forced;
	__u16 _pad;
};

struct ack_event {
	__u64 ts_ns;
	__u64 delay_ns;
	__u32 netns;
	__u32 segs;
	__u8 cause;
	__u8 pending;
	__u8 quick;
	__u8 pingpong;
	__u8 dst_quick_ack;
	__u8 pure; /* 1: pure ACK, 0: carried on data */
	__u8 forced;
	__u8 _pad;
	__u32 ato_jiffies;
	struct flow flow;
};

const struct ack_key *unused_ack_key __attribute__((unused));
const struct ack_stats *unused_ack_stats __attribute__((unused));
const struct ack_event *unused_ack_event __attribute__((unused));
const struct ack_walk_record *unused_ack_walk_record __attribute__((unused));

/* Scope: with scope_all, every TCP socket. Else, with scope_by_netns, only sockets whose
 * network namespace the selector names (a sidecar watches its own pod); and with
 * scope_by_flow, only those the selector names by port or peer prefix (keyed by their netns
 * with scope_by_netns, else by netns 0). */
const volatile __u8 scope_all = 1;
const volatile __u8 scope_by_netns = 0;
const volatile __u8 scope_by_flow = 0;
/* How the quickack family marks the sockets it forces: SO_MARK in route mode (its
 * force_mark; 0 when it is off), a TCP_BPF_DELACK_MAX below the kernel's default in bounded
 * mode. The default is in jiffies here, as icsk_delack_max keeps it (HZ/5), where quickack's
 * delack_max_default_us is in us, as bpf_setsockopt takes it. */
const volatile __u32 force_mark = 0;
const volatile __u32 delack_max_default_jiffies = 0;
/* ack_ids' and ack_counts' max_entries, as user space sized them. */
const volatile __u32 max_keys = 4096;
/* Delayed-ACK events are sampled only above this delay. */
const volatile __u64 event_min_delay_ns = 10000000;
/* The per-segment tier: sock_ops asks in-scope sockets for the header-option callback. */
const volatile __u8 per_segment = 0;
/* attach: windows, the per-segment tier sampled: the header-option callback only while a
 * window is open (armed), asked for at establishment and by the walk that opens each window,
 * dropped by each socket at its first segment outside one. */
const volatile __u8 sample_windows = 0;
/* The address of tcp_delack_timer, the delayed-ACK timer's callback (from kallsyms), which
 * tells its expiries from every other timer's at timer_expire_entry. */
const volatile __u64 delack_timer_fn = 0;

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ack_sock);
} ack_socks SEC(".maps");

/* The socket whose delayed-ACK timer handler is running on this CPU and will send an ACK.
 * The handler runs with BH disabled (timer softirq, or tcp_release_cb under the socket
 * spinlock) and sends synchronously, so the sock_ops callback of that ACK runs on this CPU
 * before anything else can use the slot. A per-CPU slot rather than a flag in ack_socks:
 * kprobe programs have no sk_storage helpers. */
struct delack_firing {
	__u64 sk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct delack_firing);
} delack_firing SEC(".maps");

/* Which decision hooks attached, written by user space after the load (the sock_ops program
 * is loaded before anyone knows): with the timer handler hooked (fentry, kprobe), an ACK the
 * handler did not send is not a timer ACK, however it looks. At timer_expire_entry the ACKs
 * deferred to the socket's release go unmarked, so there the timing still decides. */
#define HOOKED_DELACK_TIMER 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} hooked SEC(".maps");

/* Statistics per (netns, service port, role). ack_ids gives each key an index into ack_counts
 * when its first socket is counted, and the socket keeps it in ack_socks: an ACK then costs
 * an array lookup, which the verifier inlines, instead of hashing its key (about 80 ns per
 * ACK on this project's VMs). Keys are never deleted; ack_next_id hands out the indexes, and
 * an index lost to two CPUs adding the same key at once stays unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ack_key);
	__type(value, __u32);
} ack_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ack_stats);
} ack_counts SEC(".maps");

/* The statistics index of every socket the family counts, by its address: the delayed-ACK
 * timer's programs find the socket only as an address (a timer_list inside it, or an
 * untyped kprobe argument), and sk_storage needs a socket the verifier trusts. Written at
 * establishment and by the walk at start, deleted at close. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} ack_sock_ids SEC(".maps");

/* Ports listened on, per netns, as the walk at start finds them (listeners come first in an
 * iter/tcp walk): a socket already open whose local port is one was accepted here. */
struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listen_key);
	__type(value, __u8);
} listen_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ack_next_id SEC(".maps");

enum counter {
	COUNTER_SAMPLED_OUT = 0,
	COUNTER_RINGBUF_FULL = 1,
	COUNTER_KEYS_FULL = 2,
	COUNTER_UNOBSERVED = 3, /* pure ACKs of in-scope sockets sent while the per-segment hooks were off */
	COUNTER_SOCKETS_FULL = 4, /* sockets not counted: no room in ack_sock_ids */
	COUNTER_TIMER_UNKNOWN = 5, /* timer ACKs of sockets the family has no record of (scope_all) */
	COUNTER_WINDOW_UNFLAGGED = 6, /* sockets a window's walk could not ask for the header-option callback */
	COUNTER_MAX = 7,
};

/* One event kind: a pure ACK that waited at least event_min_delay_ns. */
enum event_kind {
	EVENT_ACK_DELAYED = 0,
	EVENT_KIND_MAX = 1,
};

#define TCPACK_SAMPLED_EVENTS
#include "events.h"

/* With attach: on_traffic the per-segment hooks (tcp_probe, the delayed-ACK hooks) are
 * attached only while in-scope sockets come and go: socks_in_scope
 * counts those open (from establishment to close) and those ever opened, so that user space,
 * polling, also sees connections shorter than its poll. It attaches the hooks, then sets
 * armed; it clears armed before it detaches them after an idle spell. Two maps: user space
 * writes one, the kernel the other. */
enum socks_slot {
	SOCKS_OPEN = 0,
	SOCKS_OPENED = 1,
	SOCKS_SLOTS = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOCKS_SLOTS);
	__type(key, __u32);
	__type(value, __s64);
} socks_in_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} armed SEC(".maps");

/* Whether the per-segment hooks are attached and judging: always, on traffic while armed, in
 * windows while one is open. */
static __always_inline bool window_open(void)
{
	__u32 k = 0;
	__u32 *on = bpf_map_lookup_elem(&armed, &k);
	return on && *on;
}

static __always_inline bool in_scope(bool typed, __u16 local_port, __u16 peer_port, struct sock *sk)
{
	if (scope_all)
		return true;
	__u32 ns = 0;
	if (scope_by_netns) {
		ns = netns_of_sock(typed, sk);
		if (!netns_selected(ns))
			return false;
		if (!scope_by_flow)
			return true;
	}
	if (select_by_port(ns, local_port, peer_port))
		return true;
	if (!sk)
		return false;
	struct flow f = {};
	flow_from_sock(typed, &f, sk);
	return select_by_peer(ns, &f) != 0;
}

/* The key's index in ack_counts, plus 1; with create, a new key gets the next free one.
 * 0: not there, or no room (max_keys). */
static __always_inline __u32 stats_id_for(__u32 netns, __u16 server_port, __u8 role, bool create)
{
	struct ack_key key = {.netns = netns, .server_port = server_port, .role = role};
	__u32 *id = bpf_map_lookup_elem(&ack_ids, &key);

	if (id)
		return *id;
	if (!create)
		return 0;
	__u32 zero = 0;
	__u32 *next = bpf_map_lookup_elem(&ack_next_id, &zero);
	if (!next)
		return 0;
	__u32 taken = __sync_fetch_and_add(next, 1);
	if (taken >= max_keys)
		return 0;
	__u32 fresh = taken + 1;
	if (bpf_map_update_elem(&ack_ids, &key, &fresh, BPF_NOEXIST) == 0)
		return fresh;
	/* Another CPU added the key first (its index wins), or the map is full. */
	id = bpf_map_lookup_elem(&ack_ids, &key);
	return id ? *id : 0;
}

static __always_inline struct ack_stats *stats_of(__u32 stats_id)
{
	if (!stats_id) {
		count_in(&counters, COUNTER_KEYS_FULL);
		return NULL;
	}
	__u32 idx = stats_id - 1;
	return bpf_map_lookup_elem(&ack_counts, &idx);
}

/* Bucket i holds delays below 2^i us: floor(log2(us)) + 1, by binary search because BPF has
 * no count-leading-zeros instruction (6 steps instead of a 23-step loop). */
static __always_inline __u32 hist_bucket(__u64 delay_ns)
{
	/* Delays from 2^32 ns (4.3 s) fall in the last bucket (from 2^22 us, 4.2 s). Below, a
	 * multiply and a shift divide by 1000 exactly, at a fraction of a 64-bit division's cost:
	 * 274877907 = ceil(2^38 / 1000). */
	if (delay_ns >> 32)
		return HIST_BUCKETS - 1;
	__u64 us = (delay_ns * 274877907ULL) >> 38;
	__u32 log = 0;

	if (!us)
		return 0;
	if (us >> 16) { us >>= 16; log += 16; } /* us < 2^23 */
	if (us >> 8) { us >>= 8; log += 8; }
	if (us >> 4) { us >>= 4; log += 4; }
	if (us >> 2) { us >>= 2; log += 2; }
	if (us >> 1) log += 1;
	return log + 1 < HIST_BUCKETS ? log + 1 : HIST_BUCKETS - 1;
}

/* For the tests only, never attached: the bucket of a delay, run by BPF_PROG_TEST_RUN, so
 * that the bucket arithmetic is checked at every bound, also those no test traffic reaches
 * (a veth's delayed ACKs wait 40 ms, bounded by its tiny RTT). */
struct hist_bucket_args {
	__u64 delay_ns;
};

SEC("syscall")
int ack_hist_bucket(struct hist_bucket_args *args)
{
	return hist_bucket(args->delay_ns);
}

/* Kernels before icsk_ack.dst_quick_ack (6.1) look the route's quickack metric up at each
 * decision (tcp_in_quickack_mode: dst_metric(__sk_dst_get(sk), RTAX_QUICKACK)); read it the
 * same way. dst->_metrics is a pointer to u32 metrics whose low 2 bits are flags
 * (DST_METRICS_FLAGS). Probe reads: the cached dst is an RCU pointer. */
static __always_inline __u8 route_quickack(struct tcp_sock *tp)
{
	struct dst_entry *dst = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_dst_cache);
	unsigned long metrics;
	__u32 quickack = 0;

	if (!dst)
		return 0;
	metrics = BPF_CORE_READ(dst, _metrics) & ~3UL;
	if (!metrics)
		return 0;
	bpf_probe_read_kernel(&quickack, sizeof(quickack), (__u32 *)metrics + (RTAX_QUICKACK - 1));
	return quickack != 0;
}

/* Consumes this CPU's delayed-ACK slot: true if the segment being sent is the ACK of the
 * timer handler running now for this socket. */
static __always_inline bool sent_by_delack_timer(struct bpf_sock *bsk)
{
	__u32 k = 0;
	struct delack_firing *f = bpf_map_lookup_elem(&delack_firing, &k);

	if (!f || f->sk != (__u64)bsk)
		return false;
	f->sk = 0;
	return true;
}

/* Gives a socket its statistics and its storage. The seen_ counters are what is
 * already counted: zero for a socket counted from its establishment, its counters so far for
 * one a walk finds open and not yet counted. */
static __always_inline struct ack_sock *count_socket(struct sock *sk, __u32 netns, __u16 server_port, __u8 role,
						     struct tcp_sock *baseline)
{
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!as || as->stats_id)
		return as;
	as->netns = netns;
	as->stats_id = stats_id_for(netns, server_port, role, true);
	struct ack_stats *s = stats_of(as->stats_id);
	if (!s)
		return as;
	if (baseline) {
		as->seen_segs_out = baseline->segs_out;
		as->seen_data_segs_out = baseline->data_segs_out;
		as->seen_data_segs_in = baseline->data_segs_in;
		s->sockets_existing++;
	} else {
		s->sockets_established++;
	}
	__u64 addr = (__u64)sk;
	if (bpf_map_update_elem(&ack_sock_ids, &addr, &as->stats_id, BPF_ANY))
		count_in(&counters, COUNTER_SOCKETS_FULL);
	return as;
}

/* Adds what the socket sent and received since it was last counted. Both callers hold the
 * socket's lock (the walk: iter/tcp locks each full socket; the close: tcp_set_state runs
 * under it), so nothing is sent meanwhile and no two folds of one socket overlap. */
static __always_inline void fold_counts(struct ack_sock *as, struct tcp_sock *tp)
{
	struct ack_stats *s = stats_of(as->stats_id);
	if (!s)
		return;
	__u32 segs = tp->segs_out - as->seen_segs_out;
	__u32 data = tp->data_segs_out - as->seen_data_segs_out;
	s->segs_out += segs;
	s->data_segs_out += data;
	s->data_segs_in += tp->data_segs_in - as->seen_data_segs_in;
	as->seen_segs_out = tp->segs_out;
	as->seen_data_segs_out = tp->data_segs_out;
	as->seen_data_segs_in = tp->data_segs_in;
	bool forced = false;
	if (force_mark && tp->inet_conn.icsk_inet.sk.sk_mark == force_mark)
		forced = true;
	if (bpf_core_field_exists(tp->inet_conn.icsk_delack_max) && delack_max_default_jiffies &&
	    tp->inet_conn.icsk_delack_max < delack_max_default_jiffies)
		forced = true;
	if (forced) {
		s->forced_segs_out += segs;
		s->forced_data_segs_out += data;
	}
}

SEC("sockops")
int ack_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk = skops->sk;

	if (!bsk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		__u16 peer_port = bpf_ntohl(skops->remote_port);
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);

		if (!tp || !in_scope(true, skops->local_port, peer_port, (struct sock *)tp))
			return 1;
		bool passive = skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB;
		struct ack_sock *as = count_socket((struct sock *)tp, netns_of_sock(true, (struct sock *)tp),
						   passive ? skops->local_port : peer_port,
						   passive ? ROLE_SERVER : ROLE_CLIENT, NULL);
		if (!as || !per_segment)
			return 1;
		if (sample_windows) {
			if (window_open())
				bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
									 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
			return 1;
		}
		/* HDR_OPT_LEN_CB then runs for every segment this socket transmits, STATE_CB at
		 * each state change, which tells when it closes. */
		long err = bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
								    BPF_SOCK_OPS_STATE_CB_FLAG);
		__u32 open_slot = SOCKS_OPEN, opened_slot = SOCKS_OPENED;
		__s64 *open = bpf_map_lookup_elem(&socks_in_scope, &open_slot);
		__s64 *opened = bpf_map_lookup_elem(&socks_in_scope, &opened_slot);
		if (opened)
			__sync_fetch_and_add(opened, 1);
		/* Without STATE_CB its close would go unseen: then it is not counted open. */
		if (!err && open && !as->live) {
			as->live = 1;
			__sync_fetch_and_add(open, 1);
		}
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB: {
		if (skops->args[1] != BPF_TCP_CLOSE)
			return 1;
		struct ack_sock *as = bpf_sk_storage_get(&ack_socks, bsk, 0, 0);
		__u32 open_slot = SOCKS_OPEN;
		__s64 *open = bpf_map_lookup_elem(&socks_in_scope, &open_slot);
		if (as && as->live && open) {
			as->live = 0;
			__sync_fetch_and_add(open, -1);
		}
		return 1;
	}
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		break;
	default:
		return 1;
	}

	/* Also called from tcp_current_mss() with no packet: not a transmission. */
	if (skops->args[0] == BPF_WRITE_HDR_TCP_CURRENT_MSS)
		return 1;
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, bsk, 0, 0);
	if (!as)
		return 1;
	__u32 flags = skops->skb_tcp_flags;
	if (!(flags & TCP_FLAG_ACK))
		return 1;
	bool pure = skops->skb_len == 0 && flags == TCP_FLAG_ACK;
	if (skops->skb_len == 0 && !pure)
		return 1; /* FIN, RST: not what this family is about */
	if (!window_open()) {
		if (!sample_windows) {
			/* tcp_probe has not counted what this ACK acknowledges: no statistics. */
			if (pure)
				count_in(&counters, COUNTER_UNOBSERVED);
			as->unacked = 0;
			return 1;
		}
		/* The window closed: no more callbacks until the next one asks again. This ACK is
		 * still judged if it acknowledges data tcp_probe saw in the window: else no delay
		 * longer than what was left of the window would ever be measured. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		if (!as->unacked || as->skip_next) {
			as->unacked = 0;
			as->skip_next = 0;
			return 1;
		}
	}
	/* The handler sends nothing but a pure ACK, so data segments (a bulk sender's many)
	 * skip the lookup. */
	bool by_timer = pure && sent_by_delack_timer(bsk);
	if (as->skip_next) {
		/* It acknowledges data that arrived before the window: its delay is unknown. */
		as->skip_next = 0;
		as->unacked = 0;
		if (pure)
			count_in(&counters, COUNTER_UNOBSERVED);
		return 1;
	}

	if (!as->unacked) {
		/* A data segment with nothing to acknowledge (a request, a bulk write) costs only
		 * the storage lookup above. */
		if (pure) {
			struct ack_stats *s = stats_of(as->stats_id);
			if (s)
				s->other_acks++;
		}
		return 1;
	}
	struct ack_stats *s = stats_of(as->stats_id);
	if (!s)
		return 1;

	/* The header-option callback runs only for full TCP sockets. On 6.2+ a cast (no helper
	 * call) makes the pointer; its loads are guarded like a probe read's. */
	struct tcp_sock *tp;
	if (tcpack_ksym_exists(bpf_rdonly_cast))
		tp = bpf_rdonly_cast(bsk, bpf_core_type_id_kernel(struct tcp_sock));
	else
		tp = bpf_skc_to_tcp_sock(bsk);
	/* A data segment leaves through tcp_write_xmit or a retransmission, each of which
	 * refreshes TCP's clock (tcp_mstamp_refresh: ktime_get_ns) just before: the kernel stamps
	 * the segment with it. Reading it saves a clock read (about 80 ns here). A pure ACK's
	 * path refreshes nothing, so it reads the clock, as does any segment whose cached time
	 * would come before the data it acknowledges. */
	__u64 now = 0;
	if (tp && !pure && bpf_core_field_exists(tp->tcp_clock_cache))
		now = tp->tcp_clock_cache;
	if (now < as->first_unacked_ns)
		now = bpf_ktime_get_ns();
	__u64 delay = now - as->first_unacked_ns;
	__u8 pending = 0, quick = 0, pingpong = 0, dst_quick_ack = 0, owned = 0;
	__u32 ato = 0;
	if (tp) {
		pending = tp->inet_conn.icsk_ack.pending;
		quick = tp->inet_conn.icsk_ack.quick;
		pingpong = tp->inet_conn.icsk_ack.pingpong;
		owned = tp->inet_conn.icsk_inet.sk.sk_lock.owned != 0;
	}
	/* ato and the route's verdict only tell a pure ACK's cause and fill its event: a data
	 * segment (every request and response of an RR exchange) skips their reads. */
	if (tp && pure) {
		/* The 32-bit word after `retry` holds ato (a u32 before 6.x, then an 8-bit field of
		 * ato:8 | lrcv_flowlabel:20 | dst_quick_ack:1). BPF_CORE_READ_BITFIELD returned
		 * garbage for these under clang 14 + cilium/ebpf (ato 103 jiffies, dst_quick_ack
		 * always 1), so the word is read by hand from the CO-RE offset of `retry`; the kernel
		 * matrix checks the layout on every kernel. Delayed-ACK timeouts fit in 8 bits. */
		__u32 word = 0;
		bpf_probe_read_kernel(&word, sizeof(word), (void *)&tp->inet_conn.icsk_ack.retry + 1);
		ato = word & 0xff;
		/* Kernels that cache the route's quickack metric in the socket (6.18); on older
		 * ones (6.1) the route itself is read. */
		if (bpf_core_field_exists(tp->inet_conn.icsk_ack.dst_quick_ack))
			dst_quick_ack = (word >> 28) & 1;
		else
			dst_quick_ack = route_quickack(tp);
	}

	bool forced = false;
	if (tp) {
		if (force_mark && tp->inet_conn.icsk_inet.sk.sk_mark == force_mark)
			forced = true;
		if (bpf_core_field_exists(tp->inet_conn.icsk_delack_max) && delack_max_default_jiffies &&
		    tp->inet_conn.icsk_delack_max < delack_max_default_jiffies)
			forced = true;
	}

	__u32 k = 0;
	__u32 *hooks = pure ? bpf_map_lookup_elem(&hooked, &k) : NULL;
	bool timer_exact = hooks && (*hooks & HOOKED_DELACK_TIMER);

	__u8 cause;
	if (!pure)
		cause = CAUSE_PIGGYBACK;
	else if (by_timer)
		cause = CAUSE_TIMER;
	else if (dst_quick_ack)
		cause = CAUSE_ROUTE;
	else if (quick && !pingpong) /* quick is decremented after this ACK leaves */
		cause = CAUSE_QUICK;
	else if (!timer_exact && !(pending & ICSK_ACK_TIMER) && now - as->last_rx_ns >= 1000 * NSEC_PER_USEC)
		cause = CAUSE_TIMER; /* tcp_delack_timer_handler clears ICSK_ACK_TIMER, then ACKs */
	else if (owned)
		/* The socket's owner sends it from its own call: tcp_recvmsg's tcp_cleanup_rbuf, or
		 * data that arrived while it held the socket (backlog), which its read then takes.
		 * Arrivals in softirq and the timer handler run with the socket not owned; a timer
		 * deferred to release_sock is owned, hence the timer test first. */
		cause = CAUSE_APP_READ;
	else
		cause = CAUSE_ARRIVAL;

	s->by_cause[cause]++;
	s->segs_acked += as->unacked;
	s->delay_sum_ns += delay;
	s->delay_hist[hist_bucket(delay)]++;
	if (pure && quick == 1 && !pingpong && !dst_quick_ack)
		s->quota_spent++;
	if (forced)
		s->forced++;

	if (pure && event_rate_per_sec && delay >= event_min_delay_ns) {
		struct ack_event *e = reserve_event(EVENT_ACK_DELAYED, sizeof(*e));
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->ts_ns = now;
			e->delay_ns = delay;
			e->netns = as->netns;
			e->segs = as->unacked;
			e->cause = cause;
			e->pending = pending;
			e->quick = quick;
			e->pingpong = pingpong;
			e->dst_quick_ack = dst_quick_ack;
			e->pure = pure;
			e->forced = forced;
			e->ato_jiffies = ato;
			if (tp)
				flow_from_sock(true, &e->flow, (struct sock *)tp);
			e->flow.l4proto = IPPROTO_TCP;
			submit_batched(&events, e);
		}
	}
	as->unacked = 0;
	return 1;
}

/* tcp_probe fires at the start of tcp_rcv_established, fast path and slow path alike. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(ack_data_arrival, struct sock *sk, const struct sk_buff *skb)
{
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, sk, 0, 0);

	if (!as)
		return 0;
	/* tcp_skb_cb (skb->cb): seq == end_seq is no payload, no data to ACK. */
	__u32 seq[2] = {};
	if (tcpack_ksym_exists(bpf_rdonly_cast)) {
		struct tcp_skb_cb *cb =
			bpf_rdonly_cast((void *)skb->cb, bpf_core_type_id_kernel(struct tcp_skb_cb));
		seq[0] = cb->seq;
		seq[1] = cb->end_seq;
	} else {
		bpf_probe_read_kernel(seq, sizeof(seq), (void *)skb->cb);
	}
	if (seq[1] == seq[0])
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (!as->unacked)
		as->first_unacked_ns = now;
	/* In segments, as TCP_INFO's data_segs_in: GRO, and the backlog of a socket its owner
	 * holds (tcp_add_backlog), merge several into one skb, and tcp_probe sees it once. */
	as->unacked += skb_segs(true, skb);
	as->last_rx_ns = now;
	return 0;
}

/* The sockets sock_ops put in scope are those it asked header-option callbacks for: that
 * flag lives in tcp_sock, where kprobe programs can read it (sk_storage they cannot). */
static __always_inline struct tcp_sock *scoped_tcp_sock(bool typed, struct sock *sk)
{
	struct tcp_sock *tp = typed ? bpf_skc_to_tcp_sock(sk) : (struct tcp_sock *)sk;

	if (!tp || !(KREAD(typed, tp, bpf_sock_ops_cb_flags) & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG))
		return NULL;
	__u16 local = KREAD(typed, sk, __sk_common.skc_num);
	if (!in_scope(typed, local, bpf_ntohs(KREAD(typed, sk, __sk_common.skc_dport)), sk))
		return NULL;
	return tp;
}

/* tcp_send_delayed_ack: __tcp_ack_snd_check found no reason to ACK at once and arms the
 * timer (or, rarely, finds it about to expire and ACKs: still a decision to delay). */
static __always_inline void delayed_decision(bool typed, struct sock *sk)
{
	if (!scoped_tcp_sock(typed, sk))
		return;
	__u64 addr = (__u64)sk;
	__u32 *id = bpf_map_lookup_elem(&ack_sock_ids, &addr);
	struct ack_stats *s = id ? stats_of(*id) : NULL;
	if (s)
		s->delayed_decisions++;
}

SEC("fentry/tcp_send_delayed_ack")
int BPF_PROG(ack_delayed_fentry, struct sock *sk)
{
	delayed_decision(true, sk);
	return 0;
}

SEC("kprobe/tcp_send_delayed_ack")
int BPF_KPROBE(ack_delayed_kprobe, struct sock *sk)
{
	delayed_decision(false, sk);
	return 0;
}

/* Older kernels (6.1) keep the delayed-ACK deadline in icsk_ack.timeout; newer ones (6.18)
 * use the timer's own expiry (icsk_delack_timeout()), which the older ones set equal to it. */
struct inet_connection_sock___timeout {
	struct {
		unsigned long timeout;
	} icsk_ack;
} __attribute__((preserve_access_index));

/* Whether tcp_delack_timer_handler, entered now, sends an ACK: the socket is neither closed
 * nor listening, no SACK-compressed ACK is pending (newer kernels send that one instead),
 * the timer is armed and due, and an ACK is scheduled. The same tests, in the same order, as
 * the handler's before it counts LINUX_MIB_DELAYEDACKS. Always untyped: the timer's program
 * finds the socket only as an address. */
static __always_inline bool delack_handler_acks(struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);

	if (state == TCP_CLOSE || state == TCP_LISTEN)
		return false;
	if (bpf_core_field_exists(tp->compressed_ack) && BPF_CORE_READ(tp, compressed_ack))
		return false;
	__u8 pending = BPF_CORE_READ(tp, inet_conn.icsk_ack.pending);
	if ((pending & (ICSK_ACK_SCHED | ICSK_ACK_TIMER)) != (ICSK_ACK_SCHED | ICSK_ACK_TIMER))
		return false;
	unsigned long timeout;
	struct inet_connection_sock___timeout *old = (void *)tp;
	if (bpf_core_field_exists(old->icsk_ack.timeout))
		timeout = BPF_CORE_READ(old, icsk_ack.timeout);
	else
		timeout = BPF_CORE_READ(tp, inet_conn.icsk_delack_timer.expires);
	/* time_after(timeout, jiffies): the handler re-arms the timer instead */
	return (long)(bpf_jiffies64() - timeout) >= 0;
}

/* One delayed-ACK timer event for the socket at sk. from_timer: the timer callback is about
 * to run (timer_expire_entry), and defers the handler to the socket's release when the
 * application holds it; else the handler itself is entered (fentry, kprobe), on either path. */
static __always_inline void delack_expiry(struct sock *sk, bool from_timer)
{
	__u64 addr = (__u64)sk;
	__u32 *id = bpf_map_lookup_elem(&ack_sock_ids, &addr);
	struct ack_stats *s = id ? stats_of(*id) : NULL;

	if (from_timer && BPF_CORE_READ(sk, sk_lock.owned)) {
		/* tcp_delack_timer counts LINUX_MIB_DELAYEDACKLOCKED and leaves the ACK to
		 * tcp_release_cb, whose handler call no tracepoint shows. */
		__u8 pending = BPF_CORE_READ((struct tcp_sock *)sk, inet_conn.icsk_ack.pending);
		if (s && (pending & ICSK_ACK_TIMER))
			s->timer_deferred++;
		return;
	}
	if (!delack_handler_acks(sk))
		return;
	if (s)
		s->timer_acks++;
	else if (scope_all)
		count_in(&counters, COUNTER_TIMER_UNKNOWN);
	if (!per_segment || !scoped_tcp_sock(false, sk))
		return;
	/* Tells the per-segment tier's sock_ops that the pure ACK it is about to see on this
	 * CPU is the timer's. */
	__u32 k = 0;
	struct delack_firing *f = bpf_map_lookup_elem(&delack_firing, &k);
	if (f)
		f->sk = addr;
}

SEC("fentry/tcp_delack_timer_handler")
int BPF_PROG(ack_delack_timer_fentry, struct sock *sk)
{
	delack_expiry(sk, false);
	return 0;
}

SEC("kprobe/tcp_delack_timer_handler")
int BPF_KPROBE(ack_delack_timer_kprobe, struct sock *sk)
{
	delack_expiry(sk, false);
	return 0;
}

/* Every timer_list expiry on the host; the delayed-ACK timer is the one whose callback is
 * tcp_delack_timer, and its socket the inet_connection_sock the timer is embedded in. */
SEC("tp_btf/timer_expire_entry")
int BPF_PROG(ack_delack_timer_expiry, struct timer_list *timer)
{
	if (!delack_timer_fn || (__u64)timer->function != delack_timer_fn)
		return 0;
	__u64 icsk = (__u64)timer - bpf_core_field_offset(struct inet_connection_sock, icsk_delack_timer);
	delack_expiry((struct sock *)icsk, true);
	return 0;
}

/* The last counts of a socket, as it closes: whatever it sent and received since the last
 * walk would be lost with it otherwise. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ack_socket_closed, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate != TCP_CLOSE || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, (struct sock *)sk, 0, 0);
	if (!as || as->closed)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((struct sock *)sk);
	if (tp)
		fold_counts(as, tp);
	as->closed = 1;
	__u64 addr = (__u64)sk;
	bpf_map_delete_elem(&ack_sock_ids, &addr);
	return 0;
}

/* The kernel's quick-ACK mode of a socket now. */
static __always_inline __u8 ack_mode_of(struct tcp_sock *tp)
{
	__u8 dst_quick_ack;
	if (bpf_core_field_exists(tp->inet_conn.icsk_ack.dst_quick_ack)) {
		__u32 word = 0; /* see ack_sockops for why the bit is read by hand */
		bpf_probe_read_kernel(&word, sizeof(word), (void *)&tp->inet_conn.icsk_ack.retry + 1);
		dst_quick_ack = (word >> 28) & 1;
	} else {
		dst_quick_ack = route_quickack(tp);
	}
	if (dst_quick_ack)
		return MODE_ROUTE;
	if (tp->inet_conn.icsk_ack.pingpong)
		return MODE_PINGPONG;
	return tp->inet_conn.icsk_ack.quick ? MODE_QUICK : MODE_DELAYED;
}

/* The walk, each collection and once at the start, of one namespace's sockets (an iter/tcp
 * walk covers the namespace it was opened in). A socket the family counts gets what it
 * sent and received since folded in, and its quick-ACK mode written for user space. One it
 * does not count yet was open before the start (or before its namespace was first walked):
 * it gets its storage, counted from now. Listeners come first in the walk, so a socket
 * whose local port is listened on in its namespace was accepted there. */
SEC("iter/tcp")
int ack_walk(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = iter_tcp_sock(ctx);
	if (!tp)
		return 0;
	struct sock *sk = (struct sock *)tp;
	__u8 state = sk->__sk_common.skc_state;
	__u32 netns = netns_of_sock(true, sk);
	__u16 local = sk->__sk_common.skc_num;
	if (state == TCP_LISTEN) {
		struct listen_key lk = {.netns = netns, .port = local};
		__u8 one = 1;
		bpf_map_update_elem(&listen_ports, &lk, &one, BPF_ANY);
		return 0;
	}
	if (state == TCP_CLOSE || state == TCP_SYN_SENT || state == TCP_SYN_RECV)
		return 0;
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, sk, 0, 0);
	if (as) {
		if (as->closed)
			return 0;
		fold_counts(as, tp);
	} else {
		__u16 peer = bpf_ntohs(sk->__sk_common.skc_dport);
		if (!in_scope(true, local, peer, sk))
			return 0;
		struct listen_key lk = {.netns = netns, .port = local};
		bool accepted = bpf_map_lookup_elem(&listen_ports, &lk) != NULL;
		as = count_socket(sk, netns, accepted ? local : peer, accepted ? ROLE_SERVER : ROLE_CLIENT, tp);
		if (!as)
			return 0;
	}
	struct ack_walk_record r = {.stats_id = as->stats_id, .mode = ack_mode_of(tp)};
	if (force_mark && tp->inet_conn.icsk_inet.sk.sk_mark == force_mark)
		r.forced = 1;
	if (bpf_core_field_exists(tp->inet_conn.icsk_delack_max) && delack_max_default_jiffies &&
	    tp->inet_conn.icsk_delack_max < delack_max_default_jiffies)
		r.forced = 1;
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

/* The walk that opens a sampling window (attach: windows), in each namespace, after the
 * per-segment hooks attached and armed is set: every socket the family counts asks for the
 * header-option callback again (bpf_setsockopt of TCP_BPF_SOCK_OPS_CB_FLAGS, 6.12+; older
 * kernels refuse it, and there only connections established in a window are sampled). What
 * tcp_probe counted before this walk is forgotten, and a socket holding data it has not
 * acknowledged yet, which arrived unseen, does not time its next ACK. */
SEC("iter/tcp")
int ack_window_open(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = iter_tcp_sock(ctx);
	if (!tp)
		return 0;
	__u8 state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	if (state == TCP_LISTEN || state == TCP_CLOSE || state == TCP_SYN_SENT || state == TCP_SYN_RECV)
		return 0;
	struct ack_sock *as = bpf_sk_storage_get(&ack_socks, (struct sock *)tp, 0, 0);
	if (!as || as->closed || !as->stats_id)
		return 0;
	as->unacked = 0;
	as->skip_next = tp->rcv_nxt != tp->rcv_wup;
	int flags = tp->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
	if (bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags, sizeof(flags)))
		count_in(&counters, COUNTER_WINDOW_UNFLAGGED);
	return 0;
}
