package tcpackreceiver

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
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

// footprintConfig converts the block; its errors name the field and the fix.
func (c FootprintConfig) footprintConfig() (footprint.Config, []error) {
	cfg := footprint.DefaultConfig()
	cfg.MaxDropKeys = c.MaxDropKeys
	cfg.Attach, cfg.IdleDetach = c.Attach, c.IdleDetach
	cfg.SentinelWindow, cfg.SentinelPeriod = c.SentinelWindow, c.SentinelPeriod
	errs := validateAttach("footprint", c.Attach, c.IdleDetach, footprint.DefaultConfig().IdleDetach,
		"layers attach while a named flow has traffic", "every layer from the start")
	d := footprint.DefaultConfig()
	switch {
	case c.SentinelPeriod < 0:
		errs = append(errs, fmt.Errorf("footprint.sentinel_period: %s is negative; use 0 to keep the sentinels attached, or a period such as %s", c.SentinelPeriod, d.SentinelPeriod))
	case c.SentinelPeriod == 0:
	case c.SentinelWindow < footprint.MinSentinelWindow:
		errs = append(errs, fmt.Errorf("footprint.sentinel_window: %s is too short, use at least %s (default %s), or sentinel_period: 0 to keep the sentinels attached",
			c.SentinelWindow, footprint.MinSentinelWindow, d.SentinelWindow))
	case c.SentinelWindow > c.SentinelPeriod:
		errs = append(errs, fmt.Errorf("footprint.sentinel_window: %s is longer than footprint.sentinel_period (%s); use a window no longer than the period (default %s of every %s)",
			c.SentinelWindow, c.SentinelPeriod, d.SentinelWindow, d.SentinelPeriod))
	}
	if c.MaxFlows < 1 || c.MaxFlows > footprint.MaxFlows {
		errs = append(errs, fmt.Errorf("footprint.max_flows: %d is out of range, use 1..%d (default 16)", c.MaxFlows, footprint.MaxFlows))
	} else if len(c.Flows) > c.MaxFlows {
		errs = append(errs, fmt.Errorf("footprint.flows: %d flows named, more than footprint.max_flows (%d); raise max_flows (up to %d) or name fewer", len(c.Flows), c.MaxFlows, footprint.MaxFlows))
	}
	if c.MaxDropKeys == 0 || c.MaxDropKeys > maxKeys {
		errs = append(errs, fmt.Errorf("footprint.max_drop_keys: %d is out of range, use 1..%d (default 1024)", c.MaxDropKeys, maxKeys))
	}
	for i, s := range c.Strategies {
		k := loader.Kind(s)
		valid := false
		for _, v := range footprintStrategies {
			valid = valid || v == k
		}
		if !valid {
			errs = append(errs, fmt.Errorf("footprint.strategies[%d]: unknown strategy %q, use fentry, kprobe, tp_btf, raw_tp or cgroup_skb", i, s))
			continue
		}
		cfg.Strategies = append(cfg.Strategies, k)
	}
	seen := map[string]int{}
	for i, f := range c.Flows {
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
			p, err := parsePrefix(side.value)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%s: %q is not an address or CIDR, use e.g. 10.0.0.1, 10.0.0.0/8 or 2001:db8::/32", field, side.name, side.value))
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

func (c FootprintConfig) validate() []error {
	_, errs := c.footprintConfig()
	return errs
}

// recordFootprint emits the flows' counts, drops and losses, and the loss events.
func (r *tcpackReceiver) recordFootprint(ctx context.Context, now pcommon.Timestamp) error {
	snap, err := r.footprint.Snapshot()
	if err != nil {
		return err
	}
	if snap.ArmErr != nil {
		r.set.Logger.Warn("footprint: attaching the layers on traffic", zap.Error(snap.ArmErr))
	}
	for _, c := range snap.Counts {
		r.mb.RecordTcpackFootprintPacketsDataPoint(now, int64(c.Packets), c.Flow, c.Layer.String(),
			metadata.MapAttributeNetworkIoDirection[c.Direction])
	}
	for _, d := range snap.Drops {
		r.mb.RecordTcpackFootprintDropsDataPoint(now, int64(d.Packets), d.Flow, metadata.MapAttributeNetworkIoDirection[d.Direction],
			d.Reason, d.Symbol)
	}
	for _, l := range snap.Lost {
		r.mb.RecordTcpackFootprintLostDataPoint(now, int64(l.Packets), l.Flow, metadata.MapAttributeNetworkIoDirection[l.Direction],
			l.Layer, l.NextLayer)
	}
	r.mb.RecordTcpackKernelMapOverflowDataPoint(now, int64(snap.DropKeysFull), metadata.AttributeTcpackMapFootprintDrops)
	armed := int64(0)
	if snap.Armed {
		armed = 1
	}
	r.mb.RecordTcpackFootprintArmedDataPoint(now, armed)
	r.mb.RecordTcpackFootprintUnobservedDataPoint(now, int64(snap.Unobserved))
	if len(snap.NewLosses) == 0 || r.logs == nil {
		return nil
	}
	r.logsMu.Lock()
	for _, l := range snap.NewLosses {
		r.lb.RecordTcpackFootprintLossEvent(ctx, now, l.Flow, metadata.MapAttributeNetworkIoDirection[l.Direction], l.Layer,
			l.NextLayer, int64(l.Packets), l.Reason, l.Symbol)
	}
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(ctx, logs, "footprint loss events")
	return nil
}
