// Package acks observes the ACKs this host sends on the TCP sockets in scope: how long the
// oldest unacknowledged data waited (a delay histogram), which rule sent each ACK, and how
// often the quick-ACK quota ran out. Where fentry or kprobes work it also counts the kernel's
// decisions to delay an ACK, and knows which ACKs the delayed-ACK timer sent. The slow-reader
// test (client every 2 ms, server reading every 50 ms) logs on a 6.12 guest:
//
//	port 5106: 39 ACKs for 300 segments, piggyback=0 route=0 quick=16 app_read=12
//	  delack_timer=0 data_arrival=11; other=0 quota_spent=1 delayed_decisions=284 mean delay 14.20 ms
package acks

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/selector"
)

// Family is the name the loader and the telemetry use for this probe family.
const Family = "acks"

// MaxScopeNetns is how many namespaces Config.Netns may name.
const MaxScopeNetns = selector.MaxNetns

// Config scopes and sizes the family.
type Config struct {
	// LocalPorts and PeerPorts select the sockets observed: a socket is in scope if its local
	// port is in LocalPorts or its peer port in PeerPorts. Both empty means every TCP socket,
	// which adds a callback to every segment every socket sends.
	LocalPorts []uint16
	PeerPorts  []uint16
	// Peers adds sockets whose peer address is in one of these prefixes.
	Peers []netip.Prefix
	// Netns, when set, limits the scope to sockets in these network namespaces (files such
	// as /proc/self/ns/net or /run/netns/NAME); ports and peers then select among those.
	Netns []string
	// ForceMark is the SO_MARK the quickack family stamps on sockets it forces (0: none),
	// and HZ the kernel tick rate, which tells a bounded delayed-ACK timeout from the default.
	ForceMark uint32
	HZ        int
	// EventMinDelay: pure ACKs that waited at least this long are sampled as events.
	EventMinDelay time.Duration
	eventreader.Delivery
	// MaxKeys bounds the (netns, local port) statistics map.
	MaxKeys uint32
	// Strategies restricts attach mechanisms (see loader.Options.Only).
	Strategies []loader.Kind
	// Attach is loader.AttachOnTraffic (also when empty) or loader.AttachAlways. On traffic,
	// the per-segment hooks (tcp_probe, the delayed-ACK hooks) are attached only while
	// in-scope sockets established since the start come and go: sock_ops counts those open and
	// those opened. Pure ACKs sent before the hooks are in place (within about a poll, 100 ms,
	// of the first such socket) are counted as unobserved, not in the statistics. Always: every
	// hook stays attached, statistics exact from the first segment.
	Attach string
	// IdleDetach is how long no in-scope socket may be open, or opened, before the
	// per-segment hooks detach again (on traffic only).
	IdleDetach time.Duration
}

// DefaultConfig observes every socket and samples ACKs delayed by 10 ms or more.
func DefaultConfig() Config {
	return Config{
		EventMinDelay: 10 * time.Millisecond,
		Delivery:      eventreader.DefaultDelivery(100, 200),
		MaxKeys:       4096,
		Attach:        loader.AttachOnTraffic,
		IdleDetach:    time.Minute,
	}
}

func hooks(cgroup string) []loader.Hook {
	return []loader.Hook{
		// sock_ops is the only way to see every transmitted segment without kprobes; it
		// must sit at the cgroup root, above every listener (notes/kernel.md).
		{Name: "sock_ops", Strategies: []loader.Strategy{
			{Kind: loader.SockOps, Program: acksProgAckSockops, Target: cgroup},
		}},
		{Name: "tcp_probe", Strategies: []loader.Strategy{
			{Kind: loader.TPBTF, Program: acksProgAckDataArrival, Target: "tcp_probe", Args: 2},
		}},
		// The kernel's own delayed-ACK decisions. No tracepoint reaches them, so they need
		// fentry or kprobes (absent on kernels built without kprobes or under lockdown);
		// without them the decisions are not counted and timer ACKs are inferred from timing.
		{Name: "tcp_send_delayed_ack", Optional: true, Strategies: []loader.Strategy{
			{Kind: loader.FEntry, Program: acksProgAckDelayedFentry, Target: "tcp_send_delayed_ack"},
			{Kind: loader.Kprobe, Program: acksProgAckDelayedKprobe, Target: "tcp_send_delayed_ack"},
		}},
		{Name: hookDelackTimer, Optional: true, Strategies: []loader.Strategy{
			{Kind: loader.FEntry, Program: acksProgAckDelackTimerFentry, Target: hookDelackTimer},
			{Kind: loader.Kprobe, Program: acksProgAckDelackTimerKprobe, Target: hookDelackTimer},
		}},
	}
}

