package txqueue_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/txqueue"
)

type eventLog = netnstest.Events[txqueue.Event]

func start(t *testing.T, cfg txqueue.Config) (*txqueue.Probe, *eventLog) {
	t.Helper()
	log := &eventLog{}
	p, err := txqueue.Start(netnstest.KernelEnv(t), cfg, log.Add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, l := range p.Report().Lines() {
		t.Log(l)
	}
	return p, log
}

func snapshot(t *testing.T, p *txqueue.Probe) txqueue.Snapshot {
	t.Helper()
	s, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s.Unread != nil {
		t.Fatalf("as root every namespace can be read: %v", s.Unread)
	}
	return s
}

// queuesOf returns the per-queue counts of one interface, by queue.
func queuesOf(t *testing.T, p *txqueue.Probe, ns *netnstest.NS) map[uint32]txqueue.QueueCount {
	t.Helper()
	out := map[uint32]txqueue.QueueCount{}
	for _, q := range snapshot(t, p).Queues {
		if q.Netns == ns.Inode && q.Interface == ns.Veth {
			out[q.Queue] = q
		}
	}
	return out
}

func interfaceOf(t *testing.T, p *txqueue.Probe, ns *netnstest.NS) txqueue.InterfaceCount {
	t.Helper()
	for _, c := range snapshot(t, p).Interfaces {
		if c.Netns == ns.Inode && c.Interface == ns.Veth {
			return c
		}
	}
	return txqueue.InterfaceCount{}
}

func flowsOf(t *testing.T, p *txqueue.Probe, ns *netnstest.NS) []txqueue.Flow {
	t.Helper()
	all, err := p.Flows()
	if err != nil {
		t.Fatal(err)
	}
	var out []txqueue.Flow
	for _, f := range all {
		if f.Netns == ns.Inode {
			out = append(out, f)
		}
	}
	return out
}

// sysfs reads or writes a file under /sys/class/net/<veth>/ as the namespace sees it:
// `ip netns exec` mounts the namespace's own sysfs.
func sysfs(t *testing.T, ns *netnstest.NS, file string, value ...string) string {
	t.Helper()
	path := "/sys/class/net/" + ns.Veth + "/" + file
	if len(value) == 0 {
		return strings.TrimSpace(ns.Exec(t, "cat", path))
	}
	return ns.Exec(t, "sh", "-c", fmt.Sprintf("printf %%s %s > %s", value[0], path))
}

func sysfsUint(t *testing.T, ns *netnstest.NS, file string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(sysfs(t, ns, file), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// multiqueuePair is a 4-queue veth pair without IPv6 where each side knows the other's MAC: no
// ARP, so every packet A sends is a test flow's.
func multiqueuePair(t *testing.T) *netnstest.Pair {
	t.Helper()
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{TxQueues: 4, NoIPv6: true})
	for _, ns := range [][2]*netnstest.NS{{pair.A, pair.B}, {pair.B, pair.A}} {
		ns[0].Exec(t, "ip", "neigh", "replace", ns[1].Addr, "lladdr", sysfs(t, ns[1], "address"),
			"dev", ns[0].Veth, "nud", "permanent")
	}
	return pair
}

// TestPerQueueCounts runs parallel TCP flows over a 4-queue veth: the per-queue counts equal the
// qdisc's per-queue counts and, summed, the interface's own tx counter; the flows spread over
// more than one queue; and each flow's queue in the flow map accounts for its queue's packets.
func TestPerQueueCounts(t *testing.T) {
	p, events := start(t, perPacketConfig())
	pair := multiqueuePair(t)
	qdisc := netnstest.MQPerQueue(t, pair.A)
	txBefore := sysfsUint(t, pair.A, "statistics/tx_packets")

	const flows, messages, size = 8, 200, 1000
	conns := make([]*netnstest.Paced, flows)
	for i := range conns {
		conns[i] = pair.Connect(t, 5100+i)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bulk(t, c, messages, size)
		}()
	}
	wg.Wait()

	var ours map[uint32]txqueue.QueueCount
	var sent map[uint32]uint64
	netnstest.Eventually(t, 5*time.Second, "per-queue counts equal the qdisc's", func() (bool, string) {
		ours, sent = queuesOf(t, p, pair.A), qdisc()
		for q, n := range sent {
			if ours[q].Packets != n {
				return false, fmt.Sprintf("queue %d: ours %d, qdisc %d (all: ours %+v, qdisc %v)", q, ours[q].Packets, n, ours, sent)
			}
		}
		for q := range ours {
			if _, ok := sent[q]; !ok {
				return false, fmt.Sprintf("queue %d counted, the qdisc has no such queue: %v", q, sent)
			}
		}
		return true, ""
	})
	var xmits uint64
	for _, q := range ours {
		xmits += q.Xmits
		if q.TxQueues != 4 {
			t.Errorf("queue %d: real_num_tx_queues %d, want 4", q.Queue, q.TxQueues)
		}
	}
	// veth counts each skb it forwards once, GSO or not.
	if delta := sysfsUint(t, pair.A, "statistics/tx_packets") - txBefore; xmits != delta {
		t.Errorf("skbs transmitted: ours %d, interface tx_packets delta %d", xmits, delta)
	}
	if used := len(ours); used < 2 {
		t.Errorf("%d flows all left on one queue: %+v", flows, ours)
	}

	// Every packet A sent belongs to a test flow, and none moved (the hash of a flow is
	// fixed): the queues the flows sit on are the queues the qdisc counted packets on.
	onQueue := map[uint32]int{}
	got := flowsOf(t, p, pair.A)
	for _, f := range got {
		if f.LocalAddr != netip.MustParseAddr(pair.A.Addr) || f.PeerAddr != netip.MustParseAddr(pair.B.Addr) ||
			f.PeerPort < 5100 || f.PeerPort >= 5100+flows || f.Transport != "tcp" || f.Network != "ipv4" {
			t.Errorf("flow %+v: want %s -> %s:5100..%d tcp", f, pair.A.Addr, pair.B.Addr, 5100+flows-1)
		}
		if f.Moves != 0 || !f.Active {
			t.Errorf("flow %+v: want active and not moved: nothing should re-pick it elsewhere", f)
		}
		onQueue[uint32(f.Queue)]++
	}
	if len(got) != flows {
		t.Errorf("%d flows in the map, want %d: %+v", len(got), flows, got)
	}
	for q, n := range sent {
		if (n > 0) != (onQueue[q] > 0) {
			t.Errorf("queue %d: %d flows on it, the qdisc counted %d packets", q, onQueue[q], n)
		}
	}

	// One flow at a time: the one queue the qdisc sees grow is the flow's queue in the map,
	// and that flow alone is active since the previous read.
	for i, c := range conns {
		before := qdisc()
		bulk(t, c, 20, size)
		var grew []uint32
		for q, n := range qdisc() {
			if n != before[q] {
				grew = append(grew, q)
			}
		}
		var active []txqueue.Flow
		for _, f := range flowsOf(t, p, pair.A) {
			if f.Active {
				active = append(active, f)
			}
		}
		if len(grew) != 1 || len(active) != 1 || active[0].PeerPort != uint16(5100+i) || uint32(active[0].Queue) != grew[0] {
			t.Errorf("flow to port %d alone: qdisc queues that grew %v, active flows %+v; want one, the same", 5100+i, grew, active)
		}
	}
	if moved := events.Matching(func(e txqueue.Event) bool { return e.Netns == pair.A.Inode }); len(moved) != 0 {
		t.Errorf("flow-moved events without a move: %+v", moved)
	}
	if p.Picks() {
		// No XPS map: every re-pick hashes; veth frees each skb at once, so most carry ooo_okay.
		picks := interfaceOf(t, p, pair.A).Picks
		if picks[txqueue.SelectorHash] == 0 || picks[txqueue.SelectorXPS] != 0 {
			t.Errorf("picks by selector %v: want hash picks and no XPS pick", picks)
		}
	}
	t.Logf("queues: %v", sent)
}

// bulk sends messages from client to server and waits until the server has read them.
func bulk(t *testing.T, c *netnstest.Paced, messages, size int) {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		total := 0
		for total < messages*size {
			n, err := c.Server.Read(buf)
			if err != nil {
				done <- err
				return
			}
			total += n
		}
		done <- nil
	}()
	msg := make([]byte, size)
	for i := 0; i < messages; i++ {
		if _, err := c.Client.Write(msg); err != nil {
			t.Error(err)
			return
		}
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// allCPUs is the XPS mask of every CPU this process may run on.
func allCPUs() string {
	return strconv.FormatUint(1<<runtime.NumCPU()-1, 16)
}

// TestFlowMovesQueue steers a connection with XPS: every CPU maps to tx queue 0, then to queue
// 2. After an idle gap everything the socket sent has left the device, so its next segment has
// ooo_okay and __netdev_pick_tx re-picks: the flow moves from 0 to 2, once, and says so.
func TestFlowMovesQueue(t *testing.T) {
	for _, run := range pickRuns() {
		t.Run(run.name, func(t *testing.T) { flowMovesQueue(t, run) })
	}
}

// pickRun is one way to load the family: its default order, and kprobes alone where the kernel
// has them, so the kprobe/kretprobe programs are exercised too.
type pickRun struct {
	name       string
	strategies []loader.Kind
	want       loader.Kind // how the pick hooks must attach; "" where nothing can
}

func pickRuns() []pickRun {
	runs := []pickRun{{name: "default"}}
	switch {
	case expected(loader.FEntry):
		runs[0].want = loader.FEntry
	case expected(loader.Kprobe):
		runs[0].want = loader.Kprobe
	}
	if expected(loader.FEntry) && expected(loader.Kprobe) {
		runs = append(runs, pickRun{name: "kprobe", want: loader.Kprobe,
			strategies: []loader.Kind{loader.TPBTF, loader.Kprobe, loader.Kretprobe}})
	}
	return runs
}

func flowMovesQueue(t *testing.T, run pickRun) {
	cfg := perPacketConfig()
	cfg.Strategies = run.strategies
	p, events := start(t, cfg)
	exit := map[loader.Kind]loader.Kind{loader.FEntry: loader.FExit, loader.Kprobe: loader.Kretprobe}
	for _, h := range p.Report().Hooks {
		want := map[string]loader.Kind{txqueue.HookPick: run.want, txqueue.HookPickReturn: exit[run.want]}[h.Hook]
		switch {
		case h.Hook != txqueue.HookPick && h.Hook != txqueue.HookPickReturn:
		case want == "" && h.Attached != nil, want != "" && (h.Attached == nil || h.Attached.Kind != want):
			t.Fatalf("hook %s: attached %+v, want %q", h.Hook, h.Attached, want)
		}
	}
	pair := multiqueuePair(t)
	qdisc := netnstest.MQPerQueue(t, pair.A)
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", allCPUs())
	c := pair.Connect(t, 5200)
	local := c.Client.LocalAddr().(*net.TCPAddr)
	isFlow := func(f txqueue.Flow) bool {
		return f.LocalPort == uint16(local.Port) && f.PeerPort == 5200
	}
	flow := func() txqueue.Flow {
		for _, f := range flowsOf(t, p, pair.A) {
			if isFlow(f) {
				return f
			}
		}
		return txqueue.Flow{}
	}

	c.Exchange(t, 5, 20*time.Millisecond, 0)
	if f := flow(); !f.Active || f.Queue != 0 || f.Moves != 0 {
		t.Fatalf("before the XPS change: flow %+v, want on queue 0, not moved", f)
	}
	before := qdisc()

	sysfs(t, pair.A, "queues/tx-0/xps_cpus", "0")
	sysfs(t, pair.A, "queues/tx-2/xps_cpus", allCPUs())
	time.Sleep(50 * time.Millisecond) // idle: nothing of the socket left in the device
	c.Exchange(t, 5, 20*time.Millisecond, 0)

	f := flow()
	if f.Queue != 2 || f.Moves != 1 {
		t.Fatalf("after the XPS change: flow %+v, want on queue 2 after one move", f)
	}
	after := qdisc()
	if after[2]-before[2] != 5 || after[0] != before[0] {
		t.Errorf("qdisc per queue before %v, after %v: want the 5 new segments on queue 2 only", before, after)
	}
	if n := interfaceOf(t, p, pair.A).FlowMoves; n != 1 {
		t.Errorf("queue changes on %s: %d, want 1", pair.A.Veth, n)
	}
	var moved []txqueue.Event
	netnstest.Eventually(t, 5*time.Second, "flow-moved event", func() (bool, string) {
		moved = events.Matching(func(e txqueue.Event) bool { return e.Kind == txqueue.KindFlowMoved && e.Netns == pair.A.Inode })
		return len(moved) == 1, fmt.Sprintf("%d events: %+v", len(moved), moved)
	})
	e := moved[0]
	if e.OldQueue != 0 || e.NewQueue != f.Queue || !e.OOOOkay || e.TxQueues != 4 || e.Interface != pair.A.Veth ||
		e.NetnsName != pair.A.Name || e.LocalAddr != netip.MustParseAddr(pair.A.Addr) || e.LocalPort != uint16(local.Port) ||
		e.PeerAddr != netip.MustParseAddr(pair.B.Addr) || e.PeerPort != 5200 || e.Transport != "tcp" {
		t.Errorf("event %+v: want %s:%d -> %s:5200 tcp on %s, queue 0 -> %d, ooo_okay, 4 queues",
			e, pair.A.Addr, local.Port, pair.B.Addr, pair.A.Veth, f.Queue)
	}
	if p.Picks() {
		if e.Selector != txqueue.SelectorXPS {
			t.Errorf("pick hooks attached, event selector %s, want xps", e.Selector)
		}
		if picks := interfaceOf(t, p, pair.A).Picks; picks[txqueue.SelectorXPS] == 0 {
			t.Errorf("pick counts %v: no XPS pick counted", picks)
		}
	} else if e.Selector != txqueue.SelectorUnknown {
		t.Errorf("no pick hooks, yet event selector %s", e.Selector)
	}

	// Back and forth across CPUs. Each CPU remembers the flows it sent last, and must not
	// trust that memory once another CPU saw the flow change queue: CPU 0 sends on queue 0,
	// CPU 1 moves the flow to queue 2, and when it comes back to queue 0, CPU 0 must see
	// that as a move. Flows() is not called in between: a new epoch would hide a stale memory.
	if runtime.NumCPU() < 2 {
		return
	}
	moveTo := func(queue, cpu int) {
		for q := range 4 {
			sysfs(t, pair.A, fmt.Sprintf("queues/tx-%d/xps_cpus", q), map[bool]string{true: allCPUs(), false: "0"}[q == queue])
		}
		time.Sleep(50 * time.Millisecond) // idle: nothing of the socket left in the device
		for range 3 {
			writeFromCPU(t, c.Client, cpu)
			time.Sleep(5 * time.Millisecond)
		}
	}
	moveTo(0, 0)
	moveTo(2, 1)
	moveTo(0, 0)
	if f := flow(); f.Queue != 0 || f.Moves != 4 {
		t.Errorf("after moving 2 -> 0 -> 2 -> 0 from CPUs 0, 1, 0: flow %+v, want on queue 0 after 4 moves", f)
	}
	if n := interfaceOf(t, p, pair.A).FlowMoves; n != 4 {
		t.Errorf("queue changes on %s: %d, want 4", pair.A.Veth, n)
	}
}

// writeFromCPU writes one small message on c from a thread pinned to cpu, and gives the thread
// back unpinned.
func writeFromCPU(t *testing.T, c *net.TCPConn, cpu int) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var was, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		t.Fatal(err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("pin to CPU %d: %v", cpu, err)
	}
	defer unix.SchedSetaffinity(0, &was)
	var werr error
	if err := raw.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), make([]byte, 64))
		return werr != unix.EAGAIN
	}); err != nil || werr != nil {
		t.Fatalf("write from CPU %d: %v %v", cpu, err, werr)
	}
}

