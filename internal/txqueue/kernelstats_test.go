package txqueue_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/txqueue"
)

func perPacketConfig() txqueue.Config {
	cfg := txqueue.DefaultConfig()
	cfg.Mode = txqueue.ModePerPacket
	return cfg
}

// deviceOf is the interface of ns's veth as the last snapshot saw it.
func deviceOf(t *testing.T, snap txqueue.Snapshot, ns *netnstest.NS) txqueue.Interface {
	t.Helper()
	for _, d := range snap.Devices {
		if d.Netns == ns.Inode && d.Interface == ns.Veth {
			return d
		}
	}
	t.Fatalf("%s in netns %d not among the devices: %+v", ns.Veth, ns.Inode, snap.Devices)
	return txqueue.Interface{}
}

// In kernel_stats mode (the default) no program runs per packet: the per-queue counts are the
// counters of mq's child qdiscs, read each collection. Eight UDP flows of single-segment
// datagrams over a 4-queue veth with mq as root: each queue's count is the qdisc's own count
// since the baseline, the sum is the interface's tx_packets delta (no ARP, no IPv6: every
// packet is a test flow's), the flows spread over more than one queue. The other side's veth,
// 4 queues too but noqueue as veth has by default, has no per-queue source and, with the
// sampling windows off, no per-queue counts: it is reported as such.
func TestKernelStatsCountsPerQueueFromTheQdiscs(t *testing.T) {
	pair := multiqueuePair(t)
	qdisc := netnstest.MQPerQueue(t, pair.A)
	p, _ := start(t, windowsConfig(0, 0))
	for _, h := range p.Report().Hooks {
		if h.Attached != nil && (h.Hook == txqueue.HookXmit || h.Hook == txqueue.HookPick) {
			t.Errorf("kernel_stats attached %s, a program on every packet", h.Hook)
		}
	}
	base, txBefore := qdisc(), sysfsUint(t, pair.A, "statistics/tx_packets")

	const flows, datagrams = 8, 150
	for i := range flows {
		pair.A.SendUDPSized(t, fmt.Sprintf("%s:%d", pair.B.Addr, 5300+i), datagrams, 100)
	}
	sent := map[uint32]uint64{}
	var total uint64
	for q, n := range qdisc() {
		sent[q] = n - base[q]
		total += sent[q]
	}
	if total != flows*datagrams {
		t.Fatalf("the qdiscs counted %d packets, want the %d datagrams sent", total, flows*datagrams)
	}
	netnstest.Eventually(t, 2*time.Second, "per-queue counts equal the qdiscs'", func() (bool, string) {
		ours := queuesOf(t, p, pair.A)
		if len(ours) != 4 {
			return false, fmt.Sprintf("%d queues reported, want 4: %+v", len(ours), ours)
		}
		for q, n := range sent {
			if ours[q].Packets != n || ours[q].Source != txqueue.SourceQdisc || ours[q].TxQueues != 4 {
				return false, fmt.Sprintf("queue %d: ours %+v, qdisc %d more packets (all: %v)", q, ours[q], n, sent)
			}
		}
		return true, ""
	})
	if delta := sysfsUint(t, pair.A, "statistics/tx_packets") - txBefore; delta != total {
		t.Errorf("interface tx_packets grew %d, the queues counted %d", delta, total)
	}
	used := 0
	for _, n := range sent {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("%d flows all left on one queue: %v", flows, sent)
	}

	snap := snapshot(t, p)
	if d := deviceOf(t, snap, pair.A); d.Source != txqueue.SourceQdisc || d.TxQueues != 4 {
		t.Errorf("A's veth: %+v, want source qdisc, 4 queues", d)
	}
	if d := deviceOf(t, snap, pair.B); d.Source != txqueue.SourceNone || d.TxQueues != 4 {
		t.Errorf("B's veth (noqueue), no windows: %+v, want source none, 4 queues", d)
	}
	if q := queuesOf(t, p, pair.B); len(q) != 0 {
		t.Errorf("B's veth has no per-queue source, yet queues were reported: %+v", q)
	}
}

// In kernel_stats mode each connection's queue comes from the socket walk at each snapshot
// (sk_tx_queue_mapping): eight TCP connections over the 4-queue veth with mq, then one at a
// time a burst on each: the one queue whose qdisc count grows is the queue the walk reports
// for that connection, and no connection changed queue.
func TestKernelStatsFlowQueuesFromTheSocketWalk(t *testing.T) {
	pair := multiqueuePair(t)
	qdisc := netnstest.MQPerQueue(t, pair.A)
	p, _ := start(t, txqueue.DefaultConfig())
	if l := netnstest.ProgramLinks(t, p.Report()); l[txqueue.HookFlowWalk] != 1 {
		t.Fatalf("the flow walk is not attached: %v", l)
	}
	const flows, size = 8, 1000
	conns := make([]*netnstest.Paced, flows)
	for i := range conns {
		conns[i] = pair.Connect(t, 5400+i)
		bulk(t, conns[i], 20, size)
	}
	snapshot(t, p)
	walked := map[uint16]txqueue.Flow{}
	for _, f := range flowsOf(t, p, pair.A) {
		walked[f.PeerPort] = f
	}
	queues := map[uint16]bool{}
	for i, c := range conns {
		port := uint16(5400 + i)
		f, ok := walked[port]
		if !ok {
			t.Fatalf("connection to port %d not in the walk: %+v", port, walked)
		}
		before := qdisc()
		bulk(t, c, 20, size)
		var grew []uint32
		for q, n := range qdisc() {
			if n != before[q] {
				grew = append(grew, q)
			}
		}
		if len(grew) != 1 || grew[0] != uint32(f.Queue) {
			t.Errorf("port %d: the walk says queue %d, the qdiscs grew on %v", port, f.Queue, grew)
		}
		if f.Ifindex == 0 || f.Transport != "tcp" || f.LocalAddr.String() != pair.A.Addr {
			t.Errorf("port %d: walked flow %+v", port, f)
		}
		queues[f.Queue] = true
	}
	if len(queues) < 2 {
		t.Errorf("%d connections all on one queue: %v", flows, walked)
	}
	snap := snapshot(t, p)
	for _, c := range snap.Interfaces {
		if c.Netns == pair.A.Inode && c.FlowMoves != 0 {
			t.Errorf("%s: %d queue changes, none expected: a flow's hash is fixed", c.Interface, c.FlowMoves)
		}
	}
	for _, f := range flowsOf(t, p, pair.A) {
		if f.Moves != 0 {
			t.Errorf("flow %+v moved", f)
		}
	}
}

