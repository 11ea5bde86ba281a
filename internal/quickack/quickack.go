// Package quickack forces TCP quick ACKs on the sockets a user names, for their whole life
// (the kernel's own TCP_QUICKACK lasts only until the quick-ACK quota is spent), without a
// kernel module and without touching the application. It is the only part of
// tcpack that changes kernel state, and it owns all of it: the policy rules and table it
// installs (tagged with RouteProtocol), the socket marks it stamps, and its BPF links. Close
// gives every socket back and removes every rule and route; a restart after a crash removes
// the leftovers first. The port-at-establishment test (slow reader, one forced port and one
// control on the same path) logs, from the ACK family:
//
//	port 5301: 300 ACKs for 300 segments, route=299 quick=1, mean delay 0.01 ms, forced 300
//	port 5302: 39 ACKs for 300 segments, route=0 quick=16, mean delay 13.87 ms, forced 0
package quickack

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/selector"
)

// Family is the name the loader and the telemetry use.
const Family = "quickack"

// Mode is how a socket is forced.
type Mode string

const (
	// ModeRoute marks the socket (SO_MARK) and routes marked traffic through a policy table
	// whose routes carry quickack 1: every ACK leaves at once.
	ModeRoute Mode = "route"
	// ModeBounded sets TCP_BPF_DELACK_MAX to its minimum, two jiffies: ACKs may still be
	// delayed, but only that long. For hosts where policy routing is not allowed.
	ModeBounded Mode = "bounded"
)

// Defaults for the route mode's kernel objects. The mark and table are unlikely to collide;
// Start checks anyway and refuses to share them.
const (
	DefaultMark         = 0x0ac10000
	DefaultTable        = 4401
	DefaultRulePriority = 4401
)

// Config names the sockets to force and how.
type Config struct {
	Mode         Mode
	Mark         uint32
	Table        int
	RulePriority int
	// Cgroup is the cgroup v2 directory whose sockets are seen at establishment and whose
	// setsockopt calls are watched; "" is the root. Accepted sockets inherit the listener's
	// cgroup, so it must contain the listening process.
	Cgroup string
	// Netns are the network namespaces (paths such as /run/netns/x or /proc/PID/ns/net)
	// where forcing applies; empty means the collector's own.
	Netns []string
	// LocalPorts and PeerPorts force sockets by port; Peers by peer address.
	LocalPorts []uint16
	PeerPorts  []uint16
	Peers      []netip.Prefix
	// Routes force every socket towards these destinations, as
	// `ip route ... quickack 1` does, but without changing any route: a rule `to CIDR` sends
	// them through the policy table, whose routes carry quickack 1 (route mode only).
	Routes []netip.Prefix
	// Sockets names sockets by owner (pid and fd) or by address.
	Sockets []SocketSpec
	// OptIn honours setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, 3) for the socket's lifetime.
	OptIn bool
	// HZ is the kernel tick rate, which TCP_BPF_DELACK_MAX's minimum depends on.
	HZ int
	// Delivery carries the forcing events; its rate limit is unused: every one is sent.
	eventreader.Delivery
}

// SocketSpec names sockets either by owner, PID and FD (the process's own descriptor number:
// a connected socket is forced, a listener forces the connections it accepts), or by
// address: Local and/or Peer, where an unspecified address (0.0.0.0, ::) or port 0 means any.
type SocketSpec struct {
	PID, FD     int
	Local, Peer netip.AddrPort
}

func (s SocketSpec) byOwner() bool { return s.PID != 0 || s.FD != 0 }

func (s SocketSpec) String() string {
	if s.byOwner() {
		return fmt.Sprintf("pid:%d/fd:%d", s.PID, s.FD)
	}
	var parts []string
	if s.Local.IsValid() {
		parts = append(parts, "local:"+s.Local.String())
	}
	if s.Peer.IsValid() {
		parts = append(parts, "peer:"+s.Peer.String())
	}
	return strings.Join(parts, ",")
}

// DefaultConfig forces nothing until targets are added.
func DefaultConfig() Config {
	return Config{
		Mode: ModeRoute, Mark: DefaultMark, Table: DefaultTable, RulePriority: DefaultRulePriority,
		HZ:       250,
		Delivery: eventreader.Delivery{RingBufferBytes: 1 << 18, WakeupBytes: 4096, FlushInterval: 200 * time.Millisecond},
	}
}

