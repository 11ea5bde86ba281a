// Package footprint counts, for the flows the user names, the packets that reached each layer
// of the kernel's receive and transmit paths, and the drop reasons of those the kernel freed,
// so a dashboard shows the layer at which a flow's packets vanish. A snapshot looks like:
//
//	flow=dns layer=net_dev_queue      direction=transmit packets=50
//	flow=dns layer=net_dev_start_xmit direction=transmit packets=3
//	flow=dns layer=net_dev_xmit       direction=transmit packets=3
//	flow=dns drop direction=transmit reason=QDISC_DROP symbol=__dev_queue_xmit packets=47
//	loss flow=dns direction=transmit net_dev_queue -> net_dev_start_xmit packets=47 reason=QDISC_DROP
//
// Nothing is attached unless at least one flow is named: Start refuses an empty list. With
// Attach "on_traffic" (the default) only the sentinels run while the named flows are idle:
// kfree_skb (drops only) all the time, and the two per-packet sentinels for a window of each
// sampling period; the other layers attach when a sentinel sees a flow's packet and detach
// again after IdleDetach without one.
package footprint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// Family is the name the loader and the telemetry use for this probe family.
const Family = "footprint"

// MaxFlows is how many flows the kernel side can match (MAX_FLOWS in bpf/footprint.bpf.c).
const MaxFlows = 64

// Flow names the packets to follow. Zero fields match anything; a packet matches in either
// orientation: Local -> Peer is "transmit", Peer -> Local is "receive".
type Flow struct {
	Name string
	// Protocol is "tcp", "udp", or "" for both.
	Protocol string
	// Local and Peer are CIDRs (an address is a /32 or /128); the zero Prefix is any address.
	// Both, when set, must be of one IP version.
	Local, Peer         netip.Prefix
	LocalPort, PeerPort uint16
}

// Config is the set of flows and how to attach.
type Config struct {
	Flows []Flow
	// Strategies restricts attach mechanisms (see loader.Options.Only).
	Strategies []loader.Kind
	// MaxDropKeys bounds the (flow, direction, reason, location) drop counters.
	MaxDropKeys uint32
	// Cgroup is the cgroup v2 directory whose sockets the cgroup_skb strategy observes; empty
	// is the root of the hierarchy, which sees every socket.
	Cgroup string
	// Attach is loader.AttachOnTraffic (also when empty) or loader.AttachAlways. On traffic,
	// only the sentinel layers stay attached (net_dev_queue, netif_receive_skb, and
	// kfree_skb, which runs only for drops) until one of them sees a named flow's packet;
	// then the other layers attach and every layer starts counting. The packets seen before
	// that are counted as unobserved, not at any layer. Always: every layer counts from the
	// first packet, at the cost of every layer's program running for every packet.
	Attach string
	// IdleDetach is how long the flows may go without a packet before the layers other than
	// the sentinels detach again (on traffic only).
	IdleDetach time.Duration
	// SentinelWindow and SentinelPeriod sample the host's traffic while the flows are idle (on
	// traffic only): the per-packet sentinels (net_dev_queue, netif_receive_skb) are attached
	// for SentinelWindow out of every SentinelPeriod, so an idle flow costs every packet of
	// the host that share of two program runs; kfree_skb stays attached, so a drop of a named
	// flow arms at once. A period of 0, or a window as long as the period, keeps the
	// sentinels attached. The window is at least one poll of the watcher (100 ms).
	SentinelWindow, SentinelPeriod time.Duration
}

// sentinels are the hooks loader.AttachOnTraffic keeps while the flows are idle; of them,
// sampledSentinels run for every packet of the host, so they attach only for a window of each
// sampling period.
var (
	sentinels        = map[string]bool{NetDevQueue.String(): true, NetifReceiveSkb.String(): true, hookKfreeSkb: true}
	sampledSentinels = map[string]bool{NetDevQueue.String(): true, NetifReceiveSkb.String(): true}
)

