// Package txqueue reports the transmit queues of each interface and flow, flows that change
// queue, and packets received for another host (PACKET_OTHERHOST). ModeKernelStats (the
// default) runs no program per packet outside short sampling windows: per-queue counts from
// mq's child qdiscs or the driver's own counters, and each TCP connection's queue from a
// socket walk, each snapshot; the windows count the queues of interfaces with neither, picks
// and queue changes as they happen. ModePerPacket counts every packet at
// net:net_dev_start_xmit (and netdev_pick_tx where fentry/fexit or kprobes exist); a snapshot
// and the events of a 4-queue veth then look like:
//
//	netns=4026532289 if=tcpk1a queue=0 packets=1204 bytes=1802311 (4 tx queues)
//	netns=4026532289 if=tcpk1a queue=2 packets=977 bytes=1460012
//	flow 198.18.0.1:41822 -> 198.18.0.2:5001 tcp if=tcpk1a queue=2 packets=421 moves=1
//	event flow_moved 198.18.0.1:41822 -> 198.18.0.2:5001 tcp if=tcpk1a queue 0 -> 2 ooo_okay=true pick=xps
//	event otherhost if=tcpk1b 02:00:00:00:00:99 (dev 3e:1f:..) <- 3a:c0:.. 198.18.0.1 -> 198.18.0.3
package txqueue

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// Family is the name the loader and the telemetry use for this probe family.
const Family = "txqueue"

// Hook names, as reported by the loader.
const (
	HookXmit       = "net_dev_start_xmit"
	HookOtherhost  = "otherhost"
	HookPick       = "netdev_pick_tx"
	HookPickReturn = "netdev_pick_tx_return"
	HookFlowWalk   = "iter_tcp"
	HookFlowClosed = "flow_closed"
)

// Modes: where the per-queue counts come from.
const (
	// ModeKernelStats reads the counters the kernel keeps per transmit queue (the child
	// qdiscs of mq, else the driver's netdev netlink statistics) each collection, and each TCP connection's queue from a socket walk: no
	// program on the packet path outside sampling windows (Config.Window). In the windows the
	// per-packet hooks count per queue for multi-queue interfaces without mq (SourceSampled),
	// picks and flow_moved events; with no window, those are not reported.
	ModeKernelStats = "kernel_stats"
	// ModePerPacket counts every packet sent at net_dev_start_xmit, on every interface, with
	// each flow's queue, its changes and (where netdev_pick_tx can be hooked) the picks.
	ModePerPacket = "per_packet"
)

// Config sizes the kernel side and bounds what reaches user space.
type Config struct {
	// Mode is ModeKernelStats (also when empty) or ModePerPacket.
	Mode string
	eventreader.Delivery
	// DisabledEvents are event kinds not to sample at all.
	DisabledEvents []Kind
	// MaxQueueKeys bounds the (netns, interface, queue) counting map; packets past it are
	// counted as overflow.
	MaxQueueKeys uint32
	// MaxInterfaces bounds the per-interface map (queue changes, OTHERHOST, picks).
	MaxInterfaces uint32
	// MaxFlows bounds the flow map; it is an LRU: the least recently sending flows make room.
	MaxFlows uint32
	// Otherhost counts packets received for another host: at their drop (kfree_skb, reason
	// OTHERHOST), or where the kernel has no such reason at netif_receive_skb, which runs for
	// every received packet.
	Otherhost bool
	// Strategies restricts attach mechanisms (see loader.Options.Only).
	Strategies []loader.Kind
	// Window and Period: in ModeKernelStats the per-packet hooks are attached for Window of
	// every Period (see loader.CheckWindows); Window 0 never attaches them.
	Window, Period time.Duration
}

// DefaultConfig is what the receiver uses unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Delivery:      eventreader.DefaultDelivery(10, 50),
		MaxQueueKeys:  4096,
		MaxInterfaces: 1024,
		MaxFlows:      16384,
		Otherhost:     true,
		// 2% of the time: the per-packet hooks cost about 4% of TCP RR while attached.
		Window: 100 * time.Millisecond,
		Period: 5 * time.Second,
	}
}

