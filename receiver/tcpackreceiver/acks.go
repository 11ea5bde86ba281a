package tcpackreceiver

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// AcksConfig configures the ACK family.
type AcksConfig struct {
	// Enabled counts, for every socket in scope, the segments it sent and received and the
	// ACKs the delayed-ACK timer sent, with no program on the packet path.
	Enabled bool `mapstructure:"enabled"`
	// LocalPorts and PeerPorts select the sockets observed; both empty means every TCP
	// socket.
	LocalPorts []int `mapstructure:"local_ports"`
	PeerPorts  []int `mapstructure:"peer_ports"`
	// Peers adds sockets whose peer address is in one of these CIDRs.
	Peers []string `mapstructure:"peers"`
	// Netns limits the scope to sockets in these network namespaces (/proc/self/ns/net for a
	// sidecar's own pod, /run/netns/NAME, /proc/PID/ns/net); empty means every namespace.
	Netns []string `mapstructure:"netns"`
	// MaxKeys bounds the kernel map of (netns, service port, role) statistics, MaxSockets
	// the sockets counted at once.
	MaxKeys    uint32 `mapstructure:"max_keys"`
	MaxSockets uint32 `mapstructure:"max_sockets"`
	// MaxSeries caps the (netns, service port, role) series the ACK metrics report; later
	// ones are folded into one overflow series (port 0, netns 0).
	MaxSeries int `mapstructure:"max_series"`
	// PerSegment is the per-segment tier: delays, causes and events.
	PerSegment PerSegmentConfig `mapstructure:"per_segment"`
}

// PerSegmentConfig configures the ACK family's per-segment tier, which runs a program on
// every segment the sockets in scope send and receive while its hooks are attached.
type PerSegmentConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// EventMinDelay: pure ACKs that waited at least this long are sampled as events.
	EventMinDelay time.Duration  `mapstructure:"event_min_delay"`
	Sampling      SamplingConfig `mapstructure:"sampling"`
	// DelayAttributes are the attributes of the tcpack.ack.delay histogram; the others are
	// aggregated away (the other ACK metrics choose theirs under metrics:).
	DelayAttributes []string `mapstructure:"delay_attributes"`
	// Attach is windows (the default: the per-segment hooks judge ACKs for Window out of
	// every Period), on_traffic (only while a socket in scope is open) or always (every ACK).
	Attach string `mapstructure:"attach"`
	// Window and Period are the sampling windows under windows.
	Window time.Duration `mapstructure:"window"`
	Period time.Duration `mapstructure:"period"`
	// IdleDetach is how long no socket in scope may be open before on_traffic detaches the
	// per-segment hooks again.
	IdleDetach time.Duration `mapstructure:"idle_detach"`
}

// delayAttributes are the attributes tcpack.ack.delay can carry.
var delayAttributes = []string{"server.port", "tcpack.socket.role", "tcpack.netns.inode"}

func defaultAcksConfig() AcksConfig {
	a := acks.DefaultConfig()
	return AcksConfig{
		Enabled:    true,
		MaxKeys:    a.MaxKeys,
		MaxSockets: a.MaxSockets,
		MaxSeries:  1000,
		PerSegment: PerSegmentConfig{
			EventMinDelay:   a.EventMinDelay,
			Sampling:        SamplingConfig{RatePerCPU: a.EventsPerSecond, Burst: a.EventBurst},
			DelayAttributes: slices.Clone(delayAttributes),
			Attach:          a.Attach,
			IdleDetach:      a.IdleDetach,
			Window:          a.Window,
			Period:          a.Period,
		},
	}
}

