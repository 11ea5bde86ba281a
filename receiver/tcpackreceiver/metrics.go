package tcpackreceiver

import (
	"context"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// collect reads every family's cumulative counters and emits them as one batch of metrics.
func (r *tcpackReceiver) collect(ctx context.Context) error {
	now := pcommon.NewTimestampFromTime(time.Now())
	r.recordProbeReports(now)
	if r.drops != nil {
		snap, err := r.drops.Snapshot()
		if err != nil {
			return err
		}
		r.recordDrops(now, snap)
	}
	var ackStats []acks.Stats
	if r.acks != nil {
		stats, err := r.acks.Snapshot()
		if err != nil {
			return err
		}
		ackStats = r.capSeries(stats)
		r.recordAcks(now, ackStats)
		losses, err := r.acks.Losses()
		if err != nil {
			return err
		}
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(losses.SampledOut), metadata.AttributeTcpackEventKindAckDelayed, metadata.AttributeTcpackSuppressionCauseRateLimit)
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(losses.RingBufferFull), metadata.AttributeTcpackEventKindAckDelayed, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
		r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(losses.KeysFull), metadata.AttributeTcpackMapAckCounts)
		r.mb.RecordTcpackAckUnobservedCountDataPoint(now, int64(losses.Unobserved))
		armed, err := r.acks.Armed()
		if err != nil {
			r.set.Logger.Warn("acks: attaching the per-segment hooks on traffic", zap.Error(err))
		}
		armedValue := int64(0)
		if armed {
			armedValue = 1
		}
		r.mb.RecordTcpackAckArmedDataPoint(now, armedValue)
	}
	if r.quickack != nil {
		if err := r.recordQuickack(now); err != nil {
			return err
		}
	}
	if r.txqueue != nil {
		if err := r.recordTxqueue(now); err != nil {
			return err
		}
	}
	if r.footprint != nil {
		if err := r.recordFootprint(ctx, now); err != nil {
			return err
		}
	}
	md := r.mb.Emit(metadata.WithResource(r.resource))
	r.appendDelayHistogram(md, now, ackStats)
	return r.sendMetrics(ctx, md)
}

func (r *tcpackReceiver) recordProbeReports(now pcommon.Timestamp) {
	for _, rep := range r.reports {
		for _, h := range rep.Hooks {
			attached, strategy := int64(0), "none"
			if h.Attached != nil {
				attached, strategy = 1, h.Attached.String()
			}
			r.mb.RecordTcpackProbeAttachedDataPoint(now, attached, rep.Family, h.Hook, strategy)
		}
	}
}

func (r *tcpackReceiver) recordDrops(now pcommon.Timestamp, snap drops.Snapshot) {
	for _, d := range snap.Drops {
		netns := int64(d.Netns)
		r.mb.RecordTcpackDropCountDataPoint(now, int64(d.Packets), d.Reason, d.Symbol, d.Transport, d.Network, d.Interface, netns)
		r.mb.RecordTcpackDropBytesDataPoint(now, int64(d.Bytes), d.Reason, d.Symbol, d.Transport, d.Network, d.Interface, netns)
	}
	for _, c := range snap.TCP {
		netns := int64(c.Netns)
		switch c.Kind {
		case drops.KindRetransmit:
			r.mb.RecordTcpackTCPRetransmitCountDataPoint(now, int64(c.Count), c.State, c.Network, netns)
		case drops.KindResetSent:
			r.mb.RecordTcpackTCPResetCountDataPoint(now, int64(c.Count), metadata.AttributeNetworkIoDirectionTransmit, c.Reason, c.State, c.Network, netns)
		case drops.KindResetReceived:
			r.mb.RecordTcpackTCPResetCountDataPoint(now, int64(c.Count), metadata.AttributeNetworkIoDirectionReceive, c.Reason, c.State, c.Network, netns)
		}
	}
	for kind, name := range map[drops.Kind]metadata.AttributeTcpackEventKind{
		drops.KindDrop:          metadata.AttributeTcpackEventKindDrop,
		drops.KindRetransmit:    metadata.AttributeTcpackEventKindRetransmit,
		drops.KindResetSent:     metadata.AttributeTcpackEventKindResetSent,
		drops.KindResetReceived: metadata.AttributeTcpackEventKindResetReceived,
	} {
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.SampledOut[kind]), name, metadata.AttributeTcpackSuppressionCauseRateLimit)
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.RingBufferFull[kind]), name, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	}
	r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.DropKeysFull), metadata.AttributeTcpackMapDropCounts)
	r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.TCPKeysFull), metadata.AttributeTcpackMapTCPCounts)
}