// Validate checks the config the way a user needs to hear about it: the field and the fix.
func (c Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeRoute:
		if c.Mark == 0 {
			errs = append(errs, errors.New("quickack.mark: must not be 0 (0 means no mark); use e.g. 0x0ac10000"))
		}
		if c.Table <= 0 || c.Table == unix.RT_TABLE_MAIN || c.Table == unix.RT_TABLE_LOCAL || c.Table == unix.RT_TABLE_DEFAULT || c.Table > 0xffffffff {
			errs = append(errs, fmt.Errorf("quickack.table: %d is reserved or out of range; use a free table id such as %d", c.Table, DefaultTable))
		}
		if c.RulePriority <= 0 || c.RulePriority >= 32766 {
			errs = append(errs, fmt.Errorf("quickack.rule_priority: %d must be between 1 and 32765, after the local table's rule (0) and before main's (32766)", c.RulePriority))
		}
	case ModeBounded:
	default:
		errs = append(errs, fmt.Errorf("quickack.mode: %q is not a mode; use %q or %q", c.Mode, ModeRoute, ModeBounded))
	}
	for _, p := range append(append([]uint16{}, c.LocalPorts...), c.PeerPorts...) {
		if p == 0 {
			errs = append(errs, errors.New("quickack ports: port 0 is not a port; use 1-65535"))
		}
	}
	for _, p := range c.Peers {
		if !p.IsValid() {
			errs = append(errs, errors.New("quickack.peers: invalid prefix"))
		}
	}
	for i, p := range c.Routes {
		if !p.IsValid() || p.Addr().IsLoopback() {
			errs = append(errs, fmt.Errorf("quickack.routes[%d]: %v is not a forwarding destination; name a non-loopback CIDR", i, p))
		}
	}
	if len(c.Routes) > 0 && c.Mode != ModeRoute {
		errs = append(errs, errors.New("quickack.routes: forcing by route needs policy routing; set quickack.mode: route or remove quickack.routes"))
	}
	for i, s := range c.Sockets {
		switch {
		case s.byOwner() && (s.PID <= 0 || s.FD < 0):
			errs = append(errs, fmt.Errorf("quickack.sockets[%d]: pid %d fd %d: name a process id and one of its file descriptors", i, s.PID, s.FD))
		case s.byOwner() && (s.Local.IsValid() || s.Peer.IsValid()):
			errs = append(errs, fmt.Errorf("quickack.sockets[%d]: name a socket by pid and fd, or by local/peer address, not both", i))
		case !s.byOwner() && !s.Local.IsValid() && !s.Peer.IsValid():
			errs = append(errs, fmt.Errorf("quickack.sockets[%d]: empty; give pid and fd, or local and/or peer as ADDRESS:PORT", i))
		case (s.Local.IsValid() && s.Local.Port() == 0) || (s.Peer.IsValid() && (s.Peer.Port() == 0 || s.Peer.Addr().IsUnspecified())):
			errs = append(errs, fmt.Errorf("quickack.sockets[%d]: %s: a named socket needs its ports (and the peer's address); use local_ports, peer_ports or peers for wider matches", i, s))
		case s.Local.IsValid() && s.Local.Addr().IsUnspecified() && s.Peer.IsValid():
			errs = append(errs, fmt.Errorf("quickack.sockets[%d]: %s: with a peer, give the local address too (or leave local out)", i, s))
		}
	}
	if len(c.LocalPorts)+len(c.PeerPorts)+len(c.Peers)+len(c.Routes)+len(c.Sockets) == 0 && !c.OptIn {
		errs = append(errs, errors.New("quickack: no target; name local_ports, peer_ports, peers, routes, sockets or set opt_in"))
	}
	if len(c.Netns) > selector.MaxNetns {
		errs = append(errs, fmt.Errorf("quickack.netns: %d namespaces, at most %d can be named", len(c.Netns), selector.MaxNetns))
	}
	if len(c.targets()) >= maxTargets {
		errs = append(errs, fmt.Errorf("quickack: %d targets, at most %d", len(c.targets()), maxTargets-1))
	}
	return errors.Join(errs...)
}

// maxTargets is MAX_TARGETS in bpf/quickack.bpf.c; id 0 means "no target".
const maxTargets = 256

