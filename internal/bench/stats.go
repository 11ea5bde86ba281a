package bench

import (
	"fmt"
	"math"
	"slices"
)

// target is an issue's bound on a family's cost: its mode's throughput in a workload, as a
// share of the baseline's.
type target struct {
	mode, workload string
	percent        float64
}

var targets = []target{
	{"acks_counts", "tcp_rr_64B_x4", 99},    // issue 23: ACK counts on every socket
	{"acks_sampled", "tcp_rr_64B_x4", 99},   // issue 23: the per-segment tier in windows
	{"acks_all", "tcp_rr_64B_x4", 95},       // issue 4: the per-segment tier on every socket
	{"acks_idle_port", "tcp_rr_64B_x4", 99}, // issue 4: scoped to a port with no traffic
	{"txqueue", "tcp_rr_64B_x4", 98},        // issue 6: per_packet
	{"txqueue_stats", "tcp_rr_64B_x4", 99},  // issue 21: kernel_stats, with -mq
	{"txqueue", "tcp_bulk", 98},
	{"footprint_idle", "tcp_rr_64B_x4", 98}, // issue 7: one idle flow
	{"footprint_idle", "tcp_bulk", 98},
}

func median(v []float64) float64 {
	_, m, _ := quartiles(v)
	return m
}

// quartiles: the lower and upper quartile by nearest rank, and the median (the mean of the
// middle two for an even count).
func quartiles(v []float64) (q1, med, q3 float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return s[n/4], med, s[(3*n)/4]
}

// medianCI is a distribution-free 95% confidence interval for the median of the population v
// was drawn from: the order statistics x(j) and x(n+1-j) for the largest rank j with at most a
// 2.5% chance, by the binomial(n, 1/2) law of how many values fall below the median, that j or
// more of them do. It assumes nothing about the shape of the noise, only that repetitions are
// independent. Below 6 values no rank qualifies and it is the whole range, which covers the
// median with less than 95%.
func medianCI(v []float64) (lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	// The interval is [x(j+1), x(n-j)] for the largest j with P(B <= j) <= 2.5%: as 0-based
	// indexes, [j, n-1-j].
	j, atMost := 0, 0.0
	for k := 0; k < n/2; k++ {
		if atMost += binomialHalf(n, k); atMost > 0.025 {
			break
		}
		j = k
	}
	return s[j], s[n-1-j]
}

// binomialHalf is P(B = k) for B ~ binomial(n, 1/2).
func binomialHalf(n, k int) float64 {
	lgN, _ := math.Lgamma(float64(n + 1))
	lgK, _ := math.Lgamma(float64(k + 1))
	lgNK, _ := math.Lgamma(float64(n - k + 1))
	return math.Exp(lgN - lgK - lgNK - float64(n)*math.Ln2)
}

// verdict says whether repetitions whose paired ratios are v show a target met: the whole
// confidence interval of their median at or above it, or below it, or neither.
func verdict(v []float64, percent float64) string {
	lo, hi := medianCI(v)
	switch {
	case lo >= percent:
		return "met"
	case hi < percent:
		return "missed"
	default:
		return "cannot tell"
	}
}

// pairedRatios is each repetition's figure over the reference's of the same repetition, in %.
func pairedRatios(figures, reference []float64) []float64 {
	out := make([]float64, len(figures))
	for i, v := range figures {
		out[i] = 100 * v / reference[i]
	}
	return out
}

// confidence is a figure's median, its confidence interval and the verdict against percent.
func confidence(v []float64, percent float64) string {
	lo, hi := medianCI(v)
	return fmt.Sprintf("%.1f%% [95%% CI %.1f-%.1f]: %s", median(v), lo, hi, verdict(v, percent))
}
