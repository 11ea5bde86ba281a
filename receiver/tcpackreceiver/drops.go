package tcpackreceiver

import (
	"context"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// DropsConfig configures the drops family.
type DropsConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// Strategies restricts the attach mechanisms the loader may use, in its own order of
	// preference; empty means all (tp_btf, then raw_tp).
	Strategies []string `mapstructure:"strategies"`
	// MaxKeys bounds the kernel map of drop counters; drops past it are counted as overflow.
	MaxKeys uint32 `mapstructure:"max_keys"`
	// MaxTCPKeys bounds the kernel map of retransmit/reset counters.
	MaxTCPKeys uint32         `mapstructure:"max_tcp_keys"`
	Sampling   SamplingConfig `mapstructure:"sampling"`
}

func defaultDropsConfig() DropsConfig {
	d := drops.DefaultConfig()
	return DropsConfig{
		Enabled:    true,
		MaxKeys:    d.MaxDropKeys,
		MaxTCPKeys: d.MaxTCPKeys,
		Sampling:   SamplingConfig{RatePerCPU: d.EventsPerSecond, Burst: d.EventBurst},
	}
}

var dropsStrategies = []loader.Kind{loader.TPBTF, loader.RawTP}

// convert turns the block into the family's config; its errors name the field and the fix. Events nobody
// consumes, because they are disabled or no logs pipeline uses the receiver, are not sampled
// in the kernel at all.
func (d DropsConfig) convert(c common, withLogs bool) (drops.Config, []error) {
	def := drops.DefaultConfig()
	cfg := drops.Config{Delivery: c.delivery(d.Sampling), MaxDropKeys: d.MaxKeys, MaxTCPKeys: d.MaxTCPKeys}
	var errs []error
	cfg.Strategies, errs = checkStrategies("drops.strategies", d.Strategies, dropsStrategies)
	for _, err := range []error{
		checkMapSize("drops.max_keys", d.MaxKeys, def.MaxDropKeys),
		checkMapSize("drops.max_tcp_keys", d.MaxTCPKeys, def.MaxTCPKeys),
	} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, checkSampling("drops.sampling", d.Sampling, "2x rate_per_cpu")...)
	cfg.DisabledEvents = disabledEvents(withLogs, map[drops.Kind]bool{
		drops.KindDrop:          c.Events.TcpackDrop.Enabled,
		drops.KindRetransmit:    c.Events.TcpackTCPRetransmit.Enabled,
		drops.KindResetSent:     c.Events.TcpackTCPReset.Enabled,
		drops.KindResetReceived: c.Events.TcpackTCPReset.Enabled,
	})
	return cfg, errs
}

// dropsFamily turns drops, retransmits and resets into metrics and events.
type dropsFamily struct {
	block  DropsConfig
	common common
	host   *familyHost
	probe  *drops.Probe
}

func (f *dropsFamily) name() string        { return drops.Family }
func (f *dropsFamily) enabled() bool       { return f.block.Enabled }
func (f *dropsFamily) hookNames() []string { return drops.HookNames() }

func (f *dropsFamily) validate() []error {
	_, errs := f.block.convert(f.common, true)
	return errs
}

func (f *dropsFamily) start(h *familyHost) (loader.Report, error) {
	f.host = h
	cfg, _ := f.block.convert(f.common, h.withLogs)
	var sink func([]drops.Event)
	if h.withLogs {
		sink = f.consumeEvents
	}
	p, err := drops.Start(h.env, cfg, sink)
	if err != nil {
		return loader.Report{}, err
	}
	f.probe = p
	return p.Report(), nil
}

func (f *dropsFamily) close() error { return f.probe.Close() }

var dropEventKinds = map[drops.Kind]metadata.AttributeTcpackEventKind{
	drops.KindDrop:          metadata.AttributeTcpackEventKindDrop,
	drops.KindRetransmit:    metadata.AttributeTcpackEventKindRetransmit,
	drops.KindResetSent:     metadata.AttributeTcpackEventKindResetSent,
	drops.KindResetReceived: metadata.AttributeTcpackEventKindResetReceived,
}

func (f *dropsFamily) record(now pcommon.Timestamp) error {
	snap, err := f.probe.Snapshot()
	if err != nil {
		return err
	}
	mb := f.host.mb
	for _, d := range snap.Drops {
		netns := int64(d.Netns)
		mb.RecordTcpackDropCountDataPoint(now, int64(d.Packets), d.Reason, d.Symbol, d.Transport, d.Network, d.Interface, netns)
		mb.RecordTcpackDropBytesDataPoint(now, int64(d.Bytes), d.Reason, d.Symbol, d.Transport, d.Network, d.Interface, netns)
	}
	for _, c := range snap.TCP {
		netns := int64(c.Netns)
		switch c.Kind {
		case drops.KindRetransmit:
			mb.RecordTcpackTCPRetransmitCountDataPoint(now, int64(c.Count), c.State, c.Network, netns)
		case drops.KindResetSent:
			mb.RecordTcpackTCPResetCountDataPoint(now, int64(c.Count), metadata.AttributeNetworkIoDirectionTransmit, c.Reason, c.State, c.Network, netns)
		case drops.KindResetReceived:
			mb.RecordTcpackTCPResetCountDataPoint(now, int64(c.Count), metadata.AttributeNetworkIoDirectionReceive, c.Reason, c.State, c.Network, netns)
		}
	}
	for kind, name := range dropEventKinds {
		mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.SampledOut[kind]), name, metadata.AttributeTcpackSuppressionCauseRateLimit)
		mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.RingBufferFull[kind]), name, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	}
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.DropKeysFull), metadata.AttributeTcpackMapDropCounts)
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.TCPKeysFull), metadata.AttributeTcpackMapTCPCounts)
	return nil
}

// consumeEvents turns a batch of sampled events into log records. It runs on the family's
// reader goroutine; while the pipeline pushes back, the kernel's ring buffer fills and its
// losses are counted in tcpack.events.suppressed.
func (f *dropsFamily) consumeEvents(events []drops.Event) {
	ctx := context.Background()
	f.host.sendEvents("drop events", func(lb *metadata.LogsBuilder) {
		for _, e := range events {
			ts := pcommon.NewTimestampFromTime(e.Time)
			local, peer := addrString(e.LocalAddr), addrString(e.PeerAddr)
			netns := int64(e.Netns)
			tuple := metadata.MapAttributeTcpackTupleSource[e.TupleFrom]
			switch e.Kind {
			case drops.KindDrop:
				lb.RecordTcpackDropEvent(ctx, ts, e.Reason, e.Symbol, e.Location, e.Transport, e.Network,
					metadata.MapAttributeNetworkIoDirection[e.Direction], local, int64(e.LocalPort), peer, int64(e.PeerPort),
					e.Interface, netns, e.NetnsName, e.State, tuple, int64(e.Length))
			case drops.KindRetransmit:
				lb.RecordTcpackTCPRetransmitEvent(ctx, ts, e.Network, local, int64(e.LocalPort), peer, int64(e.PeerPort),
					netns, e.NetnsName, e.State)
			case drops.KindResetSent, drops.KindResetReceived:
				dir := metadata.AttributeNetworkIoDirectionTransmit
				if e.Kind == drops.KindResetReceived {
					dir = metadata.AttributeNetworkIoDirectionReceive
				}
				lb.RecordTcpackTCPResetEvent(ctx, ts, dir, e.Reason, e.Network, local, int64(e.LocalPort), peer,
					int64(e.PeerPort), e.Interface, netns, e.NetnsName, e.State, tuple)
			}
		}
	})
}