// A target is one config entry, numbered from 1 for the kernel side.
type target struct {
	name      string
	localPort uint16
	peerPort  uint16
	peer      netip.Prefix
	optIn     bool
	socket    *SocketSpec
	// resolved is where a named socket lives and what it matches (zero parts: any).
	resolved []resolvedSocket
}

func (c Config) targets() []target {
	var ts []target
	for _, p := range c.LocalPorts {
		ts = append(ts, target{name: fmt.Sprintf("local_port:%d", p), localPort: p})
	}
	for _, p := range c.PeerPorts {
		ts = append(ts, target{name: fmt.Sprintf("peer_port:%d", p), peerPort: p})
	}
	for _, p := range c.Peers {
		ts = append(ts, target{name: "peer:" + p.Masked().String(), peer: p.Masked()})
	}
	for i := range c.Sockets {
		ts = append(ts, target{name: "socket:" + c.Sockets[i].String(), socket: &c.Sockets[i]})
	}
	if c.OptIn {
		ts = append(ts, target{name: "opt_in", optIn: true})
	}
	return ts
}

// namespace is one network namespace forcing applies in.
type namespace struct {
	path   string
	inode  uint32
	cookie uint64
	handle netns.NsHandle
	policy *policy
}

// Probe is the running forcing: programs attached, policy installed, sockets marked.
type Probe struct {
	cfg     Config
	targets []target
	set     *loader.Set
	report  loader.Report
	nss     []*namespace
	reader  *eventreader.Reader
	env     *kernel.Env
}

// Start installs the policy routing (route mode), attaches the programs, forces the
// matching sockets that are already open, and from then on every new one.
func Start(env *kernel.Env, cfg Config, sink func([]Event)) (*Probe, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Cgroup != "" {
		// Checked before anything changes: the policy goes in before the programs load.
		if _, err := os.Stat(cfg.Cgroup + "/cgroup.procs"); err != nil {
			return nil, fmt.Errorf("quickack.cgroup: %s is not a cgroup v2 directory (%w); name one under the cgroup2 mount, or leave it empty for the root", cfg.Cgroup, err)
		}
	}
	f := &Probe{cfg: cfg, targets: cfg.targets(), env: env}
	ok := false
	defer func() {
		if !ok {
			f.Close() // gives back any socket already forced
		}
	}()
	if err := f.openNamespaces(); err != nil {
		return nil, err
	}
	if err := f.resolveSockets(); err != nil {
		return nil, err
	}
	if cfg.Mode == ModeRoute {
		for _, ns := range f.nss {
			p, err := installPolicy(ns.path, ns.handle, cfg.Mark, cfg.Table, cfg.RulePriority, cfg.Routes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", Family, err)
			}
			ns.policy = p
		}
	}
	if err := f.load(); err != nil {
		return nil, err
	}
	var err error
	if f.reader, err = eventreader.Start(f.set.Maps[quickackMapEvents], cfg.FlushInterval, eventreader.Decoder(f.decode), sink); err != nil {
		return nil, fmt.Errorf("%s: %w", Family, err)
	}
	if err := f.walkExisting(false); err != nil {
		return nil, err
	}
	ok = true
	return f, nil
}

func (f *Probe) openNamespaces() error {
	paths := f.cfg.Netns
	if len(paths) == 0 {
		paths = []string{"/proc/self/ns/net"}
	}
	seen := map[uint32]string{}
	for _, path := range paths {
		if _, err := f.openNamespace(path, seen); err != nil {
			return err
		}
	}
	return nil
}

