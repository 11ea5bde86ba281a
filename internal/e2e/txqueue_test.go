package e2e

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// txqueueAlone: the txqueue family without the default drops family, per packet (flow
// queues and OTHERHOST events; the kernel_stats default is tested in internal/txqueue).
const txqueueAlone = `    collection_interval: 300ms
    drops: {enabled: false}
    txqueue: {enabled: true, mode: per_packet}`

// TestCollectorExportsTxQueues runs the txqueue family in the built collector: TCP flows over
// a 4-queue veth come out as tcpack.txqueue.packets per queue equal to the qdisc's own
// per-queue counts, and frames for a foreign MAC into a promiscuous interface as
// tcpack.packet.otherhost.count and events carrying the MACs.
func TestCollectorExportsTxQueues(t *testing.T) {
	netnstest.RequireRoot(t)
	linksBefore := netnstest.CountLinks(t)
	pair, qdisc := multiqueuePair(t)
	aMAC, bMAC := macOf(t, pair.A), macOf(t, pair.B)

	dir := t.TempDir()
	c := &collector{collectortest.Start(t, collectortest.Binary(t), fileConfig(dir, txqueueAlone)), dir}
	if !strings.Contains(c.Log(), "txqueue: net_dev_start_xmit attached") {
		t.Fatalf("collector log lacks the txqueue attach report:\n%s", c.Log())
	}

	// The flows: 8 connections from A, each writing 200 KB; the hash spreads them over queues.
	eightFlows(t, pair, 6100)

	onA := func(queue int64) func(pcommon.Map) bool {
		return func(a pcommon.Map) bool {
			return num(a, "tcpack.netns.inode") == int64(pair.A.Inode) && str(a, "network.interface.name") == pair.A.Veth &&
				num(a, "tcpack.txqueue.queue") == queue
		}
	}
	netnstest.Eventually(t, 20*time.Second, "tcpack.txqueue.packets per queue equal to the qdisc's", func() (bool, string) {
		sent := qdisc()
		metrics, _ := c.read(t)
		used := 0
		for q, n := range sent {
			got, _ := latestSum(metrics, "tcpack.txqueue.packets", onA(int64(q)))
			if uint64(got) != n {
				return false, fmt.Sprintf("queue %d: exported %d, qdisc %d (qdisc: %v)", q, got, n, sent)
			}
			if n > 0 {
				used++
			}
		}
		if used < 2 {
			return false, fmt.Sprintf("8 flows on %d queue(s): %v", used, sent)
		}
		return true, ""
	})

	// tcpack.txqueue.flows counts the flows that sent since the previous collection. Points
	// are grouped by scrape (timestamp), as a batch may hold several: no scrape counts more
	// than the 8 flows, only on queues that carried packets; together the scrapes count each
	// flow at least once; the last, with A idle, counts none.
	onAnyQueue := func(a pcommon.Map) bool {
		return num(a, "tcpack.netns.inode") == int64(pair.A.Inode) && str(a, "network.interface.name") == pair.A.Veth
	}
	netnstest.Eventually(t, 20*time.Second, "tcpack.txqueue.flows: the 8 flows, then none once idle", func() (bool, string) {
		metrics, _ := c.read(t)
		sent := qdisc()
		flowsAt := map[pcommon.Timestamp]int64{}
		var scrapes []pcommon.Timestamp
		for _, m := range metrics {
			eachPoint(m, "tcpack.txqueue.packets", onAnyQueue, func(p pmetric.NumberDataPoint) {
				if _, ok := flowsAt[p.Timestamp()]; !ok {
					flowsAt[p.Timestamp()] = 0
					scrapes = append(scrapes, p.Timestamp())
				}
			})
			var bad string
			eachPoint(m, "tcpack.txqueue.flows", onAnyQueue, func(p pmetric.NumberDataPoint) {
				flowsAt[p.Timestamp()] += p.IntValue()
				if q := num(p.Attributes(), "tcpack.txqueue.queue"); sent[uint32(q)] == 0 {
					bad = fmt.Sprintf("%d flows on queue %d, which sent nothing (qdisc %v)", p.IntValue(), q, sent)
				}
			})
			if bad != "" {
				return false, bad
			}
		}
		var total int64
		for ts, n := range flowsAt {
			if n > 8 {
				return false, fmt.Sprintf("scrape at %v counted %d flows, there are 8", ts, n)
			}
			total += n
		}
		if len(scrapes) == 0 {
			return false, "no scrape yet"
		}
		last := flowsAt[scrapes[len(scrapes)-1]]
		var seq []int64
		for _, ts := range scrapes {
			seq = append(seq, flowsAt[ts])
		}
		return total >= 8 && last == 0, fmt.Sprintf("flows over all %d scrapes %d (want >= 8), in the last %d (want 0): %v", len(scrapes), total, last, seq)
	})

	const foreignMAC, foreignAddr, n = "02:00:00:00:00:99", "198.18.0.3", 4
	pair.A.Exec(t, "ip", "neigh", "replace", foreignAddr, "lladdr", foreignMAC, "dev", pair.A.Veth, "nud", "permanent")
	pair.B.Exec(t, "ip", "link", "set", pair.B.Veth, "promisc", "on")
	pair.A.SendUDP(t, foreignAddr+":5300", n)
	onB := func(a pcommon.Map) bool {
		return num(a, "tcpack.netns.inode") == int64(pair.B.Inode) && str(a, "network.interface.name") == pair.B.Veth
	}
	netnstest.Eventually(t, 20*time.Second, "tcpack.packet.otherhost.count on B", func() (bool, string) {
		metrics, logs := c.read(t)
		got, _ := latestSum(metrics, "tcpack.packet.otherhost.count", onB)
		events := records(logs, "tcpack.packet.otherhost", func(a pcommon.Map) bool {
			return onB(a) && str(a, "tcpack.packet.destination.mac") == foreignMAC && str(a, "tcpack.packet.source.mac") == aMAC &&
				str(a, "tcpack.interface.mac") == bMAC && str(a, "destination.address") == foreignAddr &&
				str(a, "tcpack.netns.name") == pair.B.Name
		})
		return got == n && len(events) == n, fmt.Sprintf("count %d, events %d, want %d each", got, len(events), n)
	})

	c.Stop(t)
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("BPF links after the collector exited: %d, before it started: %d", got, linksBefore)
	}
}

