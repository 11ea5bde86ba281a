package tcpackreceiver

import (
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/netnstest"
)

// latestPoint is the newest value of a metric whose attributes match.
func latestPoint(r *running, name string, match func(pmetric.NumberDataPoint) bool) (int64, bool) {
	all := r.metrics.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		var v int64
		found := false
		forEachPoint(all[i], name, func(dp pmetric.NumberDataPoint) {
			if match(dp) {
				v += dp.IntValue()
				found = true
			}
		})
		if found {
			return v, true
		}
	}
	return 0, false
}

func TestReceiverForcesQuickACKsAndReportsThem(t *testing.T) {
	netnstest.RequireRoot(t)
	pair := netnstest.NewPair(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Acks.Enabled = true
	cfg.Acks.PerSegment.Enabled = true
	cfg.Acks.LocalPorts = []int{5130, 5131}
	cfg.Quickack.Enabled = true
	cfg.Quickack.Netns = []string{"/run/netns/" + pair.B.Name}
	cfg.Quickack.LocalPorts = []int{5130}
	r := startReceiver(t, NewFactory(), cfg)

	target := pair.Connect(t, 5130)
	control := pair.Connect(t, 5131)
	target.Exchange(t, 300, 2*time.Millisecond, 50*time.Millisecond)
	control.Exchange(t, 300, 2*time.Millisecond, 50*time.Millisecond)

	byTarget := func(dp pmetric.NumberDataPoint) bool {
		return strAttr(dp.Attributes(), "tcpack.quickack.target") == "local_port:5130" &&
			strAttr(dp.Attributes(), "tcpack.quickack.mechanism") == "mark"
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.quickack.sockets", func() (bool, string) {
		v, ok := latestPoint(r, "tcpack.quickack.sockets", byTarget)
		return ok && v == 1, fmt.Sprintf("%d (%v)", v, ok)
	})
	onPort := func(port int64) func(pmetric.NumberDataPoint) bool {
		return func(dp pmetric.NumberDataPoint) bool {
			return intAttr(dp.Attributes(), "server.port") == port && intAttr(dp.Attributes(), "tcpack.netns.inode") == int64(pair.B.Inode) &&
				strAttr(dp.Attributes(), "tcpack.socket.role") == "server"
		}
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.forced.count", func() (bool, string) {
		forced, _ := latestPoint(r, "tcpack.ack.forced.count", onPort(5130))
		all, _ := latestPoint(r, "tcpack.ack.count", onPort(5130))
		controlForced, _ := latestPoint(r, "tcpack.ack.forced.count", onPort(5131))
		return forced >= 270 && forced == all && controlForced == 0,
			fmt.Sprintf("target: %d forced of %d ACKs; control: %d forced", forced, all, controlForced)
	})
	// The counting tier sees forcing too: the target's socket is forced, and its pure ACKs
	// are in the forced control segments; the control port has none.
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.sockets.forced and tcpack.ack.forced.segments.sent", func() (bool, string) {
		sockets, _ := latestPoint(r, "tcpack.ack.sockets.forced", onPort(5130))
		control := func(port int64) int64 {
			v, _ := latestPoint(r, "tcpack.ack.forced.segments.sent", func(dp pmetric.NumberDataPoint) bool {
				return onPort(port)(dp) && strAttr(dp.Attributes(), "tcpack.segment.kind") == "control"
			})
			return v
		}
		target, other := control(5130), control(5131)
		return sockets == 1 && target >= 270 && other == 0,
			fmt.Sprintf("forced sockets on 5130: %d; forced control segments: %d on 5130, %d on 5131", sockets, target, other)
	})

	applied := func() (n int, rec plog.LogRecord) {
		forEachRecord(r.logs, func(lr plog.LogRecord) {
			a := lr.Attributes()
			if lr.EventName() == "tcpack.quickack.socket" && strAttr(a, "tcpack.quickack.action") == "applied" {
				n++
				rec = lr
			}
		})
		return n, rec
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.quickack.socket applied", func() (bool, string) {
		n, _ := applied()
		return n == 1, fmt.Sprint(n, " records")
	})
	_, rec := applied()
	a := rec.Attributes()
	if strAttr(a, "tcpack.quickack.target") != "local_port:5130" || strAttr(a, "tcpack.quickack.origin") != "established" ||
		intAttr(a, "network.local.port") != 5130 || strAttr(a, "network.peer.address") != pair.A.Addr ||
		strAttr(a, "tcpack.netns.name") != pair.B.Name {
		t.Errorf("applied record: %v", a.AsRaw())
	}
	if _, ok := a.Get("tcpack.quickack.refusal"); ok {
		t.Errorf("applied record carries a refusal: %v", a.AsRaw())
	}

	// The logs pipeline's shutdown gives the socket back, and says so; the metrics pipeline
	// goes on without reporting the forcing hooks as attached.
	r.stopLogs()
	quickackHooks := func(md pmetric.Metrics) (n int) {
		forEachPoint(md, "tcpack.probe.attached", func(dp pmetric.NumberDataPoint) {
			if strAttr(dp.Attributes(), "tcpack.family") == "quickack" {
				n++
			}
		})
		return n
	}
	if all := r.metrics.AllMetrics(); quickackHooks(all[len(all)-1]) == 0 {
		t.Fatal("no quickack hooks in tcpack.probe.attached while forcing")
	}
	seen := len(r.metrics.AllMetrics())
	netnstest.Eventually(t, 10*time.Second, "a collection after the logs pipeline stopped", func() (bool, string) {
		all := r.metrics.AllMetrics()
		return len(all) > seen+1, fmt.Sprintf("%d batches, %d before", len(all), seen)
	})
	if all := r.metrics.AllMetrics(); quickackHooks(all[len(all)-1]) != 0 {
		t.Error("tcpack.probe.attached still reports quickack hooks after the family was given back")
	}
	r.stop()
	var released int
	forEachRecord(r.logs, func(lr plog.LogRecord) {
		a := lr.Attributes()
		if lr.EventName() == "tcpack.quickack.socket" && strAttr(a, "tcpack.quickack.action") == "released" &&
			strAttr(a, "tcpack.quickack.origin") == "shutdown" && intAttr(a, "network.local.port") == 5130 {
			released++
		}
	})
	if released != 1 {
		t.Errorf("%d release records at shutdown, want 1", released)
	}
}