// convert turns the block into the family's config; its errors name the field and the fix. Delayed-ACK events
// nobody consumes are not sampled.
func (a AcksConfig) convert(c common, withLogs bool, hz int) (acks.Config, []error) {
	def := acks.DefaultConfig()
	cfg := acks.DefaultConfig()
	cfg.HZ = hz
	cfg.ForceMark = c.forceMark
	var errs, more []error
	cfg.LocalPorts, errs = checkPorts("acks.local_ports", a.LocalPorts)
	cfg.PeerPorts, more = checkPorts("acks.peer_ports", a.PeerPorts)
	errs = append(errs, more...)
	cfg.Peers, more = checkPrefixes("acks.peers", a.Peers, "10.0.0.0/8 or 2001:db8::/32")
	errs = append(errs, more...)
	errs = append(errs, checkNetnsPaths("acks.netns", a.Netns, acks.MaxScopeNetns)...)
	cfg.Netns = a.Netns
	if err := checkMapSize("acks.max_keys", a.MaxKeys, def.MaxKeys); err != nil {
		errs = append(errs, err)
	}
	cfg.MaxKeys = a.MaxKeys
	if err := checkMapSize("acks.max_sockets", a.MaxSockets, def.MaxSockets); err != nil {
		errs = append(errs, err)
	}
	cfg.MaxSockets = a.MaxSockets
	if a.MaxSeries < 1 {
		errs = append(errs, fmt.Errorf("acks.max_series: %d must be at least 1 (default 1000)", a.MaxSeries))
	}

	ps := a.PerSegment
	cfg.PerSegment = ps.Enabled
	if ps.EventMinDelay < 0 || ps.EventMinDelay > 10*time.Second {
		errs = append(errs, fmt.Errorf("acks.per_segment.event_min_delay: %v must be between 0 and 10s (e.g. 10ms)", ps.EventMinDelay))
	}
	cfg.EventMinDelay = ps.EventMinDelay
	errs = append(errs, checkSampling("acks.per_segment.sampling", ps.Sampling, "2x rate_per_cpu")...)
	cfg.Delivery = c.delivery(ps.Sampling)
	if !ps.Enabled || !withLogs || !c.Events.TcpackAckDelayed.Enabled {
		cfg.EventsPerSecond = 0
	}
	errs = append(errs, checkPerSegmentAttach(ps, def)...)
	cfg.Attach, cfg.IdleDetach, cfg.Window, cfg.Period = ps.Attach, ps.IdleDetach, ps.Window, ps.Period
	for i, attr := range ps.DelayAttributes {
		if !slices.Contains(delayAttributes, attr) {
			errs = append(errs, fmt.Errorf("acks.per_segment.delay_attributes[%d]: unknown attribute %q, use %s", i, attr, strings.Join(delayAttributes, ", ")))
		}
	}
	return cfg, errs
}

// checkPerSegmentAttach validates acks.per_segment.attach and the timings of its mode.
func checkPerSegmentAttach(ps PerSegmentConfig, def acks.Config) []error {
	switch ps.Attach {
	case "", acks.AttachWindows:
		if ps.Window < loader.MinWindow {
			return []error{fmt.Errorf("acks.per_segment.window: %s is too short, use at least %s (default %s)", ps.Window, loader.MinWindow, def.Window)}
		}
		if ps.Period <= ps.Window {
			return []error{fmt.Errorf("acks.per_segment.period: %s must be longer than window %s (default %s: %s of every %s)", ps.Period, ps.Window, def.Period, def.Window, def.Period)}
		}
		return nil
	case loader.AttachOnTraffic, loader.AttachAlways:
		return checkAttach("acks.per_segment", ps.Attach, ps.IdleDetach, def.IdleDetach, "", "")
	}
	return []error{fmt.Errorf("acks.per_segment.attach: %q, use %s (the default: the per-segment hooks for a window of each period), %s (while sockets in scope come and go) or %s (every hook from the start)",
		ps.Attach, acks.AttachWindows, loader.AttachOnTraffic, loader.AttachAlways)}
}

// acksFamily reports ACK counts, and with the per-segment tier delays and causes, per
// (netns, service port, role).
type acksFamily struct {
	block  AcksConfig
	common common
	host   *familyHost
	probe  *acks.Probe
	// series are the series admitted under acks.max_series, for good.
	series map[ackSeries]bool
	// stats are the last collection's, kept for the delay histogram.
	stats []acks.Stats
	// walkErr is the last walk error logged, so that a lasting one is logged once.
	walkErr string
	// unreachedLogged: the windows' walk could not reach open sockets, and the log said so.
	unreachedLogged bool
}

func (f *acksFamily) name() string        { return acks.Family }
func (f *acksFamily) enabled() bool       { return f.block.Enabled }
func (f *acksFamily) hookNames() []string { return acks.HookNames() }
func (f *acksFamily) usesTickRate()       {}