const hookDelackTimer = "tcp_delack_timer_handler"

// hookedDelackTimer is HOOKED_DELACK_TIMER in bpf/acks.bpf.c.
const hookedDelackTimer = 1

// HookNames lists the family's hooks, for reporting a family that could not start.
func HookNames() []string { return loader.HookNames(hooks("")) }

// Probe is the loaded ACK family.
type Probe struct {
	env    *kernel.Env
	set    *loader.Set
	report loader.Report
	reader *eventreader.Reader
	// arming is nil with loader.AttachAlways; mu guards its state.
	arming *loader.Arming
	mu     sync.Mutex
}

// Start loads and attaches the family; sampled delayed-ACK events go to sink in batches.
func Start(env *kernel.Env, cfg Config, sink func([]Event)) (*Probe, error) {
	cgroup, err := kernel.CgroupV2Root()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	spec, err := loadAcks()
	if err != nil {
		return nil, err
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	if cfg.IdleDetach == 0 {
		cfg.IdleDetach = DefaultConfig().IdleDetach
	}
	set, report, err := loader.Load(Family, env, spec, hooks(cgroup), loader.Options{Only: cfg.Strategies})
	if err != nil {
		return nil, err
	}
	if err := fillScope(set.Maps, cfg); err != nil {
		set.Close()
		return nil, err
	}
	if set.Link(hookDelackTimer) != nil {
		if err := set.Maps[acksMapHooked].Put(uint32(0), uint32(hookedDelackTimer)); err != nil {
			set.Close()
			return nil, fmt.Errorf("%s: record attached hooks: %w", Family, err)
		}
	}
	p := &Probe{env: env, set: set, report: report}
	if cfg.Attach == loader.AttachAlways {
		if err := setArmed(set, true); err != nil {
			set.Close()
			return nil, err
		}
	} else if err := p.startArming(cfg.IdleDetach); err != nil {
		set.Close()
		return nil, err
	}
	if p.reader, err = eventreader.Start(set.Maps[acksMapEvents], cfg.FlushInterval, eventreader.Decoder(p.decode), sink); err != nil {
		p.arming.Stop()
		set.Close()
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	return p, nil
}

func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	if err := loader.CheckAttach(cfg.Attach, cfg.IdleDetach); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	if err := eventreader.Configure(spec, cfg.Delivery, 0, nil); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	byFlow := len(cfg.LocalPorts) > 0 || len(cfg.PeerPorts) > 0 || len(cfg.Peers) > 0
	byNetns := len(cfg.Netns) > 0
	vars := map[string]any{
		acksVarScopeAll:                boolByte(!byFlow && !byNetns),
		acksVarScopeByNetns:            boolByte(byNetns),
		acksVarScopeByFlow:             boolByte(byFlow),
		acksVarForceMark:               cfg.ForceMark,
		acksVarDelackMaxDefaultJiffies: uint32(cfg.HZ / 5), // TCP_DELACK_MAX
		acksVarEventMinDelayNs:         uint64(cfg.EventMinDelay),
		acksVarMaxKeys:                 cfg.MaxKeys,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("%s: set %s: %w", Family, name, err)
		}
	}
	if err := selector.Size(spec, scopeEntries(cfg), len(cfg.Netns)); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	spec.Maps[acksMapAckIds].MaxEntries = cfg.MaxKeys
	spec.Maps[acksMapAckCounts].MaxEntries = cfg.MaxKeys
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// scopeEntries are the selector entries of cfg's ports and peers; a match's value is 1.
func scopeEntries(cfg Config) []selector.Entry {
	var entries []selector.Entry
	for _, p := range cfg.LocalPorts {
		entries = append(entries, selector.Entry{Side: selector.Local, Port: p, Value: 1})
	}
	for _, p := range cfg.PeerPorts {
		entries = append(entries, selector.Entry{Side: selector.Peer, Port: p, Value: 1})
	}
	for _, p := range cfg.Peers {
		entries = append(entries, selector.Entry{Peer: p, Value: 1})
	}
	return entries
}

// fillScope names the namespaces in scope and fills the selector in each (in netns 0 when
// the scope names none).
func fillScope(maps map[string]*ebpf.Map, cfg Config) error {
	inodes := []uint32{0}
	if len(cfg.Netns) > 0 {
		inodes = nil
	}
	for _, path := range cfg.Netns {
		ino, err := kernel.NetnsInode(path)
		if err != nil {
			return fmt.Errorf("%s.netns: %s: %w; name a netns file such as /proc/self/ns/net or /run/netns/NAME", Family, path, err)
		}
		if err := selector.AddNetns(maps, ino); err != nil {
			return fmt.Errorf("%s: scope netns %s: %w", Family, path, err)
		}
		inodes = append(inodes, ino)
	}
	entries := scopeEntries(cfg)
	for _, ino := range inodes {
		if err := selector.Fill(maps, ino, entries); err != nil {
			return fmt.Errorf("%s: scope: %w", Family, err)
		}
	}
	return nil
}

// Report says which hooks attached and how.
func (p *Probe) Report() loader.Report { return p.report }

// Decides says whether the kernel's delayed-ACK decisions are counted: only where a hook on
// tcp_send_delayed_ack attached (fentry or kprobe).
func (p *Probe) Decides() bool {
	for _, h := range p.report.Hooks {
		if h.Hook == "tcp_send_delayed_ack" {
			return h.Attached != nil
		}
	}
	return false
}

// Close detaches everything and stops the event reader.
func (p *Probe) Close() error {
	if p.set == nil {
		return nil
	}
	p.arming.Stop()
	err := errors.Join(p.reader.Close(), p.set.Close())
	p.set = nil
	return err
}

// Cause is why an ACK that acknowledged new data was sent when it was.
type Cause int

// Causes, as in bpf/acks.bpf.c enum ack_cause.
const (
	CausePiggyback Cause = iota // carried on a data segment
	CauseRoute                  // the route has quickack 1 (dst_quick_ack)
	CauseQuick                  // quick-ACK mode: quota left, not pingpong
	CauseAppRead                // sent from the application's own call on the socket (its read)
	CauseTimer                  // the delayed-ACK timer
	CauseArrival                // on data arrival: two full segments, out of order, ACK_NOW
	causeCount
)

var causeNames = [causeCount]string{"piggyback", "route", "quick", "app_read", "delack_timer", "data_arrival"}

func (c Cause) String() string {
	if c >= 0 && c < causeCount {
		return causeNames[c]
	}
	return fmt.Sprintf("cause_%d", int(c))
}

// Stats are the cumulative ACK statistics of one local port in one netns.
type Stats struct {
	Netns     uint32
	LocalPort uint16
	// ByCause counts ACKs that acknowledged new data.
	ByCause [causeCount]uint64
	// OtherAcks are pure ACKs that acknowledged nothing new (window updates, duplicates).
	OtherAcks uint64
	// SegmentsAcked is how many received data segments those ACKs covered.
	SegmentsAcked uint64
	// QuotaSpent counts ACKs that used the last quick ACK of the quota.
	QuotaSpent uint64
	// Forced counts ACKs sent by sockets the quickack family forces.
	Forced uint64
	// DelayedDecisions counts the kernel's decisions to delay an ACK (tcp_send_delayed_ack),
	// one per data segment at most; zero where that function cannot be hooked (see Report).
	DelayedDecisions uint64
	// Delay is the histogram of the wait of the oldest unacknowledged data.
	Delay Histogram
}

// Acks is the number of ACKs that acknowledged new data.
func (s Stats) Acks() uint64 {
	var n uint64
	for _, c := range s.ByCause {
		n += c
	}
	return n
}

// Histogram has explicit upper bounds in seconds; Counts has one more entry than Bounds.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64 // seconds
	Count  uint64
}

