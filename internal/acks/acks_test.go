package acks_test

import (
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
)

func openEnv(t *testing.T) *kernel.Env { return netnstest.KernelEnv(t) }

type eventLog = netnstest.Events[acks.Event]

// start starts the family with the per-segment tier, every hook attached from the start, so
// that statistics cover every segment; TestOnTraffic* tests loader.AttachOnTraffic.
func start(t *testing.T, cfg acks.Config) (*acks.Probe, *eventLog) {
	t.Helper()
	cfg.PerSegment = true
	cfg.Attach = loader.AttachAlways
	return startAs(t, cfg)
}

func startAs(t *testing.T, cfg acks.Config) (*acks.Probe, *eventLog) {
	t.Helper()
	log := &eventLog{}
	p, err := acks.Start(openEnv(t), cfg, log.Add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, l := range p.Report().Lines() {
		t.Log(l)
	}
	return p, log
}

// statsFor waits until the port's ACK statistics cover every data segment the server
// received (TCP_INFO's data_segs_in, less duplicates of retransmitted ones), then returns them.
func statsFor(t *testing.T, p *acks.Probe, netns uint32, port uint16, w *netnstest.Paced) acks.Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snap {
			if s.Netns == netns && s.ServerPort == port && s.Role == acks.RoleServer {
				if ok, _ := w.Covered(t, s.SegmentsAcked); ok {
					checkHistogram(t, s.Delay)
					return s
				}
			}
		}
		if time.Now().After(deadline) {
			_, state := w.Covered(t, 0)
			t.Fatalf("port %d: statistics never covered the data segments received (%s): %+v", port, state, snap)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkHistogram: each ACK's delay lies within its bucket's bounds, so the sum of all delays
// (kept exactly, in nanoseconds) lies between the sums of the bounds. A histogram that files
// ACKs in the wrong buckets, beyond what their spread hides, fails it.
func checkHistogram(t *testing.T, h acks.Histogram) {
	t.Helper()
	var low, high float64
	for i, c := range h.Counts {
		if i > 0 {
			low += float64(c) * h.Bounds[i-1]
		}
		switch {
		case i < len(h.Bounds):
			high += float64(c) * h.Bounds[i]
		case c > 0:
			high = math.Inf(1) // the last bucket has no upper bound
		}
	}
	const slack = 1e-6
	if h.Sum < low-slack || h.Sum > high+slack {
		t.Errorf("delays sum to %.6f s, but their buckets say %.6f to %.6f s: ACKs filed in the wrong buckets (%v)", h.Sum, low, high, h.Counts)
	}
}

// share is the fraction of ACKs with a delay below limit, from the histogram buckets whose
// upper bound is at most limit.
func share(h acks.Histogram, limit time.Duration) float64 {
	var below uint64
	for i, b := range h.Bounds {
		if b <= limit.Seconds() {
			below += h.Counts[i]
		}
	}
	return float64(below) / float64(h.Count)
}

func logStats(t *testing.T, s acks.Stats) {
	t.Helper()
	causes := ""
	for c := acks.CausePiggyback; c <= acks.CauseArrival; c++ {
		causes += fmt.Sprintf(" %s=%d", c, s.ByCause[c])
	}
	t.Logf("port %d: %d ACKs for %d segments,%s; other=%d quota_spent=%d delayed_decisions=%d mean delay %.2f ms",
		s.ServerPort, s.Acks(), s.SegmentsAcked, causes, s.OtherAcks, s.QuotaSpent, s.DelayedDecisions, 1000*s.Delay.Sum/float64(s.Delay.Count))
}

func TestSlowReaderDelaysACKs(t *testing.T) {
	p, events := start(t, acks.DefaultConfig())
	pair := netnstest.NewPair(t)
	w := pair.PacedTraffic(t, 5101, 300, 2*time.Millisecond, 50*time.Millisecond)
	s := statsFor(t, p, pair.B.Inode, 5101, w)
	logStats(t, s)

	// Judged on the ACKs outside quick mode: quick ACKs leave at once, and a tail-loss probe
	// while the server delays its ACK refills the quota (each retransmission can add 16).
	quick := s.ByCause[acks.CauseQuick]
	rest := float64(s.Delay.Count - min(quick, s.Delay.Count))
	if under := share(s.Delay, time.Millisecond)*float64(s.Delay.Count) - float64(quick); under > rest/2 {
		t.Errorf("%.0f of %.0f ACKs outside quick mode under 1 ms for a slow reader; want most delayed", under, rest)
	}
	if mean := s.Delay.Sum / rest; mean < 0.004 || mean > 0.1 {
		t.Errorf("mean delay of the ACKs outside quick mode %.1f ms, want tens of ms", mean*1000)
	}
	// Once the quota is spent, each ACK covers many segments. (They leave when a read makes
	// room in the window and the next segment arrives, before the 40 ms delayed-ACK timer.)
	if s.Acks()-quick > s.SegmentsAcked/3 {
		t.Errorf("%d ACKs outside quick mode for %d segments: a slow reader's ACKs should each cover several", s.Acks()-quick, s.SegmentsAcked)
	}
	// The quota at the start, and again for each retransmitted duplicate (tail-loss probes).
	if q, most := s.ByCause[acks.CauseQuick], 16*(1+w.Retransmits(t)); q == 0 || q > most {
		t.Errorf("quick-mode ACKs: %d, want the quota (at most %d with %d retransmissions)", q, most, w.Retransmits(t))
	}
	if s.QuotaSpent == 0 {
		t.Error("the quick-ACK quota was never seen running out")
	}
	// The pure ACKs are what the client waits for.
	var delayed []acks.Event
	for _, e := range events.Matching(func(acks.Event) bool { return true }) {
		if e.Netns == pair.B.Inode && e.LocalPort == 5101 {
			delayed = append(delayed, e)
		}
	}
	if len(delayed) == 0 {
		t.Fatal("no delayed-ACK events")
	}
	for _, e := range delayed {
		if e.Delay < 10*time.Millisecond || e.PeerAddr.String() != pair.A.Addr || e.LocalAddr.String() != pair.B.Addr {
			t.Errorf("event %+v: want >= 10ms, %s -> %s", e, pair.A.Addr, pair.B.Addr)
		}
	}
}

func TestRouteQuickackMakesACKsImmediate(t *testing.T) {
	p, _ := start(t, acks.DefaultConfig())
	pair := netnstest.NewPair(t)
	// The whole-route method: the route to the peer carries quickack 1.
	pair.B.Exec(t, "ip", "route", "replace", "198.18.0.0/24", "dev", pair.B.Veth, "proto", "kernel",
		"scope", "link", "src", pair.B.Addr, "quickack", "1")
	w := pair.PacedTraffic(t, 5102, 300, 2*time.Millisecond, 50*time.Millisecond)
	s := statsFor(t, p, pair.B.Inode, 5102, w)
	logStats(t, s)

	if got := share(s.Delay, time.Millisecond); got < 0.95 {
		t.Errorf("%.0f%% of ACKs under 1 ms with quickack 1 on the route, want ~100%%", 100*got)
	}
	// From icsk_ack.dst_quick_ack where the kernel caches it (6.18), else from the socket's
	// cached route (6.1): either way the route is the cause.
	if s.ByCause[acks.CauseRoute] < s.Acks()*9/10 {
		t.Errorf("route-forced ACKs %d of %d, want nearly all", s.ByCause[acks.CauseRoute], s.Acks())
	}
}

func TestContinuousReaderACKsOnRead(t *testing.T) {
	p, _ := start(t, acks.DefaultConfig())
	pair := netnstest.NewPair(t)
	w := pair.PacedTraffic(t, 5103, 300, 2*time.Millisecond, 0)
	s := statsFor(t, p, pair.B.Inode, 5103, w)
	logStats(t, s)

	read := s.ByCause[acks.CauseAppRead]
	if read < s.Acks()/2 {
		t.Errorf("ACKs caused by the application's read: %d of %d, want most for a continuous reader", read, s.Acks())
	}
	// Not delayed: a delayed ACK waits for the timer (40 ms minimum) or the next read. 10 ms
	// keeps the two apart even under qemu's emulation, where 1 ms was too tight.
	if got := share(s.Delay, 10*time.Millisecond); got < 0.9 {
		t.Errorf("%.0f%% of ACKs under 10 ms for a continuous reader", 100*got)
	}
}

// requestResponse sends requests 64-byte requests from A to a server in B that answers each
// after think, one at a time.
func requestResponse(t *testing.T, pair *netnstest.Pair, port, requests int, think time.Duration) {
	t.Helper()
	ln := pair.B.Listen(t, "tcp4", fmt.Sprintf("%s:%d", pair.B.Addr, port))
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			time.Sleep(think)
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := pair.A.Dial("tcp4", fmt.Sprintf("%s:%d", pair.B.Addr, port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range requests {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
}

// max_keys bounds the statistics: keys get their room in the order their first socket is
// established, and the ACKs of a key with no room are counted as lost.
func TestMaxKeysBoundsTheStatistics(t *testing.T) {
	cfg := acks.DefaultConfig()
	cfg.LocalPorts = []uint16{5111, 5112, 5113}
	cfg.MaxKeys = 2
	p, _ := start(t, cfg)
	pair := netnstest.NewPair(t)
	for _, port := range cfg.LocalPorts {
		requestResponse(t, pair, int(port), 20, 0)
	}
	var ports []uint16
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		ports = ports[:0]
		complete := true
		for _, s := range snap {
			ports = append(ports, s.ServerPort)
			complete = complete && s.Acks() >= 20
		}
		if complete && len(ports) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	slices.Sort(ports)
	if !slices.Equal(ports, []uint16{5111, 5112}) {
		t.Errorf("statistics for ports %v, want the first two established, [5111 5112]", ports)
	}
	losses, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	if losses.KeysFull < 20 {
		t.Errorf("%d ACKs counted as lost to max_keys, want at least the 20 of port 5113", losses.KeysFull)
	}
}

// A server that answers each request after a fixed think time: its ACKs ride on the answers
// (piggyback), each as late as the think time. Their delay is timed from TCP's own clock, as
// the kernel stamps the data segment, not from a clock read of the program's own.
func TestPiggybackedACKsWaitForTheAnswer(t *testing.T) {
	p, _ := start(t, acks.DefaultConfig())
	pair := netnstest.NewPair(t)
	const port, requests, think = 5110, 60, 5 * time.Millisecond
	requestResponse(t, pair, port, requests, think)

	var s acks.Stats
	deadline := time.Now().Add(5 * time.Second)
	for s.ByCause[acks.CausePiggyback] < requests/2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		snap, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range snap {
			if st.Netns == pair.B.Inode && st.ServerPort == port {
				s = st
			}
		}
	}
	logStats(t, s)
	checkHistogram(t, s.Delay)
	// The first requests are ACKed at once while the quick-ACK quota lasts; after that the
	// answer carries the ACK.
	piggyback := s.ByCause[acks.CausePiggyback]
	if piggyback < requests/2 {
		t.Fatalf("%d of %d requests ACKed on their answer, want most", piggyback, requests)
	}
	// Between the think time and the 40 ms delayed-ACK minimum; the bucket bounds are powers
	// of two microseconds, so from 4.1 ms and below 65.5 ms (qemu's emulation stretches sleeps).
	late := share(s.Delay, 65536*time.Microsecond) - share(s.Delay, 4096*time.Microsecond)
	if got := late * float64(s.Delay.Count); got < 0.9*float64(piggyback) {
		t.Errorf("%.0f ACKs between 4.1 and 65.5 ms, want nearly all %d piggybacked ones (think time %s)", got, piggyback, think)
	}
}

func TestScopeToOnePort(t *testing.T) {
	cfg := acks.DefaultConfig()
	cfg.LocalPorts = []uint16{5104}
	p, _ := start(t, cfg)
	pair := netnstest.NewPair(t)
	in := pair.PacedTraffic(t, 5104, 50, 2*time.Millisecond, 0)
	pair.PacedTraffic(t, 5105, 50, 2*time.Millisecond, 0)
	statsFor(t, p, pair.B.Inode, 5104, in)
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		if s.Netns == pair.B.Inode && s.ServerPort == 5105 {
			t.Errorf("port 5105 is out of scope but has statistics: %+v", s)
		}
	}
}

func TestScopeToPeerPrefix(t *testing.T) {
	pair := netnstest.NewPair(t)
	const other = "198.18.0.3"
	pair.A.Exec(t, "ip", "addr", "add", other+"/24", "dev", pair.A.Veth)
	cfg := acks.DefaultConfig()
	cfg.Peers = []netip.Prefix{netip.MustParsePrefix(pair.A.Addr + "/32")}
	p, _ := start(t, cfg)
	in := netnstest.ConnectFrom(t, pair.A, pair.A.Addr, pair.B, pair.B.Addr, 5106)
	out := netnstest.ConnectFrom(t, pair.A, other, pair.B, pair.B.Addr, 5107)
	in.Exchange(t, 50, 2*time.Millisecond, 0)
	out.Exchange(t, 50, 2*time.Millisecond, 0)
	statsFor(t, p, pair.B.Inode, 5106, in)
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		// Port 5107's peer is outside the prefix; so is every socket in A (its peer is B).
		if (s.Netns == pair.B.Inode && s.ServerPort == 5107) || s.Netns == pair.A.Inode {
			t.Errorf("out-of-scope socket has statistics: %+v", s)
		}
	}
}

func TestScopeToNetns(t *testing.T) {
	pair := netnstest.NewPair(t)
	cfg := acks.DefaultConfig()
	cfg.Netns = []string{"/run/netns/" + pair.B.Name}
	p, _ := start(t, cfg)
	// A server in each namespace: A's would have statistics (it receives data and ACKs it)
	// if the netns filter were ignored.
	in := pair.PacedTraffic(t, 5108, 50, 2*time.Millisecond, 0)
	out := netnstest.Connect(t, pair.B, pair.A, pair.A.Addr, 5108)
	out.Exchange(t, 50, 2*time.Millisecond, 0)
	statsFor(t, p, pair.B.Inode, 5108, in)
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		if s.Netns != pair.B.Inode {
			t.Errorf("socket outside the scoped netns has statistics: %+v", s)
		}
	}

	// With a port as well, only that port within the netns.
	p.Close()
	cfg.LocalPorts = []uint16{5109}
	p, _ = start(t, cfg)
	in = pair.PacedTraffic(t, 5109, 50, 2*time.Millisecond, 0)
	pair.PacedTraffic(t, 5110, 50, 2*time.Millisecond, 0)
	// The right port in the wrong namespace.
	netnstest.Connect(t, pair.B, pair.A, pair.A.Addr, 5109).Exchange(t, 50, 2*time.Millisecond, 0)
	statsFor(t, p, pair.B.Inode, 5109, in)
	if snap, err = p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		if s.Netns != pair.B.Inode || s.ServerPort != 5109 {
			t.Errorf("out-of-scope socket has statistics: %+v", s)
		}
	}

	cfg.Netns = []string{"/run/netns/no-such-namespace"}
	if _, err := acks.Start(openEnv(t), cfg, nil); err == nil || !strings.Contains(err.Error(), "acks.netns") {
		t.Errorf("a missing netns file: error %v, want one naming acks.netns", err)
	}
}

