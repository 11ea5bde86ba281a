package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/txqueue"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// TxqueueConfig configures the txqueue family (transmit queue per flow and interface,
// PACKET_OTHERHOST).
type TxqueueConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// Mode is kernel_stats (the default: per-queue counts from the kernel's own counters, no
	// program per packet) or per_packet (a program on every packet sent: every interface,
	// flow queues, changes and picks).
	Mode string `mapstructure:"mode"`
	// Strategies restricts the attach mechanisms, in the family's order of preference; empty
	// means all (tp_btf, raw_tp for the tracepoints; fentry/fexit, kprobe/kretprobe for
	// netdev_pick_tx).
	Strategies []string `mapstructure:"strategies"`
	// MaxKeys bounds the kernel map of (netns, interface, queue) counters; packets past it
	// are counted as overflow.
	MaxKeys uint32 `mapstructure:"max_keys"`
	// MaxInterfaces bounds the per-interface map (queue changes, OTHERHOST, picks).
	MaxInterfaces uint32 `mapstructure:"max_interfaces"`
	// MaxFlows bounds the kernel's LRU of socket flows and their current queue.
	MaxFlows uint32 `mapstructure:"max_flows"`
	// Otherhost counts packets received for another host: at their drop on 5.19+, else by a
	// program on every received packet.
	Otherhost bool           `mapstructure:"otherhost"`
	Sampling  SamplingConfig `mapstructure:"sampling"`
	// Windows, under kernel_stats, attaches the per-packet hooks for a window of each period:
	// per-queue counts of multi-queue interfaces without mq, picks and flow_moved events,
	// all a sample.
	Windows TxqueueWindowsConfig `mapstructure:"windows"`
}

// TxqueueWindowsConfig is kernel_stats' sampling windows.
type TxqueueWindowsConfig struct {
	Enabled bool          `mapstructure:"enabled"`
	Window  time.Duration `mapstructure:"window"`
	Period  time.Duration `mapstructure:"period"`
}

func defaultTxqueueConfig() TxqueueConfig {
	d := txqueue.DefaultConfig()
	return TxqueueConfig{
		Mode:          txqueue.ModeKernelStats,
		MaxKeys:       d.MaxQueueKeys,
		MaxInterfaces: d.MaxInterfaces,
		MaxFlows:      d.MaxFlows,
		Otherhost:     d.Otherhost,
		Sampling:      SamplingConfig{RatePerCPU: d.EventsPerSecond, Burst: d.EventBurst},
		Windows:       TxqueueWindowsConfig{Enabled: true, Window: d.Window, Period: d.Period},
	}
}

var txqueueStrategies = []loader.Kind{loader.TPBTF, loader.RawTP, loader.FEntry, loader.FExit, loader.Kprobe, loader.Kretprobe}