// DefaultConfig is what the receiver uses unless told otherwise; it names no flow. The
// sentinels' 10% duty cycle takes their cost on an idle flow (measured: about 3% of TCP RR on
// this project's VMs with them always attached, nearly all of it the calls themselves) to a
// tenth, at the price of up to a period before a busy flow's packets arm the layers.
func DefaultConfig() Config {
	return Config{MaxDropKeys: 1024, Attach: loader.AttachOnTraffic, IdleDetach: time.Minute,
		SentinelWindow: 100 * time.Millisecond, SentinelPeriod: time.Second}
}

// MinSentinelWindow is the shortest sampling window: one poll of the watcher, which attaches
// and detaches the sentinels.
const MinSentinelWindow = loader.ArmPoll

// CheckSampling validates a sentinel sampling window and period (see Config).
func CheckSampling(window, period time.Duration) error {
	switch {
	case period < 0:
		return fmt.Errorf("sentinel period %s is negative", period)
	case period == 0:
		return nil
	case window < MinSentinelWindow:
		return fmt.Errorf("sentinel window %s, at least %s", window, MinSentinelWindow)
	case window > period:
		return fmt.Errorf("sentinel window %s is longer than its period %s", window, period)
	}
	return nil
}

// sampling says whether cfg attaches the per-packet sentinels only part of the time.
func (cfg Config) sampling() bool {
	return cfg.Attach != loader.AttachAlways && cfg.SentinelPeriod > 0 && cfg.SentinelWindow < cfg.SentinelPeriod
}

// Layer is a point of the receive or transmit path where packets are counted.
type Layer uint32

// Layers, as in bpf/footprint.bpf.c enum layer.
const (
	NetDevQueue Layer = iota
	NetDevStartXmit
	NetDevXmit
	EthTypeTrans
	NapiGroReceive
	NetifRx
	NetifReceiveSkb
	TCPv4Rcv
	TCPv6Rcv
	UDPRcv
	UDPv6Rcv
	SkFilter
	TCPProbe
	layerCount
)

var layerNames = [layerCount]string{
	"net_dev_queue", "net_dev_start_xmit", "net_dev_xmit",
	"eth_type_trans", "napi_gro_receive", "netif_rx", "netif_receive_skb",
	"tcp_v4_rcv", "tcp_v6_rcv", "udp_rcv", "udpv6_rcv", "sk_filter_trim_cap", "tcp_probe",
}

// String is the layer's name: the kernel function or tracepoint it is counted at.
func (l Layer) String() string {
	if l < layerCount {
		return layerNames[l]
	}
	return fmt.Sprintf("layer_%d", uint32(l))
}

// LayerNames lists every layer in path order, transmit then receive.
func LayerNames() []string { return append([]string(nil), layerNames[:]...) }

// hook names a hook after its layer; kfree_skb is the terminal one.
const hookKfreeSkb = "kfree_skb"

func tp(program, target string, args int) []loader.Strategy {
	return []loader.Strategy{
		{Kind: loader.TPBTF, Program: program + "_btf", Target: target, Args: args},
		{Kind: loader.RawTP, Program: program + "_raw", Target: target, Args: args},
	}
}

func fn(program, target string) []loader.Strategy {
	return []loader.Strategy{
		{Kind: loader.FEntry, Program: program + "_fentry", Target: target},
		{Kind: loader.Kprobe, Program: program + "_kprobe", Target: target},
	}
}

