package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// footprintPrograms counts the footprint family's programs loaded in the kernel, by name
// (they all start with fp_).
func footprintPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return n
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "fp_") {
			n++
		}
		p.Close()
	}
}

// latestSum is the newest value of a metric (a sum or a gauge), summed over the points
// matching, from the newest batch that has any.
func latestSum(metrics []pmetric.Metrics, name string, match func(pcommon.Map) bool) (int64, bool) {
	for i := len(metrics) - 1; i >= 0; i-- {
		var total int64
		found := false
		eachPoint(metrics[i], name, match, func(p pmetric.NumberDataPoint) {
			total += p.IntValue()
			found = true
		})
		if found {
			return total, true
		}
	}
	return 0, false
}

// TestFootprintSwitchedBySIGHUP switches counting on and off at run time, as a kernel module
// would with a /proc switch: a flow named in the config is counted and exported; a reload (SIGHUP) with no
// flow leaves no footprint program in the kernel while the collector keeps running; naming it
// again brings the counting back.
func TestFootprintSwitchedBySIGHUP(t *testing.T) {
	netnstest.RequireRoot(t)
	if n := footprintPrograms(t); n != 0 {
		t.Fatalf("%d fp_ programs loaded before the test: another collector is running", n)
	}
	linksBefore := netnstest.CountLinks(t)
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	dir := t.TempDir()
	flows := fmt.Sprintf("\n    footprint:\n      flows: [{name: e2e, protocol: udp, local: %s, local_port: 6020}]", pair.B.Addr)
	withFlow, without := fileConfig(dir, "    collection_interval: 300ms"+flows), fileConfig(dir, "    collection_interval: 300ms")
	c := &collector{collectortest.Start(t, collectortest.Binary(t), withFlow), dir}

	if !strings.Contains(c.Log(), "footprint: netif_receive_skb attached") {
		t.Fatalf("collector log lacks the footprint attach report:\n%s", c.Log())
	}
	if n := footprintPrograms(t); n == 0 {
		t.Fatal("flow named, yet no fp_ program loaded")
	}
	atCore := func(a pcommon.Map) bool {
		return str(a, "tcpack.footprint.flow") == "e2e" && str(a, "tcpack.footprint.layer") == "netif_receive_skb" &&
			str(a, "network.io.direction") == "receive"
	}
	if !strings.Contains(c.Log(), "attach on_traffic: only kfree_skb, netif_receive_skb, net_dev_queue run: netif_receive_skb and net_dev_queue for 100ms of every 1s") {
		t.Fatalf("collector log does not say which hooks stay attached while the flow is idle:\n%s", c.Log())
	}
	// The default attach mode: the flow's first packet attaches the other layers.
	// The export file keeps every batch across reloads: only batches written after the packet
	// was sent can say the current service armed.
	armed := func() {
		t.Helper()
		before, _ := c.read(t)
		pair.A.SendUDP(t, fmt.Sprintf("%s:6020", pair.B.Addr), 1)
		netnstest.Eventually(t, 20*time.Second, "tcpack.footprint.armed after the flow's first packet", func() (bool, string) {
			metrics, _ := c.read(t)
			v, ok := latestSum(metrics[len(before):], "tcpack.footprint.armed", func(pcommon.Map) bool { return true })
			return v == 1, fmt.Sprintf("%d (found %v)", v, ok)
		})
	}
	armed()
	// B has no socket on the port: the packets reach the core and die at L4 (NO_SOCKET).
	const n = 5
	pair.A.SendUDP(t, fmt.Sprintf("%s:6020", pair.B.Addr), n)
	netnstest.Eventually(t, 20*time.Second, "tcpack.footprint.packets at netif_receive_skb", func() (bool, string) {
		metrics, _ := c.read(t)
		v, ok := latestSum(metrics, "tcpack.footprint.packets", atCore)
		return v == n, fmt.Sprintf("%d (found %v)", v, ok)
	})
	netnstest.Eventually(t, 20*time.Second, "tcpack.footprint.drops NO_SOCKET", func() (bool, string) {
		metrics, _ := c.read(t)
		v, ok := latestSum(metrics, "tcpack.footprint.drops", func(a pcommon.Map) bool {
			return str(a, "tcpack.footprint.flow") == "e2e" && str(a, "tcpack.drop.reason") == "NO_SOCKET"
		})
		return v == n, fmt.Sprintf("%d (found %v)", v, ok)
	})

	c.Reload(t, without)
	netnstest.Eventually(t, 20*time.Second, "no fp_ program after a reload without flows", func() (bool, string) {
		k := footprintPrograms(t)
		return k == 0, fmt.Sprintf("%d still loaded", k)
	})
	// Still running, with the drops family attached again by the new service.
	netnstest.Eventually(t, 20*time.Second, "the collector running after the reload", func() (bool, string) {
		return !c.Exited() && strings.Count(c.Log(), "drops: kfree_skb attached") == 2, c.Log()
	})
	time.Sleep(time.Second)
	if c.Exited() || footprintPrograms(t) != 0 {
		t.Fatalf("after the reload: exited %v, fp_ programs %d", c.Exited(), footprintPrograms(t))
	}

	c.Reload(t, withFlow)
	netnstest.Eventually(t, 20*time.Second, "fp_ programs back after naming the flow again", func() (bool, string) {
		k := footprintPrograms(t)
		return k > 0, fmt.Sprintf("%d loaded", k)
	})
	// A new service starts its counters from zero: the new packets alone.
	armed()
	pair.A.SendUDP(t, fmt.Sprintf("%s:6020", pair.B.Addr), 3)
	netnstest.Eventually(t, 20*time.Second, "counting again after the second reload", func() (bool, string) {
		metrics, _ := c.read(t)
		v, ok := latestSum(metrics, "tcpack.footprint.packets", atCore)
		return v == 3, fmt.Sprintf("%d (found %v)", v, ok)
	})

	c.Stop(t)
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("BPF links after the collector exited: %d, before it started: %d", got, linksBefore)
	}
	// The kernel frees a dead process's programs after an RCU grace period, not at exit.
	netnstest.Eventually(t, 10*time.Second, "no fp_ program after the collector exited", func() (bool, string) {
		k := footprintPrograms(t)
		return k == 0, fmt.Sprintf("%d still loaded", k)
	})
}