// openNamespace opens one namespace; one already open is returned as is, unless it was named
// twice in the config.
func (f *Probe) openNamespace(path string, seen map[uint32]string) (*namespace, error) {
	inode, err := kernel.NetnsInode(path)
	if err != nil {
		return nil, fmt.Errorf("quickack.netns: %s: %w; name a netns file such as /run/netns/NAME or /proc/PID/ns/net", path, err)
	}
	if seen != nil {
		if other, dup := seen[inode]; dup {
			return nil, fmt.Errorf("quickack.netns: %s and %s are the same namespace; name it once", other, path)
		}
		seen[inode] = path
	}
	for _, ns := range f.nss {
		if ns.inode == inode {
			return ns, nil
		}
	}
	// Our own namespace gets no handle: setns needs CAP_SYS_ADMIN even into the namespace a
	// thread is already in, and a sidecar forcing in its own pod's namespace has no need for it.
	h := netns.None()
	if own, err := kernel.NetnsInode(kernel.OwnNetns); err != nil || own != inode {
		if h, err = netns.GetFromPath(kernel.NetnsPath(path)); err != nil {
			return nil, fmt.Errorf("quickack.netns: %s: %w", path, err)
		}
	}
	ns := &namespace{path: path, handle: h, inode: inode}
	f.nss = append(f.nss, ns)
	{
		if err := inNetns(h, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			ns.cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
			return err
		}); err != nil {
			return nil, fmt.Errorf("quickack.netns: %s: netns cookie: %w", path, err)
		}
	}
	return ns, nil
}

// inNetns runs fn in the namespace (none: our own, on the calling thread).
func inNetns(h netns.NsHandle, fn func() error) error {
	if !h.IsOpen() {
		return fn()
	}
	return kernel.InNetns(h, fn)
}

func hooks(cgroup string, optIn bool) []loader.Hook {
	hs := []loader.Hook{
		{Name: "sock_ops", Strategies: []loader.Strategy{
			{Kind: loader.SockOps, Program: quickackProgQuickackSockops, Target: cgroup},
		}},
		{Name: "inet_sock_set_state", Strategies: []loader.Strategy{
			{Kind: loader.TPBTF, Program: quickackProgQuickackClosed, Target: "inet_sock_set_state", Args: 3},
		}},
		// Without it sockets open before the start are not forced; the family says so.
		{Name: "iter_tcp", Optional: true, Strategies: []loader.Strategy{
			{Kind: loader.Iter, Program: quickackProgQuickackExisting, Target: "tcp"},
		}},
	}
	if optIn {
		hs = append(hs, loader.Hook{Name: "setsockopt", Strategies: []loader.Strategy{
			{Kind: loader.CgroupSetsockopt, Program: quickackProgQuickackOptIn, Target: cgroup},
		}})
	}
	return hs
}

// HookNames lists the family's hooks, for reporting a family that could not start.
func HookNames() []string { return loader.HookNames(hooks("", true)) }

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// delackMaxUs is the smallest TCP_BPF_DELACK_MAX the kernel accepts: it rounds up to
// jiffies and wants at least two (TCP_TIMEOUT_MIN), so one jiffy plus one microsecond.
func delackMaxUs(hz int) int32 {
	if hz <= 0 {
		hz = 250
	}
	return int32(1_000_000/hz + 1)
}

func (f *Probe) load() error {
	cgroup := f.cfg.Cgroup
	if cgroup == "" {
		root, err := kernel.CgroupV2Root()
		if err != nil {
			return fmt.Errorf("%s: %w", Family, err)
		}
		cgroup = root
	}
	spec, err := loadQuickack()
	if err != nil {
		return err
	}
	mech := uint8(1)
	if f.cfg.Mode == ModeBounded {
		mech = 2
	}
	optIn := uint32(0)
	for i, t := range f.targets {
		if t.optIn {
			optIn = uint32(i + 1)
		}
	}
	vars := map[string]any{
		quickackVarMechanism:         mech,
		quickackVarForceMark:         f.cfg.Mark,
		quickackVarDelackMaxForcedUs: delackMaxUs(f.cfg.HZ),
		quickackVarOptInTarget:       optIn,
		quickackVarHasTuples:         boolByte(len(f.cfg.Sockets) > 0),
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("%s: set %s: %w", Family, name, err)
		}
	}
	// Every forcing event matters: none is rate-limited (the family never samples).
	if err := eventreader.Configure(spec, f.cfg.Delivery, 0, nil); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	if err := selector.Size(spec, f.selected(), len(f.nss)); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	set, report, err := loader.Load(Family, f.env, spec, hooks(cgroup, f.cfg.OptIn), loader.Options{})
	if err != nil {
		return err
	}
	f.set, f.report = set, report
	return f.fillTargets()
}