// TestOtherhost sends frames addressed to a MAC that is not B's (A's neighbour entry for a third
// address says so) into B's promiscuous veth: each is counted as PACKET_OTHERHOST on B's
// interface, and sampled with both MACs, B's own MAC and the IP addresses.
func TestOtherhost(t *testing.T) {
	p, events := start(t, perPacketConfig())
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	const foreignMAC, foreignAddr = "02:00:00:00:00:99", "198.18.0.3"
	pair.A.Exec(t, "ip", "neigh", "replace", foreignAddr, "lladdr", foreignMAC, "dev", pair.A.Veth, "nud", "permanent")
	pair.B.Exec(t, "ip", "link", "set", pair.B.Veth, "promisc", "on")
	const n = 6
	pair.A.SendUDP(t, foreignAddr+":5300", n)

	netnstest.Eventually(t, 5*time.Second, "OTHERHOST count on B", func() (bool, string) {
		c := interfaceOf(t, p, pair.B)
		return c.Otherhost == n, fmt.Sprintf("%+v, want %d", c, n)
	})
	if c := interfaceOf(t, p, pair.A); c.Otherhost != 0 {
		t.Errorf("A counted %d OTHERHOST packets, want 0", c.Otherhost)
	}
	// Where the kernel names the drop, the count comes from it, not from a program run for
	// every received packet.
	want, found := "netif_receive_skb", false
	if txqueue.OtherhostAtDrop(netnstest.KernelEnv(t)) {
		want = "kfree_skb"
	}
	for _, h := range p.Report().Hooks {
		if h.Hook == txqueue.HookOtherhost {
			found = true
			if h.Attached == nil || h.Attached.Target != want {
				t.Errorf("hook %s attached %+v, want on %s", h.Hook, h.Attached, want)
			}
		}
	}
	if !found {
		t.Errorf("no %s hook in the report", txqueue.HookOtherhost)
	}
	aMAC, bMAC := sysfs(t, pair.A, "address"), sysfs(t, pair.B, "address")
	netnstest.Eventually(t, 5*time.Second, "OTHERHOST events", func() (bool, string) {
		got := events.Matching(func(e txqueue.Event) bool { return e.Kind == txqueue.KindOtherhost && e.Netns == pair.B.Inode })
		for _, e := range got {
			if e.DstMAC.String() != foreignMAC || e.SrcMAC.String() != aMAC || e.DevMAC.String() != bMAC ||
				e.SrcAddr != netip.MustParseAddr(pair.A.Addr) || e.DstAddr != netip.MustParseAddr(foreignAddr) ||
				e.Interface != pair.B.Veth || e.NetnsName != pair.B.Name || e.Network != "ipv4" {
				return false, fmt.Sprintf("event %+v: want %s -> %s, MAC %s -> %s on %s (own MAC %s)",
					e, pair.A.Addr, foreignAddr, aMAC, foreignMAC, pair.B.Veth, bMAC)
			}
		}
		return len(got) == n, fmt.Sprintf("%d events, want %d", len(got), n)
	})
}