func (f *acksFamily) validate() []error {
	_, errs := f.block.convert(f.common, true, 0)
	return errs
}

func (f *acksFamily) start(h *familyHost) (loader.Report, error) {
	f.host = h
	cfg, _ := f.block.convert(f.common, h.withLogs, h.hz)
	var sink func([]acks.Event)
	if h.withLogs {
		sink = f.consumeEvents
	}
	p, err := acks.Start(h.env, cfg, sink)
	if err != nil {
		return loader.Report{}, err
	}
	f.probe, f.series = p, map[ackSeries]bool{}
	return p.Report(), nil
}

func (f *acksFamily) close() error { return f.probe.Close() }

// ackSeries identifies the statistics of one service port and role in one netns.
type ackSeries struct {
	netns uint32
	port  uint16
	role  acks.Role
}

var ackRoles = map[acks.Role]metadata.AttributeTcpackSocketRole{
	acks.RoleServer: metadata.AttributeTcpackSocketRoleServer,
	acks.RoleClient: metadata.AttributeTcpackSocketRoleClient,
}

var ackModes = map[acks.Mode]metadata.AttributeTcpackAckMode{
	acks.ModeRoute:    metadata.AttributeTcpackAckModeRoute,
	acks.ModeQuick:    metadata.AttributeTcpackAckModeQuick,
	acks.ModePingpong: metadata.AttributeTcpackAckModePingpong,
	acks.ModeDelayed:  metadata.AttributeTcpackAckModeDelayed,
}

var ackCauses = map[acks.Cause]metadata.AttributeTcpackAckCause{
	acks.CausePiggyback: metadata.AttributeTcpackAckCausePiggyback,
	acks.CauseRoute:     metadata.AttributeTcpackAckCauseRoute,
	acks.CauseQuick:     metadata.AttributeTcpackAckCauseQuick,
	acks.CauseAppRead:   metadata.AttributeTcpackAckCauseAppRead,
	acks.CauseTimer:     metadata.AttributeTcpackAckCauseDelackTimer,
	acks.CauseArrival:   metadata.AttributeTcpackAckCauseDataArrival,
}

