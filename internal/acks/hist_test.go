package acks

import (
	"math"
	"math/bits"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/netnstest"
)

// The kernel files each delay in bucket i when it is below 2^i microseconds (histBounds):
// checked at both sides of every bound and at the ends, by running the bucket arithmetic
// itself in the kernel.
func TestHistogramBucketBounds(t *testing.T) {
	netnstest.RequireRoot(t)
	spec, err := loadAcks()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(spec.Programs[acksProgAckHistBucket])
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	delays := []uint64{0, 1, 999, 1000, 1001, 1999, 2000, 1<<32 - 1, 1 << 32, 10e9, math.MaxUint64}
	for i := range len(histBounds) + 1 {
		bound := uint64(1) << i * 1000 // 2^i us in ns
		delays = append(delays, bound-1, bound, bound+1)
	}
	last := len(histBounds) // the overflow bucket
	for _, ns := range delays {
		want := min(bits.Len64(ns/1000), last)
		got, err := prog.Run(&ebpf.RunOptions{Context: struct{ DelayNs uint64 }{ns}})
		if err != nil {
			t.Fatal(err)
		}
		if int(got) != want {
			t.Errorf("a delay of %d ns went to bucket %d, want %d", ns, got, want)
		}
	}
}