// TestQueueKeysBounded: with room for one queue key, traffic on the others is counted as
// overflow, not lost silently.
func TestQueueKeysBounded(t *testing.T) {
	cfg := perPacketConfig()
	cfg.MaxQueueKeys = 1
	p, _ := start(t, cfg)
	pair := multiqueuePair(t)
	pair.A.SendUDP(t, pair.B.Addr+":5400", 5) // B answers each with ICMP: a key on B's veth too
	netnstest.Eventually(t, 5*time.Second, "overflow counted", func() (bool, string) {
		s := snapshot(t, p)
		return len(s.Queues) == 1 && s.Stats.QueueKeysFull > 0, fmt.Sprintf("%d keys, overflow %d", len(s.Queues), s.Stats.QueueKeysFull)
	})
}

// TestPruneDeadNetns: the counts of a namespace that is gone are forgotten, in the hash and in
// the per-CPU slots that cache it, so namespaces that come and go cannot fill either for good;
// those of a live one stay.
func TestPruneDeadNetns(t *testing.T) {
	p, _ := start(t, perPacketConfig())
	noIPv6 := netnstest.PairOptions{NoIPv6: true} // no router solicitations in the counts
	gone, alive := netnstest.NewPairWith(t, noIPv6), netnstest.NewPairWith(t, noIPv6)
	sent := func(ns *netnstest.NS) func() uint64 {
		return func() uint64 {
			var xmits uint64
			for _, q := range snapshot(t, p).Queues {
				if q.Netns == ns.Inode && q.Interface == ns.Veth {
					xmits += q.Xmits
				}
			}
			return xmits
		}
	}
	for _, pair := range []*netnstest.Pair{gone, alive} {
		pair.A.SendUDP(t, pair.B.Addr+":5450", 6)
	}
	// At least: a link coming up may send a frame of its own.
	for _, ns := range []*netnstest.NS{gone.A, alive.A} {
		netnstest.Eventually(t, 5*time.Second, "datagrams counted in "+ns.Name, func() (bool, string) {
			n := sent(ns)()
			return n >= 6, fmt.Sprintf("%d xmits, want at least 6", n)
		})
	}
	aliveBefore := sent(alive.A)()
	if held, err := txqueue.QueueSlotsHeld(p, gone.A.Inode); err != nil || held == 0 {
		t.Fatalf("no per-CPU slot caches the namespace's queue (%d, %v): the test would not see them cleared", held, err)
	}

	netnstest.PruneAfterClose(t, gone, p.PruneDeadNetns)
	if n := sent(gone.A)(); n != 0 {
		t.Errorf("deleted namespace still has %d xmits counted", n)
	}
	if held, err := txqueue.QueueSlotsHeld(p, gone.A.Inode); err != nil || held != 0 {
		t.Errorf("deleted namespace still holds %d per-CPU slots (%v)", held, err)
	}
	if n := sent(alive.A)(); n != aliveBefore {
		t.Errorf("live namespace's counts changed: %d xmits, was %d", n, aliveBefore)
	}
}

