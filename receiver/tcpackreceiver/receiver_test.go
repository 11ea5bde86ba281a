package tcpackreceiver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

type running struct {
	metrics *consumertest.MetricsSink
	logs    *consumertest.LogsSink
	// stopLogs shuts the logs pipeline down alone; stop shuts down both.
	stopLogs func()
	stop     func()
}

// startReceiver starts metrics and logs pipelines of one config, as the collector does.
func startReceiver(t *testing.T, f receiver.Factory, cfg *Config) *running {
	t.Helper()
	ctx := context.Background()
	set := receivertest.NewNopSettings(metadata.Type)
	r := &running{metrics: new(consumertest.MetricsSink), logs: new(consumertest.LogsSink)}
	mr, err := f.CreateMetrics(ctx, set, cfg, r.metrics)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := f.CreateLogs(ctx, set, cfg, r.logs)
	if err != nil {
		t.Fatal(err)
	}
	host := componenttest.NewNopHost()
	if err := mr.Start(ctx, host); err != nil {
		t.Fatal(err)
	}
	if err := lr.Start(ctx, host); err != nil {
		t.Fatal(err)
	}
	logsStopped, stopped := false, false
	r.stopLogs = func() {
		if logsStopped {
			return
		}
		logsStopped = true
		if err := lr.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		r.stopLogs()
		if err := mr.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(r.stop)
	return r
}

func fastConfig() *Config {
	cfg := createDefaultConfig()
	cfg.CollectionInterval = 200 * time.Millisecond
	cfg.RingBuffer.FlushInterval = 50 * time.Millisecond
	// Per-segment ACK statistics from a connection's first segment; TestACKsAttachOnTraffic
	// tests on_traffic. Only tests that ask for the ACK family get it.
	cfg.Acks.Enabled = false
	cfg.Acks.PerSegment.Attach = loader.AttachAlways
	return cfg
}

// dropCount returns the latest tcpack.drop.count value matching the attributes.
func dropCount(sink *consumertest.MetricsSink, netns uint32, reason, symbol, transport string) (int64, bool) {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		var total int64
		found := false
		forEachPoint(all[i], "tcpack.drop.count", func(dp pmetric.NumberDataPoint) {
			a := dp.Attributes()
			if intAttr(a, "tcpack.netns.inode") == int64(netns) && strAttr(a, "tcpack.drop.reason") == reason &&
				strAttr(a, "tcpack.drop.symbol") == symbol && strAttr(a, "network.transport") == transport {
				total += dp.IntValue()
				found = true
			}
		})
		if found {
			return total, true
		}
	}
	return 0, false
}

func forEachPoint(md pmetric.Metrics, name string, f func(pmetric.NumberDataPoint)) {
	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		sms := rms.At(i).ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				m := ms.At(k)
				if m.Name() != name {
					continue
				}
				var dps pmetric.NumberDataPointSlice
				switch m.Type() {
				case pmetric.MetricTypeSum:
					dps = m.Sum().DataPoints()
				case pmetric.MetricTypeGauge:
					dps = m.Gauge().DataPoints()
				default:
					continue
				}
				for l := 0; l < dps.Len(); l++ {
					f(dps.At(l))
				}
			}
		}
	}
}

func forEachRecord(sink *consumertest.LogsSink, f func(plog.LogRecord)) {
	for _, ld := range sink.AllLogs() {
		rls := ld.ResourceLogs()
		for i := 0; i < rls.Len(); i++ {
			sls := rls.At(i).ScopeLogs()
			for j := 0; j < sls.Len(); j++ {
				recs := sls.At(j).LogRecords()
				for k := 0; k < recs.Len(); k++ {
					f(recs.At(k))
				}
			}
		}
	}
}

func strAttr(m pcommon.Map, k string) string {
	if v, ok := m.Get(k); ok {
		return v.AsString()
	}
	return ""
}

