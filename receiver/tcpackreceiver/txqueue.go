package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/txqueue"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// TxqueueConfig configures the txqueue family (transmit queue per flow and interface,
// PACKET_OTHERHOST).
type TxqueueConfig struct {
	Enabled bool `mapstructure:"enabled"`
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
}

func defaultTxqueueConfig() TxqueueConfig {
	d := txqueue.DefaultConfig()
	return TxqueueConfig{
		MaxKeys:       d.MaxQueueKeys,
		MaxInterfaces: d.MaxInterfaces,
		MaxFlows:      d.MaxFlows,
		Otherhost:     d.Otherhost,
		Sampling:      SamplingConfig{RatePerCPU: d.EventsPerSecond, Burst: d.EventBurst},
	}
}

var txqueueStrategies = []loader.Kind{loader.TPBTF, loader.RawTP, loader.FEntry, loader.FExit, loader.Kprobe, loader.Kretprobe}

func (q TxqueueConfig) validate() []error {
	var errs []error
	for i, s := range q.Strategies {
		ok := false
		for _, k := range txqueueStrategies {
			ok = ok || loader.Kind(s) == k
		}
		if !ok {
			names := make([]string, len(txqueueStrategies))
			for j, k := range txqueueStrategies {
				names[j] = string(k)
			}
			errs = append(errs, fmt.Errorf("txqueue.strategies[%d]: unknown strategy %q, use %s", i, s, strings.Join(names, ", ")))
		}
	}
	if len(q.Strategies) > 0 {
		hasTP := false
		for _, s := range q.Strategies {
			hasTP = hasTP || s == string(loader.TPBTF) || s == string(loader.RawTP)
		}
		if !hasTP {
			errs = append(errs, errors.New("txqueue.strategies: must include tp_btf or raw_tp: the queue counts come from the net_dev_start_xmit tracepoint"))
		}
	}
	for field, v := range map[string]uint32{"txqueue.max_keys": q.MaxKeys, "txqueue.max_interfaces": q.MaxInterfaces, "txqueue.max_flows": q.MaxFlows} {
		if v == 0 || v > maxKeys {
			errs = append(errs, fmt.Errorf("%s: %d is out of range, use 1..%d", field, v, maxKeys))
		}
	}
	if q.Sampling.RatePerCPU > maxRatePerCPU {
		errs = append(errs, fmt.Errorf("txqueue.sampling.rate_per_cpu: %d is too high, use 0..%d (0 turns events off)", q.Sampling.RatePerCPU, maxRatePerCPU))
	}
	if q.Sampling.RatePerCPU > 0 && q.Sampling.Burst == 0 {
		errs = append(errs, errors.New("txqueue.sampling.burst: must be at least 1 when rate_per_cpu is set (e.g. 5x rate_per_cpu)"))
	}
	if q.Sampling.Burst > maxRatePerCPU {
		errs = append(errs, fmt.Errorf("txqueue.sampling.burst: %d is too large, use 1..%d", q.Sampling.Burst, maxRatePerCPU))
	}
	return errs
}

// txqueueConfig is the family's part of the config; events nobody consumes are not sampled.
func (c *Config) txqueueConfig(withLogs bool) txqueue.Config {
	q := c.Txqueue
	cfg := txqueue.DefaultConfig()
	cfg.MaxQueueKeys, cfg.MaxInterfaces, cfg.MaxFlows, cfg.Otherhost = q.MaxKeys, q.MaxInterfaces, q.MaxFlows, q.Otherhost
	cfg.EventsPerSecond, cfg.EventBurst = q.Sampling.RatePerCPU, q.Sampling.Burst
	cfg.RingBufferBytes, cfg.WakeupBytes, cfg.FlushInterval = c.RingBuffer.SizeBytes, c.RingBuffer.WakeupBytes, c.RingBuffer.FlushInterval
	for _, s := range q.Strategies {
		cfg.Strategies = append(cfg.Strategies, loader.Kind(s))
	}
	for kind, enabled := range map[txqueue.Kind]bool{
		txqueue.KindFlowMoved: c.Events.TcpackTxqueueFlowMoved.Enabled,
		txqueue.KindOtherhost: c.Events.TcpackPacketOtherhost.Enabled,
	} {
		if !enabled || !withLogs {
			cfg.DisabledEvents = append(cfg.DisabledEvents, kind)
		}
	}
	return cfg
}

var txqueuePicks = map[txqueue.Selector]metadata.AttributeTcpackTxqueuePick{
	txqueue.SelectorUnknown: metadata.AttributeTcpackTxqueuePickUnknown,
	txqueue.SelectorSocket:  metadata.AttributeTcpackTxqueuePickSocket,
	txqueue.SelectorXPS:     metadata.AttributeTcpackTxqueuePickXps,
	txqueue.SelectorHash:    metadata.AttributeTcpackTxqueuePickHash,
}

type ifSeries struct {
	netns uint32
	name  string
}

