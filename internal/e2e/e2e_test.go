// Package e2e runs the otelcol-tcpack distribution built by `make build` with a real config,
// drives drops through network namespaces, and checks the JSON its file exporter wrote.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// fileConfig is a collector config: the tcpack receiver with the given settings (YAML lines
// already indented under `tcpack:`), a batch processor, and metrics and logs written as JSON
// lines to dir, where collector.read finds them.
func fileConfig(dir, tcpack string) string {
	return fmt.Sprintf(`
receivers:
  tcpack:
%[2]s
processors:
  batch: {timeout: 100ms}
exporters:
  file/metrics: {path: %[1]s/metrics.json, format: json, flush_interval: 100ms}
  file/logs: {path: %[1]s/logs.json, format: json, flush_interval: 100ms}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    metrics: {receivers: [tcpack], processors: [batch], exporters: [file/metrics]}
    logs: {receivers: [tcpack], processors: [batch], exporters: [file/logs]}
`, dir, tcpack)
}

// dropsAndAcks: the drops family with generous sampling and the ACK family on port 6010,
// with its per-segment tier.
const dropsAndAcks = `    collection_interval: 500ms
    drops:
      sampling: {rate_per_cpu: 1000, burst: 1000}
    acks:
      enabled: true
      local_ports: [6010]
      per_segment: {enabled: true, attach: on_traffic}
    ring_buffer: {flush_interval: 50ms}`

// collector is a running otelcol-tcpack writing metrics and logs to JSON files in outDir.
type collector struct {
	*collectortest.Process
	outDir string
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	dir := t.TempDir()
	return &collector{collectortest.Start(t, collectortest.Binary(t), fileConfig(dir, dropsAndAcks)), dir}
}

// output is everything both file exporters wrote so far.
func (c *collector) output(t *testing.T) []byte {
	t.Helper()
	var all []byte
	for _, name := range []string{"metrics.json", "logs.json"} {
		data, err := os.ReadFile(filepath.Join(c.outDir, name))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		all = append(append(all, data...), '\n')
	}
	return all
}

// read parses every line the file exporters wrote: one JSON batch of metrics or logs per line.
func (c *collector) read(t *testing.T) ([]pmetric.Metrics, []plog.Logs) {
	t.Helper()
	var metrics []pmetric.Metrics
	var logs []plog.Logs
	for _, name := range []string{"metrics.json", "logs.json"} {
		data, err := os.ReadFile(filepath.Join(c.outDir, name))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		// The exporter may be caught mid-write: only newline-terminated lines are complete.
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			data = data[:i]
		} else {
			data = nil
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			switch {
			case bytes.HasPrefix(line, []byte(`{"resourceMetrics"`)):
				m, err := (&pmetric.JSONUnmarshaler{}).UnmarshalMetrics(line)
				if err != nil {
					t.Fatalf("metrics line: %v", err)
				}
				metrics = append(metrics, m)
			case bytes.HasPrefix(line, []byte(`{"resourceLogs"`)):
				l, err := (&plog.JSONUnmarshaler{}).UnmarshalLogs(line)
				if err != nil {
					t.Fatalf("logs line: %v", err)
				}
				logs = append(logs, l)
			}
		}
	}
	return metrics, logs
}

// latestDropCount is the newest cumulative tcpack.drop.count summed over points matching.
func latestDropCount(metrics []pmetric.Metrics, match func(pcommon.Map) bool) int64 {
	n, _ := dropCountWithResource(metrics, match)
	return n
}

// ackDelay is the newest tcpack.ack.delay point for a port and netns: its count and sum.
func ackDelay(metrics []pmetric.Metrics, port int64, netns uint32) (uint64, float64) {
	for i := len(metrics) - 1; i >= 0; i-- {
		rms := metrics[i].ResourceMetrics()
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
						if num(a, "server.port") == port && num(a, "tcpack.netns.inode") == int64(netns) && str(a, "tcpack.socket.role") == "server" {
							return dps.At(d).Count(), dps.At(d).Sum()
						}
					}
				}
			}
		}
	}
	return 0, 0
}

// records returns the attributes of every matching event.
func records(logs []plog.Logs, eventName string, match func(pcommon.Map) bool) []pcommon.Map {
	var out []pcommon.Map
	eachEvent(logs, eventName, match, func(attrs, _ pcommon.Map) { out = append(out, attrs) })
	return out
}

