package txqueue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/txqueue"
)

// windowsConfig is kernel_stats with the per-packet hooks attached for window of every period.
func windowsConfig(window, period time.Duration) txqueue.Config {
	cfg := txqueue.DefaultConfig()
	cfg.Window, cfg.Period = window, period
	return cfg
}

// sampledPackets is what the windows counted on each queue of ns's veth.
func sampledPackets(t *testing.T, p *txqueue.Probe, ns *netnstest.NS) map[uint32]uint64 {
	t.Helper()
	out := map[uint32]uint64{}
	for q, c := range queuesOf(t, p, ns) {
		if c.Source != txqueue.SourceSampled {
			t.Fatalf("queue %d of %s: source %s, want sampled", q, ns.Veth, c.Source)
		}
		out[q] = c.Packets
	}
	return out
}

func waitWindow(t *testing.T, p *txqueue.Probe, open bool) {
	t.Helper()
	netnstest.Eventually(t, 10*time.Second, fmt.Sprintf("sampling window open=%v", open), func() (bool, string) {
		return p.WindowOpen() == open, ""
	})
}

// A plain 4-queue veth (noqueue, as veth has by default) has no per-queue counter in the
// kernel: kernel_stats falls back to the per-packet hooks of its sampling windows. With the
// window open for the whole test every packet is seen: eight UDP flows' datagrams, summed
// over the queues, are the interface's tx_packets delta; each TCP connection's burst grows
// exactly the queue the socket walk reports for it; and a connection XPS moves from queue 0 to
// 2 inside the window is one flow_moved event, as in per_packet mode.
func TestWindowsCountInterfacesWithoutAQueueCounter(t *testing.T) {
	pair := multiqueuePair(t)
	p, events := start(t, windowsConfig(time.Hour, 2*time.Hour))
	waitWindow(t, p, true)
	if l := netnstest.ProgramLinks(t, p.Report()); l[txqueue.HookXmit] != 1 {
		t.Fatalf("window open, yet net_dev_start_xmit is not attached: %v", l)
	}
	base, txBefore := sampledPackets(t, p, pair.A), sysfsUint(t, pair.A, "statistics/tx_packets")

	const flows, datagrams = 8, 150
	for i := range flows {
		pair.A.SendUDPSized(t, fmt.Sprintf("%s:%d", pair.B.Addr, 5500+i), datagrams, 100)
	}
	txDelta := sysfsUint(t, pair.A, "statistics/tx_packets") - txBefore
	if txDelta != flows*datagrams {
		t.Fatalf("tx_packets grew %d, want the %d datagrams sent", txDelta, flows*datagrams)
	}
	var used int
	netnstest.Eventually(t, 2*time.Second, "sampled per-queue counts sum to tx_packets", func() (bool, string) {
		var total uint64
		used = 0
		counts := sampledPackets(t, p, pair.A)
		for q, n := range counts {
			if n > base[q] {
				used++
			}
			total += n - base[q]
		}
		return total == txDelta, fmt.Sprintf("sampled %d packets over %v, tx_packets grew %d", total, counts, txDelta)
	})
	if used < 2 {
		t.Errorf("%d flows all left on one queue", flows)
	}
	snap := snapshot(t, p)
	if d := deviceOf(t, snap, pair.A); d.Source != txqueue.SourceSampled || d.TxQueues != 4 || d.RootQdisc != "noqueue" {
		t.Errorf("A's veth: %+v, want source sampled, 4 queues, root qdisc noqueue", d)
	}
	for _, q := range queuesOf(t, p, pair.A) {
		if q.TxQueues != 4 || q.Interface != pair.A.Veth {
			t.Errorf("sampled queue %+v, want 4 queues of %s", q, pair.A.Veth)
		}
	}

	const conns, size = 8, 1000
	paced := make([]*netnstest.Paced, conns)
	for i := range paced {
		paced[i] = pair.Connect(t, 5510+i)
		bulk(t, paced[i], 20, size)
	}
	snapshot(t, p)
	walked := map[uint16]txqueue.Flow{}
	for _, f := range flowsOf(t, p, pair.A) {
		walked[f.PeerPort] = f
	}
	for i, c := range paced {
		port := uint16(5510 + i)
		f, ok := walked[port]
		if !ok {
			t.Fatalf("connection to port %d not in the walk: %+v", port, walked)
		}
		before := sampledPackets(t, p, pair.A)
		bulk(t, c, 20, size)
		var grew []uint32
		for q, n := range sampledPackets(t, p, pair.A) {
			if n != before[q] {
				grew = append(grew, q)
			}
		}
		if len(grew) != 1 || grew[0] != uint32(f.Queue) {
			t.Errorf("port %d: the walk says queue %d, the sampled counts grew on %v", port, f.Queue, grew)
		}
	}

	sysfs(t, pair.A, "queues/tx-0/xps_cpus", allCPUs())
	c := pair.Connect(t, 5520)
	c.Exchange(t, 5, 20*time.Millisecond, 0)
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", "0")
	sysfs(t, pair.A, "queues/tx-2/xps_cpus", allCPUs())
	time.Sleep(50 * time.Millisecond) // idle: nothing of the socket left in the device
	c.Exchange(t, 5, 20*time.Millisecond, 0)
	moved := func(e txqueue.Event) bool {
		return e.Kind == txqueue.KindFlowMoved && e.Netns == pair.A.Inode && e.PeerPort == 5520
	}
	netnstest.Eventually(t, 2*time.Second, "a flow_moved event", func() (bool, string) {
		got := events.Matching(moved)
		return len(got) > 0, fmt.Sprintf("%+v", got)
	})
	if got := events.Matching(moved); len(got) != 1 || got[0].OldQueue != 0 || got[0].NewQueue != 2 || !got[0].OOOOkay {
		t.Errorf("flow_moved events %+v, want one from queue 0 to 2 with ooo_okay", got)
	}
	if p.Picks() {
		var picks uint64
		for _, n := range interfaceOf(t, p, pair.A).Picks {
			picks += n
		}
		if picks == 0 {
			t.Error("the pick hooks are attached, yet the window counted no pick")
		}
	}
}

