package quickack_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/quickack"
)

// The slow-reader workload: the client sends a small message every 2 ms, the server reads every
// 50 ms. Unforced, its ACKs wait ~14 ms on average (internal/acks tests).
const (
	messages  = 300
	every     = 2 * time.Millisecond
	readEvery = 50 * time.Millisecond
)

type eventLog = netnstest.Events[quickack.Event]

func config(t *testing.T, ns *netnstest.NS) quickack.Config {
	t.Helper()
	hz, err := kernel.HZ()
	if err != nil {
		t.Fatal(err)
	}
	cfg := quickack.DefaultConfig()
	cfg.Netns = []string{"/run/netns/" + ns.Name}
	cfg.HZ = hz
	return cfg
}

func start(t *testing.T, cfg quickack.Config) (*quickack.Probe, *eventLog) {
	t.Helper()
	log := &eventLog{}
	f, err := quickack.Start(netnstest.KernelEnv(t), cfg, log.Add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	for _, l := range f.Report().Lines() {
		t.Log(l)
	}
	return f, log
}

// observe starts the ACK family on the given ports: the judge of whether forcing worked.
func observe(t *testing.T, ports ...uint16) *acks.Probe {
	t.Helper()
	cfg := acks.DefaultConfig()
	cfg.LocalPorts = ports
	cfg.PerSegment = true
	cfg.Attach = loader.AttachAlways // statistics from the first segment
	cfg.ForceMark = quickack.DefaultMark
	hz, err := kernel.HZ()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HZ = hz
	p, err := acks.Start(netnstest.KernelEnv(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// ackStats waits until the port's ACK statistics cover every data segment its server
// received, per TCP_INFO (less duplicates of retransmitted segments).
func ackStats(t *testing.T, p *acks.Probe, netns uint32, port uint16, c *netnstest.Paced) acks.Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snap {
			if s.Netns != netns || s.ServerPort != port || s.Role != acks.RoleServer {
				continue
			}
			if ok, _ := c.Covered(t, s.SegmentsAcked); ok {
				t.Logf("port %d: %d ACKs for %d segments, route=%d quick=%d, mean delay %.2f ms, forced %d",
					port, s.Acks(), s.SegmentsAcked, s.ByCause[acks.CauseRoute], s.ByCause[acks.CauseQuick],
					1000*s.Delay.Sum/float64(s.Delay.Count), s.Forced)
				return s
			}
		}
		if time.Now().After(deadline) {
			_, state := c.Covered(t, 0)
			t.Fatalf("port %d: statistics never covered the data segments received (%s): %+v", port, state, snap)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func meanDelay(s acks.Stats) time.Duration {
	return time.Duration(s.Delay.Sum / float64(s.Delay.Count) * float64(time.Second))
}

// requireForced: (almost) one pure ACK per segment, and a mean delay under 1 ms. The first
// ACK after the mark may still be delayed: it is what triggers the new route lookup.
func requireForced(t *testing.T, s acks.Stats) {
	t.Helper()
	if s.Acks() < s.SegmentsAcked*9/10 {
		t.Errorf("forced: %d ACKs for %d segments, want about one per segment", s.Acks(), s.SegmentsAcked)
	}
	if d := meanDelay(s); d >= time.Millisecond {
		t.Errorf("forced: mean ACK delay %v, want under 1 ms", d)
	}
	if s.Forced < s.Acks()*9/10 {
		t.Errorf("forced: the ACK family counts %d of %d ACKs on forced sockets", s.Forced, s.Acks())
	}
}

// requireDelayed: the control keeps delayed ACKs, well apart from a forced socket's one ACK
// per segment under 1 ms. The bounds leave room for the quota refills the kernel makes when a
// tail-loss probe retransmits during a delayed ACK (seen once: 139 ACKs for 307 segments,
// mean 2.9 ms); an undisturbed run gives 39 ACKs and ~14 ms.
func requireDelayed(t *testing.T, s acks.Stats) {
	t.Helper()
	if s.Acks() > s.SegmentsAcked*2/3 {
		t.Errorf("control: %d ACKs for %d segments, want delayed ACKs covering several each", s.Acks(), s.SegmentsAcked)
	}
	if d := meanDelay(s); d < time.Millisecond {
		t.Errorf("control: mean ACK delay %v, want delayed (milliseconds)", d)
	}
	if s.Forced != 0 {
		t.Errorf("control: %d ACKs counted as forced", s.Forced)
	}
}

func targetStats(t *testing.T, f *quickack.Probe, name string) quickack.TargetStats {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		if s.Target == name {
			return s
		}
	}
	t.Fatalf("no target %s in %+v", name, snap)
	return quickack.TargetStats{}
}

// waitEvents waits for n events matching f.
func waitEvents(t *testing.T, log *eventLog, n int, f func(quickack.Event) bool) []quickack.Event {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := log.Matching(f)
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func policyState(t *testing.T, ns *netnstest.NS) string { return netnstest.PolicyRouting(t, ns) }

func TestPortForcedAtEstablishment(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5301, 5302)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5301}
	f, log := start(t, cfg)

	target := pair.Connect(t, 5301)
	control := pair.Connect(t, 5302)
	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5301, target))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5302, control))

	s := targetStats(t, f, "local_port:5301")
	if s.Applied != 1 || s.Forced() != 1 {
		t.Errorf("target stats %+v, want one socket forced", s)
	}
	applied := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Kind == quickack.EventApplied })
	if len(applied) != 1 {
		t.Fatalf("applied events: %+v, want one", applied)
	}
	e := applied[0]
	if e.Target != "local_port:5301" || e.Origin != "established" || e.Mechanism != "mark" || e.Netns != pair.B.Inode ||
		e.LocalPort != 5301 || e.PeerAddr.String() != pair.A.Addr || e.LocalAddr.String() != pair.B.Addr {
		t.Errorf("applied event %+v", e)
	}

	// Closing the socket releases it. The peer closes first, so the server's close goes
	// through LAST_ACK to TCP_CLOSE at once; an active close could wait in FIN_WAIT2 for
	// tcp_fin_timeout when the FIN's ACK lands while close() holds the socket (seen under
	// qemu).
	target.Client.Close()
	target.Server.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := target.Server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read after the client closed: %v, want EOF", err)
	}
	target.Server.Close()
	released := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Kind == quickack.EventReleased })
	if len(released) != 1 || released[0].LocalPort != 5301 {
		t.Errorf("released events after close: %+v", released)
	}
	if s := targetStats(t, f, "local_port:5301"); s.Forced() != 0 {
		t.Errorf("after close: %+v, want nothing forced", s)
	}
}