// hooks are attached deepest layer first, path by path: a packet counted at a layer then
// always finds the layers after it attached, so attaching never looks like loss. Tracepoints
// come first where they exist (cheapest, stable); the stack's functions (fentry, then kprobe)
// where there is no tracepoint, or as the fallback. Only the core layers are required.
func hooks(cgroup string) []loader.Hook {
	return []loader.Hook{
		{Name: hookKfreeSkb, Optional: true, Strategies: tp("fp_kfree_skb", "kfree_skb", 3)},
		{Name: TCPProbe.String(), Optional: true, Strategies: tp("fp_tcp_probe", "tcp_probe", 2)},
		{Name: SkFilter.String(), Optional: true, Strategies: append(fn("fp_sk_filter", "sk_filter_trim_cap"),
			loader.Strategy{Kind: loader.CgroupSkbIngress, Program: "fp_sk_filter_cgroup", Target: cgroup})},
		{Name: UDPv6Rcv.String(), Optional: true, Strategies: fn("fp_udpv6_rcv", "udpv6_rcv")},
		{Name: UDPRcv.String(), Optional: true, Strategies: fn("fp_udp_rcv", "udp_rcv")},
		{Name: TCPv6Rcv.String(), Optional: true, Strategies: fn("fp_tcp_v6_rcv", "tcp_v6_rcv")},
		{Name: TCPv4Rcv.String(), Optional: true, Strategies: fn("fp_tcp_v4_rcv", "tcp_v4_rcv")},
		{Name: NetifReceiveSkb.String(), Strategies: tp("fp_netif_receive_skb", "netif_receive_skb", 1)},
		{Name: NetifRx.String(), Optional: true, Strategies: tp("fp_netif_rx", "netif_rx", 1)},
		{Name: NapiGroReceive.String(), Optional: true, Strategies: append(tp("fp_napi_gro", "napi_gro_receive_entry", 1),
			fn("fp_napi_gro_receive", "napi_gro_receive")...)},
		{Name: EthTypeTrans.String(), Optional: true, Strategies: fn("fp_eth_type_trans", "eth_type_trans")},
		{Name: NetDevXmit.String(), Optional: true, Strategies: tp("fp_xmit", "net_dev_xmit", 2)},
		{Name: NetDevStartXmit.String(), Optional: true, Strategies: tp("fp_start_xmit", "net_dev_start_xmit", 1)},
		{Name: NetDevQueue.String(), Strategies: append(tp("fp_net_dev_queue", "net_dev_queue", 1),
			fn("fp_dev_queue_xmit", "__dev_queue_xmit")...)},
	}
}

// needed leaves out the L4 hooks no flow's packets can reach: every program runs for every
// packet on its path, so a UDP-only config does not pay for tcp_v4_rcv or tcp_probe.
func needed(all []loader.Hook, flows []Flow) []loader.Hook {
	var tcp, udp, v4, v6 bool
	for _, f := range flows {
		tcp = tcp || f.Protocol != "udp"
		udp = udp || f.Protocol != "tcp"
		l3, _ := l3proto(f)
		v4 = v4 || l3 != 0x86DD
		v6 = v6 || l3 != 0x0800
	}
	skip := map[string]bool{
		TCPProbe.String(): !tcp,
		TCPv4Rcv.String(): !tcp || !v4,
		TCPv6Rcv.String(): !tcp || !v6,
		UDPRcv.String():   !udp || !v4,
		UDPv6Rcv.String(): !udp || !v6,
	}
	var out []loader.Hook
	for _, h := range all {
		if !skip[h.Name] {
			out = append(out, h)
		}
	}
	return out
}

// HookNames lists the family's hooks, for reporting a family that could not start.
func HookNames() []string { return loader.HookNames(hooks("")) }

// Probe is the loaded footprint family.
type Probe struct {
	env     *kernel.Env
	cfg     Config
	report  loader.Report
	reasons map[uint32]string
	// lazy are the hooks loader.AttachOnTraffic attaches on traffic, in attach order; loaded the
	// layers whose hook attached at load.
	lazy   []string
	loaded [layerCount]bool
	// arming is nil with loader.AttachAlways; mu guards it and everything below.
	arming *loader.Arming

	mu       sync.Mutex
	set      *loader.Set
	attached [layerCount]bool
	tracker  tracker
	// activity is the flows' packets and drops counted so far, as last read while armed: idle
	// is told in user space, so the kernel writes nothing shared per packet.
	activity uint64
	// sampledFrom is when the sampling periods started; sentinelsOn whether the sampled
	// sentinels are attached now.
	sampledFrom time.Time
	sentinelsOn bool
}

