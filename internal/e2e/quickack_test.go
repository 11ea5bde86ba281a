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

// quickackSettings: forcing on port 6020 of the namespace named %s, the ACK family judging
// it and a control port, attached always: the test counts every ACK from the first segment.
const quickackSettings = `    collection_interval: 300ms
    drops: {enabled: false}
    acks: {enabled: true, local_ports: [6020, 6021], per_segment: {enabled: true, attach: always}}
    quickack:
      enabled: true
      netns: [/run/netns/%s]
      local_ports: [6020]
    ring_buffer: {flush_interval: 50ms}`

// policyRouting is every rule and route of the namespace, both families, apart from the
// kernel's own local table (IPv6 link-local addresses appear in it whenever DAD finishes).
func policyRouting(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	return netnstest.PolicyRouting(t, ns)
}

// ackMean is the newest ACK count and mean ACK delay (seconds) of a port.
func ackMean(c *collector, t *testing.T, port int64, netns uint32) (uint64, float64) {
	metrics, _ := c.read(t)
	n, sum := ackDelay(metrics, port, netns)
	if n == 0 {
		return 0, 0
	}
	return n, sum / float64(n)
}

// TestCollectorForcesQuickACKsAndCleansUp is the "done means": a port named in the
// config stops waiting for ACKs, a crash and restart leave no duplicate or stale rules, and a
// clean shutdown leaves the namespace as it was.
func TestCollectorForcesQuickACKsAndCleansUp(t *testing.T) {
	netnstest.RequireRoot(t)
	links := netnstest.CountLinks(t)
	pair := netnstest.NewPair(t)
	before := policyRouting(t, pair.B)
	dir := t.TempDir()
	config := fileConfig(dir, fmt.Sprintf(quickackSettings, pair.B.Name))
	bin := collectortest.Binary(t)
	c := &collector{collectortest.Start(t, bin, config), dir}

	target := pair.Connect(t, 6020)
	control := pair.Connect(t, 6021)
	target.Exchange(t, 300, 2*time.Millisecond, 50*time.Millisecond)
	control.Exchange(t, 300, 2*time.Millisecond, 50*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, mean := ackMean(c, t, 6020, pair.B.Inode)
		cn, cmean := ackMean(c, t, 6021, pair.B.Inode)
		if ok, _ := acksCoverSent(t, target, n); ok && cn > 0 {
			t.Logf("forced port: %d ACKs, mean delay %.3f ms; control: %d ACKs, mean %.1f ms", n, mean*1000, cn, cmean*1000)
			if mean >= 0.001 || cmean < 0.004 {
				t.Errorf("forced mean %.3f ms (want < 1 ms), control mean %.1f ms (want delayed)", mean*1000, cmean*1000)
			}
			break
		}
		if time.Now().After(deadline) {
			_, sent := acksCoverSent(t, target, n)
			t.Fatalf("ACK histograms: forced port %d ACKs (%s), control %d ACKs", n, sent, cn)
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, logs := c.read(t)
	applied := records(logs, "tcpack.quickack.socket", func(a pcommon.Map) bool {
		return str(a, "tcpack.quickack.action") == "applied" && num(a, "network.local.port") == 6020
	})
	if len(applied) != 1 {
		t.Errorf("%d applied records for port 6020, want 1", len(applied))
	}

	// A crash leaves the rules behind (nothing removes them) but not the BPF links.
	c.Kill(t)
	if left := policyRouting(t, pair.B); !strings.Contains(left, "proto 172") {
		t.Fatalf("after SIGKILL the rules are gone already; the restart test proves nothing:\n%s", left)
	}
	if got := netnstest.CountLinks(t); got != links {
		t.Errorf("BPF links after SIGKILL: %d, before: %d", got, links)
	}

	c = &collector{collectortest.Start(t, bin, config), dir}
	during := policyRouting(t, pair.B)
	if n := strings.Count(during, "fwmark"); n != 2 {
		t.Errorf("%d fwmark rules after restart, want one per family:\n%s", n, during)
	}
	// The connection open across the restart is taken up again by the walk of existing
	// sockets (it still carries the mark, which is ours).
	netnstest.Eventually(t, 10*time.Second, "an existing-origin applied record for port 6020 after the restart", func() (bool, string) {
		_, logs := c.read(t)
		again := records(logs, "tcpack.quickack.socket", func(a pcommon.Map) bool {
			return str(a, "tcpack.quickack.action") == "applied" && num(a, "network.local.port") == 6020 &&
				str(a, "tcpack.quickack.origin") == "existing"
		})
		return len(again) == 1, fmt.Sprintf("%d records", len(again))
	})
	target.Exchange(t, 100, 2*time.Millisecond, 50*time.Millisecond)

	c.Stop(t)
	if after := policyRouting(t, pair.B); after != before {
		t.Errorf("policy routing after shutdown:\n%s\nbefore:\n%s", after, before)
	}
	if got := netnstest.CountLinks(t); got != links {
		t.Errorf("BPF links after shutdown: %d, before: %d", got, links)
	}
	if !strings.Contains(c.Log(), "quickack: sock_ops attached") {
		t.Errorf("collector log lacks the quickack attach report:\n%s", c.Log())
	}
}
