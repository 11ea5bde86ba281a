package eventreader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Delivery is how a family's sampled events leave the kernel: the rate limit and ring buffer
// that bpf/headers/common.h and events.h declare for every family (event_rate_per_sec,
// event_burst, event_refill_cap_ns, ringbuf_wakeup_bytes, the events map), and the reader's
// deadline. Family configs embed it.
type Delivery struct {
	// EventsPerSecond is the sampled-event budget per CPU and event kind; 0 disables events.
	EventsPerSecond uint32
	// EventBurst is how many events a quiet CPU may emit at once.
	EventBurst uint32
	// RingBufferBytes is the event ring buffer size (a power of two, multiple of the page size).
	RingBufferBytes uint32
	// WakeupBytes: the kernel wakes the reader only once this much is pending.
	WakeupBytes uint32
	// FlushInterval is how long an event may wait in the ring buffer below WakeupBytes.
	FlushInterval time.Duration
}

// DefaultDelivery samples perSecond events per CPU and kind, burst at once, through the ring
// buffer every family has unless told otherwise.
func DefaultDelivery(perSecond, burst uint32) Delivery {
	return Delivery{EventsPerSecond: perSecond, EventBurst: burst,
		RingBufferBytes: 1 << 20, WakeupBytes: 64 << 10, FlushInterval: 200 * time.Millisecond}
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

// Configure writes d into spec's rate limiter variables and sizes its events map. kinds is
// how many event kinds the family has if it declares event_kinds_enabled (0 otherwise), and
// disabled the kinds not to sample, each below kinds.
func Configure(spec *ebpf.CollectionSpec, d Delivery, kinds int, disabled []uint32) error {
	rate, burst := uint64(d.EventsPerSecond), max(uint64(d.EventBurst), 1)
	refill := uint64(0)
	if rate > 0 {
		// A quiet CPU refills its whole burst in this long.
		refill = burst * uint64(time.Second) / rate
	}
	vars := map[string]any{
		"event_rate_per_sec":   rate,
		"event_burst":          burst,
		"event_refill_cap_ns":  refill,
		"ringbuf_wakeup_bytes": uint64(d.WakeupBytes),
	}
	if kinds > 0 {
		enabled := uint32(1)<<kinds - 1
		for _, k := range disabled {
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
	m.MaxEntries = d.RingBufferBytes
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