// selected are the targets the selector matches (ports and peers), by target id.
func (f *Probe) selected() []selector.Entry {
	var entries []selector.Entry
	for i, t := range f.targets {
		id := uint32(i + 1)
		switch {
		case t.localPort != 0:
			entries = append(entries, selector.Entry{Side: selector.Local, Port: t.localPort, Value: id})
		case t.peerPort != 0:
			entries = append(entries, selector.Entry{Side: selector.Peer, Port: t.peerPort, Value: id})
		case t.peer.IsValid():
			entries = append(entries, selector.Entry{Peer: t.peer, Value: id})
		}
	}
	return entries
}

func (f *Probe) fillTargets() error {
	maps := f.set.Maps
	for _, ns := range f.nss {
		if err := selector.AddNetns(maps, ns.inode); err != nil {
			return fmt.Errorf("%s: netns %s: %w", Family, ns.path, err)
		}
		if err := maps[quickackMapForceNetnsCookies].Put(ns.cookie, ns.inode); err != nil {
			return fmt.Errorf("%s: netns %s: %w", Family, ns.path, err)
		}
		if err := selector.Fill(maps, ns.inode, f.selected()); err != nil {
			return fmt.Errorf("%s: netns %s: %w", Family, ns.path, err)
		}
		for i, t := range f.targets {
			id := uint32(i + 1)
			var err error
			if t.socket != nil {
				for _, r := range t.resolved {
					if r.netns != ns.inode {
						continue
					}
					key := quickackTupleKey{Netns: ns.inode, LocalPort: r.local.Port(), PeerPort: r.peer.Port(),
						LocalAddr: r.local.Addr().As16(), PeerAddr: r.peer.Addr().As16()}
					if err = maps[quickackMapForceTuples].Put(key, id); err != nil {
						break
					}
				}
			}
			if err != nil {
				return fmt.Errorf("%s: target %s: %w", Family, t.name, err)
			}
		}
	}
	return nil
}

