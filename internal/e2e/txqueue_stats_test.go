package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// TestCollectorExportsKernelQueueStats runs the txqueue family in its default mode,
// kernel_stats, with the sampling windows off, in the built collector: no program per packet; 8 TCP connections over a
// 4-queue veth with mq as root come out as tcpack.txqueue.packets per queue equal to each
// child qdisc's own count, tcpack.txqueue.queues says where the counts come from (qdisc on
// A's veth, none on B's, which keeps veth's noqueue), and tcpack.txqueue.flows puts the 8
// connections on the queues that carried packets.
func TestCollectorExportsKernelQueueStats(t *testing.T) {
	netnstest.RequireRoot(t)
	pair, qdisc := multiqueuePair(t)
	base := qdisc()

	dir := t.TempDir()
	c := &collector{collectortest.Start(t, collectortest.Binary(t), fileConfig(dir, `    collection_interval: 300ms
    drops: {enabled: false}
    txqueue: {enabled: true, windows: {enabled: false}}`)), dir}
	if strings.Contains(c.Log(), "net_dev_start_xmit attached") || !strings.Contains(c.Log(), "txqueue: iter_tcp attached") {
		t.Fatalf("kernel_stats without windows must attach the socket walk and no per-packet hook:\n%s", c.Log())
	}

	eightFlows(t, pair, 6110)

	on := func(ns *netnstest.NS, extra func(pcommon.Map) bool) func(pcommon.Map) bool {
		return func(a pcommon.Map) bool {
			return num(a, "tcpack.netns.inode") == int64(ns.Inode) && str(a, "network.interface.name") == ns.Veth && extra(a)
		}
	}
	netnstest.Eventually(t, 20*time.Second, "tcpack.txqueue.packets per queue equal to the qdiscs'", func() (bool, string) {
		sent := qdisc()
		metrics, _ := c.read(t)
		used := 0
		for q, n := range sent {
			got, _ := latestSum(metrics, "tcpack.txqueue.packets", on(pair.A, func(a pcommon.Map) bool { return num(a, "tcpack.txqueue.queue") == int64(q) }))
			if uint64(got) != n-base[q] {
				return false, fmt.Sprintf("queue %d: exported %d, qdisc %d more since the start (qdisc: %v)", q, got, n-base[q], sent)
			}
			if n > base[q] {
				used++
			}
		}
		if used < 2 {
			return false, fmt.Sprintf("8 flows on %d queue(s): %v", used, sent)
		}
		return true, ""
	})
	metrics, _ := c.read(t)
	for _, want := range []struct {
		ns     *netnstest.NS
		source string
	}{{pair.A, "qdisc"}, {pair.B, "none"}} {
		n, ok := latestSum(metrics, "tcpack.txqueue.queues", on(want.ns, func(a pcommon.Map) bool { return str(a, "tcpack.txqueue.source") == want.source }))
		if !ok || n != 4 {
			t.Errorf("%s: tcpack.txqueue.queues{source=%s} = %d (reported: %v), want 4", want.ns.Veth, want.source, n, ok)
		}
	}
	if n, ok := latestSum(metrics, "tcpack.txqueue.packets", on(pair.B, func(pcommon.Map) bool { return true })); ok {
		t.Errorf("%s has no per-queue source, yet %d packets were exported for it", pair.B.Veth, n)
	}
	sent := qdisc()
	flows, ok := latestSum(metrics, "tcpack.txqueue.flows", on(pair.A, func(a pcommon.Map) bool {
		q := uint32(num(a, "tcpack.txqueue.queue"))
		if sent[q] == base[q] {
			t.Errorf("flows on queue %d, which sent nothing (qdisc %v)", q, sent)
		}
		return true
	}))
	if !ok || flows != 8 {
		t.Errorf("tcpack.txqueue.flows on %s: %d (reported: %v), want the 8 connections", pair.A.Veth, flows, ok)
	}
}

// TestCollectorSamplesQueuesWithoutACounter runs kernel_stats, windows on, over a plain
// 4-queue veth pair (noqueue, as veth has by default): no per-queue counter in the kernel, so
// the family falls back to the per-packet hook of its sampling windows, and says so in its
// log. One window open for the whole test sees every packet: eight UDP flows' datagrams,
// summed over tcpack.txqueue.packets' queues, are A's tx_packets delta; tcpack.txqueue.queues
// says source sampled, and tcpack.txqueue.sampled.time grows.
func TestCollectorSamplesQueuesWithoutACounter(t *testing.T) {
	netnstest.RequireRoot(t)
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{TxQueues: 4, NoIPv6: true})
	aMAC, bMAC := macOf(t, pair.A), macOf(t, pair.B)
	pair.A.Exec(t, "ip", "neigh", "replace", pair.B.Addr, "lladdr", bMAC, "dev", pair.A.Veth, "nud", "permanent")
	pair.B.Exec(t, "ip", "neigh", "replace", pair.A.Addr, "lladdr", aMAC, "dev", pair.B.Veth, "nud", "permanent")
	txPackets := func() int64 {
		n, err := strconv.ParseInt(strings.TrimSpace(pair.A.Exec(t, "cat", filepath.Join("/sys/class/net", pair.A.Veth, "statistics/tx_packets"))), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	dir := t.TempDir()
	c := &collector{collectortest.Start(t, collectortest.Binary(t), fileConfig(dir, `    collection_interval: 300ms
    drops: {enabled: false}
    txqueue: {enabled: true, windows: {window: 1h, period: 2h}}`)), dir}
	onA := func(a pcommon.Map) bool {
		return num(a, "tcpack.netns.inode") == int64(pair.A.Inode) && str(a, "network.interface.name") == pair.A.Veth
	}
	// The window opens at the watcher's first poll, within 100 ms of the start.
	time.Sleep(500 * time.Millisecond)
	before := txPackets()
	for i := range 8 {
		pair.A.SendUDPSized(t, fmt.Sprintf("%s:%d", pair.B.Addr, 6130+i), 150, 100)
	}
	sent := txPackets() - before
	if sent != 8*150 {
		t.Fatalf("tx_packets grew %d, want the %d datagrams sent", sent, 8*150)
	}
	netnstest.Eventually(t, 20*time.Second, "the sampled per-queue counts sum to tx_packets", func() (bool, string) {
		metrics, _ := c.read(t)
		got, _ := latestSum(metrics, "tcpack.txqueue.packets", onA)
		return got == sent, fmt.Sprintf("exported %d packets over A's queues, tx_packets grew %d", got, sent)
	})
	metrics, _ := c.read(t)
	if n, ok := latestSum(metrics, "tcpack.txqueue.queues", func(a pcommon.Map) bool { return onA(a) && str(a, "tcpack.txqueue.source") == "sampled" }); !ok || n != 4 {
		t.Errorf("%s: tcpack.txqueue.queues{source=sampled} = %d (reported: %v), want 4", pair.A.Veth, n, ok)
	}
	var sampled float64
	for i := len(metrics) - 1; i >= 0 && sampled == 0; i-- {
		eachPoint(metrics[i], "tcpack.txqueue.sampled.time", func(pcommon.Map) bool { return true }, func(p pmetric.NumberDataPoint) { sampled = p.DoubleValue() })
	}
	if sampled < 0.3 {
		t.Errorf("tcpack.txqueue.sampled.time %.2f s, want the window's time so far", sampled)
	}
	if !strings.Contains(c.Log(), "has no per-queue counter") || !strings.Contains(c.Log(), pair.A.Veth) {
		t.Errorf("the collector does not say that %s's per-queue counts are sampled:\n%s", pair.A.Veth, c.Log())
	}
}
