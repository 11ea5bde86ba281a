/* SPDX-License-Identifier: GPL-2.0 */
/* Events: the maps and the reservation every family that sends records to user space
 * shares. Include it after the family's enum counter, which names COUNTER_MAX and
 * COUNTER_RINGBUF_FULL. A family that samples its events (token bucket per CPU and event
 * kind, see take_event_token) also defines TCPACK_SAMPLED_EVENTS, EVENT_KIND_MAX and
 * COUNTER_SAMPLED_OUT, and gives COUNTER_SAMPLED_OUT and COUNTER_RINGBUF_FULL one slot per
 * kind. User space sizes the ring buffer (eventreader.Configure). */
#ifndef TCPACK_EVENTS_H
#define TCPACK_EVENTS_H

#ifndef EVENTS_RINGBUF_BYTES
#define EVENTS_RINGBUF_BYTES (1 << 20)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_BYTES);
} events SEC(".maps");

/* A record of size bytes in the ring buffer, or NULL (counted in full_counter) when it has
 * no room. The caller fills it and sends it with submit_batched. */
static __always_inline void *reserve_record(__u32 size, __u32 full_counter)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		count_in(&counters, full_counter);
	return e;
}

#ifdef TCPACK_SAMPLED_EVENTS
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EVENT_KIND_MAX);
	__type(key, __u32);
	__type(value, struct event_bucket);
} event_buckets SEC(".maps");

/* A record for an event of kind, or NULL: when the kind is off (or no logs pipeline wants
 * it, which is not "suppressed": nothing asked for it), when this CPU's token bucket for
 * the kind is empty (COUNTER_SAMPLED_OUT + kind) or when the ring buffer is full
 * (COUNTER_RINGBUF_FULL + kind). */
static __always_inline void *reserve_event(__u32 kind, __u32 size)
{
	__u32 k = kind;

	if (!(event_kinds_enabled & (1U << kind)) || !event_rate_per_sec)
		return NULL;
	if (!take_event_token(bpf_map_lookup_elem(&event_buckets, &k))) {
		count_in(&counters, COUNTER_SAMPLED_OUT + kind);
		return NULL;
	}
	return reserve_record(size, COUNTER_RINGBUF_FULL + kind);
}
#endif

#endif