// convert turns the block into the family's config; its errors name the field and the fix. Events nobody
// consumes are not sampled.
func (q TxqueueConfig) convert(c common, withLogs bool) (txqueue.Config, []error) {
	def := txqueue.DefaultConfig()
	cfg := txqueue.DefaultConfig()
	cfg.MaxQueueKeys, cfg.MaxInterfaces, cfg.MaxFlows, cfg.Otherhost = q.MaxKeys, q.MaxInterfaces, q.MaxFlows, q.Otherhost
	cfg.Delivery = c.delivery(q.Sampling)
	cfg.Mode = q.Mode
	var errs []error
	if txqueue.CheckMode(q.Mode) != nil {
		errs = append(errs, fmt.Errorf("txqueue.mode: %q, use %s (the default: per-queue counts from mq's child qdiscs, no program per packet) or %s (a program on every packet sent: every interface, flow queues and changes)",
			q.Mode, txqueue.ModeKernelStats, txqueue.ModePerPacket))
	}
	var more []error
	cfg.Strategies, more = checkStrategies("txqueue.strategies", q.Strategies, txqueueStrategies)
	errs = append(errs, more...)
	if q.Mode == txqueue.ModePerPacket && len(q.Strategies) > 0 && !slices.Contains(q.Strategies, string(loader.TPBTF)) && !slices.Contains(q.Strategies, string(loader.RawTP)) {
		errs = append(errs, errors.New("txqueue.strategies: must include tp_btf or raw_tp: under mode per_packet the queue counts come from the net_dev_start_xmit tracepoint"))
	}
	for _, m := range []struct {
		field  string
		v, def uint32
	}{{"txqueue.max_keys", q.MaxKeys, def.MaxQueueKeys}, {"txqueue.max_interfaces", q.MaxInterfaces, def.MaxInterfaces}, {"txqueue.max_flows", q.MaxFlows, def.MaxFlows}} {
		if err := checkMapSize(m.field, m.v, m.def); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, checkSampling("txqueue.sampling", q.Sampling, "5x rate_per_cpu")...)
	cfg.Window, cfg.Period = 0, 0
	if w := q.Windows; w.Enabled && q.Mode != txqueue.ModePerPacket {
		cfg.Window, cfg.Period = w.Window, w.Period
		if w.Window < loader.MinWindow {
			errs = append(errs, fmt.Errorf("txqueue.windows.window: %s is too short, use at least %s (default %s), or txqueue.windows.enabled: false for no per-packet hook at all", w.Window, loader.MinWindow, def.Window))
		} else if w.Period <= w.Window {
			errs = append(errs, fmt.Errorf("txqueue.windows.period: %s must be longer than window %s (default %s: %s of every %s)", w.Period, w.Window, def.Period, def.Window, def.Period))
		}
	}
	cfg.DisabledEvents = disabledEvents(withLogs, map[txqueue.Kind]bool{
		txqueue.KindFlowMoved: c.Events.TcpackTxqueueFlowMoved.Enabled,
		txqueue.KindOtherhost: c.Events.TcpackPacketOtherhost.Enabled,
	})
	return cfg, errs
}

// txqueueFamily reports transmit queues per interface and flow, and PACKET_OTHERHOST.
type txqueueFamily struct {
	block  TxqueueConfig
	common common
	host   *familyHost
	probe  *txqueue.Probe
	// unread is the last namespaces-not-read error logged, so that a lasting one is logged once.
	unread string
	// unsourced are the multi-queue interfaces (netns, ifindex) already logged as having no
	// per-queue counter.
	unsourced map[[2]uint32]bool
}

func (f *txqueueFamily) name() string        { return txqueue.Family }
func (f *txqueueFamily) enabled() bool       { return f.block.Enabled }
func (f *txqueueFamily) hookNames() []string { return txqueue.HookNames() }

func (f *txqueueFamily) validate() []error {
	_, errs := f.block.convert(f.common, true)
	return errs
}

func (f *txqueueFamily) start(h *familyHost) (loader.Report, error) {
	f.host = h
	cfg, _ := f.block.convert(f.common, h.withLogs)
	var sink func([]txqueue.Event)
	if h.withLogs {
		sink = f.consumeEvents
	}
	p, err := txqueue.Start(h.env, cfg, sink)
	if err != nil {
		return loader.Report{}, err
	}
	f.probe = p
	return p.Report(), nil
}

func (f *txqueueFamily) close() error { return f.probe.Close() }

var txqueuePicks = map[txqueue.Selector]metadata.AttributeTcpackTxqueuePick{
	txqueue.SelectorUnknown: metadata.AttributeTcpackTxqueuePickUnknown,
	txqueue.SelectorSocket:  metadata.AttributeTcpackTxqueuePickSocket,
	txqueue.SelectorXPS:     metadata.AttributeTcpackTxqueuePickXps,
	txqueue.SelectorHash:    metadata.AttributeTcpackTxqueuePickHash,
}

var txqueueSources = map[txqueue.Source]metadata.AttributeTcpackTxqueueSource{
	txqueue.SourceNone:      metadata.AttributeTcpackTxqueueSourceNone,
	txqueue.SourceQdisc:     metadata.AttributeTcpackTxqueueSourceQdisc,
	txqueue.SourcePerPacket: metadata.AttributeTcpackTxqueueSourcePerPacket,
	txqueue.SourceSampled:   metadata.AttributeTcpackTxqueueSourceSampled,
	txqueue.SourceDriver:    metadata.AttributeTcpackTxqueueSourceDriver,
}

