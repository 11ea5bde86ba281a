package tcpackreceiver

import (
	"context"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"

	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// consumeDropEvents turns a batch of sampled drops family events into log records. It runs
// on the family's reader goroutine; while the pipeline pushes back, the kernel's ring buffer
// fills and its losses are counted in tcpack.events.suppressed.
func (r *tcpackReceiver) consumeDropEvents(events []drops.Event) {
	ctx := context.Background()
	r.logsMu.Lock()
	for _, e := range events {
		ts := pcommon.NewTimestampFromTime(e.Time)
		local, peer := addrString(e.LocalAddr.IsValid(), e.LocalAddr.String()), addrString(e.PeerAddr.IsValid(), e.PeerAddr.String())
		netns := int64(e.Netns)
		tuple := metadata.MapAttributeTcpackTupleSource[e.TupleFrom]
		switch e.Kind {
		case drops.KindDrop:
			r.lb.RecordTcpackDropEvent(ctx, ts, e.Reason, e.Symbol, e.Location, e.Transport, e.Network,
				metadata.MapAttributeNetworkIoDirection[e.Direction], local, int64(e.LocalPort), peer, int64(e.PeerPort),
				e.Interface, netns, e.NetnsName, e.State, tuple, int64(e.Length))
		case drops.KindRetransmit:
			r.lb.RecordTcpackTCPRetransmitEvent(ctx, ts, e.Network, local, int64(e.LocalPort), peer, int64(e.PeerPort),
				netns, e.NetnsName, e.State)
		case drops.KindResetSent, drops.KindResetReceived:
			dir := metadata.AttributeNetworkIoDirectionTransmit
			if e.Kind == drops.KindResetReceived {
				dir = metadata.AttributeNetworkIoDirectionReceive
			}
			r.lb.RecordTcpackTCPResetEvent(ctx, ts, dir, e.Reason, e.Network, local, int64(e.LocalPort), peer,
				int64(e.PeerPort), e.Interface, netns, e.NetnsName, e.State, tuple)
		}
	}
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(ctx, logs, "drop events")
}

func addrString(valid bool, s string) string {
	if !valid {
		return ""
	}
	return s
}

// tidyRecords drops attributes the event did not have (the generated builder records every
// declared attribute, empty or not): empty strings, and port 0 for protocols without ports.
// It also marks the records as informational.
func tidyRecords(logs plog.Logs) {
	rls := logs.ResourceLogs()
	for i := 0; i < rls.Len(); i++ {
		sls := rls.At(i).ScopeLogs()
		for j := 0; j < sls.Len(); j++ {
			recs := sls.At(j).LogRecords()
			for k := 0; k < recs.Len(); k++ {
				rec := recs.At(k)
				rec.SetSeverityNumber(plog.SeverityNumberInfo)
				rec.SetSeverityText("INFO")
				rec.Attributes().RemoveIf(func(k string, v pcommon.Value) bool {
					switch v.Type() {
					case pcommon.ValueTypeStr:
						return v.Str() == ""
					case pcommon.ValueTypeInt:
						return v.Int() == 0 && (k == "network.local.port" || k == "network.peer.port")
					case pcommon.ValueTypeDouble:
						return v.Double() < 0 // a measure the kernel could not give
					}
					return false
				})
			}
		}
	}
}