// TestPortAlreadyOpenAtStart: a connection open before Start is forced by the walk of open
// sockets, which runs in the socket's namespace (it once ran in the host's whenever Go's first
// thread had been left in the target namespace: kernel.InNetns).
func TestPortAlreadyOpenAtStart(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5303)
	target := pair.Connect(t, 5303)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5303}
	f, log := start(t, cfg)

	// The walk runs in Start: check it before any traffic, so a miss is reported as one.
	applied := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Kind == quickack.EventApplied })
	if len(applied) != 1 || applied[0].Origin != "existing" || applied[0].LocalPort != 5303 {
		mark := -1
		if raw, err := target.Server.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		}
		t.Fatalf("applied events %+v, want one from the walk of existing sockets; every event: %+v; server socket: state %d, mark %#x",
			applied, log.Matching(func(quickack.Event) bool { return true }), netnstest.TCPInfo(t, target.Server).State, mark)
	}
	target.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5303, target))
	if s := targetStats(t, f, "local_port:5303"); s.Forced() != 1 {
		t.Errorf("target stats %+v", s)
	}
}

func TestPeerPrefix(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5304)
	cfg := config(t, pair.B)
	cfg.Peers = []netip.Prefix{netip.MustParsePrefix(pair.A.Addr + "/32")}
	f, _ := start(t, cfg)

	target := pair.Connect(t, 5304)
	target.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5304, target))
	if s := targetStats(t, f, "peer:"+pair.A.Addr+"/32"); s.Forced() != 1 {
		t.Errorf("target stats %+v", s)
	}
}

