package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"github.com/tcpack/tcpack/internal/loader"
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
	// Routes are CIDRs every socket towards which is forced (route mode): what
	// `ip route ... quickack 1` does, done with a rule and the policy table, no route changed.
	Routes []string `mapstructure:"routes"`
	// Sockets are named sockets: {pid, fd} of a process, or {local, peer} addresses.
	Sockets []SocketConfig `mapstructure:"sockets"`
	// OptIn honours an application's setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, 3) for the
	// socket's whole life, where the kernel's own TCP_QUICKACK lasts until the quota is spent.
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

// convert turns the block into the family's config; its errors name the field and the fix.
func (q QuickackConfig) convert(c common, hz int) (quickack.Config, []error) {
	cfg := quickack.DefaultConfig()
	cfg.Mode, cfg.Mark, cfg.Table, cfg.RulePriority = quickack.Mode(q.Mode), q.Mark, q.Table, q.RulePriority
	cfg.Cgroup, cfg.Netns, cfg.OptIn, cfg.HZ = q.Cgroup, q.Netns, q.OptIn, hz
	// Forcing events are few and each matters: never sampled, and the reader is woken for
	// every page.
	cfg.Delivery = c.delivery(SamplingConfig{})
	cfg.WakeupBytes = min(c.RingBuffer.WakeupBytes, 4096)
	var errs, more []error
	cfg.LocalPorts, errs = checkPorts("quickack.local_ports", q.LocalPorts)
	cfg.PeerPorts, more = checkPorts("quickack.peer_ports", q.PeerPorts)
	errs = append(errs, more...)
	for i, s := range q.Peers {
		field := fmt.Sprintf("quickack.peers[%d]", i)
		p, err := checkPrefix(field, s, "10.0.0.0/8 or 2001:db8::/32")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Addr().IsLoopback() && cfg.Mode == quickack.ModeRoute {
			errs = append(errs, fmt.Errorf("%s: %s: loopback peers are routed by the local table before any fwmark rule and cannot be forced in route mode; name the port with quickack.mode: bounded instead", field, s))
			continue
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	cfg.Routes, more = checkPrefixes("quickack.routes", q.Routes, "10.0.0.0/8")
	errs = append(errs, more...)
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
		return cfg, errs
	}
	if err := cfg.Validate(); err != nil {
		return cfg, []error{err}
	}
	return cfg, nil
}

// quickackFamily forces quick ACKs on the sockets the config names, and reports them.
type quickackFamily struct {
	block  QuickackConfig
	common common
	host   *familyHost
	probe  *quickack.Probe
	// policyErrs are the policy-table errors already logged.
	policyErrs uint64
}

func (f *quickackFamily) name() string        { return quickack.Family }
func (f *quickackFamily) enabled() bool       { return f.block.Enabled }
func (f *quickackFamily) hookNames() []string { return quickack.HookNames() }
func (f *quickackFamily) usesTickRate()       {}
func (f *quickackFamily) releaseWithLogs()    {}

// validate checks the block only when forcing is on.
func (f *quickackFamily) validate() []error {
	if !f.enabled() {
		return nil
	}
	_, errs := f.block.convert(f.common, 0)
	return errs
}

func (f *quickackFamily) start(h *familyHost) (loader.Report, error) {
	f.host = h
	cfg, errs := f.block.convert(f.common, h.hz)
	if len(errs) > 0 {
		return loader.Report{}, fmt.Errorf("nothing is forced: %w", errors.Join(errs...))
	}
	probe, err := quickack.Start(h.env, cfg, f.consumeEvents)
	if err != nil {
		return loader.Report{}, fmt.Errorf("nothing is forced: %w", err)
	}
	f.probe = probe
	return probe.Report(), nil
}

func (f *quickackFamily) close() error { return f.probe.Close() }

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

func (f *quickackFamily) record(now pcommon.Timestamp) error {
	stats, err := f.probe.Snapshot()
	if err != nil {
		return err
	}
	mech := quickackMechanisms[f.probe.Mechanism()]
	for _, s := range stats {
		f.host.mb.RecordTcpackQuickackSocketsDataPoint(now, int64(s.Forced()), s.Target, mech)
		f.host.mb.RecordTcpackQuickackAppliedCountDataPoint(now, int64(s.Applied), s.Target, mech)
		for _, reason := range quickack.Refusals() {
			f.host.mb.RecordTcpackQuickackRefusedCountDataPoint(now, int64(s.Refused[reason]), s.Target, quickackRefusals[reason])
		}
	}
	n, last := f.probe.PolicyErrors()
	f.host.mb.RecordTcpackQuickackPolicyErrorsDataPoint(now, int64(n))
	if n > f.policyErrs {
		f.host.logger.Warn("quickack policy table update failed", zap.Error(last))
		f.policyErrs = n
	}
	lost, err := f.probe.LostEvents()
	if err != nil {
		return err
	}
	f.host.mb.RecordTcpackEventsSuppressedDataPoint(now, int64(lost), metadata.AttributeTcpackEventKindQuickack, metadata.AttributeTcpackSuppressionCauseRingBufferFull)
	return nil
}

// consumeEvents logs every socket forced, released or refused, and sends it down the logs
// pipeline when there is one.
func (f *quickackFamily) consumeEvents(events []quickack.Event) {
	for _, e := range events {
		fields := []zap.Field{zap.String("target", e.Target), zap.String("origin", e.Origin),
			zap.String("local", netip.AddrPortFrom(e.LocalAddr, e.LocalPort).String()),
			zap.String("peer", netip.AddrPortFrom(e.PeerAddr, e.PeerPort).String()), zap.Uint32("netns", e.Netns)}
		if e.Kind == quickack.EventRefused {
			f.host.logger.Warn("quickack: socket not forced", append(fields, zap.Stringer("reason", e.Refusal), zap.Error(errOrNil(e.Err)))...)
		} else {
			f.host.logger.Debug("quickack: socket "+e.Kind.String(), fields...)
		}
	}
	if !f.host.withLogs {
		return
	}
	ctx := context.Background()
	f.host.sendEvents("quickack events", func(lb *metadata.LogsBuilder) {
		for _, e := range events {
			name, _ := f.host.env.Netns.Name(e.Netns)
			errType := ""
			if e.Err != 0 {
				errType = unix.ErrnoName(e.Err)
			}
			lb.RecordTcpackQuickackSocketEvent(ctx, pcommon.NewTimestampFromTime(e.Time), quickackActions[e.Kind], e.Target,
				quickackMechanisms[e.Mechanism], metadata.MapAttributeTcpackQuickackOrigin[e.Origin], quickackRefusals[e.Refusal], errType,
				addrString(e.LocalAddr), int64(e.LocalPort), addrString(e.PeerAddr), int64(e.PeerPort), int64(e.Netns), name)
		}
	})
}

func errOrNil(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
