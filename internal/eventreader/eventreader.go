// Package eventreader drains a family's BPF ring buffer into batches of typed events. The
// kernel side wakes the reader only once a batch is pending (BPF_RB_NO_WAKEUP below a byte
// threshold, see bpf/headers/common.h submit_batched); the read deadline picks up the rest,
// so no event waits longer than the flush interval.
package eventreader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// Decoder reads each record as the bpf2go-generated struct R (native endian, as the kernel
// wrote it) and converts it with decode; a short record is skipped.
func Decoder[R, T any](decode func(*R) T) func([]byte) (T, bool) {
	var raw R
	return func(b []byte) (T, bool) {
		if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &raw); err != nil {
			var zero T
			return zero, false
		}
		return decode(&raw), true
	}
}

// maxBatch bounds how many events are handed to the sink at once.
const maxBatch = 256

// Run reads rd until it is closed, decoding each record with decode (false skips it) and
// passing batches to sink (which may be nil to discard). It returns when rd is closed.
func Run[T any](rd *ringbuf.Reader, flush time.Duration, decode func([]byte) (T, bool), sink func([]T)) {
	var batch []T
	deliver := func() {
		if len(batch) > 0 && sink != nil {
			sink(batch)
		}
		batch = nil
	}
	var rec ringbuf.Record
	for {
		rd.SetDeadline(time.Now().Add(flush))
		err := rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			deliver()
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			deliver()
			return
		case err != nil:
			// Not expected from an open reader; do not spin on it.
			time.Sleep(flush)
			continue
		}
		if ev, ok := decode(rec.RawSample); ok {
			batch = append(batch, ev)
		}
		if len(batch) >= maxBatch || rec.Remaining == 0 {
			deliver()
		}
	}
}
