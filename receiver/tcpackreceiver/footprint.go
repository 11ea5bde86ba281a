package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/footprint"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// FootprintConfig names the flows whose packets are counted at every layer of the stack. No
// flows, no programs: the family attaches only while at least one flow is named, and a config
// reload (SIGHUP) that removes them all detaches it.
type FootprintConfig struct {
	Flows []FlowConfig `mapstructure:"flows"`
	// Strategies restricts the attach mechanisms; empty means all, in the family's order.
	Strategies []string `mapstructure:"strategies"`
	// MaxFlows caps the flows the config may name (and so the series): at most 64.
	MaxFlows int `mapstructure:"max_flows"`
	// MaxDropKeys bounds the kernel map of (flow, direction, reason, location) drop counters.
	MaxDropKeys uint32 `mapstructure:"max_drop_keys"`
	// Attach is on_traffic (the default: only the sentinel layers while the flows are idle)
	// or always (every layer from the start).
	Attach string `mapstructure:"attach"`
	// IdleDetach is how long the flows go without a packet before on_traffic detaches the
	// layers other than the sentinels.
	IdleDetach time.Duration `mapstructure:"idle_detach"`
	// SentinelWindow and SentinelPeriod: while the flows are idle (on_traffic), the
	// per-packet sentinels attach for sentinel_window out of every sentinel_period. A period
	// of 0 keeps them attached.
	SentinelWindow time.Duration `mapstructure:"sentinel_window"`
	SentinelPeriod time.Duration `mapstructure:"sentinel_period"`
}

// FlowConfig is one named flow. Empty fields match anything; packets match in either
// orientation (local -> peer is transmit, peer -> local is receive).
type FlowConfig struct {
	Name      string `mapstructure:"name"`
	Protocol  string `mapstructure:"protocol"`
	Local     string `mapstructure:"local"`
	Peer      string `mapstructure:"peer"`
	LocalPort int    `mapstructure:"local_port"`
	PeerPort  int    `mapstructure:"peer_port"`
}

func defaultFootprintConfig() FootprintConfig {
	d := footprint.DefaultConfig()
	return FootprintConfig{MaxFlows: 16, MaxDropKeys: d.MaxDropKeys, Attach: d.Attach, IdleDetach: d.IdleDetach,
		SentinelWindow: d.SentinelWindow, SentinelPeriod: d.SentinelPeriod}
}

var flowName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

var footprintStrategies = []loader.Kind{loader.FEntry, loader.Kprobe, loader.TPBTF, loader.RawTP, loader.CgroupSkbIngress}

// convert turns the block into the family's config; its errors name the field and the fix.
func (fc FootprintConfig) convert() (footprint.Config, []error) {
	d := footprint.DefaultConfig()
	cfg := footprint.DefaultConfig()
	cfg.MaxDropKeys = fc.MaxDropKeys
	cfg.Attach, cfg.IdleDetach = fc.Attach, fc.IdleDetach
	cfg.SentinelWindow, cfg.SentinelPeriod = fc.SentinelWindow, fc.SentinelPeriod
	errs := checkAttach("footprint", fc.Attach, fc.IdleDetach, d.IdleDetach,
		"layers attach while a named flow has traffic", "every layer from the start")
	// footprint.CheckSampling decides; the messages say which field to change.
	if footprint.CheckSampling(fc.SentinelWindow, fc.SentinelPeriod) != nil {
		switch {
		case fc.SentinelPeriod < 0:
			errs = append(errs, fmt.Errorf("footprint.sentinel_period: %s is negative; use 0 to keep the sentinels attached, or a period such as %s", fc.SentinelPeriod, d.SentinelPeriod))
		case fc.SentinelWindow < footprint.MinSentinelWindow:
			errs = append(errs, fmt.Errorf("footprint.sentinel_window: %s is too short, use at least %s (default %s), or sentinel_period: 0 to keep the sentinels attached",
				fc.SentinelWindow, footprint.MinSentinelWindow, d.SentinelWindow))
		default:
			errs = append(errs, fmt.Errorf("footprint.sentinel_window: %s is longer than footprint.sentinel_period (%s); use a window no longer than the period (default %s of every %s)",
				fc.SentinelWindow, fc.SentinelPeriod, d.SentinelWindow, d.SentinelPeriod))
		}
	}
	if fc.MaxFlows < 1 || fc.MaxFlows > footprint.MaxFlows {
		errs = append(errs, fmt.Errorf("footprint.max_flows: %d is out of range, use 1..%d (default 16)", fc.MaxFlows, footprint.MaxFlows))
	} else if len(fc.Flows) > fc.MaxFlows {
		errs = append(errs, fmt.Errorf("footprint.flows: %d flows named, more than footprint.max_flows (%d); raise max_flows (up to %d) or name fewer", len(fc.Flows), fc.MaxFlows, footprint.MaxFlows))
	}
	if err := checkMapSize("footprint.max_drop_keys", fc.MaxDropKeys, d.MaxDropKeys); err != nil {
		errs = append(errs, err)
	}
	var more []error
	cfg.Strategies, more = checkStrategies("footprint.strategies", fc.Strategies, footprintStrategies)
	errs = append(errs, more...)
	seen := map[string]int{}
	for i, f := range fc.Flows {
		field := fmt.Sprintf("footprint.flows[%d]", i)
		flow := footprint.Flow{Name: f.Name, Protocol: f.Protocol}
		if !flowName.MatchString(f.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %q must be 1-64 letters, digits or _.:- (it becomes the tcpack.footprint.flow attribute)", field, f.Name))
		} else if j, dup := seen[f.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is already the name of footprint.flows[%d]; give each flow its own name", field, f.Name, j))
		}
		seen[f.Name] = i
		if f.Protocol != "" && f.Protocol != "tcp" && f.Protocol != "udp" {
			errs = append(errs, fmt.Errorf("%s.protocol: %q, use tcp, udp, or leave it out for both", field, f.Protocol))
		}
		for _, side := range []struct {
			name, value string
			dst         *netip.Prefix
		}{{"local", f.Local, &flow.Local}, {"peer", f.Peer, &flow.Peer}} {
			if side.value == "" {
				continue
			}
			p, err := checkPrefix(field+"."+side.name, side.value, "10.0.0.1, 10.0.0.0/8 or 2001:db8::/32")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			*side.dst = p.Masked()
		}
		if flow.Local.IsValid() && flow.Peer.IsValid() && flow.Local.Addr().Is4() != flow.Peer.Addr().Is4() {
			errs = append(errs, fmt.Errorf("%s.peer: %s is not of the IP version of local (%s); a flow is IPv4 or IPv6", field, f.Peer, f.Local))
		}
		for _, port := range []struct {
			name  string
			value int
			dst   *uint16
		}{{"local_port", f.LocalPort, &flow.LocalPort}, {"peer_port", f.PeerPort, &flow.PeerPort}} {
			if port.value < 0 || port.value > 65535 {
				errs = append(errs, fmt.Errorf("%s.%s: %d is out of range, use 1..65535 (0 or absent: any port)", field, port.name, port.value))
				continue
			}
			*port.dst = uint16(port.value)
		}
		cfg.Flows = append(cfg.Flows, flow)
	}
	return cfg, errs
}

