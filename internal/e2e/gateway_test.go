package e2e

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// The agent: tcpack on the node, exporting over OTLP/gRPC, as deploy/kubernetes runs it.
const agentConfig = `
receivers:
  tcpack:
    collection_interval: 500ms
    drops:
      sampling: {rate_per_cpu: 1000, burst: 1000}
    ring_buffer: {flush_interval: 50ms}
processors:
  batch: {timeout: 100ms}
exporters:
  otlp_grpc:
    endpoint: %[1]s
    tls: {insecure: true}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    metrics: {receivers: [tcpack], processors: [batch], exporters: [otlp_grpc]}
    logs: {receivers: [tcpack], processors: [batch], exporters: [otlp_grpc]}
`

// The gateway: the same binary with only the OTLP receiver, writing what arrives to files.
const gatewayConfig = `
receivers:
  otlp:
    protocols:
      grpc: {endpoint: %[1]s}
exporters:
  file/metrics: {path: %[2]s/metrics.json, format: json, flush_interval: 100ms}
  file/logs: {path: %[2]s/logs.json, format: json, flush_interval: 100ms}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    metrics: {receivers: [otlp], exporters: [file/metrics]}
    logs: {receivers: [otlp], exporters: [file/logs]}
`

// TestAgentExportsToGatewayOverOTLP runs an agent and a gateway on loopback and checks that
// drops caused in a netns arrive at the gateway, named by the node they happened on.
func TestAgentExportsToGatewayOverOTLP(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := collectortest.Binary(t)
	endpoint := freeLoopbackPort(t)
	dir := t.TempDir()
	gateway := &collector{collectortest.Start(t, bin, fmt.Sprintf(gatewayConfig, endpoint, dir)), dir}
	const node = "e2e-node-1"
	agent := collectortest.StartEnv(t, bin, fmt.Sprintf(agentConfig, endpoint), "K8S_NODE_NAME="+node)

	pair := netnstest.NewPair(t)
	const synN = 4
	pair.A.SendSYNs(t, fmt.Sprintf("%s:6101", pair.B.Addr), synN, 44000)
	// Ports are on the events only; the metric's attributes are the low-cardinality ones.
	inB := func(a pcommon.Map) bool {
		return num(a, "tcpack.netns.inode") == int64(pair.B.Inode) && str(a, "tcpack.drop.reason") == "NO_SOCKET" &&
			str(a, "network.transport") == "tcp"
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	wantResource := func(what string, res pcommon.Map) {
		if got := str(res, "host.name"); got != host {
			t.Errorf("%s at the gateway: host.name %q, want %q", what, got, host)
		}
		if got := str(res, "k8s.node.name"); got != node {
			t.Errorf("%s at the gateway: k8s.node.name %q, want %q (from K8S_NODE_NAME)", what, got, node)
		}
	}

	deadline := time.Now().Add(20 * time.Second)
	for {
		metrics, logs := gateway.read(t)
		count, countRes := dropCountWithResource(metrics, inB)
		events := eventsWithResource(logs, "tcpack.drop", inB)
		if count == synN && len(events) == synN {
			wantResource("tcpack.drop.count", countRes)
			for _, res := range events {
				wantResource("tcpack.drop event", res)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("at the gateway: tcpack.drop.count %d and %d tcpack.drop events for the SYNs, want %d of each\nagent log:\n%s",
				count, len(events), synN, agent.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	agent.Stop(t)
	gateway.Stop(t)
}

// freeLoopbackPort returns a loopback host:port nothing listens on now.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// dropCountWithResource is the newest tcpack.drop.count summed over matching points, with the
// resource attributes of the last point counted.
func dropCountWithResource(metrics []pmetric.Metrics, match func(pcommon.Map) bool) (int64, pcommon.Map) {
	for i := len(metrics) - 1; i >= 0; i-- {
		var total int64
		var res pcommon.Map
		found := false
		rms := metrics[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					if ms.At(m).Name() != "tcpack.drop.count" {
						continue
					}
					dps := ms.At(m).Sum().DataPoints()
					for d := 0; d < dps.Len(); d++ {
						if match(dps.At(d).Attributes()) {
							total += dps.At(d).IntValue()
							res, found = rms.At(r).Resource().Attributes(), true
						}
					}
				}
			}
		}
		if found {
			return total, res
		}
	}
	return 0, pcommon.NewMap()
}

// eventsWithResource returns the resource attributes of every matching event.
func eventsWithResource(logs []plog.Logs, eventName string, match func(pcommon.Map) bool) []pcommon.Map {
	var out []pcommon.Map
	eachEvent(logs, eventName, match, func(_, resource pcommon.Map) { out = append(out, resource) })
	return out
}