// eachPoint calls fn for every point of a sum or gauge in one batch whose attributes match.
func eachPoint(m pmetric.Metrics, name string, match func(pcommon.Map) bool, fn func(pmetric.NumberDataPoint)) {
	rms := m.ResourceMetrics()
	for r := 0; r < rms.Len(); r++ {
		sms := rms.At(r).ScopeMetrics()
		for s := 0; s < sms.Len(); s++ {
			ms := sms.At(s).Metrics()
			for i := 0; i < ms.Len(); i++ {
				if ms.At(i).Name() != name {
					continue
				}
				var dps pmetric.NumberDataPointSlice
				switch ms.At(i).Type() {
				case pmetric.MetricTypeSum:
					dps = ms.At(i).Sum().DataPoints()
				case pmetric.MetricTypeGauge:
					dps = ms.At(i).Gauge().DataPoints()
				default:
					continue
				}
				for d := 0; d < dps.Len(); d++ {
					if match(dps.At(d).Attributes()) {
						fn(dps.At(d))
					}
				}
			}
		}
	}
}

func macOf(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	return strings.TrimSpace(ns.Exec(t, "cat", filepath.Join("/sys/class/net", ns.Veth, "address")))
}

// multiqueuePair is a 4-queue veth pair without IPv6 whose ends know each other's MAC (no ARP
// packets on A's queues besides the flows), with mq as A's root qdisc; qdisc reads A's
// per-queue counts as the child qdiscs keep them.
func multiqueuePair(t *testing.T) (*netnstest.Pair, func() map[uint32]uint64) {
	t.Helper()
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{TxQueues: 4, NoIPv6: true})
	aMAC, bMAC := macOf(t, pair.A), macOf(t, pair.B)
	pair.A.Exec(t, "ip", "neigh", "replace", pair.B.Addr, "lladdr", bMAC, "dev", pair.A.Veth, "nud", "permanent")
	pair.B.Exec(t, "ip", "neigh", "replace", pair.A.Addr, "lladdr", aMAC, "dev", pair.B.Veth, "nud", "permanent")
	return pair, netnstest.MQPerQueue(t, pair.A)
}

// eightFlows opens 8 connections from A to a server on B:port, each writing 200 KB, and
// returns once all is written; the connections stay open until the test ends (a closed
// socket's memory can hold the next one, which the per-packet flow map, keyed by socket,
// would then take for the same flow).
func eightFlows(t *testing.T, pair *netnstest.Pair, port int) {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", pair.B.Addr, port)
	ln := pair.B.Listen(t, "tcp4", addr)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); io.Copy(io.Discard, conn) }()
		}
	}()
	var wg sync.WaitGroup
	for range 8 {
		conn, err := pair.A.Dial("tcp4", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		wg.Add(1)
		go func(conn net.Conn) {
			defer wg.Done()
			buf := make([]byte, 1000)
			for range 200 {
				if _, err := conn.Write(buf); err != nil {
					t.Error(err)
					return
				}
			}
		}(conn)
	}
	wg.Wait()
}