// walkExisting runs the iterator in every namespace: forcing the matching sockets already
// open, or, with release, giving every forced socket back.
func (f *Probe) walkExisting(release bool) error {
	l := f.set.Link("iter_tcp")
	if l == nil {
		return nil
	}
	flag := uint32(0)
	if release {
		flag = 1
	}
	if err := f.set.Maps[quickackMapIterRelease].Put(uint32(0), flag); err != nil {
		return fmt.Errorf("%s: %w", Family, err)
	}
	var errs []error
	for _, ns := range f.nss {
		err := inNetns(ns.handle, func() error {
			rd, err := l.(*link.Iter).Open()
			if err != nil {
				return err
			}
			defer rd.Close()
			_, err = io.Copy(io.Discard, rd)
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: walk sockets of netns %s: %w", Family, ns.path, err))
		}
	}
	return errors.Join(errs...)
}

// Report says which hooks attached and how.
func (f *Probe) Report() loader.Report { return f.report }

// Close gives every forced socket back, detaches the programs and removes the policy rules
// and table from every namespace.
func (f *Probe) Close() error {
	var errs []error
	if f.set != nil {
		// Stop forcing new sockets first, so none is forced after the walk gives them back.
		errs = append(errs, f.set.Detach("sock_ops"), f.set.Detach("setsockopt"))
		errs = append(errs, f.walkExisting(true))
		// Let the reader deliver the release events before it stops.
		deadline := time.Now().Add(2 * f.cfg.FlushInterval)
		for f.reader != nil && f.reader.AvailableBytes() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	errs = append(errs, f.teardown())
	return errors.Join(errs...)
}

func (f *Probe) teardown() error {
	var errs []error
	errs = append(errs, f.reader.Close())
	f.reader = nil
	if f.set != nil {
		errs = append(errs, f.set.Close())
		f.set = nil
	}
	for _, ns := range f.nss {
		if ns.policy != nil {
			errs = append(errs, ns.policy.close())
			ns.policy = nil
		}
		if ns.handle.IsOpen() {
			ns.handle.Close()
		}
	}
	f.nss = nil
	return errors.Join(errs...)
}

// Refusal is why a socket that matched a target was not forced.
type Refusal int

// Refusals, as in bpf/quickack.bpf.c enum refusal.
const (
	RefusalNone Refusal = iota
	// RefusalLocalPeer: a loopback or local peer is routed by the local table before any
	// fwmark rule; route mode cannot force it (bounded mode can).
	RefusalLocalPeer
	// RefusalHasMark: the socket carries another mark, which tcpack will not overwrite.
	RefusalHasMark
	// RefusalSetsockopt: the kernel refused the socket option.
	RefusalSetsockopt
	refusalCount
)

var refusalNames = [refusalCount]string{"", "local_peer", "socket_has_mark", "setsockopt_failed"}

func (r Refusal) String() string {
	if r >= 0 && r < refusalCount {
		return refusalNames[r]
	}
	return fmt.Sprintf("refusal_%d", int(r))
}

// Refusals lists the refusal reasons, for telemetry.
func Refusals() []Refusal { return []Refusal{RefusalLocalPeer, RefusalHasMark, RefusalSetsockopt} }

// Mechanism names how a socket was forced.
func (f *Probe) Mechanism() string {
	if f.cfg.Mode == ModeBounded {
		return "delack_max"
	}
	return "mark"
}

// TargetStats are the cumulative counts of one target.
type TargetStats struct {
	Target   string
	Applied  uint64
	Released uint64
	Refused  [refusalCount]uint64
}

// Forced is how many sockets the target holds forced now.
func (s TargetStats) Forced() uint64 {
	if s.Released > s.Applied {
		return 0
	}
	return s.Applied - s.Released
}

// Snapshot reads every target's counts.
func (f *Probe) Snapshot() ([]TargetStats, error) {
	out := make([]TargetStats, 0, len(f.targets))
	for i, t := range f.targets {
		var perCPU []quickackTargetStats
		if err := f.set.Maps[quickackMapTargetCounts].Lookup(uint32(i+1), &perCPU); err != nil {
			return nil, fmt.Errorf("%s: read target %s: %w", Family, t.name, err)
		}
		s := TargetStats{Target: t.name}
		for _, v := range perCPU {
			s.Applied += v.Applied
			s.Released += v.Released
			for r, n := range v.Refused {
				s.Refused[r] += n
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// PolicyErrors counts failed resyncs of the policy tables and returns the last failure.
func (f *Probe) PolicyErrors() (uint64, error) {
	var n uint64
	var last error
	for _, ns := range f.nss {
		if ns.policy == nil {
			continue
		}
		c, err := ns.policy.syncErrors()
		n += c
		if err != nil {
			last = err
		}
	}
	return n, last
}

// LostEvents counts events lost to a full ring buffer.
func (f *Probe) LostEvents() (uint64, error) {
	n, err := loader.SumPerCPU(f.set.Maps[quickackMapCounters], 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", Family, err)
	}
	return n, nil
}

// EventKind says what happened to a socket.
type EventKind int

const (
	EventApplied  EventKind = 1
	EventReleased EventKind = 2
	EventRefused  EventKind = 3
)

func (k EventKind) String() string {
	switch k {
	case EventApplied:
		return "applied"
	case EventReleased:
		return "released"
	case EventRefused:
		return "refused"
	}
	return fmt.Sprintf("kind_%d", int(k))
}

var originNames = map[uint8]string{1: "established", 2: "existing", 3: "opt_in", 4: "shutdown"}

// Event is one socket forced, released or refused.
type Event struct {
	Time      time.Time
	Kind      EventKind
	Target    string
	Mechanism string
	// Origin: established (sock_ops), existing (open at start), opt_in, shutdown.
	Origin    string
	Refusal   Refusal
	Err       syscall.Errno
	Netns     uint32
	LocalAddr netip.Addr
	LocalPort uint16
	PeerAddr  netip.Addr
	PeerPort  uint16
}

func (f *Probe) decode(r *quickackForceEvent) Event {
	e := Event{
		Time: f.env.KtimeToTime(r.TsNs), Kind: EventKind(r.Kind), Refusal: Refusal(r.Refusal),
		Origin: originNames[r.Origin], Netns: r.Netns, LocalPort: r.Flow.LocalPort, PeerPort: r.Flow.PeerPort,
		Mechanism: "mark",
	}
	if r.Mechanism == 2 {
		e.Mechanism = "delack_max"
	}
	if r.Err < 0 {
		e.Err = syscall.Errno(-r.Err)
	}
	if r.Target >= 1 && int(r.Target) <= len(f.targets) {
		e.Target = f.targets[r.Target-1].name
	}
	e.LocalAddr, e.PeerAddr = kernel.FlowAddrs(r.Flow.L3proto, r.Flow.LocalAddr, r.Flow.PeerAddr)
	return e
}
