package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/quickack"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// QuickackConfig configures forced quick ACKs: which sockets, and how.
type QuickackConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// Mode is route (SO_MARK + a policy table with quickack 1: every ACK at once) or bounded
	// (TCP_BPF_DELACK_MAX at two jiffies, where policy routing is not allowed).
	Mode string `mapstructure:"mode"`
	// Mark, Table and RulePriority are the route mode's kernel objects; start fails if
	// anything else in the namespace uses them.
	Mark         uint32 `mapstructure:"mark"`
	Table        int    `mapstructure:"table"`
	RulePriority int    `mapstructure:"rule_priority"`
	// Cgroup is the cgroup v2 directory whose sockets are watched; empty is the root.
	Cgroup string `mapstructure:"cgroup"`
	// Netns lists network namespace files to force in; empty is the collector's own.
	Netns []string `mapstructure:"netns"`
	// LocalPorts, PeerPorts and Peers (CIDRs) name the sockets to force.
	LocalPorts []int    `mapstructure:"local_ports"`
	PeerPorts  []int    `mapstructure:"peer_ports"`
	Peers      []string `mapstructure:"peers"`
	// Routes are CIDRs every socket towards which is forced (route mode): the seed's
	// `ip route ... quickack 1`, done with a rule and the policy table, no route changed.
	Routes []string `mapstructure:"routes"`
	// Sockets are named sockets: {pid, fd} of a process, or {local, peer} addresses.
	Sockets []SocketConfig `mapstructure:"sockets"`
	// OptIn honours an application's setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, 3) for the
	// socket's whole life (the seed's convention).
	OptIn bool `mapstructure:"opt_in"`
}

// SocketConfig names one socket: by owner (pid and fd; a listener forces what it accepts) or
// by address (local and/or peer as ADDRESS:PORT; 0.0.0.0 or :: as local means any address).
type SocketConfig struct {
	PID   int    `mapstructure:"pid"`
	FD    int    `mapstructure:"fd"`
	Local string `mapstructure:"local"`
	Peer  string `mapstructure:"peer"`
}

func defaultQuickackConfig() QuickackConfig {
	d := quickack.DefaultConfig()
	return QuickackConfig{Mode: string(d.Mode), Mark: d.Mark, Table: d.Table, RulePriority: d.RulePriority}
}

// quickackConfig converts the block; its errors name the field and the fix.
func (q QuickackConfig) quickackConfig() (quickack.Config, error) {
	cfg := quickack.DefaultConfig()
	cfg.Mode, cfg.Mark, cfg.Table, cfg.RulePriority = quickack.Mode(q.Mode), q.Mark, q.Table, q.RulePriority
	cfg.Cgroup, cfg.Netns, cfg.OptIn = q.Cgroup, q.Netns, q.OptIn
	var errs []error
	for field, ports := range map[string][]int{"quickack.local_ports": q.LocalPorts, "quickack.peer_ports": q.PeerPorts} {
		for i, p := range ports {
			if p < 1 || p > 65535 {
				errs = append(errs, fmt.Errorf("%s[%d]: port %d is out of range, use 1..65535", field, i, p))
			}
		}
	}
	for _, p := range q.LocalPorts {
		cfg.LocalPorts = append(cfg.LocalPorts, uint16(p))
	}
	for _, p := range q.PeerPorts {
		cfg.PeerPorts = append(cfg.PeerPorts, uint16(p))
	}
	for i, s := range q.Peers {
		p, err := parsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("quickack.peers[%d]: %q is not a CIDR or address, use e.g. 10.0.0.0/8 or 2001:db8::/32", i, s))
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Addr().IsLoopback() && quickack.Mode(q.Mode) == quickack.ModeRoute {
			errs = append(errs, fmt.Errorf("quickack.peers[%d]: %s: loopback peers are routed by the local table before any fwmark rule and cannot be forced in route mode; name the port with quickack.mode: bounded instead", i, s))
			continue
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	for i, s := range q.Routes {
		p, err := parsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("quickack.routes[%d]: %q is not a CIDR or address, use e.g. 10.0.0.0/8", i, s))
			continue
		}
		cfg.Routes = append(cfg.Routes, p)
	}
	for i, sc := range q.Sockets {
		spec := quickack.SocketSpec{PID: sc.PID, FD: sc.FD}
		for _, side := range []struct {
			name, value string
			dst         *netip.AddrPort
		}{{"local", sc.Local, &spec.Local}, {"peer", sc.Peer, &spec.Peer}} {
			if side.value == "" {
				continue
			}
			ap, err := netip.ParseAddrPort(side.value)
			if err != nil {
				errs = append(errs, fmt.Errorf("quickack.sockets[%d].%s: %q is not ADDRESS:PORT, use e.g. 10.0.0.1:8080 or [2001:db8::1]:8080", i, side.name, side.value))
				continue
			}
			*side.dst = ap
		}
		if sc.PID != 0 && sc.FD == 0 {
			// fd 0 is stdin: never a socket the user means
			errs = append(errs, fmt.Errorf("quickack.sockets[%d].fd: give the socket's descriptor number in pid %d (see ls -l /proc/%d/fd)", i, sc.PID, sc.PID))
		}
		cfg.Sockets = append(cfg.Sockets, spec)
	}
	for i, n := range q.Netns {
		if !strings.HasPrefix(n, "/") {
			errs = append(errs, fmt.Errorf("quickack.netns[%d]: %q is not a path; use /run/netns/NAME or /proc/PID/ns/net", i, n))
		}
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	return cfg, cfg.Validate()
}