// histBounds are the kernel's log2-microsecond bucket bounds, in seconds: bucket i holds
// delays below 2^i us.
var histBounds = func() []float64 {
	b := make([]float64, len(acksAckStats{}.DelayHist)-1)
	for i := range b {
		b[i] = float64(uint64(1)<<i) / 1e6
	}
	return b
}()

// Snapshot reads the per-CPU statistics, summed per (netns, local port).
func (p *Probe) Snapshot() ([]Stats, error) {
	var out []Stats
	var key acksAckKey
	var id uint32
	var perCPU []acksAckStats
	counts := p.set.Maps[acksMapAckCounts]
	it := p.set.Maps[acksMapAckIds].Iterate()
	for it.Next(&key, &id) {
		if err := counts.Lookup(id-1, &perCPU); err != nil {
			return nil, fmt.Errorf("%s: read statistics of %+v: %w", Family, key, err)
		}
		s := Stats{Netns: key.Netns, LocalPort: key.LocalPort,
			Delay: Histogram{Bounds: histBounds, Counts: make([]uint64, len(histBounds)+1)}}
		var sumNs uint64
		for _, v := range perCPU {
			for i, c := range v.ByCause {
				s.ByCause[i] += c
			}
			s.OtherAcks += v.OtherAcks
			s.SegmentsAcked += v.SegsAcked
			s.QuotaSpent += v.QuotaSpent
			s.Forced += v.Forced
			s.DelayedDecisions += v.DelayedDecisions
			sumNs += v.DelaySumNs
			for i, c := range v.DelayHist {
				s.Delay.Counts[i] += c
				s.Delay.Count += c
			}
		}
		s.Delay.Sum = float64(sumNs) / 1e9
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read statistics: %w", Family, err)
	}
	return out, nil
}