func intAttr(m pcommon.Map, k string) int64 {
	if v, ok := m.Get(k); ok && v.Type() == pcommon.ValueTypeInt {
		return v.Int()
	}
	return -1
}

func TestReceiverReportsDropsAsMetricsAndEvents(t *testing.T) {
	netnstest.RequireRoot(t)
	r := startReceiver(t, NewFactory(), fastConfig())
	pair := netnstest.NewPair(t)
	const n, firstPort = 4, 42000
	pair.A.SendSYNs(t, fmt.Sprintf("%s:5010", pair.B.Addr), n, firstPort)

	netnstest.Eventually(t, 10*time.Second, "tcpack.drop.count NO_SOCKET at tcp_v4_rcv in B", func() (bool, string) {
		got, _ := dropCount(r.metrics, pair.B.Inode, "NO_SOCKET", "tcp_v4_rcv", "tcp")
		return got == n, fmt.Sprintf("got %d, want %d", got, n)
	})

	seen := map[int64]bool{}
	netnstest.Eventually(t, 10*time.Second, "tcpack.drop events", func() (bool, string) {
		forEachRecord(r.logs, func(rec plog.LogRecord) {
			a := rec.Attributes()
			if rec.EventName() != "tcpack.drop" || intAttr(a, "tcpack.netns.inode") != int64(pair.B.Inode) ||
				strAttr(a, "tcpack.drop.reason") != "NO_SOCKET" {
				return // a new netns also drops its own IPv6 multicast (MLD, DAD) packets
			}
			if strAttr(a, "network.local.address") != pair.B.Addr || intAttr(a, "network.local.port") != 5010 ||
				strAttr(a, "network.peer.address") != pair.A.Addr || strAttr(a, "tcpack.drop.symbol") != "tcp_v4_rcv" ||
				strAttr(a, "tcpack.netns.name") != pair.B.Name || strAttr(a, "network.io.direction") != "receive" {
				t.Errorf("drop record attributes: %v", a.AsRaw())
				return
			}
			if _, ok := a.Get("network.connection.state"); ok {
				t.Errorf("empty attributes must be left out: %v", a.AsRaw())
			}
			seen[intAttr(a, "network.peer.port")] = true
		})
		return len(seen) == n, fmt.Sprintf("records for %d of %d source ports", len(seen), n)
	})
	for p := int64(firstPort); p < firstPort+n; p++ {
		if !seen[p] {
			t.Errorf("no tcpack.drop record from peer port %d", p)
		}
	}

	var attached []string
	forEachPoint(r.metrics.AllMetrics()[len(r.metrics.AllMetrics())-1], "tcpack.probe.attached", func(dp pmetric.NumberDataPoint) {
		if dp.IntValue() == 1 {
			attached = append(attached, strAttr(dp.Attributes(), "tcpack.hook")+"="+strAttr(dp.Attributes(), "tcpack.strategy"))
		}
	})
	if len(attached) != 4 {
		t.Errorf("tcpack.probe.attached: %v, want all 4 drops hooks attached", attached)
	}
}

func TestReceiverRestartLeavesNothingBehind(t *testing.T) {
	netnstest.RequireRoot(t)
	links, fds := netnstest.CountLinks(t), netnstest.CountFDs(t)
	f := NewFactory()
	for i := 0; i < 2; i++ {
		r := startReceiver(t, f, fastConfig())
		if netnstest.CountLinks(t) <= links {
			t.Fatalf("run %d: no links attached", i)
		}
		netnstest.Eventually(t, 10*time.Second, "first collection", func() (bool, string) {
			return r.metrics.DataPointCount() > 0, "no metrics yet"
		})
		r.stop()
		if got := netnstest.CountLinks(t); got != links {
			t.Fatalf("run %d: %d links after shutdown, %d before", i, got, links)
		}
	}
	if got := netnstest.CountFDs(t); got != fds {
		t.Errorf("fds after two runs: %d, before: %d", got, fds)
	}
}