// parsePrefix takes a CIDR or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (q QuickackConfig) validate() []error {
	if !q.Enabled {
		return nil
	}
	if _, err := q.quickackConfig(); err != nil {
		return []error{err}
	}
	return nil
}

var quickackMechanisms = map[string]metadata.AttributeTcpackQuickackMechanism{
	"mark":       metadata.AttributeTcpackQuickackMechanismMark,
	"delack_max": metadata.AttributeTcpackQuickackMechanismDelackMax,
}

var quickackRefusals = map[quickack.Refusal]metadata.AttributeTcpackQuickackRefusal{
	quickack.RefusalLocalPeer:  metadata.AttributeTcpackQuickackRefusalLocalPeer,
	quickack.RefusalHasMark:    metadata.AttributeTcpackQuickackRefusalSocketHasMark,
	quickack.RefusalSetsockopt: metadata.AttributeTcpackQuickackRefusalSetsockoptFailed,
}

var quickackActions = map[quickack.EventKind]metadata.AttributeTcpackQuickackAction{
	quickack.EventApplied:  metadata.AttributeTcpackQuickackActionApplied,
	quickack.EventReleased: metadata.AttributeTcpackQuickackActionReleased,
	quickack.EventRefused:  metadata.AttributeTcpackQuickackActionRefused,
}

func (r *tcpackReceiver) recordQuickack(now pcommon.Timestamp) error {
	stats, err := r.quickack.Snapshot()
	if err != nil {
		return err
	}
	mech := quickackMechanisms[r.quickack.Mechanism()]
	for _, s := range stats {
		r.mb.RecordTcpackQuickackSocketsDataPoint(now, int64(s.Forced()), s.Target, mech)
		r.mb.RecordTcpackQuickackAppliedCountDataPoint(now, int64(s.Applied), s.Target, mech)
		for _, reason := range quickack.Refusals() {
			r.mb.RecordTcpackQuickackRefusedCountDataPoint(now, int64(s.Refused[reason]), s.Target, quickackRefusals[reason])
		}
	}
	n, last := r.quickack.PolicyErrors()
	r.mb.RecordTcpackQuickackPolicyErrorsDataPoint(now, int64(n))
	if n > r.policyErrs {
		r.set.Logger.Warn("quickack policy table update failed", zap.Error(last))
		r.policyErrs = n
	}
	lost, err := r.quickack.LostEvents()
	if err != nil {
		return err
	}
	r.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(lost), metadata.AttributeTcpackEventKindQuickack, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	return nil
}

// consumeQuickackEvents logs every socket forced, released or refused, and sends it down
// the logs pipeline when there is one.
func (r *tcpackReceiver) consumeQuickackEvents(events []quickack.Event) {
	for _, e := range events {
		fields := []zap.Field{zap.String("target", e.Target), zap.String("origin", e.Origin),
			zap.String("local", netip.AddrPortFrom(e.LocalAddr, e.LocalPort).String()),
			zap.String("peer", netip.AddrPortFrom(e.PeerAddr, e.PeerPort).String()), zap.Uint32("netns", e.Netns)}
		if e.Kind == quickack.EventRefused {
			r.set.Logger.Warn("quickack: socket not forced", append(fields, zap.Stringer("reason", e.Refusal), zap.Error(errOrNil(e.Err)))...)
		} else {
			r.set.Logger.Debug("quickack: socket "+e.Kind.String(), fields...)
		}
	}
	if r.logs == nil {
		return
	}
	ctx := context.Background()
	r.logsMu.Lock()
	for _, e := range events {
		name, _ := r.env.Netns.Name(e.Netns)
		errType := ""
		if e.Err != 0 {
			errType = unix.ErrnoName(e.Err)
		}
		r.lb.RecordTcpackQuickackSocketEvent(ctx, pcommon.NewTimestampFromTime(e.Time), quickackActions[e.Kind], e.Target,
			quickackMechanisms[e.Mechanism], metadata.MapAttributeTcpackQuickackOrigin[e.Origin], quickackRefusals[e.Refusal], errType,
			addrString(e.LocalAddr.IsValid(), e.LocalAddr.String()), int64(e.LocalPort),
			addrString(e.PeerAddr.IsValid(), e.PeerAddr.String()), int64(e.PeerPort), int64(e.Netns), name)
	}
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(ctx, logs, "quickack events")
}

func errOrNil(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
