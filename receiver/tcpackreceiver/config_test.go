package tcpackreceiver

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"

	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

func loadConfig(t *testing.T, id component.ID) (*Config, error) {
	t.Helper()
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := cm.Sub(id.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg := NewFactory().CreateDefaultConfig().(*Config)
	if err := sub.Unmarshal(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func TestLoadConfig(t *testing.T) {
	def, err := loadConfig(t, component.NewID(metadata.Type))
	if err != nil {
		t.Fatal(err)
	}
	if err := def.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	if def.CollectionInterval != 10*time.Second || !def.Drops.Enabled || def.Drops.Sampling.RatePerCPU != 100 {
		t.Errorf("defaults: %+v", def)
	}

	custom, err := loadConfig(t, component.NewIDWithName(metadata.Type, "custom"))
	if err != nil {
		t.Fatal(err)
	}
	if err := custom.Validate(); err != nil {
		t.Fatal(err)
	}
	want := DropsConfig{Enabled: true, Strategies: []string{"raw_tp"}, MaxKeys: 1024, MaxTCPKeys: 256,
		Sampling: SamplingConfig{RatePerCPU: 10, Burst: 20}}
	got := custom.Drops
	if got.Enabled != want.Enabled || strings.Join(got.Strategies, ",") != "raw_tp" || got.MaxKeys != want.MaxKeys ||
		got.MaxTCPKeys != want.MaxTCPKeys || got.Sampling != want.Sampling {
		t.Errorf("drops: got %+v, want %+v", got, want)
	}
	if custom.RingBuffer != (RingBufferConfig{SizeBytes: 262144, WakeupBytes: 16384, FlushInterval: 500 * time.Millisecond}) {
		t.Errorf("ring_buffer: %+v", custom.RingBuffer)
	}
	if !custom.Metrics.TcpackDropBytes.Enabled || custom.Events.TcpackTCPRetransmit.Enabled {
		t.Errorf("metrics/events toggles not applied: %+v %+v", custom.Metrics.TcpackDropBytes, custom.Events.TcpackTCPRetransmit)
	}
	dc, errs := custom.Drops.convert(custom.familyCommon(), true)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if dc.EventsPerSecond != 10 || dc.EventBurst != 20 || dc.RingBufferBytes != 262144 || len(dc.Strategies) != 1 {
		t.Errorf("drops.Config: %+v", dc)
	}
	if len(dc.DisabledEvents) != 1 || dc.DisabledEvents[0] != drops.KindRetransmit {
		t.Errorf("events.tcpack.tcp.retransmit.enabled: false must disable retransmit events only, got %v", dc.DisabledEvents)
	}
	if got, _ := custom.Drops.convert(custom.familyCommon(), false); len(got.DisabledEvents) != 4 {
		t.Errorf("without a logs pipeline every event kind must be off, got %v", got.DisabledEvents)
	}
}

func TestLoadQuickackConfig(t *testing.T) {
	cfg, err := loadConfig(t, component.NewIDWithName(metadata.Type, "quickack"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	q, errs := cfg.Quickack.convert(cfg.familyCommon(), 250)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := fmt.Sprintf("%s %#x %d %d %v %v %v %v %v %v %v", q.Mode, q.Mark, q.Table, q.RulePriority, q.Netns, q.LocalPorts, q.PeerPorts, q.Peers, q.Routes, q.Sockets, q.OptIn)
	want := "route 0x5a5a0000 5000 5000 [/run/netns/app] [8080] [6379] [10.0.0.0/8 2001:db8::/32 192.0.2.7/32] [198.51.100.0/24] [pid:1234/fd:7 local:10.0.0.1:8080,peer:10.0.0.2:5555] true"
	if got != want {
		t.Errorf("quickack config:\n got %s\nwant %s", got, want)
	}
	if ac, _ := cfg.Acks.convert(cfg.familyCommon(), true, 250); ac.ForceMark != 0x5a5a0000 || ac.HZ != 250 {
		t.Errorf("the ACK family must know the forcing mark: %+v", ac)
	}
	def := createDefaultConfig()
	if def.Quickack.Enabled || def.Validate() != nil {
		t.Errorf("quickack must be off and valid by default: %+v", def.Quickack)
	}
}

func TestLoadFootprintConfig(t *testing.T) {
	cfg, err := loadConfig(t, component.NewIDWithName(metadata.Type, "footprint"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	fc, errs := cfg.Footprint.convert()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := fmt.Sprintf("%s %s %s/%s %v %+v", fc.Attach, fc.IdleDetach, fc.SentinelWindow, fc.SentinelPeriod, fc.Strategies, fc.Flows)
	want := "on_traffic 2m0s 200ms/5s [tp_btf cgroup_skb] [{Name:web Protocol:tcp Local:10.0.0.1/32 Peer:invalid Prefix LocalPort:8080 PeerPort:0} " +
		"{Name:dns Protocol:udp Local:invalid Prefix Peer:2001:db8::/32 LocalPort:0 PeerPort:53} " +
		"{Name:any Protocol: Local:invalid Prefix Peer:192.0.2.0/24 LocalPort:0 PeerPort:0}]"
	if got != want {
		t.Errorf("footprint config:\n got %s\nwant %s", got, want)
	}
	if def := createDefaultConfig(); len(def.Footprint.Flows) != 0 || def.Validate() != nil {
		t.Errorf("footprint must name no flow and be valid by default: %+v", def.Footprint)
	}
}

func TestValidateNamesFieldAndFix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   []string
	}{
		{"interval", func(c *Config) { c.CollectionInterval = 0 }, []string{"collection_interval", "at least 100ms"}},
		{"strategy", func(c *Config) { c.Drops.Strategies = []string{"kprobe"} }, []string{"drops.strategies[0]", `"kprobe"`, "tp_btf or raw_tp"}},
		{"max keys", func(c *Config) { c.Drops.MaxKeys = 0 }, []string{"drops.max_keys", "1..1048576"}},
		{"max tcp keys", func(c *Config) { c.Drops.MaxTCPKeys = 1 << 21 }, []string{"drops.max_tcp_keys"}},
		{"rate", func(c *Config) { c.Drops.Sampling.RatePerCPU = 1e6 }, []string{"drops.sampling.rate_per_cpu", "0..100000"}},
		{"burst", func(c *Config) { c.Drops.Sampling.Burst = 0 }, []string{"drops.sampling.burst", "at least 1"}},
		{"ring size", func(c *Config) { c.RingBuffer.SizeBytes = 3000 }, []string{"ring_buffer.size_bytes", "power of two"}},
		{"wakeup", func(c *Config) { c.RingBuffer.WakeupBytes = c.RingBuffer.SizeBytes }, []string{"ring_buffer.wakeup_bytes", "below size_bytes"}},
		{"flush", func(c *Config) { c.RingBuffer.FlushInterval = time.Minute }, []string{"ring_buffer.flush_interval", "between 1ms and 10s"}},
		{"ack port", func(c *Config) { c.Acks.LocalPorts = []int{80, 70000} }, []string{"acks.local_ports[1]", "1..65535"}},
		{"ack peer port", func(c *Config) { c.Acks.PeerPorts = []int{0} }, []string{"acks.peer_ports[0]"}},
		{"ack peers", func(c *Config) { c.Acks.Peers = []string{"10.0.0.0/99"} }, []string{"acks.peers[0]", "CIDR"}},
		{"ack netns", func(c *Config) { c.Acks.Netns = []string{"run/netns/x"} }, []string{"acks.netns[0]", "absolute path"}},
		{"ack delay", func(c *Config) { c.Acks.PerSegment.EventMinDelay = -time.Second }, []string{"acks.per_segment.event_min_delay"}},
		{"ack sockets", func(c *Config) { c.Acks.MaxSockets = 0 }, []string{"acks.max_sockets"}},
		{"ack series", func(c *Config) { c.Acks.MaxSeries = 0 }, []string{"acks.max_series", "at least 1"}},
		{"ack attach", func(c *Config) { c.Acks.PerSegment.Attach = "lazy" }, []string{"acks.per_segment.attach", "use windows", "on_traffic", "or always"}},
		{"ack idle detach", func(c *Config) {
			c.Acks.PerSegment.Attach, c.Acks.PerSegment.IdleDetach = "on_traffic", 100*time.Millisecond
		}, []string{"acks.per_segment.idle_detach", "at least 1s"}},
		{"ack window", func(c *Config) { c.Acks.PerSegment.Window = 10 * time.Millisecond }, []string{"acks.per_segment.window", "at least 100ms", "default 100ms"}},
		{"ack period", func(c *Config) { c.Acks.PerSegment.Period = 100 * time.Millisecond }, []string{"acks.per_segment.period", "longer than window 100ms", "default 5s"}},
		{"txqueue window", func(c *Config) { c.Txqueue.Windows.Window = 10 * time.Millisecond }, []string{"txqueue.windows.window", "at least 100ms", "default 100ms", "enabled: false"}},
		{"txqueue period", func(c *Config) { c.Txqueue.Windows.Period = 100 * time.Millisecond }, []string{"txqueue.windows.period", "longer than window 100ms", "default 5s"}},
		{"ack attributes", func(c *Config) { c.Acks.PerSegment.DelayAttributes = []string{"network.peer.port"} }, []string{"acks.per_segment.delay_attributes[0]", "server.port, tcpack.socket.role, tcpack.netns.inode"}},
		{"quickack no target", func(c *Config) { c.Quickack.Enabled = true }, []string{"quickack: no target", "local_ports"}},
		{"quickack port", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.LocalPorts = []int{0} }, []string{"quickack.local_ports[0]", "1..65535"}},
		{"quickack peer port", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.PeerPorts = []int{65536} }, []string{"quickack.peer_ports[0]"}},
		{"quickack peer", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.Peers = []string{"10.0.0.0/33"} }, []string{"quickack.peers[0]", "CIDR"}},
		{"quickack loopback", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.Peers = []string{"127.0.0.0/8"} }, []string{"quickack.peers[0]", "local table", "bounded"}},
		{"quickack mode", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.OptIn = true; c.Quickack.Mode = "fast" }, []string{"quickack.mode", `"route" or "bounded"`}},
		{"quickack mark", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.OptIn = true; c.Quickack.Mark = 0 }, []string{"quickack.mark"}},
		{"quickack table", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.OptIn = true; c.Quickack.Table = 255 }, []string{"quickack.table"}},
		{"quickack priority", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.OptIn = true; c.Quickack.RulePriority = 40000 }, []string{"quickack.rule_priority"}},
		{"quickack route", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.Routes = []string{"nope"} }, []string{"quickack.routes[0]", "CIDR"}},
		{"quickack socket addr", func(c *Config) {
			c.Quickack.Enabled = true
			c.Quickack.Sockets = []SocketConfig{{Local: "10.0.0.1"}}
		}, []string{"quickack.sockets[0].local", "ADDRESS:PORT"}},
		{"quickack socket fd", func(c *Config) { c.Quickack.Enabled = true; c.Quickack.Sockets = []SocketConfig{{PID: 5}} }, []string{"quickack.sockets[0].fd"}},
		{"quickack netns", func(c *Config) {
			c.Quickack.Enabled = true
			c.Quickack.OptIn = true
			c.Quickack.Netns = []string{"app"}
		}, []string{"quickack.netns[0]", "/run/netns/NAME"}},
		{"flow name", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a b"}} }, []string{"footprint.flows[0].name", "letters"}},
		{"flow name twice", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a"}, {Name: "a"}} }, []string{"footprint.flows[1].name", "footprint.flows[0]"}},
		{"flow protocol", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a", Protocol: "sctp"}} }, []string{"footprint.flows[0].protocol", "tcp, udp"}},
		{"flow peer", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a"}, {Name: "b", Peer: "10.0.0.0/40"}} }, []string{"footprint.flows[1].peer", "CIDR"}},
		{"flow versions", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a", Local: "10.0.0.1", Peer: "fd00::1"}} }, []string{"footprint.flows[0].peer", "IP version"}},
		{"flow port", func(c *Config) { c.Footprint.Flows = []FlowConfig{{Name: "a", LocalPort: 70000}} }, []string{"footprint.flows[0].local_port", "1..65535"}},
		{"too many flows", func(c *Config) {
			c.Footprint.MaxFlows = 1
			c.Footprint.Flows = []FlowConfig{{Name: "a"}, {Name: "b"}}
		}, []string{"footprint.flows", "footprint.max_flows (1)"}},
		{"max flows", func(c *Config) { c.Footprint.MaxFlows = 65 }, []string{"footprint.max_flows", "1..64"}},
		{"footprint strategy", func(c *Config) { c.Footprint.Strategies = []string{"xdp"} }, []string{"footprint.strategies[0]", "cgroup_skb"}},
		{"footprint attach", func(c *Config) { c.Footprint.Attach = "lazy" }, []string{"footprint.attach", "on_traffic", "always"}},
		{"footprint idle", func(c *Config) { c.Footprint.IdleDetach = 100 * time.Millisecond }, []string{"footprint.idle_detach", "at least 1s"}},
		{"sentinel window", func(c *Config) { c.Footprint.SentinelWindow = 10 * time.Millisecond }, []string{"footprint.sentinel_window", "at least 100ms", "sentinel_period: 0"}},
		{"sentinel window over period", func(c *Config) {
			c.Footprint.SentinelWindow, c.Footprint.SentinelPeriod = 2*time.Second, time.Second
		}, []string{"footprint.sentinel_window", "longer than footprint.sentinel_period (1s)"}},
		{"sentinel period", func(c *Config) { c.Footprint.SentinelPeriod = -time.Second }, []string{"footprint.sentinel_period", "negative", "0 to keep"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := createDefaultConfig()
			tc.mutate(cfg)
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

// The loopback error points at bounded mode, so bounded mode must take a loopback peer.
func TestLoopbackPeerAcceptedInBoundedMode(t *testing.T) {
	cfg := createDefaultConfig()
	cfg.Quickack.Enabled = true
	cfg.Quickack.Peers = []string{"127.0.0.0/8"}
	cfg.Quickack.Mode = "bounded"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("bounded mode with a loopback peer: %v", err)
	}
}

func TestUnknownKeysRejected(t *testing.T) {
	cfg := createDefaultConfig()
	err := confmap.NewFromStringMap(map[string]any{
		"drops": map[string]any{"sampling": map[string]any{"rate": 5}},
	}).Unmarshal(cfg)
	if err == nil || !strings.Contains(err.Error(), "rate") {
		t.Fatalf("unknown key drops.sampling.rate: got %v, want an error naming it", err)
	}
}

func TestBadDurationRejected(t *testing.T) {
	cfg := createDefaultConfig()
	err := confmap.NewFromStringMap(map[string]any{"collection_interval": "ten seconds"}).Unmarshal(cfg)
	if err == nil || !strings.Contains(err.Error(), "collection_interval") {
		t.Fatalf("bad duration: got %v, want an error naming collection_interval", err)
	}
}
