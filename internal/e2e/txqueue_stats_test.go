package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// TestCollectorExportsKernelQueueStats runs the txqueue family in its default mode,
// kernel_stats, in the built collector: no program per packet; 8 TCP connections over a
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
    txqueue: {enabled: true}`)), dir}
	if strings.Contains(c.Log(), "net_dev_start_xmit attached") || !strings.Contains(c.Log(), "txqueue: iter_tcp attached") {
		t.Fatalf("kernel_stats must attach the socket walk and no per-packet hook:\n%s", c.Log())
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