// hooks: the tracepoints are everywhere (tp_btf typed and cheapest, raw_tp the fallback).
// netdev_pick_tx is a function with no tracepoint: fentry/fexit, else kprobe/kretprobe, and on
// kernels with neither the family still reports queues and moves, without the pick's reason.
// Entry and exit are separate hooks; each works alone, the verdict needs both.
func hooks(cfg Config, otherhostReason bool) []loader.Hook {
	var hs []loader.Hook
	if cfg.perPacket() || cfg.windowed() {
		// Sampled, the per-queue counts of the interfaces with a kernel counter do without it.
		hs = append(hs, loader.Hook{Name: HookXmit, Optional: !cfg.perPacket(), Strategies: []loader.Strategy{
			{Kind: loader.TPBTF, Program: txqueueProgNetDevStartXmitBtf, Target: "net_dev_start_xmit", Args: 2},
			{Kind: loader.RawTP, Program: txqueueProgNetDevStartXmitRaw, Target: "net_dev_start_xmit", Args: 2},
		}})
	}
	if cfg.Otherhost {
		var strategies []loader.Strategy
		if otherhostReason {
			strategies = []loader.Strategy{
				{Kind: loader.TPBTF, Program: txqueueProgKfreeSkbOtherhostBtf, Target: "kfree_skb", Args: 3},
				{Kind: loader.RawTP, Program: txqueueProgKfreeSkbOtherhostRaw, Target: "kfree_skb", Args: 3},
			}
		}
		hs = append(hs, loader.Hook{Name: HookOtherhost, Strategies: append(strategies,
			loader.Strategy{Kind: loader.TPBTF, Program: txqueueProgNetifReceiveSkbBtf, Target: "netif_receive_skb", Args: 1},
			loader.Strategy{Kind: loader.RawTP, Program: txqueueProgNetifReceiveSkbRaw, Target: "netif_receive_skb", Args: 1},
		)})
	}
	if !cfg.perPacket() {
		// Without iter/tcp (before 5.9) the queue counts still come, flow queues do not.
		hs = append(hs,
			loader.Hook{Name: HookFlowWalk, Optional: true, Strategies: []loader.Strategy{
				{Kind: loader.Iter, Program: txqueueProgTxqFlowWalk, Target: "tcp"},
			}},
			// A connection's queue at its close, for the change since the last walk.
			loader.Hook{Name: HookFlowClosed, Optional: true, Strategies: []loader.Strategy{
				{Kind: loader.TPBTF, Program: txqueueProgTxqFlowClosed, Target: "inet_sock_set_state", Args: 3},
			}},
		)
	}
	if !cfg.perPacket() && !cfg.windowed() {
		return hs
	}
	return append(hs,
		loader.Hook{Name: HookPick, Optional: true, Strategies: []loader.Strategy{
			{Kind: loader.FEntry, Program: txqueueProgPickTxFentry, Target: "netdev_pick_tx"},
			{Kind: loader.Kprobe, Program: txqueueProgPickTxKprobe, Target: "netdev_pick_tx"},
		}},
		loader.Hook{Name: HookPickReturn, Optional: true, Strategies: []loader.Strategy{
			{Kind: loader.FExit, Program: txqueueProgPickTxFexit, Target: "netdev_pick_tx"},
			{Kind: loader.Kretprobe, Program: txqueueProgPickTxKretprobe, Target: "netdev_pick_tx"},
		}},
	)
}

// OtherhostAtDrop says whether the kernel drops packets for another host with a reason on both
// IP versions: OTHERHOST came with ip_rcv_core's reasons in 5.18, ip6_rcv_core's (IPV6DISABLED
// among them) in 5.19. Before that, only a program on every received packet sees them.
func OtherhostAtDrop(env *kernel.Env) bool {
	reasons, _ := kernel.EnumNames(env.BTF, "skb_drop_reason", "SKB_DROP_REASON_")
	names := slices.Collect(maps.Values(reasons))
	return slices.Contains(names, "OTHERHOST") && slices.Contains(names, "IPV6DISABLED")
}

// HookNames lists the family's hooks, for reporting a family that could not start.
func HookNames() []string {
	return append(loader.HookNames(hooks(Config{Mode: ModePerPacket, Otherhost: true}, true)), HookFlowWalk, HookFlowClosed)
}

func (cfg Config) perPacket() bool { return cfg.Mode == ModePerPacket }

// windowed says whether the per-packet hooks run in sampling windows.
func (cfg Config) windowed() bool { return !cfg.perPacket() && cfg.Window > 0 }