func TestEventRateLimit(t *testing.T) {
	cfg := perPacketConfig()
	cfg.EventsPerSecond, cfg.EventBurst = 1, 2
	began := time.Now()
	p, events := start(t, cfg)
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	pair.A.Exec(t, "ip", "neigh", "replace", "198.18.0.3", "lladdr", "02:00:00:00:00:99", "dev", pair.A.Veth, "nud", "permanent")
	const n = 30
	// One CPU: veth delivers in the sender's softirq, so every packet spends that CPU's tokens.
	pair.A.SendUDPFromCPU(t, "198.18.0.3:5500", n, 0)
	netnstest.Eventually(t, 5*time.Second, "every packet counted", func() (bool, string) {
		c := interfaceOf(t, p, pair.B)
		return c.Otherhost == n, fmt.Sprintf("%d counted", c.Otherhost)
	})
	time.Sleep(300 * time.Millisecond)
	got := len(events.Matching(func(e txqueue.Event) bool { return e.Kind == txqueue.KindOtherhost && e.Netns == pair.B.Inode }))
	maxEvents := int(cfg.EventBurst) + int(time.Since(began).Seconds()) + 1
	if got == 0 || got > maxEvents {
		t.Fatalf("events: %d, want 1..%d", got, maxEvents)
	}
	if out := snapshot(t, p).Stats.SampledOut[txqueue.KindOtherhost]; out < uint64(n-got) {
		t.Fatalf("sampled out %d, want at least %d", out, n-got)
	}
}