func TestAllFamiliesDisabledIsAnError(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	f := NewFactory()
	mr, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := mr.Start(context.Background(), componenttest.NewNopHost()); err == nil {
		mr.Shutdown(context.Background())
		t.Fatal("start with every family disabled succeeded")
	}
	if err := mr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsOnlySamplesNoEvents: without a logs pipeline the kernel samples no events, so
// none are reported as suppressed either, while every drop is still counted.
func TestMetricsOnlySamplesNoEvents(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx := context.Background()
	sink := new(consumertest.MetricsSink)
	mr, err := NewFactory().CreateMetrics(ctx, receivertest.NewNopSettings(metadata.Type), fastConfig(), sink)
	if err != nil {
		t.Fatal(err)
	}
	if err := mr.Start(ctx, componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mr.Shutdown(ctx) })
	pair := netnstest.NewPair(t)
	const n = 5
	pair.A.SendSYNs(t, fmt.Sprintf("%s:5011", pair.B.Addr), n, 44000)
	netnstest.Eventually(t, 10*time.Second, "drops counted", func() (bool, string) {
		got, _ := dropCount(sink, pair.B.Inode, "NO_SOCKET", "tcp_v4_rcv", "tcp")
		return got == n, fmt.Sprintf("got %d, want %d", got, n)
	})
	all := sink.AllMetrics()
	forEachPoint(all[len(all)-1], "tcpack.events.suppressed", func(dp pmetric.NumberDataPoint) {
		if dp.IntValue() != 0 {
			t.Errorf("tcpack.events.suppressed %v = %d with no logs pipeline, want 0", dp.Attributes().AsRaw(), dp.IntValue())
		}
	})
}

// histogramPoint returns the newest tcpack.ack.delay point with that port and netns.
func histogramPoint(sink *consumertest.MetricsSink, port int64, netns uint32) (pmetric.HistogramDataPoint, bool) {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		rms := all[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					if ms.At(m).Name() != "tcpack.ack.delay" {
						continue
					}
					dps := ms.At(m).Histogram().DataPoints()
					for d := 0; d < dps.Len(); d++ {
						a := dps.At(d).Attributes()
						if intAttr(a, "server.port") == port && intAttr(a, "tcpack.netns.inode") == int64(netns) && strAttr(a, "tcpack.socket.role") != "client" {
							return dps.At(d), true
						}
					}
				}
			}
		}
	}
	return pmetric.HistogramDataPoint{}, false
}

func ackCounts(sink *consumertest.MetricsSink, port int64, netns uint32) map[string]int64 {
	all := sink.AllMetrics()
	counts := map[string]int64{}
	if len(all) == 0 {
		return counts
	}
	forEachPoint(all[len(all)-1], "tcpack.ack.count", func(dp pmetric.NumberDataPoint) {
		a := dp.Attributes()
		if intAttr(a, "server.port") == port && intAttr(a, "tcpack.netns.inode") == int64(netns) && strAttr(a, "tcpack.socket.role") != "client" {
			counts[strAttr(a, "tcpack.ack.cause")] += dp.IntValue()
		}
	})
	return counts
}

