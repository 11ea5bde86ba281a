package txqueue_test

import (
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
// 4 queues too but noqueue as veth has by default, has no per-queue source: it is reported as
// such, with no queue counts.
func TestKernelStatsCountsPerQueueFromTheQdiscs(t *testing.T) {
	pair := multiqueuePair(t)
	qdisc := netnstest.MQPerQueue(t, pair.A)
	p, _ := start(t, txqueue.DefaultConfig())
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
		t.Errorf("B's veth (noqueue): %+v, want source none, 4 queues", d)
	}
	if q := queuesOf(t, p, pair.B); len(q) != 0 {
		t.Errorf("B's veth has no per-queue source, yet queues were reported: %+v", q)
	}
}