// Start loads the family for cfg's flows and attaches it.
func Start(env *kernel.Env, cfg Config) (*Probe, error) {
	if len(cfg.Flows) == 0 {
		return nil, fmt.Errorf("%s: no flows named: nothing to attach", Family)
	}
	specs, err := flowSpecs(cfg.Flows)
	if err != nil {
		return nil, err
	}
	spec, err := loadFootprint()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[footprintVarN_flows].Set(uint32(len(cfg.Flows))); err != nil {
		return nil, fmt.Errorf("%s: set n_flows: %w", Family, err)
	}
	if err := spec.Variables[footprintVarFlows].Set(specs); err != nil {
		return nil, fmt.Errorf("%s: set flows: %w", Family, err)
	}
	spec.Maps[footprintMapLayerCounts].MaxEntries = uint32(len(cfg.Flows)) * uint32(layerCount) * 2
	if cfg.MaxDropKeys == 0 {
		cfg.MaxDropKeys = DefaultConfig().MaxDropKeys
	}
	if err := loader.CheckAttach(cfg.Attach, cfg.IdleDetach); err != nil {
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	if err := CheckSampling(cfg.SentinelWindow, cfg.SentinelPeriod); err != nil {
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	if cfg.Attach == "" {
		cfg.Attach = loader.AttachOnTraffic
	}
	if cfg.IdleDetach == 0 {
		cfg.IdleDetach = DefaultConfig().IdleDetach
	}
	if err := spec.Variables[footprintVarAlwaysArmed].Set(cfg.Attach == loader.AttachAlways); err != nil {
		return nil, fmt.Errorf("%s: set always_armed: %w", Family, err)
	}
	spec.Maps[footprintMapDropCounts].MaxEntries = cfg.MaxDropKeys
	reasons, err := kernel.EnumNames(env.BTF, "skb_drop_reason", "SKB_DROP_REASON_")
	if err != nil {
		reasons = nil // before 5.17: no reasons, and no kfree_skb hook that reads one
	}
	cgroup := cfg.Cgroup
	if cgroup == "" {
		// Without cgroup v2 only the cgroup_skb strategy is lost: its precheck says why.
		cgroup, _ = kernel.CgroupV2Root()
	}
	set, report, err := loader.Load(Family, env, spec, needed(hooks(cgroup), cfg.Flows), loader.Options{Only: cfg.Strategies})
	if err != nil {
		return nil, err
	}
	p := &Probe{env: env, cfg: cfg, set: set, report: report, reasons: reasons, sentinelsOn: true, sampledFrom: time.Now()}
	for _, h := range report.Hooks {
		for l := Layer(0); l < layerCount; l++ {
			if h.Hook == l.String() && h.Attached != nil {
				p.attached[l] = true
			}
		}
		if h.Attached != nil && !sentinels[h.Hook] {
			p.lazy = append(p.lazy, h.Hook)
		}
	}
	p.loaded = p.attached
	p.tracker = newTracker(cfg.Flows, p.attached)
	if cfg.Attach == loader.AttachAlways {
		return p, nil
	}
	// Loaded and attached once above, so a layer that cannot attach on this kernel is known
	// now; detached until traffic, and counting nothing meanwhile (arm.armed is 0).
	for _, h := range p.lazy {
		if err := set.Suspend(h); err != nil {
			set.Close()
			return nil, fmt.Errorf("%s: detach %s until traffic: %w", Family, h, err)
		}
	}
	p.arming = loader.StartArming(flowTraffic{p}, &p.mu, cfg.IdleDetach)
	return p, nil
}

// flowTraffic is the family's side of loader.Arming: a sentinel that matched a flow's packet
// asks to arm (arm.wanted); once armed, any change of the flows' counts is traffic.
type flowTraffic struct{ p *Probe }

func (t flowTraffic) Busy(armed bool, _ time.Time) (bool, error) {
	p := t.p
	if !armed {
		var st footprintArmState
		if err := p.set.Maps[footprintMapArm].Lookup(uint32(0), &st); err != nil {
			return false, fmt.Errorf("%s: read arm state: %w", Family, err)
		}
		return st.Wanted != 0, nil
	}
	n, err := p.activityNow()
	if err != nil {
		return false, err
	}
	busy := n != p.activity
	p.activity = n
	return busy, nil
}

func (t flowTraffic) Arm(now time.Time) (bool, error) { return t.p.arm() }
func (t flowTraffic) Disarm() (bool, error)           { return t.p.disarm() }
func (t flowTraffic) Quiet(now time.Time) error       { return t.p.sample(now) }

// armed says every layer is attached and counting; call it with p.mu held.
func (p *Probe) armed() bool { return p.arming == nil || p.arming.Armed() }

// activityNow sums every count of the flows' packets and drops: it changes while any named
// flow has packets on any attached layer, including one whose packets are all dropped.
func (p *Probe) activityNow() (uint64, error) {
	var n uint64
	for _, name := range []string{footprintMapLayerCounts, footprintMapDropCounts} {
		var key []byte
		var perCPU []uint64
		it := p.set.Maps[name].Iterate()
		for it.Next(&key, &perCPU) {
			for _, v := range perCPU {
				n += v
			}
		}
		if err := it.Err(); err != nil {
			return 0, fmt.Errorf("%s: read %s: %w", Family, name, err)
		}
	}
	return n, nil
}

// sample attaches the sampled sentinels during the window at the start of each sampling period
// and detaches them for the rest of it. A packet a sentinel matched just before it detached is
// not lost: arm.wanted stays set until the next poll reads it.
func (p *Probe) sample(now time.Time) error {
	if !p.cfg.sampling() {
		return nil
	}
	on := now.Sub(p.sampledFrom)%p.cfg.SentinelPeriod < p.cfg.SentinelWindow
	if on == p.sentinelsOn {
		return nil
	}
	if on {
		return p.resumeSentinels()
	}
	p.sentinelsOn = false
	var errs []error
	for _, h := range p.lazyOrder(sampledSentinels) {
		errs = append(errs, p.set.Suspend(h))
	}
	return errors.Join(errs...)
}

// resumeSentinels attaches the sampled sentinels again.
func (p *Probe) resumeSentinels() error {
	if p.sentinelsOn {
		return nil
	}
	var errs []error
	for _, h := range p.lazyOrder(sampledSentinels) {
		if err := p.set.Resume(h); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", Family, err))
		}
	}
	p.sentinelsOn = len(errs) == 0
	return errors.Join(errs...)
}

// lazyOrder is the attached hooks in which, in attach order (deepest first).
func (p *Probe) lazyOrder(which map[string]bool) []string {
	var out []string
	for _, h := range p.report.Hooks {
		if which[h.Hook] && h.Attached != nil {
			out = append(out, h.Hook)
		}
	}
	return out
}

// arm attaches the other layers deepest first, then starts every layer counting at once. The
// loss view starts again from the counts at that moment: packets in flight when the layers
// last stopped counting must not look lost.
func (p *Probe) arm() (bool, error) {
	var errs []error
	p.attached = p.loaded
	for _, h := range p.lazy {
		if err := p.set.Resume(h); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w; that layer is not counted (footprint.attach: always, or footprint.strategies without that mechanism, avoids re-attaching)", Family, err))
			for l := Layer(0); l < layerCount; l++ {
				if l.String() == h {
					p.attached[l] = false
				}
			}
		}
	}
	// The sampled sentinels are layers too: a drop may arm while they are detached.
	if err := p.resumeSentinels(); err != nil {
		errs = append(errs, err)
		for l := Layer(0); l < layerCount; l++ {
			if sampledSentinels[l.String()] && p.set.Link(l.String()) == nil {
				p.attached[l] = false
			}
		}
	}
	counts, err := p.readCounts(p.set.Maps)
	if err != nil {
		return false, errors.Join(append(errs, err)...)
	}
	p.tracker.rebase(counts, p.attached)
	if err := p.set.Maps[footprintMapArm].Put(uint32(0), footprintArmState{Armed: 1}); err != nil {
		return false, errors.Join(append(errs, fmt.Errorf("%s: arm: %w", Family, err))...)
	}
	if p.activity, err = p.activityNow(); err != nil {
		errs = append(errs, err)
	}
	return true, errors.Join(errs...)
}