func TestPeerPrefixOtherPeerUntouched(t *testing.T) {
	pair := netnstest.NewPair(t)
	cfg := config(t, pair.B)
	cfg.Peers = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	f, _ := start(t, cfg)
	pair.Connect(t, 5305)
	if s := targetStats(t, f, "peer:203.0.113.0/24"); s.Applied != 0 {
		t.Errorf("a peer outside the prefix was forced: %+v", s)
	}
}

func TestOptInBySetsockopt(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5306, 5307)
	cfg := config(t, pair.B)
	cfg.OptIn = true
	f, log := start(t, cfg)

	target := pair.Connect(t, 5306)
	control := pair.Connect(t, 5307)
	raw, err := target.Server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 3) })
	if serr != nil {
		t.Fatal(serr)
	}
	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5306, target))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5307, control))
	if s := targetStats(t, f, "opt_in"); s.Applied != 1 {
		t.Errorf("target stats %+v", s)
	}
	if got := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Origin == "opt_in" }); len(got) != 1 {
		t.Errorf("opt-in events %+v", got)
	}
}

func TestBoundedMode(t *testing.T) {
	obs := observe(t, 5308, 5309)
	// A stall of the host (a TCG guest, a busy shared VM) makes the client retransmit. Each
	// duplicate gives the server a fresh quick-ACK quota, which leaves few delayed ACKs to judge,
	// with the stall in their delays. Such a run says nothing about the bound, so it is tried
	// again on a new pair of namespaces.
	for attempt := 1; ; attempt++ {
		failures, retransmits := boundedModeRun(t, obs)
		if len(failures) == 0 {
			return
		}
		if retransmits == 0 || attempt == 3 {
			for _, f := range failures {
				t.Error(f)
			}
			return
		}
		t.Logf("attempt %d: %d segments retransmitted, so again: %s", attempt, retransmits, strings.Join(failures, "; "))
	}
}

// boundedModeRun forces one port of a new pair in bounded mode, next to a control port, and
// returns what it found wrong and how many segments the clients retransmitted.
func boundedModeRun(t *testing.T, obs *acks.Probe) ([]string, uint64) {
	pair := netnstest.NewPair(t)
	cfg := config(t, pair.B)
	cfg.Mode = quickack.ModeBounded
	cfg.LocalPorts = []uint16{5308}
	before := policyState(t, pair.B)
	f, _ := start(t, cfg)
	var failures []string
	if got := policyState(t, pair.B); got != before {
		failures = append(failures, fmt.Sprintf("bounded mode changed policy routing:\n%s\nwas:\n%s", got, before))
	}

	target := pair.Connect(t, 5308)
	control := pair.Connect(t, 5309)
	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	s := ackStats(t, obs, pair.B.Inode, 5308, target)
	c := ackStats(t, obs, pair.B.Inode, 5309, control)
	// Two jiffies bound every delay (8 ms at HZ 250) but ACKs are still delayed. Both are
	// judged on the ACKs outside quick mode: a tail-loss probe refills the quota (the control
	// once had 112 quick ACKs of 125 in the 6.1 guest, which pulled its mean under the
	// target's). Where the host loses time (a TCG guest) a stall adds to any ACK pending across
	// it, so the bound is judged against the control, which the same stalls hit.
	limit := 2 * time.Second / time.Duration(cfg.HZ)
	delayed := func(st acks.Stats) float64 {
		return float64(max(st.Delay.Count-min(st.ByCause[acks.CauseQuick], st.Delay.Count), 1))
	}
	overShare := func(st acks.Stats) float64 {
		var over uint64
		for i, b := range st.Delay.Bounds {
			if b > 2*limit.Seconds() {
				over += st.Delay.Counts[i+1]
			}
		}
		return float64(over) / delayed(st)
	}
	if bs, cs := overShare(s), overShare(c); bs > 0.25 || bs > cs/2 {
		failures = append(failures, fmt.Sprintf("bounded: %.0f%% of the delayed ACKs waited over twice the %v bound (control: %.0f%%)", 100*bs, limit, 100*cs))
	}
	if ms, mc := s.Delay.Sum/delayed(s), c.Delay.Sum/delayed(c); ms >= mc {
		failures = append(failures, fmt.Sprintf("bounded: mean delay outside quick mode %.2f ms, not below the control's %.2f ms", ms*1000, mc*1000))
	}
	if st := targetStats(t, f, "local_port:5308"); st.Applied != 1 {
		failures = append(failures, fmt.Sprintf("target stats %+v", st))
	}
	requireDelayed(t, c)
	return failures, target.Retransmits(t) + control.Retransmits(t)
}

