package bench

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The interval's ranks against the published table for the median (n = 10: x(2), x(9); n = 40:
// x(14), x(27); n = 100: x(40), x(61)), and the whole range below 6 values.
func TestMedianCIRanks(t *testing.T) {
	for _, c := range []struct{ n, lo, hi int }{{5, 1, 5}, {6, 1, 6}, {10, 2, 9}, {40, 14, 27}, {100, 40, 61}} {
		v := make([]float64, c.n)
		for i := range v {
			v[i] = float64(c.n - i) // ranks are the values, given in reverse
		}
		lo, hi := medianCI(v)
		if lo != float64(c.lo) || hi != float64(c.hi) {
			t.Errorf("n=%d: CI [x(%v), x(%v)], want [x(%d), x(%d)]", c.n, lo, hi, c.lo, c.hi)
		}
	}
}

// Over many samples of skewed noise, the interval holds the true median at least 95% of the
// time, and not always (it is not the whole range).
func TestMedianCICoverage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	trueMedian := math.Ln2 // of an exponential with rate 1
	covered := 0
	const trials = 4000
	for i := 0; i < trials; i++ {
		v := make([]float64, 21)
		for j := range v {
			v[j] = r.ExpFloat64()
		}
		if lo, hi := medianCI(v); lo <= trueMedian && trueMedian <= hi {
			covered++
		}
	}
	if share := float64(covered) / trials; share < 0.95 || share > 0.995 {
		t.Errorf("covered the median in %.1f%% of trials, want 95-99.5%%", 100*share)
	}
}

func TestVerdict(t *testing.T) {
	high := []float64{98, 99, 99.5, 100, 100.5, 101, 102, 99, 100, 101}
	if got := verdict(high, 95); got != "met" {
		t.Errorf("all at or above 98 against 95: %s", got)
	}
	if got := verdict(high, 105); got != "missed" {
		t.Errorf("all below 103 against 105: %s", got)
	}
	if got := verdict(high, 100); got != "cannot tell" {
		t.Errorf("centred on 100 against 100: %s", got)
	}
}