// disarm stops every layer counting, then detaches all but the sentinels.
func (p *Probe) disarm() (bool, error) {
	if err := p.set.Maps[footprintMapArm].Put(uint32(0), footprintArmState{}); err != nil {
		return false, fmt.Errorf("%s: disarm: %w", Family, err)
	}
	var errs []error
	for _, h := range p.lazy {
		errs = append(errs, p.set.Suspend(h))
	}
	return true, errors.Join(errs...)
}

// flowSpecs encodes the flows as the kernel side compares them: addresses and masks as two
// native-endian 64-bit words over the 16 address bytes, IPv4 in the first four.
func flowSpecs(flows []Flow) ([MaxFlows]footprintFlowSpec, error) {
	var specs [MaxFlows]footprintFlowSpec
	if len(flows) > MaxFlows {
		return specs, fmt.Errorf("%s: %d flows, at most %d", Family, len(flows), MaxFlows)
	}
	for i, f := range flows {
		s := &specs[i]
		switch f.Protocol {
		case "tcp":
			s.L4proto = 6
		case "udp":
			s.L4proto = 17
		case "":
		default:
			return specs, fmt.Errorf("%s: flow %q: protocol %q, want tcp, udp or empty", Family, f.Name, f.Protocol)
		}
		var err error
		if s.L3proto, err = l3proto(f); err != nil {
			return specs, err
		}
		s.Local, s.LocalMask = prefixWords(f.Local)
		s.Peer, s.PeerMask = prefixWords(f.Peer)
		s.LocalPort, s.PeerPort = f.LocalPort, f.PeerPort
	}
	return specs, nil
}