func TestLocalPeerRefused(t *testing.T) {
	pair := netnstest.NewPair(t)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5310}
	f, log := start(t, cfg)
	netnstest.Connect(t, pair.B, pair.B, "127.0.0.1", 5310)
	got := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Kind == quickack.EventRefused })
	// Both ends are local: the server's socket (local port 5310) matches.
	if len(got) == 0 || got[0].Refusal != quickack.RefusalLocalPeer {
		t.Fatalf("refused events %+v, want local_peer", got)
	}
	if s := targetStats(t, f, "local_port:5310"); s.Applied != 0 || s.Refused[quickack.RefusalLocalPeer] == 0 {
		t.Errorf("target stats %+v", s)
	}
}

func TestCleanShutdownRestoresPolicyRouting(t *testing.T) {
	pair := netnstest.NewPair(t)
	before := policyState(t, pair.B)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5311}
	f, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	during := policyState(t, pair.B)
	rule := fmt.Sprintf("%d:\tfrom all fwmark %#x lookup %d proto 172", cfg.RulePriority, cfg.Mark, cfg.Table)
	if strings.Count(during, rule) != 2 {
		t.Errorf("want the rule for IPv4 and IPv6 (%q), have:\n%s", rule, during)
	}
	if !strings.Contains(during, fmt.Sprintf("198.18.0.0/24 dev %s table %d proto 172 scope link src %s quickack 1", pair.B.Veth, cfg.Table, pair.B.Addr)) {
		t.Errorf("table %d does not mirror the connected route with quickack 1:\n%s", cfg.Table, during)
	}
	c := pair.Connect(t, 5311)
	var mark int
	raw, _ := c.Server.SyscallConn()
	raw.Control(func(fd uintptr) { mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if err != nil || uint32(mark) != cfg.Mark {
		t.Errorf("forced socket mark %#x (%v), want %#x", mark, err, cfg.Mark)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if after := policyState(t, pair.B); after != before {
		t.Errorf("policy routing after shutdown:\n%s\nbefore:\n%s", after, before)
	}
	raw.Control(func(fd uintptr) { mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if err != nil || mark != 0 {
		t.Errorf("socket mark after shutdown %#x (%v), want 0", mark, err)
	}
}

func TestRestartAfterCrashRemovesLeftovers(t *testing.T) {
	pair := netnstest.NewPair(t)
	before := policyState(t, pair.B)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5312}
	// A crashed run: its rules and table stay (its BPF links die with it). Simulate with the
	// same commands a run issues, tagged as tcpack's.
	pair.B.Exec(t, "ip", "rule", "add", "fwmark", fmt.Sprint(cfg.Mark), "lookup", fmt.Sprint(cfg.Table),
		"pref", fmt.Sprint(cfg.RulePriority), "protocol", "172")
	pair.B.Exec(t, "ip", "route", "add", "198.18.0.0/24", "dev", pair.B.Veth, "table", fmt.Sprint(cfg.Table),
		"proto", "172", "quickack", "1")
	pair.B.Exec(t, "ip", "route", "add", "192.0.2.0/24", "dev", pair.B.Veth, "table", fmt.Sprint(cfg.Table),
		"proto", "172", "quickack", "1") // stale: main has no such route
	f, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	during := policyState(t, pair.B)
	if n := strings.Count(during, "fwmark"); n != 2 {
		t.Errorf("%d fwmark rules after restart, want one per family:\n%s", n, during)
	}
	if strings.Contains(during, "192.0.2.0/24") {
		t.Errorf("stale route survived the restart:\n%s", during)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if after := policyState(t, pair.B); after != before {
		t.Errorf("policy routing after shutdown:\n%s\nbefore:\n%s", after, before)
	}
}

func TestCollisionsRefused(t *testing.T) {
	pair := netnstest.NewPair(t)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5313}
	for _, tc := range []struct {
		setup []string
		want  string
	}{
		{[]string{"ip", "rule", "add", "fwmark", fmt.Sprint(cfg.Mark), "lookup", "100", "pref", "30000"}, "quickack.mark"},
		{[]string{"ip", "rule", "add", "from", "192.0.2.1", "lookup", "100", "pref", fmt.Sprint(cfg.RulePriority)}, "quickack.rule_priority"},
		{[]string{"ip", "route", "add", "192.0.2.0/24", "dev", pair.B.Veth, "table", fmt.Sprint(cfg.Table)}, "quickack.table"},
	} {
		before := policyState(t, pair.B)
		pair.B.Exec(t, tc.setup[0], tc.setup[1:]...)
		_, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one naming %s", tc.setup, err, tc.want)
		}
		undo := append([]string{}, tc.setup...)
		undo[2] = "del"
		pair.B.Exec(t, undo[0], undo[1:]...)
		if after := policyState(t, pair.B); after != before {
			t.Errorf("%v: a refused start changed policy routing:\n%s", tc.setup, after)
		}
	}
}

func TestLinkDownUpKeepsForcing(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5314, 5322)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5314}
	cfg.Routes = []netip.Prefix{netip.MustParsePrefix(pair.A.Addr + "/32")}
	start(t, cfg)
	copyRoute := fmt.Sprintf("198.18.0.0/24 dev %s table %d proto 172", pair.B.Veth, cfg.Table)

	pair.B.Exec(t, "ip", "link", "set", pair.B.Veth, "down")
	if got := policyState(t, pair.B); strings.Contains(got, copyRoute) {
		t.Fatalf("the kernel kept the copy on a down link; the test proves nothing:\n%s", got)
	}
	pair.B.Exec(t, "ip", "link", "set", pair.B.Veth, "up")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(policyState(t, pair.B), copyRoute) {
		if time.Now().After(deadline) {
			t.Fatalf("table %d not restored after link up:\n%s", cfg.Table, policyState(t, pair.B))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The veth needs a moment to carry traffic again after up.
	for i := 0; i < 20; i++ {
		if err := exec.Command("ip", "netns", "exec", pair.A.Name, "ping", "-c1", "-W1", pair.B.Addr).Run(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := pair.Connect(t, 5314)
	c.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5314, c)) // by mark
	r := pair.Connect(t, 5322)
	r.Exchange(t, messages, every, readEvery)
	requireImmediate(t, ackStats(t, obs, pair.B.Inode, 5322, r)) // by route target
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*quickack.Config)
		want string
	}{
		{func(c *quickack.Config) {}, "no target"},
		{func(c *quickack.Config) { c.LocalPorts = []uint16{0} }, "port 0"},
		{func(c *quickack.Config) { c.LocalPorts = []uint16{1}; c.Mark = 0 }, "quickack.mark"},
		{func(c *quickack.Config) { c.LocalPorts = []uint16{1}; c.Table = 254 }, "quickack.table"},
		{func(c *quickack.Config) { c.LocalPorts = []uint16{1}; c.RulePriority = 0 }, "quickack.rule_priority"},
		{func(c *quickack.Config) { c.LocalPorts = []uint16{1}; c.Mode = "fast" }, "quickack.mode"},
		{func(c *quickack.Config) {
			c.Routes = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
			c.Mode = quickack.ModeBounded
		}, "quickack.routes"},
		{func(c *quickack.Config) { c.Routes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }, "quickack.routes[0]"},
		{func(c *quickack.Config) { c.Sockets = []quickack.SocketSpec{{PID: -1, FD: 3}} }, "quickack.sockets[0]"},
		{func(c *quickack.Config) {
			c.Sockets = []quickack.SocketSpec{{PID: 1, FD: 3, Local: netip.MustParseAddrPort("10.0.0.1:80")}}
		}, "not both"},
		{func(c *quickack.Config) {
			c.Sockets = []quickack.SocketSpec{{Peer: netip.MustParseAddrPort("10.0.0.1:0")}}
		}, "needs its ports"},
	} {
		cfg := quickack.DefaultConfig()
		tc.mut(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one naming %q", err, tc.want)
		}
	}
	cfg := quickack.DefaultConfig()
	cfg.LocalPorts = []uint16{1}
	cfg.Cgroup = "/tmp"
	if _, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil); err == nil || !strings.Contains(err.Error(), "quickack.cgroup") {
		t.Errorf("bad cgroup: %v", err)
	}
	cfg.Cgroup = ""
	cfg.Netns = []string{"/run/netns/does-not-exist"}
	if _, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil); err == nil || !strings.Contains(err.Error(), "quickack.netns") {
		t.Errorf("missing netns: %v", err)
	}
}