// footprintFamily counts the named flows' packets at every layer; it runs only while flows
// are named.
type footprintFamily struct {
	block FootprintConfig
	host  *familyHost
	probe *footprint.Probe
}

func (f *footprintFamily) name() string        { return footprint.Family }
func (f *footprintFamily) enabled() bool       { return len(f.block.Flows) > 0 }
func (f *footprintFamily) hookNames() []string { return footprint.HookNames() }

// derivesEvents: loss events come from the counters, so a logs pipeline alone collects too.
func (f *footprintFamily) derivesEvents() bool { return true }

func (f *footprintFamily) validate() []error {
	_, errs := f.block.convert()
	return errs
}

func (f *footprintFamily) start(h *familyHost) (loader.Report, error) {
	f.host = h
	cfg, errs := f.block.convert()
	if len(errs) > 0 {
		return loader.Report{}, errors.Join(errs...)
	}
	p, err := footprint.Start(h.env, cfg)
	if err != nil {
		return loader.Report{}, err
	}
	f.probe = p
	if s := p.Sentinels(); s != nil {
		idle := fmt.Sprintf("only %s stay attached", strings.Join(s, ", "))
		if sampled, window, period := p.SampledSentinels(); sampled != nil {
			idle = fmt.Sprintf("only %s run: %s for %s of every %s (sentinel_window, sentinel_period), the rest all the time",
				strings.Join(s, ", "), strings.Join(sampled, " and "), window, period)
		}
		h.logger.Info(fmt.Sprintf("footprint: attach on_traffic: %s while the named flows are idle; the other layers attach when a sentinel sees a flow's packet and detach after %s without one",
			idle, cfg.IdleDetach))
	}
	return p.Report(), nil
}

func (f *footprintFamily) close() error { return f.probe.Close() }

// record emits the flows' counts, drops and losses, and the loss events.
func (f *footprintFamily) record(now pcommon.Timestamp) error {
	mb := f.host.mb
	snap, err := f.probe.Snapshot()
	if err != nil {
		return err
	}
	if snap.ArmErr != nil {
		f.host.logger.Warn("footprint: attaching the layers on traffic", zap.Error(snap.ArmErr))
	}
	for _, c := range snap.Counts {
		mb.RecordTcpackFootprintPacketsDataPoint(now, int64(c.Packets), c.Flow, c.Layer.String(),
			metadata.MapAttributeNetworkIoDirection[c.Direction])
	}
	for _, d := range snap.Drops {
		mb.RecordTcpackFootprintDropsDataPoint(now, int64(d.Packets), d.Flow, metadata.MapAttributeNetworkIoDirection[d.Direction],
			d.Reason, d.Symbol)
	}
	for _, l := range snap.Lost {
		mb.RecordTcpackFootprintLostDataPoint(now, int64(l.Packets), l.Flow, metadata.MapAttributeNetworkIoDirection[l.Direction],
			l.Layer, l.NextLayer)
	}
	mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.DropKeysFull), metadata.AttributeTcpackMapFootprintDrops)
	mb.RecordTcpackFootprintArmedDataPoint(now, boolValue(snap.Armed))
	mb.RecordTcpackFootprintUnobservedDataPoint(now, int64(snap.Unobserved))
	if len(snap.NewLosses) == 0 || !f.host.withLogs {
		return nil
	}
	ctx := context.Background()
	f.host.sendEvents("footprint loss events", func(lb *metadata.LogsBuilder) {
		for _, l := range snap.NewLosses {
			lb.RecordTcpackFootprintLossEvent(ctx, now, l.Flow, metadata.MapAttributeNetworkIoDirection[l.Direction], l.Layer,
				l.NextLayer, int64(l.Packets), l.Reason, l.Symbol)
		}
	})
	return nil
}