func TestRestartLeavesNothingBehind(t *testing.T) {
	env := netnstest.KernelEnv(t)
	linksBefore, fdsBefore := netnstest.CountLinks(t), netnstest.CountFDs(t)
	for i := 0; i < 3; i++ {
		p, err := txqueue.Start(env, perPacketConfig(), nil)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if got := netnstest.CountLinks(t); got <= linksBefore {
			t.Fatalf("start %d: %d links, want more than %d", i, got, linksBefore)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second close %d: %v", i, err)
		}
	}
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("links after shutdown: %d, before: %d", got, linksBefore)
	}
	if got := netnstest.CountFDs(t); got != fdsBefore {
		t.Errorf("fds after shutdown: %d, before: %d", got, fdsBefore)
	}
}

// TestRawTracepoints: the raw_tp fallback counts as the typed programs do.
func TestRawTracepoints(t *testing.T) {
	cfg := perPacketConfig()
	cfg.Strategies = []loader.Kind{loader.RawTP}
	p, _ := start(t, cfg)
	for _, h := range p.Report().Hooks {
		if !h.Optional && (h.Attached == nil || h.Attached.Kind != loader.RawTP) {
			t.Fatalf("hook %s: want raw_tp, got %+v", h.Hook, h.Attached)
		}
	}
	pair := multiqueuePair(t)
	pair.B.Exec(t, "ip", "link", "set", pair.B.Veth, "promisc", "on")
	pair.A.Exec(t, "ip", "neigh", "replace", "198.18.0.3", "lladdr", "02:00:00:00:00:99", "dev", pair.A.Veth, "nud", "permanent")
	txBefore := sysfsUint(t, pair.A, "statistics/tx_packets")
	pair.A.SendUDP(t, "198.18.0.3:5600", 4)
	netnstest.Eventually(t, 5*time.Second, "raw_tp counts", func() (bool, string) {
		var xmits uint64
		for _, q := range queuesOf(t, p, pair.A) {
			xmits += q.Xmits
		}
		delta := sysfsUint(t, pair.A, "statistics/tx_packets") - txBefore
		other := interfaceOf(t, p, pair.B).Otherhost
		return xmits == delta && delta == 4 && other == 4, fmt.Sprintf("xmits %d, tx_packets delta %d, otherhost %d", xmits, delta, other)
	})
}