// CheckMode validates a mode.
func CheckMode(mode string) error {
	switch mode {
	case "", ModeKernelStats, ModePerPacket:
		return nil
	}
	return fmt.Errorf("mode %q, want %s or %s", mode, ModeKernelStats, ModePerPacket)
}

// Probe is the loaded txqueue family.
type Probe struct {
	env    *kernel.Env
	cfg    Config
	set    *loader.Set
	report loader.Report
	reader *eventreader.Reader
	// qdiscs reads the per-queue counts in ModeKernelStats (nil in ModePerPacket), walks
	// the flows' queues.
	qdiscs *qdiscReader
	walks  *flowWalks
	// windows attaches the per-packet hooks in sampling windows (ModeKernelStats with a
	// window; nil otherwise).
	windows   *windows
	arming    *loader.Arming
	windowsMu sync.Mutex

	flowsMu sync.Mutex // Flows advances the epoch: one read at a time
}

// Start loads and attaches the family. Sampled events are decoded and passed to sink in
// batches, from one goroutine; sink may be nil to count only.
func Start(env *kernel.Env, cfg Config, sink func([]Event)) (*Probe, error) {
	if err := CheckMode(cfg.Mode); err != nil {
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	if cfg.windowed() {
		if err := loader.CheckWindows(cfg.Window, cfg.Period); err != nil {
			return nil, fmt.Errorf("%s: %w", Family, err)
		}
	}
	spec, err := loadTxqueue()
	if err != nil {
		return nil, err
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	set, report, err := loader.Load(Family, env, spec, hooks(cfg, OtherhostAtDrop(env)), loader.Options{Only: cfg.Strategies})
	if err != nil {
		return nil, err
	}
	p := &Probe{env: env, cfg: cfg, set: set, report: report}
	if !cfg.perPacket() {
		// The first read is the baseline: counts from the start, as the other families'.
		p.qdiscs, p.walks = newQdiscReader(), newFlowWalks()
		if _, _, err := p.qdiscs.read(kernel.AllNetns()); err != nil {
			set.Close()
			return nil, err
		}
	}
	if cfg.windowed() {
		if err := p.startWindows(); err != nil {
			set.Close()
			return nil, err
		}
	}
	if p.reader, err = eventreader.Start(set.Maps[txqueueMapEvents], cfg.FlushInterval, p.decode(), sink); err != nil {
		p.arming.Stop()
		set.Close()
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	return p, nil
}

func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	if err := eventreader.Configure(spec, cfg.Delivery, kindCount, eventreader.KindNumbers(cfg.DisabledEvents)); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	for name, size := range map[string]uint32{
		txqueueMapQueueCounts: cfg.MaxQueueKeys,
		txqueueMapIfCounts:    cfg.MaxInterfaces,
		txqueueMapFlows:       cfg.MaxFlows,
		txqueueMapClosedFlows: cfg.MaxFlows,
	} {
		if size == 0 {
			return fmt.Errorf("%s: map %s: size 0", Family, name)
		}
		spec.Maps[name].MaxEntries = size
	}
	// Each mode's maps the other never writes.
	if cfg.perPacket() {
		spec.Maps[txqueueMapClosedFlows].MaxEntries = 1
	} else if !cfg.windowed() {
		spec.Maps[txqueueMapQueueCounts].MaxEntries = 1
		spec.Maps[txqueueMapFlows].MaxEntries = 1
	}
	if err := spec.Variables["sampled_windows"].Set(cfg.windowed()); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	return nil
}

// Report says which hooks attached and how.
func (p *Probe) Report() loader.Report { return p.report }

// KernelStats says whether the family runs in ModeKernelStats: then Flows returns the flows of
// the last Snapshot's socket walk.
func (p *Probe) KernelStats() bool { return p.qdiscs != nil }

// Picks says whether netdev_pick_tx is hooked at entry and exit, so that picks are counted
// and events say how the queue was chosen.
func (p *Probe) Picks() bool {
	n := 0
	for _, h := range p.report.Hooks {
		if (h.Hook == HookPick || h.Hook == HookPickReturn) && h.Attached != nil {
			n++
		}
	}
	return n == 2
}

// Close detaches everything and stops the event reader. It is safe to call twice.
func (p *Probe) Close() error {
	if p.set == nil {
		return nil
	}
	p.arming.Stop()
	err := errors.Join(p.reader.Close(), p.set.Close())
	p.set = nil
	return err
}