// eachEvent calls fn with the attributes and resource attributes of every matching event.
func eachEvent(logs []plog.Logs, eventName string, match func(pcommon.Map) bool, fn func(attrs, resource pcommon.Map)) {
	for _, l := range logs {
		rls := l.ResourceLogs()
		for r := 0; r < rls.Len(); r++ {
			sls := rls.At(r).ScopeLogs()
			for s := 0; s < sls.Len(); s++ {
				recs := sls.At(s).LogRecords()
				for i := 0; i < recs.Len(); i++ {
					if recs.At(i).EventName() == eventName && match(recs.At(i).Attributes()) {
						fn(recs.At(i).Attributes(), rls.At(r).Resource().Attributes())
					}
				}
			}
		}
	}
}

func str(m pcommon.Map, k string) string {
	if v, ok := m.Get(k); ok {
		return v.AsString()
	}
	return ""
}

func num(m pcommon.Map, k string) int64 {
	if v, ok := m.Get(k); ok && v.Type() == pcommon.ValueTypeInt {
		return v.Int()
	}
	return -1
}

func TestCollectorExportsDrops(t *testing.T) {
	netnstest.RequireRoot(t)
	linksBefore := netnstest.CountLinks(t)
	c := startCollector(t)
	for _, line := range []string{"drops: kfree_skb attached", "drops: tcp_send_reset attached"} {
		if !strings.Contains(c.Log(), line) {
			t.Errorf("collector log lacks %q:\n%s", line, c.Log())
		}
	}

	pair := netnstest.NewPair(t)
	const synN, udpN, nftN = 5, 7, 3
	pair.A.SendSYNs(t, fmt.Sprintf("%s:6001", pair.B.Addr), synN, 43000)
	udpPort := pair.A.SendUDP(t, fmt.Sprintf("%s:6002", pair.B.Addr), udpN)
	pair.B.Exec(t, "nft", "add table inet tcpack_e2e; "+
		"add chain inet tcpack_e2e input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet tcpack_e2e input udp dport 6003 drop")
	pair.A.SendUDP(t, fmt.Sprintf("%s:6003", pair.B.Addr), nftN)

	inB := func(reason, symbol, transport string) func(pcommon.Map) bool {
		return func(a pcommon.Map) bool {
			return num(a, "tcpack.netns.inode") == int64(pair.B.Inode) && str(a, "tcpack.drop.reason") == reason &&
				(symbol == "" || str(a, "tcpack.drop.symbol") == symbol) && str(a, "network.transport") == transport &&
				str(a, "network.interface.name") == pair.B.Veth && str(a, "network.type") == "ipv4"
		}
	}
	want := []struct {
		what  string
		n     int64
		match func(pcommon.Map) bool
	}{
		{"TCP SYN to a closed port", synN, inB("NO_SOCKET", "tcp_v4_rcv", "tcp")},
		{"UDP to a closed port", udpN, inB("NO_SOCKET", "__udp4_lib_rcv", "udp")},
		{"nftables drop rule", nftN, inB("NETFILTER_DROP", "", "udp")},
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, w := range want {
		for {
			metrics, _ := c.read(t)
			got := latestDropCount(metrics, w.match)
			if got == w.n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: tcpack.drop.count %d in the exported JSON, want %d", w.what, got, w.n)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	_, logs := c.read(t)
	syn := records(logs, "tcpack.drop", inB("NO_SOCKET", "tcp_v4_rcv", "tcp"))
	if len(syn) != synN {
		t.Fatalf("tcpack.drop records for the SYNs: %d, want %d", len(syn), synN)
	}
	for _, a := range syn {
		if str(a, "network.local.address") != pair.B.Addr || num(a, "network.local.port") != 6001 ||
			str(a, "network.peer.address") != pair.A.Addr || num(a, "network.peer.port") < 43000 ||
			num(a, "network.peer.port") >= 43000+synN || str(a, "tcpack.netns.name") != pair.B.Name ||
			!strings.HasPrefix(str(a, "tcpack.drop.location"), "tcp_v4_rcv+0x") {
			t.Errorf("SYN drop record: %v", a.AsRaw())
		}
	}
	udp := records(logs, "tcpack.drop", inB("NO_SOCKET", "__udp4_lib_rcv", "udp"))
	if len(udp) != udpN {
		t.Fatalf("tcpack.drop records for UDP: %d, want %d", len(udp), udpN)
	}
	for _, a := range udp {
		if num(a, "network.local.port") != 6002 || num(a, "network.peer.port") != int64(udpPort) {
			t.Errorf("UDP drop record: %v", a.AsRaw())
		}
	}
	resets := records(logs, "tcpack.tcp.reset", func(a pcommon.Map) bool {
		return num(a, "tcpack.netns.inode") == int64(pair.B.Inode) && str(a, "network.io.direction") == "transmit"
	})
	// Before 6.10 (enum sk_rst_reason), tcp_send_reset does not fire for socketless resets.
	if _, err := kernel.EnumNames(kernelBTF(t), "sk_rst_reason", ""); err == nil && len(resets) != synN {
		t.Errorf("tcpack.tcp.reset records sent by B: %d, want %d", len(resets), synN)
	}
	// Never a raw kernel address anywhere in the output.
	data := c.output(t)
	if bytes.Contains(data, []byte("ffffffff")) {
		t.Errorf("output contains what looks like a kernel address")
	}

	// ACK telemetry: a slow reader on the port in scope.
	pair.PacedTraffic(t, 6010, 200, 2*time.Millisecond, 50*time.Millisecond)
	for {
		metrics, _ := c.read(t)
		count, sum := ackDelay(metrics, 6010, pair.B.Inode)
		if count > 0 && sum/float64(count) > 0.004 {
			t.Logf("tcpack.ack.delay for port 6010: %d ACKs, mean %.1f ms", count, 1000*sum/float64(count))
			break
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("tcpack.ack.delay for port 6010 in the exported JSON: %d ACKs, sum %.3f s; want a slow reader's delays", count, sum)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Shut down while events are still in flight: the exit must stay clean.
	pair.A.SendUDP(t, fmt.Sprintf("%s:6004", pair.B.Addr), 3000)
	c.Stop(t)
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("BPF links after the collector exited: %d, before it started: %d", got, linksBefore)
	}
}

func kernelBTF(t *testing.T) *btf.Spec {
	t.Helper()
	spec, err := kernel.LoadBTF()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestValidateRejectsBadConfig(t *testing.T) {
	bin := collectortest.Binary(t)
	for _, tc := range []struct {
		name, receiver string
		want           []string
	}{
		{"rate", "drops: {sampling: {rate_per_cpu: 5000000}}", []string{"drops.sampling.rate_per_cpu", "0..100000"}},
		{"duration", "collection_interval: soon", []string{"collection_interval"}},
		{"unknown key", "drops: {sampling_rate: 5}", []string{"sampling_rate"}},
		{"strategy", "drops: {strategies: [kprobe]}", []string{"drops.strategies[0]", "tp_btf or raw_tp"}},
		{"footprint flow", "footprint: {flows: [{name: a}, {name: b, peer: 10.0.0.0/40}]}", []string{"footprint.flows[1].peer", "CIDR"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "bad.yaml")
			body := fmt.Sprintf("receivers:\n  tcpack:\n    %s\nexporters:\n  debug: {}\nservice:\n  pipelines:\n    metrics: {receivers: [tcpack], exporters: [debug]}\n", tc.receiver)
			if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "validate", "--config", cfg).CombinedOutput()
			if err == nil {
				t.Fatalf("validate accepted %q:\n%s", tc.receiver, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("validate output does not mention %q:\n%s", w, out)
				}
			}
		})
	}
}

// acksCoverSent says whether n reported ACKs account for nearly all the segments the
// connection's server socket sent (TCP_INFO segs_out; its SYN-ACK left from the request socket
// before it existed): it only receives, so each is an ACK. How many that is depends on timing (a stalled reader's backlog coalesces
// segments, and one ACK covers them), so the test compares with the socket's own count. The
// few that acknowledge nothing new (window updates) are not in the statistics.
func acksCoverSent(t *testing.T, c *netnstest.Paced, n uint64) (bool, string) {
	t.Helper()
	sent := uint64(netnstest.TCPInfo(t, c.Server).Segs_out)
	return n <= sent && n*10 >= sent*9, fmt.Sprintf("the server sent %d ACKs; want at least 90%% of them reported, none more", sent)
}
