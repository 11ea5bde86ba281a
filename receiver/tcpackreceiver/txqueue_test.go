package tcpackreceiver

import (
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/txqueue"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

func TestLoadTxqueueConfig(t *testing.T) {
	cfg, err := loadConfig(t, component.NewIDWithName(metadata.Type, "txqueue"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	q, errs := cfg.Txqueue.convert(cfg.familyCommon(), true)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := fmt.Sprintf("%v %d %d %d %v %d %d %v %s/%s", q.Strategies, q.MaxQueueKeys, q.MaxInterfaces, q.MaxFlows, q.Otherhost,
		q.EventsPerSecond, q.EventBurst, q.DisabledEvents, q.Window, q.Period)
	if want := "[tp_btf fentry fexit] 512 64 2048 false 5 10 [otherhost] 200ms/10s"; got != want {
		t.Errorf("txqueue config:\n got %s\nwant %s", got, want)
	}
	if got, _ := cfg.Txqueue.convert(cfg.familyCommon(), false); len(got.DisabledEvents) != 2 {
		t.Errorf("without a logs pipeline every event kind must be off, got %v", got)
	}
	def := createDefaultConfig()
	if def.Txqueue.Enabled || !def.Txqueue.Otherhost || def.Validate() != nil {
		t.Errorf("txqueue must be off, with otherhost, and valid by default: %+v", def.Txqueue)
	}
	if d, _ := def.Txqueue.convert(def.familyCommon(), true); d.Window != 100*time.Millisecond || d.Period != 5*time.Second {
		t.Errorf("default windows %s/%s, want 100ms of every 5s", d.Window, d.Period)
	}
	def.Txqueue.Windows.Enabled = false
	if d, _ := def.Txqueue.convert(def.familyCommon(), true); d.Window != 0 {
		t.Errorf("windows off, yet window %s", d.Window)
	}
	def.Txqueue.Windows.Enabled, def.Txqueue.Mode = true, txqueue.ModePerPacket
	if d, _ := def.Txqueue.convert(def.familyCommon(), true); d.Window != 0 {
		t.Errorf("per_packet has every packet, yet window %s", d.Window)
	}
}

func TestTxqueueValidateNamesFieldAndFix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*TxqueueConfig)
		want   []string
	}{
		{"strategy", func(q *TxqueueConfig) { q.Strategies = []string{"tp_btf", "uprobe"} }, []string{"txqueue.strategies[1]", `"uprobe"`, "kretprobe"}},
		{"no tracepoint", func(q *TxqueueConfig) { q.Mode, q.Strategies = "per_packet", []string{"fentry", "fexit"} }, []string{"txqueue.strategies", "tp_btf or raw_tp"}},
		{"mode", func(q *TxqueueConfig) { q.Mode = "sampled" }, []string{"txqueue.mode", "use kernel_stats", "or per_packet"}},
		{"max keys", func(q *TxqueueConfig) { q.MaxKeys = 0 }, []string{"txqueue.max_keys", "1..1048576"}},
		{"max interfaces", func(q *TxqueueConfig) { q.MaxInterfaces = 1 << 21 }, []string{"txqueue.max_interfaces"}},
		{"max flows", func(q *TxqueueConfig) { q.MaxFlows = 0 }, []string{"txqueue.max_flows"}},
		{"rate", func(q *TxqueueConfig) { q.Sampling.RatePerCPU = 1e6 }, []string{"txqueue.sampling.rate_per_cpu", "0..100000"}},
		{"burst", func(q *TxqueueConfig) { q.Sampling.Burst = 0 }, []string{"txqueue.sampling.burst", "at least 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := createDefaultConfig()
			cfg.Txqueue.Enabled = true
			tc.mutate(&cfg.Txqueue)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("invalid config accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// txqueuePoints sums the latest batch's points of a txqueue metric for one interface, by the
// attribute byAttr ("" for one total).
func txqueuePoints(sink *consumertest.MetricsSink, name string, ns *netnstest.NS, byAttr string) map[string]int64 {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		out := map[string]int64{}
		forEachPoint(all[i], name, func(dp pmetric.NumberDataPoint) {
			a := dp.Attributes()
			if intAttr(a, "tcpack.netns.inode") == int64(ns.Inode) && strAttr(a, "network.interface.name") == ns.Veth {
				out[strAttr(a, byAttr)] += dp.IntValue()
			}
		})
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// TestReceiverReportsTxqueue drives a 4-queue veth pair through the receiver: datagrams are
// counted per queue and interface, a flow steered to another queue by XPS is a change and an
// event, and frames for another MAC are OTHERHOST counts and events.
func TestReceiverReportsTxqueue(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Txqueue.Enabled = true
	cfg.Txqueue.Mode = "per_packet" // flows, moves and picks: every packet
	r := startReceiver(t, NewFactory(), cfg)

	pair := netnstest.NewPairWith(t, netnstest.PairOptions{TxQueues: 4, NoIPv6: true})
	sysfs := func(ns *netnstest.NS, file string, value ...string) string {
		path := "/sys/class/net/" + ns.Veth + "/" + file
		if len(value) == 0 {
			return strings.TrimSpace(ns.Exec(t, "cat", path))
		}
		return ns.Exec(t, "sh", "-c", fmt.Sprintf("printf %%s %s > %s", value[0], path))
	}
	// No ARP: A sends only the test's packets.
	for _, ns := range [][2]*netnstest.NS{{pair.A, pair.B}, {pair.B, pair.A}} {
		ns[0].Exec(t, "ip", "neigh", "replace", ns[1].Addr, "lladdr", sysfs(ns[1], "address"), "dev", ns[0].Veth, "nud", "permanent")
	}
	const foreignMAC, foreignAddr = "02:00:00:00:00:77", "198.18.0.3"
	pair.A.Exec(t, "ip", "neigh", "replace", foreignAddr, "lladdr", foreignMAC, "dev", pair.A.Veth, "nud", "permanent")
	allCPUs := strconv.FormatUint(1<<runtime.NumCPU()-1, 16)
	sysfs(pair.A, "queues/tx-0/xps_cpus", allCPUs)

	c := pair.Connect(t, 5700)
	c.Exchange(t, 3, 20*time.Millisecond, 0)
	sysfs(pair.A, "queues/tx-0/xps_cpus", "0")
	sysfs(pair.A, "queues/tx-3/xps_cpus", allCPUs)
	time.Sleep(50 * time.Millisecond)
	c.Exchange(t, 3, 20*time.Millisecond, 0)
	const n = 5
	pair.A.SendUDP(t, foreignAddr+":5701", n)
	tx, err := strconv.ParseInt(sysfs(pair.A, "statistics/tx_packets"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}

	netnstest.Eventually(t, 10*time.Second, "tcpack.txqueue.packets on A's veth", func() (bool, string) {
		byQueue := txqueuePoints(r.metrics, "tcpack.txqueue.packets", pair.A, "tcpack.txqueue.queue")
		var sum int64
		for _, v := range byQueue {
			sum += v
		}
		// Small messages and datagrams: one segment per skb, so packets match veth's count.
		return sum == tx && byQueue["0"] > 0 && byQueue["3"] > 0, fmt.Sprintf("by queue %v, interface sent %d", byQueue, tx)
	})
	if q := txqueuePoints(r.metrics, "tcpack.txqueue.queues", pair.A, ""); q[""] != 4 {
		t.Errorf("tcpack.txqueue.queues: %v, want 4", q)
	}
	if ch := txqueuePoints(r.metrics, "tcpack.txqueue.flow.changes.count", pair.A, ""); ch[""] != 1 {
		t.Errorf("tcpack.txqueue.flow.changes.count: %v, want 1", ch)
	}
	if oh := txqueuePoints(r.metrics, "tcpack.packet.otherhost.count", pair.B, ""); oh[""] != n {
		t.Errorf("tcpack.packet.otherhost.count on B: %v, want %d", oh, n)
	}
	local := c.Client.LocalAddr().(*net.TCPAddr)
	netnstest.Eventually(t, 10*time.Second, "events", func() (bool, string) {
		var moved, other int
		forEachRecord(r.logs, func(rec plog.LogRecord) {
			a := rec.Attributes()
			switch rec.EventName() {
			case "tcpack.txqueue.flow.moved":
				if intAttr(a, "tcpack.netns.inode") != int64(pair.A.Inode) {
					return
				}
				moved++
				if intAttr(a, "tcpack.txqueue.old_queue") != 0 || intAttr(a, "tcpack.txqueue.queue") != 3 ||
					intAttr(a, "network.local.port") != int64(local.Port) || intAttr(a, "network.peer.port") != 5700 ||
					strAttr(a, "network.interface.name") != pair.A.Veth || strAttr(a, "tcpack.txqueue.ooo_okay") != "true" {
					t.Errorf("flow.moved record: %v", a.AsRaw())
				}
			case "tcpack.packet.otherhost":
				if intAttr(a, "tcpack.netns.inode") != int64(pair.B.Inode) {
					return
				}
				other++
				if strAttr(a, "tcpack.packet.destination.mac") != foreignMAC || strAttr(a, "tcpack.interface.mac") != sysfs(pair.B, "address") ||
					strAttr(a, "destination.address") != foreignAddr || strAttr(a, "source.address") != pair.A.Addr {
					t.Errorf("otherhost record: %v", a.AsRaw())
				}
			}
		})
		return moved == 1 && other == n, fmt.Sprintf("%d flow.moved (want 1), %d otherhost (want %d)", moved, other, n)
	})

	var attached []string
	forEachPoint(r.metrics.AllMetrics()[len(r.metrics.AllMetrics())-1], "tcpack.probe.attached", func(dp pmetric.NumberDataPoint) {
		if strAttr(dp.Attributes(), "tcpack.family") == txqueue.Family && dp.IntValue() == 1 {
			attached = append(attached, strAttr(dp.Attributes(), "tcpack.hook"))
		}
	})
	if len(attached) < 2 {
		t.Errorf("tcpack.probe.attached for txqueue: %v, want at least the two tracepoints", attached)
	}
}