// TestAttachReport prints one MATRIX line per hook for the README's kernel table.
func TestAttachReport(t *testing.T) {
	pair := netnstest.NewPair(t)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5399}
	cfg.OptIn = true
	f, _ := start(t, cfg)
	for _, h := range f.Report().Hooks {
		if h.Attached == nil {
			t.Errorf("hook %s not attached: %+v", h.Hook, h.Skipped)
			continue
		}
		attached := h.Attached.String()
		switch h.Attached.Kind {
		case loader.SockOps, loader.CgroupSetsockopt:
			attached = string(h.Attached.Kind) + " at the cgroup v2 root" // the path differs between hosts
		}
		fmt.Printf("MATRIX family=quickack hook=%s attached=%s: %s\n", h.Hook, attached, h.Attached.Program)
	}
}

// requireImmediate: one ACK per segment, under 1 ms on average (whatever forced it).
func requireImmediate(t *testing.T, s acks.Stats) {
	t.Helper()
	if s.Acks() < s.SegmentsAcked*9/10 {
		t.Errorf("%d ACKs for %d segments, want about one per segment", s.Acks(), s.SegmentsAcked)
	}
	if d := meanDelay(s); d >= time.Millisecond {
		t.Errorf("mean ACK delay %v, want under 1 ms", d)
	}
}