func TestReceiverReportsACKDelays(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Acks.Enabled = true
	cfg.Acks.PerSegment.Enabled = true
	cfg.Acks.LocalPorts = []int{5120}
	r := startReceiver(t, NewFactory(), cfg)
	pair := netnstest.NewPair(t)
	w := pair.PacedTraffic(t, 5120, 300, 2*time.Millisecond, 50*time.Millisecond)
	segs := int64(netnstest.TCPInfo(t, w.Server).Data_segs_in)

	var dp pmetric.HistogramDataPoint
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.delay for port 5120", func() (bool, string) {
		var ok bool
		dp, ok = histogramPoint(r.metrics, 5120, pair.B.Inode)
		if !ok {
			return false, "no histogram point"
		}
		var total int64
		for _, n := range ackCounts(r.metrics, 5120, pair.B.Inode) {
			total += n
		}
		return ok && int64(dp.Count()) == total && total > 0, fmt.Sprintf("histogram count %d, tcpack.ack.count %d", dp.Count(), total)
	})
	counts := ackCounts(r.metrics, 5120, pair.B.Inode)
	t.Logf("ACKs by cause: %v; histogram count %d, mean %.1f ms, %d segments received", counts, dp.Count(), 1000*dp.Sum()/float64(dp.Count()), segs)
	// Quick-mode ACKs leave at once; the others wait for the slow reader.
	if mean := dp.Sum() / float64(max(int64(dp.Count())-counts["quick"], 1)); mean < 0.004 {
		t.Errorf("mean delay of the ACKs outside quick mode %.2f ms for a slow reader, want tens of ms", mean*1000)
	}
	if dp.ExplicitBounds().Len()+1 != dp.BucketCounts().Len() || dp.ExplicitBounds().At(0) != 1e-6 {
		t.Errorf("histogram bounds: %v, buckets %d", dp.ExplicitBounds().AsRaw(), dp.BucketCounts().Len())
	}
	// The quota (16) at the start, and again for each retransmitted duplicate: a tail-loss
	// probe while the server delays its ACK (seen in make test: 32, and 144 with 8 of them).
	if q, most := counts["quick"], int64(16*(1+w.Retransmits(t))); q == 0 || q > most {
		t.Errorf("quick-mode ACKs %d, want the initial quota (at most %d with %d retransmissions)", q, most, w.Retransmits(t))
	}

	var delayed int
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.delayed events", func() (bool, string) {
		delayed = 0
		forEachRecord(r.logs, func(rec plog.LogRecord) {
			a := rec.Attributes()
			if rec.EventName() != "tcpack.ack.delayed" || intAttr(a, "tcpack.netns.inode") != int64(pair.B.Inode) {
				return
			}
			delay, _ := a.Get("tcpack.ack.delay")
			if intAttr(a, "network.local.port") != 5120 || strAttr(a, "network.peer.address") != pair.A.Addr || delay.Double() < 0.01 {
				t.Errorf("delayed ACK record: %v", a.AsRaw())
			}
			delayed++
		})
		return delayed > 0, "none yet"
	})
}

// With acks.per_segment.attach on_traffic (its default), tcpack.ack.armed is 0 until a socket in scope opens, then 1,
// and the statistics count once it is 1.
func TestACKsAttachOnTraffic(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Acks.Enabled = true
	cfg.Acks.PerSegment.Enabled = true
	cfg.Acks.PerSegment.Attach = loader.AttachOnTraffic
	cfg.Acks.LocalPorts = []int{5123}
	r := startReceiver(t, NewFactory(), cfg)
	latestArmed := func() (int64, bool) {
		all := r.metrics.AllMetrics()
		for i := len(all) - 1; i >= 0; i-- {
			v, found := int64(0), false
			forEachPoint(all[i], "tcpack.ack.armed", func(dp pmetric.NumberDataPoint) { v, found = dp.IntValue(), true })
			if found {
				return v, true
			}
		}
		return 0, false
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.armed 0 with no socket in scope", func() (bool, string) {
		v, ok := latestArmed()
		return ok && v == 0, fmt.Sprintf("armed %d (reported: %v)", v, ok)
	})
	pair := netnstest.NewPair(t)
	c := pair.Connect(t, 5123)
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.armed 1 with a socket in scope open", func() (bool, string) {
		v, ok := latestArmed()
		return ok && v == 1, fmt.Sprintf("armed %d (reported: %v)", v, ok)
	})
	c.Exchange(t, 20, time.Millisecond, 0)
	netnstest.Eventually(t, 10*time.Second, "tcpack.ack.delay for port 5123", func() (bool, string) {
		dp, ok := histogramPoint(r.metrics, 5123, pair.B.Inode)
		return ok && dp.Count() > 0, "no ACK counted"
	})
}