type ifSeries struct {
	netns uint32
	name  string
}

// record reads the family's counters and flows into the metrics builder.
func (f *txqueueFamily) record(now pcommon.Timestamp) error {
	mb := f.host.mb
	var flows []txqueue.Flow
	readFlows := func() error {
		if !f.common.Metrics.TcpackTxqueueFlows.Enabled {
			return nil
		}
		var err error
		flows, err = f.probe.Flows()
		return err
	}
	// per_packet: flows before the counters, since the kernel counts a packet on its queue
	// before it marks the flow, so every flow read has its interface, and name, in the
	// snapshot. kernel_stats: the snapshot walks the flows.
	if !f.probe.KernelStats() {
		if err := readFlows(); err != nil {
			return err
		}
	}
	snap, err := f.probe.Snapshot()
	if err != nil {
		return err
	}
	if snap.Unread != nil && snap.Unread.Error() != f.unread {
		f.host.logger.Warn("txqueue: some namespaces could not be read: their queues and connections are not reported", zap.Error(snap.Unread))
	}
	f.unread = ""
	if snap.Unread != nil {
		f.unread = snap.Unread.Error()
	}
	if f.probe.KernelStats() {
		if err := readFlows(); err != nil {
			return err
		}
	}
	queues := map[ifSeries]uint32{}
	for _, q := range snap.Queues {
		netns := int64(q.Netns)
		mb.RecordTcpackTxqueuePacketsDataPoint(now, int64(q.Packets), q.Interface, int64(q.Queue), netns)
		mb.RecordTcpackTxqueueBytesDataPoint(now, int64(q.Bytes), q.Interface, int64(q.Queue), netns)
		if q.Source == txqueue.SourceQdisc {
			mb.RecordTcpackTxqueueDropsDataPoint(now, int64(q.Drops), q.Interface, int64(q.Queue), netns)
			mb.RecordTcpackTxqueueRequeuesDataPoint(now, int64(q.Requeues), q.Interface, int64(q.Queue), netns)
		}
		key := ifSeries{q.Netns, q.Interface}
		queues[key] = max(queues[key], q.TxQueues)
	}
	if snap.Devices == nil {
		for key, n := range queues {
			mb.RecordTcpackTxqueueQueuesDataPoint(now, int64(n), key.name, metadata.AttributeTcpackTxqueueSourcePerPacket, int64(key.netns))
		}
	}
	for _, d := range snap.Devices {
		mb.RecordTcpackTxqueueQueuesDataPoint(now, int64(d.TxQueues), d.Interface, txqueueSources[d.Source], int64(d.Netns))
	}
	f.logUnsourced(snap.Devices)
	if f.probe.Windowed() {
		mb.RecordTcpackTxqueueSampledTimeDataPoint(now, f.probe.SampledTime().Seconds())
		if err := f.probe.WindowErr(); err != nil {
			f.host.logger.Warn("txqueue: a sampling window could not open or close", zap.Error(err))
		}
	}
	picks := f.probe.Picks()
	for _, c := range snap.Interfaces {
		netns := int64(c.Netns)
		mb.RecordTcpackTxqueueFlowChangesCountDataPoint(now, int64(c.FlowMoves), c.Interface, netns)
		if f.block.Otherhost {
			mb.RecordTcpackPacketOtherhostCountDataPoint(now, int64(c.Otherhost), c.Interface, netns)
		}
		if picks {
			for _, s := range []txqueue.Selector{txqueue.SelectorSocket, txqueue.SelectorXPS, txqueue.SelectorHash} {
				mb.RecordTcpackTxqueuePicksCountDataPoint(now, int64(c.Picks[s]), c.Interface, txqueuePicks[s], netns)
			}
		}
	}
	recordTxqueueFlows(mb, now, snap, flows)
	for kind, name := range map[txqueue.Kind]metadata.AttributeTcpackEventKind{
		txqueue.KindFlowMoved: metadata.AttributeTcpackEventKindFlowMoved,
		txqueue.KindOtherhost: metadata.AttributeTcpackEventKindOtherhost,
	} {
		mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.SampledOut[kind]), name, metadata.AttributeTcpackSuppressionCauseRateLimit)
		mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.RingBufferFull[kind]), name, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	}
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.QueueKeysFull), metadata.AttributeTcpackMapQueueCounts)
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.InterfaceKeysFull), metadata.AttributeTcpackMapIfCounts)
	return nil
}