func l3proto(f Flow) (uint16, error) {
	var v4, v6 bool
	for _, p := range []netip.Prefix{f.Local, f.Peer} {
		if p.IsValid() {
			v4 = v4 || p.Addr().Is4()
			v6 = v6 || !p.Addr().Is4()
		}
	}
	switch {
	case v4 && v6:
		return 0, fmt.Errorf("%s: flow %q: local %s and peer %s are of different IP versions", Family, f.Name, f.Local, f.Peer)
	case v4:
		return 0x0800, nil
	case v6:
		return 0x86DD, nil
	}
	return 0, nil
}

func prefixWords(p netip.Prefix) (addr, mask [2]uint64) {
	if !p.IsValid() {
		return addr, mask // mask 0: any address
	}
	var a, m [16]byte
	raw := p.Masked().Addr().AsSlice()
	copy(a[:], raw)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	for w := 0; w < 2; w++ {
		addr[w] = binary.NativeEndian.Uint64(a[8*w:])
		mask[w] = binary.NativeEndian.Uint64(m[8*w:])
	}
	return addr, mask
}

// Report says which hooks attached and how.
func (p *Probe) Report() loader.Report { return p.report }

// Attached says whether a layer is counted on this kernel (with loader.AttachOnTraffic: once armed).
func (p *Probe) Attached(l Layer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return l < layerCount && p.attached[l]
}

// Sentinels lists the hooks that run while the flows are idle; nil with loader.AttachAlways.
func (p *Probe) Sentinels() []string {
	if p.cfg.Attach == loader.AttachAlways {
		return nil
	}
	return p.lazyOrder(sentinels)
}

// SampledSentinels lists the sentinels attached only for a window of each sampling period,
// with the window and period; nil when every sentinel stays attached.
func (p *Probe) SampledSentinels() (hooks []string, window, period time.Duration) {
	if !p.cfg.sampling() {
		return nil, 0, 0
	}
	return p.lazyOrder(sampledSentinels), p.cfg.SentinelWindow, p.cfg.SentinelPeriod
}

// Close detaches everything. It is safe to call twice.
func (p *Probe) Close() error {
	p.arming.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.set == nil {
		return nil
	}
	err := p.set.Close()
	p.set = nil
	return err
}

// errClosed is returned by Snapshot after Close.
var errClosed = errors.New(Family + ": closed")

// maps returns the family's maps, or an error once closed.
func (p *Probe) maps() (map[string]*ebpf.Map, error) {
	if p.set == nil {
		return nil, errClosed
	}
	return p.set.Maps, nil
}