// A connection that XPS steers from queue 0 to queue 2 between two snapshots is one queue
// change in kernel_stats mode, seen by the socket walk: on the flow and on the interface.
func TestKernelStatsSeesAQueueChangeBetweenWalks(t *testing.T) {
	p, _ := start(t, txqueue.DefaultConfig())
	pair := multiqueuePair(t)
	netnstest.MQPerQueue(t, pair.A)
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", allCPUs())
	c := pair.Connect(t, 5410)
	c.Exchange(t, 5, 20*time.Millisecond, 0)
	flow := func() txqueue.Flow {
		snapshot(t, p)
		for _, f := range flowsOf(t, p, pair.A) {
			if f.PeerPort == 5410 {
				return f
			}
		}
		t.Fatal("the connection is not in the walk")
		return txqueue.Flow{}
	}
	if f := flow(); f.Queue != 0 || f.Moves != 0 {
		t.Fatalf("before the XPS change: %+v, want queue 0, no change", f)
	}
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", "0")
	sysfs(t, pair.A, "queues/tx-2/xps_cpus", allCPUs())
	time.Sleep(50 * time.Millisecond) // idle: nothing of the socket left in the device
	c.Exchange(t, 5, 20*time.Millisecond, 0)
	f := flow()
	if f.Queue != 2 || f.Moves != 1 {
		t.Errorf("after the XPS change: %+v, want queue 2, one change", f)
	}
	moves := func() uint64 {
		for _, i := range snapshot(t, p).Interfaces {
			if i.Netns == pair.A.Inode && i.Interface == pair.A.Veth {
				return i.FlowMoves
			}
		}
		return 0
	}
	if n := moves(); n != 1 {
		t.Errorf("%s: %d queue changes, want 1", pair.A.Veth, n)
	}

	// Steered back to queue 0, then closed before the next walk: the change is counted from
	// the queue the connection had at its close.
	sysfs(t, pair.A, "queues/tx-2/xps_cpus", "0")
	sysfs(t, pair.A, "queues/tx-0/xps_cpus", allCPUs())
	time.Sleep(50 * time.Millisecond)
	c.Exchange(t, 5, 20*time.Millisecond, 0)
	c.Finish(t)
	if n := moves(); n != 2 {
		t.Errorf("%s: %d queue changes after the closed connection's, want 2", pair.A.Veth, n)
	}
}

// A child qdisc that drops: queue 0's pfifo replaced by a tbf of 1 Mbit/s with room for three
// datagrams, and every flow steered to queue 0 by XPS. The drops and packets reported for
// queue 0 are the ones tc reports for that qdisc.
func TestKernelStatsDropsEqualTheQdiscs(t *testing.T) {
	pair := multiqueuePair(t)
	netnstest.MQPerQueue(t, pair.A)
	pair.A.Exec(t, "tc", "qdisc", "replace", "dev", pair.A.Veth, "parent", "1:1", "handle", "10:", "tbf",
		"rate", "1mbit", "burst", "1600", "limit", "3300")
	for q := range 4 {
		mask := "0"
		if q == 0 {
			mask = allCPUs()
		}
		sysfs(t, pair.A, fmt.Sprintf("queues/tx-%d/xps_cpus", q), mask)
	}
	p, _ := start(t, windowsConfig(0, 0))
	for i := range 4 {
		pair.A.SendUDPSized(t, fmt.Sprintf("%s:%d", pair.B.Addr, 5600+i), 50, 1000)
	}
	tbf := func() (packets, drops, backlog uint64) {
		var qdiscs []struct {
			Handle  string `json:"handle"`
			Packets uint64 `json:"packets"`
			Drops   uint64 `json:"drops"`
			Backlog uint64 `json:"qlen"`
		}
		out := pair.A.Exec(t, "tc", "-s", "-j", "qdisc", "show", "dev", pair.A.Veth)
		if err := json.Unmarshal([]byte(out), &qdiscs); err != nil {
			t.Fatalf("tc -j: %v\n%s", err, out)
		}
		for _, q := range qdiscs {
			if q.Handle == "10:" {
				return q.Packets, q.Drops, q.Backlog
			}
		}
		t.Fatalf("no tbf 10: in %s", out)
		return 0, 0, 0
	}
	netnstest.Eventually(t, 5*time.Second, "queue 0 reports the tbf's packets and drops", func() (bool, string) {
		packets, drops, backlog := tbf()
		q := queuesOf(t, p, pair.A)[0]
		return backlog == 0 && drops > 0 && q.Drops == drops && q.Packets == packets && packets+drops == 200,
			fmt.Sprintf("tbf: %d sent, %d dropped, %d queued; reported %+v", packets, drops, backlog, q)
	})
}
