package tcpackreceiver

import (
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/netnstest"
)

// TestReceiverReportsFootprint: a named flow blocked by nftables at the receiver shows up as
// packets at the core receive layer, NETFILTER_DROP drops, a lost count and one loss event,
// and nothing of the family stays attached after shutdown. The default attach mode
// (on_traffic) is in use: the first packet arms the layers and counts as unobserved.
func TestReceiverReportsFootprint(t *testing.T) {
	netnstest.RequireRoot(t)
	linksBefore := netnstest.CountLinks(t)
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	pair.B.Exec(t, "nft", "add table inet tcpack_fpr; "+
		"add chain inet tcpack_fpr input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet tcpack_fpr input udp dport 5140 drop")
	cfg := fastConfig()
	cfg.Drops.Enabled = false
	cfg.Footprint.Flows = []FlowConfig{{Name: "blocked", Protocol: "udp", Local: pair.B.Addr, LocalPort: 5140}}
	r := startReceiver(t, NewFactory(), cfg)
	pair.A.SendUDP(t, fmt.Sprintf("%s:5140", pair.B.Addr), 1)
	netnstest.Eventually(t, 10*time.Second, "tcpack.footprint.armed 1 after the flow's first packet", func() (bool, string) {
		armed, _ := latestPoint(r, "tcpack.footprint.armed", func(pmetric.NumberDataPoint) bool { return true })
		unobserved, _ := latestPoint(r, "tcpack.footprint.unobserved", func(pmetric.NumberDataPoint) bool { return true })
		return armed == 1 && unobserved >= 1, fmt.Sprintf("armed %d, unobserved %d", armed, unobserved)
	})
	const n = 6
	pair.A.SendUDP(t, fmt.Sprintf("%s:5140", pair.B.Addr), n)

	flowPoint := func(layer, dir string) func(pmetric.NumberDataPoint) bool {
		return func(dp pmetric.NumberDataPoint) bool {
			a := dp.Attributes()
			return strAttr(a, "tcpack.footprint.flow") == "blocked" && strAttr(a, "tcpack.footprint.layer") == layer &&
				strAttr(a, "network.io.direction") == dir
		}
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.footprint.packets at netif_receive_skb", func() (bool, string) {
		v, ok := latestPoint(r, "tcpack.footprint.packets", flowPoint("netif_receive_skb", "receive"))
		return ok && v == n, fmt.Sprintf("%d (%v)", v, ok)
	})
	// Every attached layer is reported, 0 included: a missing point is a failure too.
	if v, ok := latestPoint(r, "tcpack.footprint.packets", flowPoint("sk_filter_trim_cap", "receive")); !ok || v != 0 {
		t.Errorf("sk_filter_trim_cap counted %d packets (reported: %v) of a flow dropped before it, want 0", v, ok)
	}
	netnstest.Eventually(t, 10*time.Second, "tcpack.footprint.drops NETFILTER_DROP", func() (bool, string) {
		v, ok := latestPoint(r, "tcpack.footprint.drops", func(dp pmetric.NumberDataPoint) bool {
			return strAttr(dp.Attributes(), "tcpack.drop.reason") == "NETFILTER_DROP"
		})
		return ok && v == n, fmt.Sprintf("%d (%v)", v, ok)
	})
	netnstest.Eventually(t, 10*time.Second, "tcpack.footprint.lost after netif_receive_skb", func() (bool, string) {
		v, ok := latestPoint(r, "tcpack.footprint.lost", func(dp pmetric.NumberDataPoint) bool {
			return strAttr(dp.Attributes(), "tcpack.footprint.layer") == "netif_receive_skb"
		})
		return ok && v == n, fmt.Sprintf("%d (%v)", v, ok)
	})
	var events []plog.LogRecord
	netnstest.Eventually(t, 10*time.Second, "tcpack.footprint.loss event", func() (bool, string) {
		events = nil
		forEachRecord(r.logs, func(rec plog.LogRecord) {
			if rec.EventName() == "tcpack.footprint.loss" {
				events = append(events, rec)
			}
		})
		return len(events) == 1, fmt.Sprintf("%d events", len(events))
	})
	a := events[0].Attributes()
	if strAttr(a, "tcpack.footprint.flow") != "blocked" || strAttr(a, "network.io.direction") != "receive" ||
		strAttr(a, "tcpack.footprint.layer") != "netif_receive_skb" || intAttr(a, "tcpack.footprint.lost") != n ||
		strAttr(a, "tcpack.drop.reason") != "NETFILTER_DROP" || strAttr(a, "tcpack.footprint.next_layer") == "" {
		t.Errorf("loss event %v", a.AsRaw())
	}
	r.stop()
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("links after shutdown: %d, before start: %d", got, linksBefore)
	}
}