// Event is a sampled pure ACK that waited at least the configured delay.
type Event struct {
	Time      time.Time
	Delay     time.Duration
	Cause     Cause
	Netns     uint32
	Segments  uint32 // data segments it acknowledged
	LocalAddr netip.Addr
	LocalPort uint16
	PeerAddr  netip.Addr
	PeerPort  uint16
	// The socket's quick-ACK state when the ACK left: the quota left, pingpong (interactive
	// mode), whether the route forces quick ACKs, the delayed-ACK timeout, pending flags.
	Quick       uint8
	Pingpong    uint8
	DstQuickAck bool
	ATOJiffies  uint32
	// Forced: the socket is forced by the quickack family, yet this ACK was delayed.
	Forced  bool
	Pending uint8
}

func (p *Probe) decode(r *acksAckEvent) Event {
	e := Event{
		Time: p.env.KtimeToTime(r.TsNs), Delay: time.Duration(r.DelayNs), Cause: Cause(r.Cause),
		Netns: r.Netns, Segments: r.Segs, LocalPort: r.Flow.LocalPort, PeerPort: r.Flow.PeerPort,
		Quick: r.Quick, Pingpong: r.Pingpong, DstQuickAck: r.DstQuickAck != 0, ATOJiffies: r.AtoJiffies,
		Pending: r.Pending, Forced: r.Forced != 0,
	}
	e.LocalAddr, e.PeerAddr = kernel.FlowAddrs(r.Flow.L3proto, r.Flow.LocalAddr, r.Flow.PeerAddr)
	return e
}

// Losses count what the kernel side could not report.
type Losses struct {
	SampledOut     uint64 // delayed-ACK events the rate limit suppressed
	RingBufferFull uint64 // events lost to a full ring buffer
	KeysFull       uint64 // ACKs not counted: no room in the statistics map
	// Unobserved are pure ACKs of in-scope sockets sent while the per-segment hooks were
	// detached (loader.AttachOnTraffic, before they attached): not in the statistics.
	Unobserved uint64
}

// Losses reads the family's loss counters.
func (p *Probe) Losses() (Losses, error) {
	c, err := loader.SumPerCPUSlots(p.set.Maps[acksMapCounters])
	if err != nil {
		return Losses{}, fmt.Errorf("%s: %w", Family, err)
	}
	return Losses{SampledOut: c[0], RingBufferFull: c[1], KeysFull: c[2], Unobserved: c[3]}, nil
}