func TestRestartLeavesNothingBehind(t *testing.T) {
	e := openEnv(t)
	links, fds := netnstest.CountLinks(t), netnstest.CountFDs(t)
	for i := 0; i < 2; i++ {
		cfg := acks.DefaultConfig()
		cfg.PerSegment = true
		cfg.Attach = loader.AttachAlways // every hook attached, so every link to count
		p, err := acks.Start(e, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		attached := 0
		for _, h := range p.Report().Hooks {
			if h.Attached != nil {
				attached++
			}
		}
		if attached < 2 || netnstest.CountLinks(t) != links+attached {
			t.Errorf("run %d: %d links attached, want %d (the hooks attached, at least 2: sock_ops and tcp_probe) more than %d", i, netnstest.CountLinks(t), attached, links)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := netnstest.CountLinks(t); got != links {
		t.Errorf("links after shutdown: %d, before: %d", got, links)
	}
	if got := netnstest.CountFDs(t); got != fds {
		t.Errorf("fds after shutdown: %d, before: %d", got, fds)
	}
}

// TestAttachReport prints one MATRIX line per hook for the README's kernel table.
func TestAttachReport(t *testing.T) {
	p, _ := start(t, acks.DefaultConfig())
	for _, h := range p.Report().Hooks {
		if h.Attached == nil {
			var reasons []string
			for _, a := range h.Skipped {
				reasons = append(reasons, fmt.Sprintf("%s: %s", a.Strategy.Kind, a.Reason))
			}
			fmt.Printf("MATRIX family=acks hook=%s attached=no reason=%q\n", h.Hook, strings.Join(reasons, "; "))
			if !h.Optional || anyExpected(h.Skipped) {
				t.Errorf("hook %s not attached: %+v", h.Hook, h.Skipped)
			}
			continue
		}
		attached := h.Attached.String()
		if h.Attached.Kind == loader.SockOps {
			attached = "sock_ops at the cgroup v2 root" // the path differs between hosts
		}
		fmt.Printf("MATRIX family=acks hook=%s attached=%s: %s\n", h.Hook, attached, h.Attached.Program)
	}
}

// expected says whether the kernel under test must support an attach mechanism, from
// TCPACK_EXPECT (set per kernel by the kernel matrix, `make vmtest`; see
// internal/loader/mechanisms_test.go). Unset on the host, where fentry and kprobes are absent.
func expected(kind loader.Kind) bool {
	return slices.Contains(strings.Split(os.Getenv("TCPACK_EXPECT"), ","), string(kind))
}

func anyExpected(attempts []loader.Attempt) bool {
	for _, a := range attempts {
		if expected(a.Strategy.Kind) {
			return true
		}
	}
	return false
}

// decisionRun is one way to load the family for the decision-hook tests.
type decisionRun struct {
	name       string
	strategies []loader.Kind // nil: the family's own order (fentry first)
	want       loader.Kind   // the mechanism the decision hooks must attach with; "" none expected
}

// decisionRuns are the loads to test: the default order, and kprobes alone where the kernel has
// them, so the kprobe variants of the programs are exercised too.
func decisionRuns() []decisionRun {
	var runs []decisionRun
	switch {
	case expected(loader.FEntry):
		runs = append(runs, decisionRun{name: "fentry", want: loader.FEntry})
	case expected(loader.Kprobe):
		runs = append(runs, decisionRun{name: "default", want: loader.Kprobe})
	default:
		runs = append(runs, decisionRun{name: "default"})
	}
	if expected(loader.FEntry) && expected(loader.Kprobe) {
		runs = append(runs, decisionRun{name: "kprobe", want: loader.Kprobe,
			strategies: []loader.Kind{loader.SockOps, loader.TPBTF, loader.Kprobe, loader.Iter}})
	}
	return runs
}

// decisionHooksAttached checks the decision hook (tcp_send_delayed_ack) and the delayed-ACK
// timer's hook attached with the mechanism the run wants (the timer's with timer_expire_entry
// where none is expected), and says whether the decision hook attached at all.
func decisionHooksAttached(t *testing.T, p *acks.Probe, run decisionRun) bool {
	t.Helper()
	decisions := false
	for _, h := range p.Report().Hooks {
		want := run.want
		switch {
		case h.Hook == "delack_timer" && want == "":
			want = loader.TPBTF
		case h.Hook == "tcp_send_delayed_ack":
			decisions = h.Attached != nil
		default:
			continue
		}
		switch {
		case h.Attached != nil && want != "" && h.Attached.Kind != want:
			t.Errorf("%s attached with %s, want %s", h.Hook, h.Attached.Kind, want)
		case h.Attached == nil && want != "":
			t.Errorf("%s not attached on a kernel expected to have %s: %+v", h.Hook, want, h.Skipped)
		}
	}
	return decisions
}

// TestDelayedDecisionsCounted: for the slow reader, once the quick-ACK quota is spent,
// __tcp_ack_snd_check delays the ACK of nearly every segment. Every segment an ACK covers
// beyond the one that triggered it was delayed first, and no segment is delayed twice, so
// the count of tcp_send_delayed_ack calls lies between SegmentsAcked-ACKs and data_segs_in.
func TestDelayedDecisionsCounted(t *testing.T) {
	for i, run := range decisionRuns() {
		t.Run(run.name, func(t *testing.T) {
			cfg := acks.DefaultConfig()
			cfg.Strategies = run.strategies
			p, _ := start(t, cfg)
			if !decisionHooksAttached(t, p, run) {
				t.Skip("this kernel offers neither fentry nor kprobes for tcp_send_delayed_ack (see the report above): decisions are not counted")
			}
			pair := netnstest.NewPair(t)
			port := uint16(5106 + i)
			w := pair.PacedTraffic(t, int(port), 300, 2*time.Millisecond, 50*time.Millisecond)
			s := statsFor(t, p, pair.B.Inode, port, w)
			logStats(t, s)
			in := uint64(netnstest.TCPInfo(t, w.Server).Data_segs_in)
			t.Logf("delayed decisions %d for %d data segments", s.DelayedDecisions, in)
			if low := s.SegmentsAcked - s.Acks(); s.DelayedDecisions < low || s.DelayedDecisions > in {
				t.Errorf("delayed decisions %d, want between %d (segments acked - ACKs) and %d (data segments received)",
					s.DelayedDecisions, low, in)
			}
		})
	}
}

// TestTimerSendsACKsForAnIdleReader: once the quick-ACK quota is spent, a lone small segment
// that nobody reads gets its ACK from the delayed-ACK timer (40 ms here, srtt being tiny).
// Messages 100 ms apart stay below the RTO (200 ms at least), which would refill the quota.
func TestTimerSendsACKsForAnIdleReader(t *testing.T) {
	for i, run := range decisionRuns() {
		t.Run(run.name, func(t *testing.T) {
			cfg := acks.DefaultConfig()
			cfg.Strategies = run.strategies
			p, _ := start(t, cfg)
			exact := decisionHooksAttached(t, p, run)
			port := uint16(5108 + i)
			// A retransmission reaching the server, or a gap longer than the RTO, gives it a
			// fresh quick-ACK quota, which can answer every lone message at once: a slow guest
			// (TCG) sometimes retransmits or stalls. Such a run says nothing about the timer,
			// so it is tried again on a new connection.
			for attempt := 1; ; attempt++ {
				pair := netnstest.NewPair(t)
				c := pair.Connect(t, int(port))
				// A continuous reader spends the quota (16 quick ACKs) without delaying anything.
				c.Exchange(t, 20, 2*time.Millisecond, 0)
				// The reader takes the first message at once, then sleeps through the other nine.
				const lone = 10
				c.Exchange(t, lone, 100*time.Millisecond, 2*time.Second)
				s := statsFor(t, p, pair.B.Inode, port, c)
				logStats(t, s)

				timer := s.ByCause[acks.CauseTimer]
				kernel := delayedACKs(t, pair.B)
				t.Logf("delack_timer ACKs %d; TcpExtDelayedACKs in the server's netns %d; exact: %v", timer, kernel, exact)
				// The server's netns holds only this connection, so the kernel's count of ACKs
				// its delayed-ACK timer sent is this socket's. With the timer hook the cause is
				// that fact; without it (6.18 here) it is inferred from timing, which this
				// workload keeps unambiguous.
				if timer != kernel {
					t.Errorf("delack_timer ACKs %d, but the kernel's timer sent %d (TcpExtDelayedACKs)", timer, kernel)
				}
				if timer >= lone/2 {
					break
				}
				// More quick ACKs than one quota: the server went back to quick-ACK mode, as
				// it does after a gap longer than the RTO, which a stalled guest can make.
				retrans, quick := c.Retransmits(t), s.ByCause[acks.CauseQuick]
				if (retrans == 0 && quick <= 16) || attempt == 3 {
					t.Fatalf("delack_timer ACKs: %d, want most of the %d messages nobody read (attempt %d, %d retransmitted, %d quick ACKs)",
						timer, lone-1, attempt, retrans, quick)
				}
				t.Logf("attempt %d: %d retransmitted, %d quick ACKs: the server was back in quick-ACK mode; again", attempt, retrans, quick)
				pair.Close(t)
			}
		})
	}
}

// delayedACKs reads TcpExtDelayedACKs (ACKs sent by the delayed-ACK timer) in a namespace.
func delayedACKs(t *testing.T, ns *netnstest.NS) uint64 {
	return ns.Netstat(t, "TcpExt", "DelayedACKs")
}

// With attach on_traffic and a scope no open socket is in, only sock_ops is attached; an
// in-scope connection attaches the per-segment hooks, which then count every segment; after
// the last one closes and idle_detach passes, they detach again. Another port's connection
// attaches nothing.
func TestOnTrafficAttachesPerSegmentHooksOnlyWhileSocketsInScopeAreOpen(t *testing.T) {
	cfg := acks.DefaultConfig()
	cfg.PerSegment = true
	cfg.Attach = loader.AttachOnTraffic
	cfg.LocalPorts = []uint16{5130, 5132, 5133}
	cfg.IdleDetach = time.Second
	p, _ := startAs(t, cfg)
	pair := netnstest.NewPair(t)

	perSegment := func() []string {
		var on []string
		for hook, n := range netnstest.ProgramLinks(t, p.Report()) {
			if (hook == "tcp_probe" || hook == "tcp_send_delayed_ack") && n > 0 {
				on = append(on, hook)
			}
		}
		return on
	}
	waitArmed := func(want bool, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			armed, err := p.Armed()
			if err != nil {
				t.Fatalf("arming: %v", err)
			}
			if armed == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("armed %v after %s, want %v (per-segment hooks attached: %v)", armed, within, want, perSegment())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if on := perSegment(); len(on) != 0 {
		t.Fatalf("with no socket in scope, per-segment hooks attached: %v", on)
	}
	if links := netnstest.ProgramLinks(t, p.Report()); links["sock_ops"] != 1 {
		t.Fatalf("sock_ops links %d, want 1", links["sock_ops"])
	}

	other := pair.Connect(t, 5131)
	other.Exchange(t, 5, 2*time.Millisecond, 0)
	time.Sleep(300 * time.Millisecond) // three polls
	if armed, _ := p.Armed(); armed || len(perSegment()) != 0 {
		t.Fatalf("a connection out of scope armed the family: armed %v, hooks %v", armed, perSegment())
	}

	c := pair.Connect(t, 5130)
	waitArmed(true, 2*time.Second)
	if on := perSegment(); !slices.Contains(on, "tcp_probe") {
		t.Fatalf("armed, but tcp_probe is not attached: %v", on)
	}
	before, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	c.Exchange(t, 40, 2*time.Millisecond, 0)
	s := statsFor(t, p, pair.B.Inode, 5130, c)
	logStats(t, s)
	after, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	if after.Unobserved != before.Unobserved {
		t.Errorf("%d ACKs unobserved while armed", after.Unobserved-before.Unobserved)
	}

	c.Client.Close()
	c.Server.Close()
	// Closed, the socket leaves scope; idle_detach (1 s) later the hooks go.
	waitArmed(false, 3*time.Second)
	if on := perSegment(); len(on) != 0 {
		t.Fatalf("disarmed, but per-segment hooks still attached: %v", on)
	}

	// A connection that opens and closes between two polls arms it too...
	short := pair.Connect(t, 5132)
	short.Client.Close()
	short.Server.Close()
	waitArmed(true, 2*time.Second)
	waitArmed(false, 3*time.Second)

	// ...and so does the next one, which is then counted in full.
	c = pair.Connect(t, 5133)
	waitArmed(true, 2*time.Second)
	c.Exchange(t, 10, 2*time.Millisecond, 0)
	statsFor(t, p, pair.B.Inode, 5133, c)
}