func (f *acksFamily) record(now pcommon.Timestamp) error {
	stats, err := f.probe.Snapshot()
	if err != nil {
		return err
	}
	if err := f.probe.WalkErr(); err != nil && err.Error() != f.walkErr {
		f.host.logger.Warn("acks: some namespaces could not be walked: their sockets open before the start are not counted, the others' counts come in only at their close", zap.Error(err))
		f.walkErr = err.Error()
	} else if err == nil {
		f.walkErr = ""
	}
	f.stats = capSeries(f.series, f.block.MaxSeries, stats)
	mb := f.host.mb
	perSegment := f.block.PerSegment.Enabled
	for _, s := range f.stats {
		port, role, netns := int64(s.ServerPort), ackRoles[s.Role], int64(s.Netns)
		mb.RecordTcpackAckSegmentsReceivedDataPoint(now, int64(s.DataSegmentsIn), port, role, netns)
		mb.RecordTcpackAckSegmentsSentDataPoint(now, int64(s.DataSegmentsOut), metadata.AttributeTcpackSegmentKindData, port, role, netns)
		mb.RecordTcpackAckSegmentsSentDataPoint(now, int64(s.ControlSegmentsOut()), metadata.AttributeTcpackSegmentKindControl, port, role, netns)
		mb.RecordTcpackAckForcedSegmentsSentDataPoint(now, int64(s.ForcedDataSegmentsOut), metadata.AttributeTcpackSegmentKindData, port, role, netns)
		mb.RecordTcpackAckForcedSegmentsSentDataPoint(now, int64(s.ForcedControlSegmentsOut()), metadata.AttributeTcpackSegmentKindControl, port, role, netns)
		if f.probe.TimerCounted() {
			mb.RecordTcpackAckTimerCountDataPoint(now, int64(s.TimerAcks), port, role, netns)
			if !f.probe.TimerDeferredSeen() {
				mb.RecordTcpackAckTimerDeferredDataPoint(now, int64(s.TimerDeferred), port, role, netns)
			}
		}
		for mode, n := range s.Sockets {
			mb.RecordTcpackAckSocketsDataPoint(now, int64(n), ackModes[acks.Mode(mode)], port, role, netns)
		}
		mb.RecordTcpackAckSocketsForcedDataPoint(now, int64(s.SocketsForced), port, role, netns)
		mb.RecordTcpackAckConnectionsDataPoint(now, int64(s.SocketsEstablished), metadata.AttributeTcpackSocketOriginEstablished, port, role, netns)
		mb.RecordTcpackAckConnectionsDataPoint(now, int64(s.SocketsExisting), metadata.AttributeTcpackSocketOriginExisting, port, role, netns)
		if !perSegment {
			continue
		}
		for cause, n := range s.ByCause {
			mb.RecordTcpackAckCountDataPoint(now, int64(n), ackCauses[acks.Cause(cause)], port, role, netns)
		}
		mb.RecordTcpackAckOtherCountDataPoint(now, int64(s.OtherAcks), port, role, netns)
		mb.RecordTcpackAckSegmentsDataPoint(now, int64(s.SegmentsAcked), port, role, netns)
		mb.RecordTcpackAckQuotaExhaustedCountDataPoint(now, int64(s.QuotaSpent), port, role, netns)
		mb.RecordTcpackAckForcedCountDataPoint(now, int64(s.Forced), port, role, netns)
		if f.probe.Decides() {
			mb.RecordTcpackAckDelayDecisionsCountDataPoint(now, int64(s.DelayedDecisions), port, role, netns)
		}
	}
	losses, err := f.probe.Losses()
	if err != nil {
		return err
	}
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(losses.KeysFull), metadata.AttributeTcpackMapAckCounts)
	mb.RecordTcpackAckUncountedDataPoint(now, int64(losses.SocketsFull), metadata.AttributeTcpackAckUncountedCauseSocketsFull)
	mb.RecordTcpackAckUncountedDataPoint(now, int64(losses.TimerUnknown), metadata.AttributeTcpackAckUncountedCauseTimerUnknown)
	if !perSegment {
		return nil
	}
	mb.RecordTcpackEventsSuppressedDataPoint(now, int64(losses.SampledOut), metadata.AttributeTcpackEventKindAckDelayed, metadata.AttributeTcpackSuppressionCauseRateLimit)
	mb.RecordTcpackEventsSuppressedDataPoint(now, int64(losses.RingBufferFull), metadata.AttributeTcpackEventKindAckDelayed, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	mb.RecordTcpackAckUnobservedCountDataPoint(now, int64(losses.Unobserved))
	mb.RecordTcpackAckSampledTimeDataPoint(now, f.probe.SampledTime().Seconds())
	if losses.WindowUnreached > 0 && !f.unreachedLogged {
		f.host.logger.Warn("acks: this kernel refuses to ask open sockets for per-segment callbacks from the socket walk (TCP_BPF_SOCK_OPS_CB_FLAGS, Linux 6.12+): the sampling windows see only connections established inside a window; use acks.per_segment.attach always to judge every socket",
			zap.Uint64("sockets_unreached", losses.WindowUnreached))
		f.unreachedLogged = true
	}
	armed, err := f.probe.Armed()
	if err != nil {
		f.host.logger.Warn("acks: attaching the per-segment hooks on traffic", zap.Error(err))
	}
	mb.RecordTcpackAckArmedDataPoint(now, boolValue(armed))
	return nil
}

// capSeries folds statistics of series not admitted (of at most limit) into the overflow
// series. Admission is first come, for good, so a cumulative series never changes meaning.
func capSeries(admitted map[ackSeries]bool, limit int, stats []acks.Stats) []acks.Stats {
	slices.SortFunc(stats, func(a, b acks.Stats) int {
		if a.Netns != b.Netns {
			return cmp.Compare(a.Netns, b.Netns)
		}
		if a.ServerPort != b.ServerPort {
			return cmp.Compare(a.ServerPort, b.ServerPort)
		}
		return cmp.Compare(a.Role, b.Role)
	})
	out := make([]acks.Stats, 0, len(stats))
	var overflow *acks.Stats
	for _, s := range stats {
		key := ackSeries{s.Netns, s.ServerPort, s.Role}
		if !admitted[key] && len(admitted) < limit {
			admitted[key] = true
		}
		if admitted[key] {
			out = append(out, s)
			continue
		}
		if overflow == nil {
			overflow = &acks.Stats{Delay: acks.Histogram{Bounds: s.Delay.Bounds, Counts: make([]uint64, len(s.Delay.Counts))}}
		}
		overflow.Add(s)
	}
	if overflow != nil {
		out = append(out, *overflow)
	}
	return out
}

