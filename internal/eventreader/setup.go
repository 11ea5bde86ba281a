package eventreader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Events is how a family's sampled events leave the kernel: the rate limit and ring buffer
// that bpf/headers/common.h declares for every family (event_rate_per_sec, event_burst,
// event_refill_cap_ns, event_kinds_enabled, ringbuf_wakeup_bytes, and the events map).
type Events struct {
	// PerSecond and Burst rate-limit events per CPU and event kind; 0 turns events off.
	PerSecond, Burst uint32
	// Kinds is how many event kinds the family has, if it declares event_kinds_enabled (0
	// otherwise); Disabled are the kinds not to sample, each below Kinds.
	Kinds    int
	Disabled []uint32
	// RingBufferBytes sizes the events map; WakeupBytes is the backlog that wakes the reader.
	RingBufferBytes, WakeupBytes uint32
}

// KindNumbers converts a family's event kinds to the numbers Events.Disabled takes.
func KindNumbers[K ~uint32](kinds []K) []uint32 {
	out := make([]uint32, len(kinds))
	for i, k := range kinds {
		out[i] = uint32(k)
	}
	return out
}

// eventsMap is the ring buffer's name in every family's object.
const eventsMap = "events"

// Configure writes e into spec's rate limiter variables and sizes its events map.
func Configure(spec *ebpf.CollectionSpec, e Events) error {
	rate, burst := uint64(e.PerSecond), max(uint64(e.Burst), 1)
	refill := uint64(0)
	if rate > 0 {
		// A quiet CPU refills its whole burst in this long.
		refill = burst * uint64(time.Second) / rate
	}
	vars := map[string]any{
		"event_rate_per_sec":   rate,
		"event_burst":          burst,
		"event_refill_cap_ns":  refill,
		"ringbuf_wakeup_bytes": uint64(e.WakeupBytes),
	}
	if e.Kinds > 0 {
		enabled := uint32(1)<<e.Kinds - 1
		for _, k := range e.Disabled {
			enabled &^= 1 << k
		}
		vars["event_kinds_enabled"] = enabled
	}
	for name, v := range vars {
		variable, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("variable %s: not in the object", name)
		}
		if err := variable.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	m, ok := spec.Maps[eventsMap]
	if !ok {
		return fmt.Errorf("map %s: not in the object", eventsMap)
	}
	m.MaxEntries = e.RingBufferBytes
	return nil
}

// Reader drains one family's events map on its own goroutine.
type Reader struct {
	rd   *ringbuf.Reader
	done chan struct{}
}

// Start reads m, decoding each record with decode and passing batches to sink (nil to count
// only), until Close.
func Start[T any](m *ebpf.Map, flush time.Duration, decode func([]byte) (T, bool), sink func([]T)) (*Reader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("ring buffer reader: %w", err)
	}
	r := &Reader{rd: rd, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		Run(rd, flush, decode, sink)
	}()
	return r, nil
}

// AvailableBytes is how much the kernel has written that the reader has not read yet.
func (r *Reader) AvailableBytes() int { return r.rd.AvailableBytes() }

// Close stops the reader after it has delivered what it read; nil-safe and idempotent.
func (r *Reader) Close() error {
	if r == nil || r.rd == nil {
		return nil
	}
	err := r.rd.Close()
	<-r.done
	r.rd = nil
	if errors.Is(err, ringbuf.ErrClosed) {
		return nil
	}
	return err
}