func TestRouteTarget(t *testing.T) {
	pair := netnstest.NewPair(t)
	const other = "198.18.0.3"
	pair.A.Exec(t, "ip", "addr", "add", other+"/24", "dev", pair.A.Veth)
	obs := observe(t, 5315, 5316)
	cfg := config(t, pair.B)
	cfg.Routes = []netip.Prefix{netip.MustParsePrefix(pair.A.Addr + "/32")}
	before := policyState(t, pair.B)
	f, _ := start(t, cfg)
	if got := policyState(t, pair.B); !strings.Contains(got, fmt.Sprintf("from all to %s lookup %d proto 172", pair.A.Addr, cfg.Table)) {
		t.Errorf("no route-target rule:\n%s", got)
	}

	target := netnstest.ConnectFrom(t, pair.A, pair.A.Addr, pair.B, pair.B.Addr, 5315)
	control := netnstest.ConnectFrom(t, pair.A, other, pair.B, pair.B.Addr, 5316)
	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	requireImmediate(t, ackStats(t, obs, pair.B.Inode, 5315, target))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5316, control))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if after := policyState(t, pair.B); after != before {
		t.Errorf("policy routing after shutdown:\n%s\nbefore:\n%s", after, before)
	}
}

// fdOf is the socket's descriptor number in this process.
func fdOf(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func TestSocketByPidAndFd(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5317, 5318)
	target := pair.Connect(t, 5317)
	control := pair.Connect(t, 5318)
	cfg := config(t, pair.B)
	cfg.Sockets = []quickack.SocketSpec{{PID: os.Getpid(), FD: fdOf(t, target.Server)}}
	f, log := start(t, cfg)

	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5317, target))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5318, control))
	name := fmt.Sprintf("socket:pid:%d/fd:%d", os.Getpid(), fdOf(t, target.Server))
	if s := targetStats(t, f, name); s.Forced() != 1 {
		t.Errorf("target stats %+v", s)
	}
	got := waitEvents(t, log, 1, func(e quickack.Event) bool { return e.Kind == quickack.EventApplied })
	if len(got) != 1 || got[0].Origin != "existing" || got[0].Target != name {
		t.Errorf("applied events %+v", got)
	}
}