// logUnsourced says, once per interface, that a multi-queue interface has no per-queue
// counter in the kernel, and what the family does instead.
func (f *txqueueFamily) logUnsourced(devices []txqueue.Interface) {
	if f.unsourced == nil {
		f.unsourced = map[[2]uint32]bool{}
	}
	for _, d := range devices {
		key := [2]uint32{d.Netns, d.Ifindex}
		if d.TxQueues < 2 || (d.Source != txqueue.SourceNone && d.Source != txqueue.SourceSampled) || f.unsourced[key] {
			continue
		}
		f.unsourced[key] = true
		fields := []zap.Field{zap.String("interface", d.Interface), zap.Uint32("netns", d.Netns),
			zap.Uint32("tx_queues", d.TxQueues), zap.String("root_qdisc", d.RootQdisc)}
		if f.probe.Windowed() {
			f.host.logger.Info("txqueue: this interface has no per-queue counter (its root qdisc is not mq, its driver keeps none): its per-queue counts are sampled, counted only in the sampling windows (txqueue.windows; tcpack.txqueue.source sampled, tcpack.txqueue.sampled.time)", fields...)
		} else {
			f.host.logger.Info("txqueue: this interface has no per-queue counter (its root qdisc is not mq, its driver keeps none) and txqueue.windows is off: no per-queue counts for it (tcpack.txqueue.source none)", fields...)
		}
	}
}

// recordTxqueueFlows reports how many flows each queue carried since the last collection: the
// flow map holds every flow the LRU has room for, closed ones included, and marks those that
// sent since the previous read.
func recordTxqueueFlows(mb *metadata.MetricsBuilder, now pcommon.Timestamp, snap txqueue.Snapshot, flows []txqueue.Flow) {
	type queueSeries struct {
		netns, ifindex uint32
		queue          uint16
	}
	names := map[[2]uint32]string{}
	for _, q := range snap.Queues {
		names[[2]uint32{q.Netns, q.Ifindex}] = q.Interface
	}
	for _, d := range snap.Devices {
		names[[2]uint32{d.Netns, d.Ifindex}] = d.Interface
	}
	counts := map[queueSeries]int64{}
	for _, f := range flows {
		if !f.Active {
			continue
		}
		counts[queueSeries{f.Netns, f.Ifindex, f.Queue}]++
	}
	for s, n := range counts {
		mb.RecordTcpackTxqueueFlowsDataPoint(now, n, names[[2]uint32{s.netns, s.ifindex}], int64(s.queue), int64(s.netns))
	}
}

// consumeEvents turns sampled queue changes and OTHERHOST packets into log records.
func (f *txqueueFamily) consumeEvents(events []txqueue.Event) {
	ctx := context.Background()
	f.host.sendEvents("txqueue events", func(lb *metadata.LogsBuilder) {
		for _, e := range events {
			ts := pcommon.NewTimestampFromTime(e.Time)
			netns := int64(e.Netns)
			switch e.Kind {
			case txqueue.KindFlowMoved:
				lb.RecordTcpackTxqueueFlowMovedEvent(ctx, ts, e.Transport, e.Network,
					addrString(e.LocalAddr), int64(e.LocalPort), addrString(e.PeerAddr), int64(e.PeerPort), e.Interface,
					int64(e.OldQueue), int64(e.NewQueue), int64(e.TxQueues), e.OOOOkay, txqueuePicks[e.Selector], netns, e.NetnsName)
			case txqueue.KindOtherhost:
				lb.RecordTcpackPacketOtherhostEvent(ctx, ts, e.Interface, e.DevMAC.String(), e.SrcMAC.String(), e.DstMAC.String(),
					e.Network, addrString(e.SrcAddr), addrString(e.DstAddr), int64(e.Length), netns, e.NetnsName)
			}
		}
	})
}
