package tcpackreceiver

import (
	"cmp"
	"context"
	"slices"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// ackSeries identifies the statistics of one local port in one netns.
type ackSeries struct {
	netns uint32
	port  uint16
}

var ackCauses = map[acks.Cause]metadata.AttributeTcpackAckCause{
	acks.CausePiggyback: metadata.AttributeTcpackAckCausePiggyback,
	acks.CauseRoute:     metadata.AttributeTcpackAckCauseRoute,
	acks.CauseQuick:     metadata.AttributeTcpackAckCauseQuick,
	acks.CauseAppRead:   metadata.AttributeTcpackAckCauseAppRead,
	acks.CauseTimer:     metadata.AttributeTcpackAckCauseDelackTimer,
	acks.CauseArrival:   metadata.AttributeTcpackAckCauseDataArrival,
}

// capSeries folds statistics of series not admitted under max_series into the overflow
// series. Admission is first come, for good, so a cumulative series never changes meaning.
func (r *tcpackReceiver) capSeries(stats []acks.Stats) []acks.Stats {
	slices.SortFunc(stats, func(a, b acks.Stats) int {
		if a.Netns != b.Netns {
			return cmp.Compare(a.Netns, b.Netns)
		}
		return cmp.Compare(a.LocalPort, b.LocalPort)
	})
	out := make([]acks.Stats, 0, len(stats))
	var overflow *acks.Stats
	for _, s := range stats {
		key := ackSeries{s.Netns, s.LocalPort}
		if !r.ackSeries[key] && len(r.ackSeries) < r.cfg.Acks.MaxSeries {
			r.ackSeries[key] = true
		}
		if r.ackSeries[key] {
			out = append(out, s)
			continue
		}
		if overflow == nil {
			overflow = &acks.Stats{Delay: acks.Histogram{Bounds: s.Delay.Bounds, Counts: make([]uint64, len(s.Delay.Counts))}}
		}
		mergeStats(overflow, s)
	}
	if overflow != nil {
		out = append(out, *overflow)
	}
	return out
}

func mergeStats(into *acks.Stats, s acks.Stats) {
	for i := range into.ByCause {
		into.ByCause[i] += s.ByCause[i]
	}
	into.OtherAcks += s.OtherAcks
	into.SegmentsAcked += s.SegmentsAcked
	into.QuotaSpent += s.QuotaSpent
	into.Forced += s.Forced
	into.DelayedDecisions += s.DelayedDecisions
	for i := range into.Delay.Counts {
		into.Delay.Counts[i] += s.Delay.Counts[i]
	}
	into.Delay.Sum += s.Delay.Sum
	into.Delay.Count += s.Delay.Count
}

func (r *tcpackReceiver) recordAcks(now pcommon.Timestamp, stats []acks.Stats) {
	for _, s := range stats {
		port, netns := int64(s.LocalPort), int64(s.Netns)
		for cause, n := range s.ByCause {
			r.mb.RecordTcpackAckCountDataPoint(now, int64(n), ackCauses[acks.Cause(cause)], port, netns)
		}
		r.mb.RecordTcpackAckOtherCountDataPoint(now, int64(s.OtherAcks), port, netns)
		r.mb.RecordTcpackAckSegmentsDataPoint(now, int64(s.SegmentsAcked), port, netns)
		r.mb.RecordTcpackAckQuotaExhaustedCountDataPoint(now, int64(s.QuotaSpent), port, netns)
		r.mb.RecordTcpackAckForcedCountDataPoint(now, int64(s.Forced), port, netns)
		if r.acks.Decides() {
			r.mb.RecordTcpackAckDelayDecisionsCountDataPoint(now, int64(s.DelayedDecisions), port, netns)
		}
	}
}

// appendDelayHistogram adds tcpack.ack.delay to the emitted metrics. mdatagen cannot
// generate histograms, so it is built here, with the attributes acks.delay_attributes keeps.
func (r *tcpackReceiver) appendDelayHistogram(md pmetric.Metrics, now pcommon.Timestamp, stats []acks.Stats) {
	if len(stats) == 0 || md.ResourceMetrics().Len() == 0 {
		return
	}
	withPort := slices.Contains(r.cfg.Acks.DelayAttributes, "network.local.port")
	withNetns := slices.Contains(r.cfg.Acks.DelayAttributes, "tcpack.netns.inode")
	merged := map[ackSeries]*acks.Stats{}
	var order []ackSeries
	for _, s := range stats {
		key := ackSeries{}
		if withNetns {
			key.netns = s.Netns
		}
		if withPort {
			key.port = s.LocalPort
		}
		m, ok := merged[key]
		if !ok {
			m = &acks.Stats{Delay: acks.Histogram{Bounds: s.Delay.Bounds, Counts: make([]uint64, len(s.Delay.Counts))}}
			merged[key] = m
			order = append(order, key)
		}
		mergeStats(m, s)
	}

	sm := md.ResourceMetrics().At(0).ScopeMetrics()
	if sm.Len() == 0 {
		sm.AppendEmpty().Scope().SetName(metadata.ScopeName)
	}
	m := sm.At(0).Metrics().AppendEmpty()
	m.SetName("tcpack.ack.delay")
	m.SetUnit("s")
	m.SetDescription("How long the oldest unacknowledged data waited for each ACK that acknowledged new data, on the sockets in the acks family's scope.")
	h := m.SetEmptyHistogram()
	h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	for _, key := range order {
		s := merged[key]
		dp := h.DataPoints().AppendEmpty()
		dp.SetStartTimestamp(r.startTime)
		dp.SetTimestamp(now)
		dp.ExplicitBounds().FromRaw(s.Delay.Bounds)
		dp.BucketCounts().FromRaw(s.Delay.Counts)
		dp.SetCount(s.Delay.Count)
		dp.SetSum(s.Delay.Sum)
		if withPort {
			dp.Attributes().PutInt("network.local.port", int64(key.port))
		}
		if withNetns {
			dp.Attributes().PutInt("tcpack.netns.inode", int64(key.netns))
		}
	}
}

// consumeAckEvents turns sampled delayed ACKs into log records.
func (r *tcpackReceiver) consumeAckEvents(events []acks.Event) {
	ctx := context.Background()
	r.logsMu.Lock()
	for _, e := range events {
		name, _ := r.env.Netns.Name(e.Netns)
		ato := -1.0 // unknown tick rate: left out of the record
		if r.hz > 0 {
			ato = float64(e.ATOJiffies) / float64(r.hz)
		}
		r.lb.RecordTcpackAckDelayedEvent(ctx, pcommon.NewTimestampFromTime(e.Time), e.Delay.Seconds(), ackCauses[e.Cause],
			int64(e.Segments), int64(e.Quick), int64(e.Pingpong), e.DstQuickAck, ato, e.Forced,
			addrString(e.LocalAddr.IsValid(), e.LocalAddr.String()), int64(e.LocalPort),
			addrString(e.PeerAddr.IsValid(), e.PeerAddr.String()), int64(e.PeerPort), int64(e.Netns), name)
	}
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(ctx, logs, "ack events")
}