func TestListenerByPidAndFdForcesWhatItAccepts(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5319)
	ln := pair.B.Listen(t, "tcp4", pair.B.Addr+":5319")
	cfg := config(t, pair.B)
	cfg.Sockets = []quickack.SocketSpec{{PID: os.Getpid(), FD: fdOf(t, ln.(*net.TCPListener))}}
	start(t, cfg)

	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := pair.A.Dial("tcp4", pair.B.Addr+":5319", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close() })
	c := &netnstest.Paced{Client: client.(*net.TCPConn), Server: server.(*net.TCPConn)}
	c.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5319, c))
}

func TestSocketByAddress(t *testing.T) {
	pair := netnstest.NewPair(t)
	obs := observe(t, 5320, 5321)
	cfg := config(t, pair.B)
	cfg.Sockets = []quickack.SocketSpec{{Local: netip.MustParseAddrPort(pair.B.Addr + ":5320")}}
	start(t, cfg)
	target := pair.Connect(t, 5320)
	control := pair.Connect(t, 5321)
	target.Exchange(t, messages, every, readEvery)
	control.Exchange(t, messages, every, readEvery)
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5320, target))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5321, control))
}

func TestSocketErrorsNameTheEntry(t *testing.T) {
	pair := netnstest.NewPair(t)
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, tc := range []struct {
		spec quickack.SocketSpec
		want string
	}{
		{quickack.SocketSpec{PID: done.Process.Pid, FD: 3}, "not found"},
		{quickack.SocketSpec{PID: os.Getpid(), FD: 100000}, "is not open"},
		{quickack.SocketSpec{PID: os.Getpid(), FD: int(file.Fd())}, "is not a socket"},
		{quickack.SocketSpec{PID: os.Getpid(), FD: fdOf(t, udp.(*net.UDPConn))}, "is not a TCP socket"},
	} {
		cfg := config(t, pair.B)
		cfg.Sockets = []quickack.SocketSpec{tc.spec}
		before := policyState(t, pair.B)
		_, err := quickack.Start(netnstest.KernelEnv(t), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "quickack.sockets: "+tc.spec.String()) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming the entry and saying %q", tc.spec, err, tc.want)
		}
		if after := policyState(t, pair.B); after != before {
			t.Errorf("%s: a refused start changed policy routing", tc.spec)
		}
	}
}

func TestIPv6PortAndPeer(t *testing.T) {
	pair := netnstest.NewPair(t)
	const a6, b6 = "fd00:198:18::1", "fd00:198:18::2"
	pair.A.Exec(t, "ip", "-6", "addr", "add", a6+"/64", "dev", pair.A.Veth, "nodad")
	pair.B.Exec(t, "ip", "-6", "addr", "add", b6+"/64", "dev", pair.B.Veth, "nodad")
	obs := observe(t, 5323, 5324, 5325)
	cfg := config(t, pair.B)
	cfg.LocalPorts = []uint16{5323}
	cfg.Peers = []netip.Prefix{netip.MustParsePrefix("fd00:198:18::1/128")}
	f, _ := start(t, cfg)

	byPort := netnstest.Connect(t, pair.A, pair.B, b6, 5323)
	byPeer := netnstest.Connect(t, pair.A, pair.B, b6, 5324)
	control := netnstest.Connect(t, pair.A, pair.B, pair.B.Addr, 5325) // IPv4: not in the peer prefix
	for _, c := range []*netnstest.Paced{byPort, byPeer, control} {
		c.Exchange(t, messages, every, readEvery)
	}
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5323, byPort))
	requireForced(t, ackStats(t, obs, pair.B.Inode, 5324, byPeer))
	requireDelayed(t, ackStats(t, obs, pair.B.Inode, 5325, control))
	// A socket counts for the first target it matches: the port comes before the peer.
	for _, name := range []string{"local_port:5323", "peer:fd00:198:18::1/128"} {
		if s := targetStats(t, f, name); s.Forced() != 1 {
			t.Errorf("%s: %+v, want one socket", name, s)
		}
	}
}