func TestACKSeriesCap(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Acks.Enabled = true
	cfg.Acks.PerSegment.Enabled = true
	cfg.Acks.LocalPorts = []int{5121, 5122}
	cfg.Acks.MaxSeries = 1
	r := startReceiver(t, NewFactory(), cfg)
	pair := netnstest.NewPair(t)
	pair.PacedTraffic(t, 5121, 20, time.Millisecond, 0)
	pair.PacedTraffic(t, 5122, 20, time.Millisecond, 0)
	netnstest.Eventually(t, 10*time.Second, "one admitted series and the overflow series", func() (bool, string) {
		_, first := histogramPoint(r.metrics, 5121, pair.B.Inode)
		_, overflow := histogramPoint(r.metrics, 0, 0)
		_, second := histogramPoint(r.metrics, 5122, pair.B.Inode)
		return first && overflow && !second, fmt.Sprintf("5121: %v, overflow: %v, 5122: %v", first, overflow, second)
	})
}

// TestShutDownPipelineIsNeverCalledAgain: the collector may shut the logs pipeline's exporters
// down while the metrics pipeline's receiver still runs (its shutdown order is topological
// across pipelines), so events must stop at the logs receiver's own shutdown.
func TestShutDownPipelineIsNeverCalledAgain(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx := context.Background()
	cfg := fastConfig()
	set := receivertest.NewNopSettings(metadata.Type)
	metrics, logs := new(consumertest.MetricsSink), new(consumertest.LogsSink)
	f := NewFactory()
	mr, err := f.CreateMetrics(ctx, set, cfg, metrics)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := f.CreateLogs(ctx, set, cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	host := componenttest.NewNopHost()
	if err := mr.Start(ctx, host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mr.Shutdown(ctx) })
	if err := lr.Start(ctx, host); err != nil {
		t.Fatal(err)
	}
	pair := netnstest.NewPair(t)
	pair.A.SendSYNs(t, fmt.Sprintf("%s:5012", pair.B.Addr), 3, 44100)
	netnstest.Eventually(t, 10*time.Second, "drop events", func() (bool, string) { return logs.LogRecordCount() > 0, "none yet" })

	if err := lr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	before := logs.LogRecordCount()
	pair.A.SendSYNs(t, fmt.Sprintf("%s:5012", pair.B.Addr), 3, 44200)
	netnstest.Eventually(t, 10*time.Second, "drops counted by the metrics pipeline", func() (bool, string) {
		got, _ := dropCount(metrics, pair.B.Inode, "NO_SOCKET", "tcp_v4_rcv", "tcp")
		return got == 6, fmt.Sprintf("got %d, want 6", got)
	})
	time.Sleep(3 * cfg.RingBuffer.FlushInterval)
	if after := logs.LogRecordCount(); after != before {
		t.Errorf("%d log records delivered after the logs pipeline shut down", after-before)
	}
}

func TestResourceNamesTheNode(t *testing.T) {
	newResource := func() pcommon.Map {
		r := newReceiver(receivertest.NewNopSettings(metadata.Type), createDefaultConfig(), func() {})
		return r.newResourceBuilder().Emit().Attributes()
	}
	t.Setenv(nodeNameEnv, "")
	if v, ok := newResource().Get("k8s.node.name"); ok {
		t.Errorf("k8s.node.name = %q with %s unset, want it absent", v.AsString(), nodeNameEnv)
	}
	t.Setenv(nodeNameEnv, "node-7")
	attrs := newResource()
	if v, _ := attrs.Get("k8s.node.name"); v.AsString() != "node-7" {
		t.Errorf("k8s.node.name = %q, want node-7 from %s", v.AsString(), nodeNameEnv)
	}
	if host, _ := os.Hostname(); host != "" {
		if v, _ := attrs.Get("host.name"); v.AsString() != host {
			t.Errorf("host.name = %q, want %q", v.AsString(), host)
		}
	}
}