// recordTxqueue reads the family's counters and flows into the metrics builder.
func (r *tcpackReceiver) recordTxqueue(now pcommon.Timestamp) error {
	var flows []txqueue.Flow
	if r.cfg.Metrics.TcpackTxqueueFlows.Enabled {
		// Read before the counters: the kernel counts a packet on its queue before it marks
		// the flow, so every flow read here has its interface, and name, in the snapshot.
		var err error
		if flows, err = r.txqueue.Flows(); err != nil {
			return err
		}
	}
	snap, err := r.txqueue.Snapshot()
	if err != nil {
		return err
	}
	queues := map[ifSeries]uint32{}
	for _, q := range snap.Queues {
		netns := int64(q.Netns)
		r.mb.RecordTcpackTxqueuePacketsDataPoint(now, int64(q.Packets), q.Interface, int64(q.Queue), netns)
		r.mb.RecordTcpackTxqueueBytesDataPoint(now, int64(q.Bytes), q.Interface, int64(q.Queue), netns)
		key := ifSeries{q.Netns, q.Interface}
		queues[key] = max(queues[key], q.TxQueues)
	}
	for key, n := range queues {
		r.mb.RecordTcpackTxqueueQueuesDataPoint(now, int64(n), key.name, int64(key.netns))
	}
	picks := r.txqueue.Picks()
	for _, c := range snap.Interfaces {
		netns := int64(c.Netns)
		r.mb.RecordTcpackTxqueueFlowChangesCountDataPoint(now, int64(c.FlowMoves), c.Interface, netns)
		if r.cfg.Txqueue.Otherhost {
			r.mb.RecordTcpackPacketOtherhostCountDataPoint(now, int64(c.Otherhost), c.Interface, netns)
		}
		if picks {
			for _, s := range []txqueue.Selector{txqueue.SelectorSocket, txqueue.SelectorXPS, txqueue.SelectorHash} {
				r.mb.RecordTcpackTxqueuePicksCountDataPoint(now, int64(c.Picks[s]), c.Interface, txqueuePicks[s], netns)
			}
		}
	}
	r.recordTxqueueFlows(now, snap, flows)
	for kind, name := range map[txqueue.Kind]metadata.AttributeTcpackEventKind{
		txqueue.KindFlowMoved: metadata.AttributeTcpackEventKindFlowMoved,
		txqueue.KindOtherhost: metadata.AttributeTcpackEventKindOtherhost,
	} {
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.SampledOut[kind]), name, metadata.AttributeTcpackSuppressionCauseRateLimit)
		r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(snap.Stats.RingBufferFull[kind]), name, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	}
	r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.QueueKeysFull), metadata.AttributeTcpackMapQueueCounts)
	r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.Stats.InterfaceKeysFull), metadata.AttributeTcpackMapIfCounts)
	return nil
}

// recordTxqueueFlows reports how many flows each queue carried since the last collection: the
// flow map holds every flow the LRU has room for, closed ones included, and marks those that
// sent since the previous read.
func (r *tcpackReceiver) recordTxqueueFlows(now pcommon.Timestamp, snap txqueue.Snapshot, flows []txqueue.Flow) {
	type queueSeries struct {
		netns, ifindex uint32
		queue          uint16
	}
	names := map[[2]uint32]string{}
	for _, q := range snap.Queues {
		names[[2]uint32{q.Netns, q.Ifindex}] = q.Interface
	}
	counts := map[queueSeries]int64{}
	for _, f := range flows {
		if !f.Active {
			continue
		}
		counts[queueSeries{f.Netns, f.Ifindex, f.Queue}]++
	}
	for s, n := range counts {
		r.mb.RecordTcpackTxqueueFlowsDataPoint(now, n, names[[2]uint32{s.netns, s.ifindex}], int64(s.queue), int64(s.netns))
	}
}

// consumeTxqueueEvents turns sampled queue changes and OTHERHOST packets into log records.
func (r *tcpackReceiver) consumeTxqueueEvents(events []txqueue.Event) {
	ctx := context.Background()
	r.logsMu.Lock()
	for _, e := range events {
		ts := pcommon.NewTimestampFromTime(e.Time)
		netns := int64(e.Netns)
		switch e.Kind {
		case txqueue.KindFlowMoved:
			r.lb.RecordTcpackTxqueueFlowMovedEvent(ctx, ts, e.Transport, e.Network,
				addrString(e.LocalAddr.IsValid(), e.LocalAddr.String()), int64(e.LocalPort),
				addrString(e.PeerAddr.IsValid(), e.PeerAddr.String()), int64(e.PeerPort), e.Interface,
				int64(e.OldQueue), int64(e.NewQueue), int64(e.TxQueues), e.OOOOkay, txqueuePicks[e.Selector], netns, e.NetnsName)
		case txqueue.KindOtherhost:
			r.lb.RecordTcpackPacketOtherhostEvent(ctx, ts, e.Interface, e.DevMAC.String(), e.SrcMAC.String(), e.DstMAC.String(),
				e.Network, addrString(e.SrcAddr.IsValid(), e.SrcAddr.String()), addrString(e.DstAddr.IsValid(), e.DstAddr.String()),
				int64(e.Length), netns, e.NetnsName)
		}
	}
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(ctx, logs, "txqueue events")
}