// TestAttachReport prints one MATRIX line per hook for the README's kernel table. The pick
// hooks must attach wherever the kernel matrix says fentry/fexit or kprobes exist.
func TestAttachReport(t *testing.T) {
	p, _ := start(t, perPacketConfig())
	for _, h := range p.Report().Hooks {
		if h.Attached == nil {
			var reasons []string
			for _, a := range h.Skipped {
				reasons = append(reasons, fmt.Sprintf("%s: %s", a.Strategy.Kind, a.Reason))
			}
			fmt.Printf("MATRIX family=txqueue hook=%s attached=no reason=%q\n", h.Hook, strings.Join(reasons, "; "))
			for _, a := range h.Skipped {
				if !h.Optional || expected(a.Strategy.Kind) {
					t.Errorf("hook %s not attached although %s is expected here: %+v", h.Hook, a.Strategy.Kind, h.Skipped)
					break
				}
			}
			continue
		}
		fmt.Printf("MATRIX family=txqueue hook=%s attached=%s: %s\n", h.Hook, h.Attached, h.Attached.Program)
	}
}

// expected says whether the kernel under test must support an attach mechanism, from
// TCPACK_EXPECT (set per kernel by the kernel matrix); unset on the host.
func expected(kind loader.Kind) bool {
	return slices.Contains(strings.Split(os.Getenv("TCPACK_EXPECT"), ","), string(kind))
}
