// Package drops counts the packets the kernel frees without delivering them (skb:kfree_skb),
// by drop reason and dropping function, next to TCP retransmits and resets, and samples
// rate-limited events of each. A snapshot looks like:
//
//	netns=4026532289 if=tcpk1b reason=NO_SOCKET symbol=tcp_v4_rcv network=ipv4 transport=tcp packets=5
//	netns=4026532289 if=tcpk1b reason=NO_SOCKET symbol=__udp4_lib_rcv network=ipv4 transport=udp packets=5
//	event drop 10.77.0.2:5002 <- 10.77.0.1:45123 tcp reason=NO_SOCKET at tcp_v4_rcv+0x1a2 if=tcpk1b
package drops

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// Family is the name the loader and the telemetry use for this probe family.
const Family = "drops"

// Config sizes the kernel side and bounds what reaches user space.
type Config struct {
	eventreader.Delivery
	// DisabledEvents are event kinds not to sample at all; they cost nothing in the kernel.
	DisabledEvents []Kind
	// MaxDropKeys bounds the drop counting map (netns, interface, reason, location, protocol).
	MaxDropKeys uint32
	// MaxTCPKeys bounds the retransmit/reset counting map.
	MaxTCPKeys uint32
	// Strategies restricts attach mechanisms (see loader.Options.Only).
	Strategies []loader.Kind
}

// DefaultConfig is what the receiver uses unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Delivery:    eventreader.DefaultDelivery(100, 200),
		MaxDropKeys: 16384,
		MaxTCPKeys:  4096,
	}
}

// hooks: kfree_skb is a tracepoint on every kernel we support (5.17+), and the tracepoint is
// where the kernel hands out the drop reason and location, so there is no fentry/kprobe
// strategy for it: tp_btf is the cheapest typed attach, raw_tp the fallback. Variants that read
// more arguments come first; the loader skips them where the tracepoint passes fewer.
var hooks = []loader.Hook{
	{Name: "kfree_skb", Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: dropsProgKfreeSkbRxSkBtf, Target: "kfree_skb", Args: 4},
		{Kind: loader.TPBTF, Program: dropsProgKfreeSkbBtf, Target: "kfree_skb", Args: 3},
		{Kind: loader.RawTP, Program: dropsProgKfreeSkbRxSkRaw, Target: "kfree_skb", Args: 4},
		{Kind: loader.RawTP, Program: dropsProgKfreeSkbRaw, Target: "kfree_skb", Args: 3},
	}},
	{Name: "tcp_retransmit_skb", Optional: true, Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: dropsProgTcpRetransmitSkbBtf, Target: "tcp_retransmit_skb", Args: 2},
		{Kind: loader.RawTP, Program: dropsProgTcpRetransmitSkbRaw, Target: "tcp_retransmit_skb", Args: 2},
	}},
	{Name: "tcp_send_reset", Optional: true, Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: dropsProgTcpSendResetReasonBtf, Target: "tcp_send_reset", Args: 3},
		{Kind: loader.TPBTF, Program: dropsProgTcpSendResetBtf, Target: "tcp_send_reset", Args: 2},
		{Kind: loader.RawTP, Program: dropsProgTcpSendResetReasonRaw, Target: "tcp_send_reset", Args: 3},
		{Kind: loader.RawTP, Program: dropsProgTcpSendResetRaw, Target: "tcp_send_reset", Args: 2},
	}},
	{Name: "tcp_receive_reset", Optional: true, Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: dropsProgTcpReceiveResetBtf, Target: "tcp_receive_reset", Args: 1},
		{Kind: loader.RawTP, Program: dropsProgTcpReceiveResetRaw, Target: "tcp_receive_reset", Args: 1},
	}},
}

// Probe is the loaded drops family.
type Probe struct {
	env    *kernel.Env
	cfg    Config
	set    *loader.Set
	report loader.Report
	names  names
	reader *eventreader.Reader
}

// Start loads and attaches the family. Sampled events are decoded and passed to sink in
// batches, from one goroutine; sink may be nil to count only.
func Start(env *kernel.Env, cfg Config, sink func([]Event)) (*Probe, error) {
	spec, err := loadDrops()
	if err != nil {
		return nil, err
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	n, err := loadNames(env)
	if err != nil {
		return nil, err
	}
	set, report, err := loader.Load(Family, env, spec, hooks, loader.Options{Only: cfg.Strategies})
	if err != nil {
		return nil, err
	}
	p := &Probe{env: env, cfg: cfg, set: set, report: report, names: n}
	if p.reader, err = eventreader.Start(set.Maps[dropsMapEvents], cfg.FlushInterval, eventreader.Decoder(p.decode), sink); err != nil {
		set.Close()
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	return p, nil
}

func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	if err := eventreader.Configure(spec, cfg.Delivery, kindCount, eventreader.KindNumbers(cfg.DisabledEvents)); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	spec.Maps[dropsMapDropCounts].MaxEntries = cfg.MaxDropKeys
	spec.Maps[dropsMapTcpCounts].MaxEntries = cfg.MaxTCPKeys
	return nil
}

// Report says which hooks attached and how.
func (p *Probe) Report() loader.Report { return p.report }

// Close detaches everything and stops the event reader.
func (p *Probe) Close() error {
	if p.set == nil {
		return nil
	}
	err := errors.Join(p.reader.Close(), p.set.Close())
	p.set = nil
	return err
}

// HookNames lists the family's hooks, for reporting a family that could not start.
func HookNames() []string { return loader.HookNames(hooks) }