// appendMetrics adds tcpack.ack.delay to the emitted metrics. mdatagen cannot generate
// histograms, so it is built here, with the attributes acks.delay_attributes keeps.
func (f *acksFamily) appendMetrics(md pmetric.Metrics, now pcommon.Timestamp) {
	stats := f.stats
	if !f.block.PerSegment.Enabled || len(stats) == 0 || md.ResourceMetrics().Len() == 0 {
		return
	}
	withPort := slices.Contains(f.block.PerSegment.DelayAttributes, "server.port")
	withRole := slices.Contains(f.block.PerSegment.DelayAttributes, "tcpack.socket.role")
	withNetns := slices.Contains(f.block.PerSegment.DelayAttributes, "tcpack.netns.inode")
	merged := map[ackSeries]*acks.Stats{}
	var order []ackSeries
	for _, s := range stats {
		key := ackSeries{}
		if withNetns {
			key.netns = s.Netns
		}
		if withPort {
			key.port = s.ServerPort
		}
		if withRole {
			key.role = s.Role
		}
		m, ok := merged[key]
		if !ok {
			m = &acks.Stats{Delay: acks.Histogram{Bounds: s.Delay.Bounds, Counts: make([]uint64, len(s.Delay.Counts))}}
			merged[key] = m
			order = append(order, key)
		}
		m.Add(s)
	}

	sm := md.ResourceMetrics().At(0).ScopeMetrics()
	if sm.Len() == 0 {
		sm.AppendEmpty().Scope().SetName(metadata.ScopeName)
	}
	m := sm.At(0).Metrics().AppendEmpty()
	m.SetName("tcpack.ack.delay")
	m.SetUnit("s")
	m.SetDescription("How long the oldest unacknowledged data waited for each ACK that acknowledged new data, on the sockets in the acks family's scope, while the per-segment hooks are attached (tcpack.ack.armed; for how long, tcpack.ack.sampled.time).")
	h := m.SetEmptyHistogram()
	h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	for _, key := range order {
		s := merged[key]
		dp := h.DataPoints().AppendEmpty()
		dp.SetStartTimestamp(f.host.startTime)
		dp.SetTimestamp(now)
		dp.ExplicitBounds().FromRaw(s.Delay.Bounds)
		dp.BucketCounts().FromRaw(s.Delay.Counts)
		dp.SetCount(s.Delay.Count)
		dp.SetSum(s.Delay.Sum)
		if withPort {
			dp.Attributes().PutInt("server.port", int64(key.port))
		}
		if withRole {
			dp.Attributes().PutStr("tcpack.socket.role", key.role.String())
		}
		if withNetns {
			dp.Attributes().PutInt("tcpack.netns.inode", int64(key.netns))
		}
	}
}

// consumeEvents turns sampled delayed ACKs into log records.
func (f *acksFamily) consumeEvents(events []acks.Event) {
	ctx := context.Background()
	hz := f.host.hz
	f.host.sendEvents("ack events", func(lb *metadata.LogsBuilder) {
		for _, e := range events {
			name, _ := f.host.env.Netns.Name(e.Netns)
			ato := -1.0 // unknown tick rate: left out of the record
			if hz > 0 {
				ato = float64(e.ATOJiffies) / float64(hz)
			}
			lb.RecordTcpackAckDelayedEvent(ctx, pcommon.NewTimestampFromTime(e.Time), e.Delay.Seconds(), ackCauses[e.Cause],
				int64(e.Segments), int64(e.Quick), int64(e.Pingpong), e.DstQuickAck, ato, e.Forced,
				addrString(e.LocalAddr), int64(e.LocalPort), addrString(e.PeerAddr), int64(e.PeerPort), int64(e.Netns), name)
		}
	})
}