// Windows of 300 ms every 1.2 s: the per-packet hook is attached while one is open and not
// between them, the sampled time is about a quarter of the time, and the sampled counts are a
// share of what was sent. A flow that XPS moves between two windows is not reported as a
// flow_moved event at its first packet in the next window (what moved it, and when, the
// window did not see), yet the socket walk counts the change.
func TestWindowsSampleAShareOfTheTime(t *testing.T) {
	pair := multiqueuePair(t)
	started := time.Now()
	p, events := start(t, windowsConfig(300*time.Millisecond, 1200*time.Millisecond))

	sysfs(t, pair.A, "queues/tx-0/xps_cpus", allCPUs())
	c := pair.Connect(t, 5530)
	seenOn := func(queue uint32) bool {
		// A few exchanges until one falls in the open window.
		for range 20 {
			waitWindow(t, p, true)
			before := sampledPackets(t, p, pair.A)[queue]
			c.Exchange(t, 2, 5*time.Millisecond, 0)
			if sampledPackets(t, p, pair.A)[queue] > before {
				return true
			}
		}
		return false
	}
	if !seenOn(0) {
		t.Fatal("no window saw the connection on queue 0")
	}
	waitWindow(t, p, false)
	if l := netnstest.ProgramLinks(t, p.Report()); l[txqueue.HookXmit] != 0 && !p.WindowOpen() {
		t.Errorf("between windows net_dev_start_xmit is attached: %v", l)
	}
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", "0")
	sysfs(t, pair.A, "queues/tx-2/xps_cpus", allCPUs())
	time.Sleep(50 * time.Millisecond)
	c.Exchange(t, 2, 5*time.Millisecond, 0) // moves to queue 2 between the windows
	if p.WindowOpen() {
		t.Fatal("the next window opened before the move was done: the test's steps took longer than the 900 ms between windows")
	}
	if !seenOn(2) {
		t.Fatal("no window saw the connection on queue 2")
	}
	for _, f := range flowsOf(t, p, pair.A) {
		if f.PeerPort == 5530 && (f.Queue != 2 || f.Moves != 1) {
			t.Errorf("walked flow %+v, want queue 2 and one change", f)
		}
	}

	// Datagrams every 5 ms for 2.4 s, two periods.
	sent := 0
	for deadline := time.Now().Add(2400 * time.Millisecond); time.Now().Before(deadline); {
		pair.A.SendUDPSized(t, pair.B.Addr+":5531", 1, 100)
		sent++
		time.Sleep(5 * time.Millisecond)
	}
	// Seconds after the move: any event about it has been delivered.
	if got := events.Matching(func(e txqueue.Event) bool { return e.Kind == txqueue.KindFlowMoved && e.PeerPort == 5530 }); len(got) != 0 {
		t.Errorf("a move between windows was reported as seen in one: %+v", got)
	}
	elapsed, sampled := time.Since(started), p.SampledTime()
	share := sampled.Seconds() / elapsed.Seconds()
	t.Logf("sampled %s of %s (%.2f); %d datagrams sent", sampled, elapsed, share, sent)
	// Windows open and close within a poll (100 ms) of their schedule.
	if share < 0.1 || share > 0.45 {
		t.Errorf("sampled %.2f of the time, want about 1/4", share)
	}
	var udp uint64
	for _, q := range queuesOf(t, p, pair.A) {
		udp += q.Packets
	}
	// All counted packets minus the connection's (under 100) are the datagrams seen.
	if udp == 0 || udp >= uint64(sent)*6/10 {
		t.Errorf("the windows counted %d packets of %d datagrams sent: want a share", udp, sent)
	}
}
