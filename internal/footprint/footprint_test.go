package footprint_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/footprint"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
)

func openEnv(t *testing.T) *kernel.Env { return netnstest.KernelEnv(t) }

// probe keeps every loss its snapshots reported: Snapshot reports each loss once.
type probe struct {
	*footprint.Probe
	losses []footprint.Loss
}

func start(t *testing.T, cfg footprint.Config) *probe {
	t.Helper()
	p, err := footprint.Start(openEnv(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, l := range p.Report().Lines() {
		t.Log(l)
	}
	return &probe{Probe: p}
}

// flowConfig counts at every layer from the start (loader.AttachAlways), so tests compare counts
// with packets sent from the first one; TestOnTraffic* cover the default, loader.AttachOnTraffic.
func flowConfig(flows ...footprint.Flow) footprint.Config {
	cfg := footprint.DefaultConfig()
	cfg.Flows = flows
	cfg.Attach = loader.AttachAlways
	return cfg
}

func host(addr string) netip.Prefix {
	a := netip.MustParseAddr(addr)
	return netip.PrefixFrom(a, a.BitLen())
}

func snapshot(t *testing.T, p *probe) footprint.Snapshot {
	t.Helper()
	s, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p.losses = append(p.losses, s.NewLosses...)
	return s
}

// layerCounts is one flow's packets per "layer/direction".
func layerCounts(s footprint.Snapshot, flow string) map[string]uint64 {
	out := map[string]uint64{}
	for _, c := range s.Counts {
		if c.Flow == flow {
			out[c.Layer.String()+"/"+c.Direction] = c.Packets
		}
	}
	return out
}

// wantCounts waits until the flow's counts at the given layers are exactly as wanted, and
// checks they stay so.
func wantCounts(t *testing.T, p *probe, flow string, want map[string]uint64) {
	t.Helper()
	diff := func() string {
		got := layerCounts(snapshot(t, p), flow)
		var bad []string
		for k, w := range want {
			if got[k] != w {
				bad = append(bad, fmt.Sprintf("%s=%d (want %d)", k, got[k], w))
			}
		}
		slices.Sort(bad)
		return strings.Join(bad, ", ")
	}
	netnstest.Eventually(t, 10*time.Second, "flow "+flow+" counts", func() (bool, string) {
		d := diff()
		return d == "", d
	})
	time.Sleep(100 * time.Millisecond)
	if d := diff(); d != "" {
		t.Fatalf("flow %s counts moved after settling: %s", flow, d)
	}
}

// path is the layers the kernel counts on this kernel, by path, minus tcp_probe.
func paths(p *probe) (tx, rx []footprint.Layer) {
	for _, l := range []footprint.Layer{footprint.NetDevQueue, footprint.NetDevStartXmit, footprint.NetDevXmit} {
		if p.Attached(l) {
			tx = append(tx, l)
		}
	}
	for _, l := range []footprint.Layer{footprint.EthTypeTrans, footprint.NapiGroReceive, footprint.NetifRx,
		footprint.NetifReceiveSkb, footprint.TCPv4Rcv, footprint.TCPv6Rcv, footprint.UDPRcv, footprint.UDPv6Rcv,
		footprint.SkFilter} {
		if p.Attached(l) {
			rx = append(rx, l)
		}
	}
	return tx, rx
}

// expectPath is what every layer should count for n packets in one direction through a veth
// pair: all of them on the transmit layers and on the receive layers the packet goes
// through, none on the others.
func expectPath(p *probe, want map[string]uint64, dir string, n uint64, gro bool, l4 footprint.Layer) {
	tx, rx := paths(p)
	for _, l := range tx {
		want[l.String()+"/"+dir] = n
	}
	for _, l := range rx {
		v := n
		switch l {
		case footprint.NapiGroReceive:
			if !gro {
				v = 0
			}
		case footprint.NetifRx:
			if gro {
				v = 0
			}
		case footprint.TCPv4Rcv, footprint.TCPv6Rcv, footprint.UDPRcv, footprint.UDPv6Rcv:
			if l != l4 {
				v = 0
			}
		}
		want[l.String()+"/"+dir] = v
	}
}

// v6 gives the pair IPv6 addresses (no DAD wait) and returns them.
func v6(t *testing.T, pair *netnstest.Pair) (a, b string) {
	t.Helper()
	a, b = "fd00:7c::1", "fd00:7c::2"
	pair.A.Exec(t, "ip", "-6", "addr", "add", a+"/64", "dev", pair.A.Veth, "nodad")
	pair.B.Exec(t, "ip", "-6", "addr", "add", b+"/64", "dev", pair.B.Veth, "nodad")
	return a, b
}

// udpExchange sends n datagrams from A to B:port, which B reads, and m back, which A reads.
// It returns A's port.
func udpExchange(t *testing.T, pair *netnstest.Pair, addrA, addrB string, port, n, m int) int {
	t.Helper()
	var srv, cli *net.UDPConn
	var err error
	pair.B.Run(t, func() { srv, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(addrB), Port: port}) })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	pair.A.Run(t, func() { cli, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(addrA)}) })
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	recv := func(c *net.UDPConn, k int) *net.UDPAddr {
		var from *net.UDPAddr
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := 0; i < k; i++ {
			_, a, err := c.ReadFromUDP(buf)
			if err != nil {
				t.Fatalf("read %d of %d: %v", i, k, err)
			}
			from = a
		}
		return from
	}
	for i := 0; i < n; i++ {
		if _, err := cli.WriteToUDP(make([]byte, 100), srv.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
	}
	peer := recv(srv, n)
	for i := 0; i < m; i++ {
		if _, err := srv.WriteToUDP(make([]byte, 100), peer); err != nil {
			t.Fatal(err)
		}
	}
	recv(cli, m)
	return cli.LocalAddr().(*net.UDPAddr).Port
}

// ethtool sets offloads: GRO at a veth receiver gives it NAPI (napi_gro_receive), but only for
// packets from a sender without TSO (veth_skb_is_eligible_for_gro).
func ethtool(t *testing.T, ns *netnstest.NS, feature, onOff string) {
	t.Helper()
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Fatalf("ethtool is needed to switch veth offloads: %v", err)
	}
	ns.Exec(t, "ethtool", "-K", ns.Veth, feature, onOff)
}

// TestUDPEveryLayer: a named UDP flow through a veth pair, nothing dropped: every layer the
// packets go through counts each packet once, in the flow's two directions, and nothing is lost.
func TestUDPEveryLayer(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ipv6, gro  bool
		strategies []loader.Kind
	}{
		{name: "ipv4"},
		{name: "ipv6", ipv6: true},
		{name: "ipv4_gro", gro: true},
		{name: "ipv4_raw_tp", strategies: []loader.Kind{loader.RawTP, loader.Kprobe, loader.CgroupSkbIngress}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: !tc.ipv6})
			addrA, addrB, l4 := pair.A.Addr, pair.B.Addr, footprint.UDPRcv
			if tc.ipv6 {
				addrA, addrB = v6(t, pair)
				l4 = footprint.UDPv6Rcv
			}
			if tc.gro {
				ethtool(t, pair.A, "tso", "off")
				ethtool(t, pair.B, "gro", "on")
			}
			cfg := flowConfig(footprint.Flow{Name: "app", Protocol: "udp", Local: host(addrB), Peer: host(addrA), LocalPort: 5300})
			cfg.Strategies = tc.strategies
			p := start(t, cfg)
			if tc.strategies != nil {
				for _, h := range p.Report().Hooks {
					if h.Attached != nil && !slices.Contains(tc.strategies, h.Attached.Kind) {
						t.Fatalf("hook %s attached with %s, outside %v", h.Hook, h.Attached.Kind, tc.strategies)
					}
				}
			}
			const in, out = 20, 7
			udpExchange(t, pair, addrA, addrB, 5300, in, out)

			want := map[string]uint64{}
			expectPath(p, want, footprint.Receive, in, tc.gro, l4)
			expectPath(p, want, footprint.Transmit, out, false, l4)
			if tc.gro {
				// B -> A: A still has GRO off.
				want["napi_gro_receive/transmit"], want["netif_rx/transmit"] = 0, out
				if !p.Attached(footprint.NapiGroReceive) {
					t.Fatal("napi_gro_receive not attached")
				}
			}
			wantCounts(t, p, "app", want)
			snapshot(t, p) // losses need two snapshots
			s := snapshot(t, p)
			if len(s.Lost) != 0 || len(s.NewLosses) != 0 || len(s.Drops) != 0 {
				t.Fatalf("nothing dropped, yet: lost %+v, new %+v, drops %+v", s.Lost, s.NewLosses, s.Drops)
			}
		})
	}
}

// TestTCPEveryLayer: a TCP connection across the pair, handshake included: each receive-path
// layer of B counts every segment A's socket sent (TCP_INFO segs_out), and each layer of the
// reverse direction counts the same as the others.
func TestTCPEveryLayer(t *testing.T) {
	for _, ipv6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[ipv6], func(t *testing.T) {
			pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: !ipv6})
			addrB, l4 := pair.B.Addr, footprint.TCPv4Rcv
			if ipv6 {
				_, addrB = v6(t, pair)
				l4 = footprint.TCPv6Rcv
			}
			p := start(t, flowConfig(footprint.Flow{Name: "web", Protocol: "tcp", Local: host(addrB), LocalPort: 5301}))
			c := netnstest.Connect(t, pair.A, pair.B, addrB, 5301)
			c.Exchange(t, 50, time.Millisecond, 0)
			if _, err := c.Server.Write(make([]byte, 100000)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100000)
			if _, err := io.ReadFull(c.Client, buf); err != nil {
				t.Fatal(err)
			}

			_, rx := paths(p)
			netnstest.Eventually(t, 10*time.Second, "every receive layer in B counts A's segments", func() (bool, string) {
				sent := uint64(netnstest.TCPInfo(t, c.Client).Segs_out)
				got := layerCounts(snapshot(t, p), "web")
				want := map[string]uint64{}
				expectPath(p, want, footprint.Receive, sent, false, l4)
				for k, w := range want {
					if got[k] != w {
						return false, fmt.Sprintf("A sent %d segments; %v", sent, got)
					}
				}
				return true, ""
			})
			netnstest.Eventually(t, 10*time.Second, "every layer of B -> A counts the same", func() (bool, string) {
				got := layerCounts(snapshot(t, p), "web")
				ref := got["net_dev_queue/transmit"]
				want := map[string]uint64{}
				expectPath(p, want, footprint.Transmit, ref, false, l4)
				for k, w := range want {
					if got[k] != w {
						return false, fmt.Sprintf("%v", got)
					}
				}
				return ref > 0, fmt.Sprintf("%v", got)
			})
			got := layerCounts(snapshot(t, p), "web")
			if n := got["tcp_probe/receive"]; p.Attached(footprint.TCPProbe) && (n == 0 || n > got["netif_receive_skb/receive"]) {
				t.Errorf("tcp_probe counted %d of %d segments: want some, at most all", n, got["netif_receive_skb/receive"])
			}
			t.Logf("receive layers %v: %v", rx, got)
		})
	}
}

// TestNetfilterDrop: B drops the flow at its input hook: the packets reach the core receive
// layer and no L4 layer, the drop reason is NETFILTER_DROP, and the loss names both layers.
func TestNetfilterDrop(t *testing.T) {
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	p := start(t, flowConfig(footprint.Flow{Name: "blocked", Protocol: "udp", Local: host(pair.B.Addr), LocalPort: 5302}))
	pair.B.Exec(t, "nft", "add table inet tcpack_fp; "+
		"add chain inet tcpack_fp input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet tcpack_fp input udp dport 5302 drop")
	const n = 9
	pair.A.SendUDP(t, fmt.Sprintf("%s:5302", pair.B.Addr), n)

	want := map[string]uint64{"netif_receive_skb/receive": n, "net_dev_queue/receive": n}
	for _, l := range []footprint.Layer{footprint.UDPRcv, footprint.SkFilter} {
		if p.Attached(l) {
			want[l.String()+"/receive"] = 0
		}
	}
	wantCounts(t, p, "blocked", want)

	next := footprint.SkFilter.String()
	if p.Attached(footprint.UDPRcv) {
		next = footprint.UDPRcv.String()
	}
	netnstest.Eventually(t, 10*time.Second, "a loss between netif_receive_skb and "+next, func() (bool, string) {
		s := snapshot(t, p)
		var drops uint64
		for _, d := range s.Drops {
			if d.Reason == "NETFILTER_DROP" && d.Direction == footprint.Receive && d.Path == footprint.Receive {
				drops += d.Packets
			}
		}
		return drops == n && len(p.losses) > 0, fmt.Sprintf("drops %+v, losses %+v", s.Drops, p.losses)
	})
	if len(p.losses) != 1 {
		t.Fatalf("losses %+v, want one", p.losses)
	}
	l := p.losses[0]
	if l.Flow != "blocked" || l.Direction != footprint.Receive || l.Layer != "netif_receive_skb" || l.NextLayer != next ||
		l.Packets != n || l.Reason != "NETFILTER_DROP" {
		t.Fatalf("loss %+v: want %d packets lost between netif_receive_skb and %s, reason NETFILTER_DROP", l, n, next)
	}
	t.Logf("loss %+v", l)
}

// TestQdiscDrop: tbf at A drops most of a burst: the packets are queued and not transmitted,
// and the loss names the qdisc's drop reason.
func TestQdiscDrop(t *testing.T) {
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	// Resolve B's address first, outside the flow, so no packet waits for ARP in the tbf queue.
	pair.A.SendUDP(t, fmt.Sprintf("%s:9", pair.B.Addr), 1)
	p := start(t, flowConfig(footprint.Flow{Name: "bulk", Protocol: "udp", Local: host(pair.A.Addr), Peer: host(pair.B.Addr), PeerPort: 5303}))
	pair.A.Exec(t, "tc", "qdisc", "add", "dev", pair.A.Veth, "root", "tbf", "rate", "8kbit", "burst", "1600", "limit", "1600")
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "exec", pair.A.Name, "tc", "qdisc", "del", "dev", pair.A.Veth, "root").Run()
	})
	const n = 50
	pair.A.SendUDPSized(t, fmt.Sprintf("%s:5303", pair.B.Addr), n, 1000)

	var qdropped uint64
	out := pair.A.Exec(t, "tc", "-s", "qdisc", "show", "dev", pair.A.Veth)
	if i := strings.Index(out, "(dropped "); i >= 0 {
		fmt.Sscanf(out[i:], "(dropped %d", &qdropped)
	}
	if qdropped == 0 {
		t.Fatalf("tbf dropped nothing:\n%s", out)
	}
	// The packets tbf kept leave at 8 kbit/s: about one a second.
	wantCounts(t, p, "bulk", map[string]uint64{
		"net_dev_queue/transmit":      n,
		"net_dev_start_xmit/transmit": n - qdropped,
		"net_dev_xmit/transmit":       n - qdropped,
	})
	netnstest.Eventually(t, 10*time.Second, "a loss between net_dev_queue and net_dev_start_xmit", func() (bool, string) {
		s := snapshot(t, p)
		var lost uint64
		for _, l := range s.Lost {
			if l.Layer == "net_dev_queue" {
				lost += l.Packets
			}
		}
		return lost == qdropped, fmt.Sprintf("lost now %+v, want %d packets", s.Lost, qdropped)
	})
	txLosses := 0
	for _, l := range p.losses {
		if !strings.HasPrefix(l.Layer, "net_dev") {
			continue // B's receive path: no socket on the port, NO_SOCKET after the L4 entry
		}
		txLosses++
		if l.Direction != footprint.Transmit || l.Layer != "net_dev_queue" || l.NextLayer != "net_dev_start_xmit" ||
			!strings.HasPrefix(l.Reason, "QDISC") {
			t.Errorf("loss %+v: want net_dev_queue -> net_dev_start_xmit, reason QDISC_*", l)
		}
	}
	if txLosses == 0 {
		t.Fatal("no loss reported on the transmit path")
	}
	t.Logf("tbf dropped %d of %d: %+v", qdropped, n, p.losses)
}

// TestUnnamedFlowNotCounted: traffic of a flow nobody named counts nowhere, while a named
// flow next to it does.
func TestUnnamedFlowNotCounted(t *testing.T) {
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	p := start(t, flowConfig(
		footprint.Flow{Name: "named", Protocol: "udp", LocalPort: 5304},
		footprint.Flow{Name: "tcp_only", Protocol: "tcp", LocalPort: 5305},
	))
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5305, 10, 3) // UDP on the TCP flow's port
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5306, 10, 3) // a port nobody named
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5304, 4, 2)
	wantCounts(t, p, "named", map[string]uint64{"netif_receive_skb/receive": 4, "net_dev_queue/transmit": 2})
	for k, v := range layerCounts(snapshot(t, p), "tcp_only") {
		if v != 0 {
			t.Errorf("tcp_only %s = %d: packets of no named flow were counted", k, v)
		}
	}
}

// programLinks counts the links in the kernel whose program is one of p's layers or
// sentinels, by hook: what is attached, not what the family believes.
func programLinks(t *testing.T, p *probe) map[string]int {
	return netnstest.ProgramLinks(t, p.Report())
}

// TestOnTrafficAttachesLayersOnlyWhileTheFlowIsActive: with the default attach mode only the
// sentinels are attached while the flow is idle; its first packet attaches the other layers,
// every layer then counts each later packet once, and after idle_detach without a packet the
// other layers detach again, until the flow's next packet. Once per family of mechanisms, since
// each is detached and attached again: tracepoints and fentry, then raw_tp, kprobes and
// cgroup_skb.
func TestOnTrafficAttachesLayersOnlyWhileTheFlowIsActive(t *testing.T) {
	for _, tc := range []struct {
		name       string
		strategies []loader.Kind
	}{
		{name: "preferred"},
		{name: "raw_tp_kprobe_cgroup", strategies: []loader.Kind{loader.RawTP, loader.Kprobe, loader.CgroupSkbIngress}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
			cfg := footprint.DefaultConfig()
			cfg.Flows = []footprint.Flow{{Name: "app", Protocol: "udp", Local: host(pair.B.Addr), Peer: host(pair.A.Addr), LocalPort: 5310}}
			cfg.Strategies = tc.strategies
			// Long enough for a slow guest (TCG) to get from arming to the next exchange.
			idle := 6 * time.Second
			cfg.IdleDetach = idle
			cfg.SentinelPeriod = 0 // sentinels always attached: TestOnTrafficSamplesTheSentinels covers sampling
			p := start(t, cfg)
			onTraffic(t, pair, p, idle)
		})
	}
}

// fullyArmed is the condition of p armed with all its hooks attached, no arming error, and a
// count of unobserved packets that unobserved accepts.
func fullyArmed(t *testing.T, p *probe, hooks int, unobserved func(uint64) bool) func() (bool, string) {
	return func() (bool, string) {
		s := snapshot(t, p)
		links := programLinks(t, p)
		return s.Armed && len(links) == hooks && unobserved(s.Unobserved) && s.ArmErr == nil,
			fmt.Sprintf("armed %v, unobserved %d, links %v of %d hooks, error %v", s.Armed, s.Unobserved, links, hooks, s.ArmErr)
	}
}

// exchangeCounted sends 12 datagrams from A to B:port and 5 back, and waits until every layer
// of the flow "app" counted each once; it returns those counts.
func exchangeCounted(t *testing.T, pair *netnstest.Pair, p *probe, port int) map[string]uint64 {
	t.Helper()
	const in, out = 12, 5
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, port, in, out)
	want := map[string]uint64{}
	expectPath(p, want, footprint.Receive, in, false, footprint.UDPRcv)
	expectPath(p, want, footprint.Transmit, out, false, footprint.UDPRcv)
	wantCounts(t, p, "app", want)
	return want
}

func onTraffic(t *testing.T, pair *netnstest.Pair, p *probe, idle time.Duration) {
	hooks := 0
	for _, h := range p.Report().Hooks {
		if h.Attached != nil {
			hooks++
		}
	}
	sentinels := p.Sentinels()
	if !slices.Contains(sentinels, "net_dev_queue") || !slices.Contains(sentinels, "netif_receive_skb") {
		t.Fatalf("sentinels %v, want net_dev_queue and netif_receive_skb", sentinels)
	}
	onlySentinels := func() (bool, string) {
		links := programLinks(t, p)
		for hook, n := range links {
			if !slices.Contains(sentinels, hook) {
				return false, fmt.Sprintf("%s attached while idle (links %v)", hook, links)
			}
			if n != 1 {
				return false, fmt.Sprintf("%s has %d links", hook, n)
			}
		}
		return len(links) == len(sentinels), fmt.Sprintf("links %v, want the sentinels %v", links, sentinels)
	}
	netnstest.Eventually(t, 10*time.Second, "idle at start", onlySentinels)
	// Other traffic does not arm it: the sentinels count a match at once, armed or not.
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5311, 5, 5)
	if s := snapshot(t, p); s.Armed || s.Unobserved != 0 {
		t.Fatalf("after traffic of no named flow: armed %v, unobserved %d", s.Armed, s.Unobserved)
	}

	armed := func() {
		t.Helper()
		udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5310, 1, 0)
		netnstest.Eventually(t, 10*time.Second, "armed by the flow's packet", fullyArmed(t, p, hooks, func(n uint64) bool { return n > 0 }))
	}
	armed()
	want := exchangeCounted(t, pair, p, 5310)
	snapshot(t, p)
	if s := snapshot(t, p); len(s.Lost) != 0 || len(s.NewLosses) != 0 {
		t.Fatalf("the packet that armed the layers counts nowhere, yet: lost %+v", s.Lost)
	}

	netnstest.Eventually(t, idle+10*time.Second, "idle again after idle_detach", func() (bool, string) {
		if s := snapshot(t, p); s.Armed {
			return false, "still armed"
		}
		return onlySentinels()
	})
	// Counting stopped with the layers; the next packet arms again and counting resumes.
	armed()
	const in, out = 12, 5
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5310, in, out)
	for k, v := range want {
		want[k] = 2 * v
	}
	wantCounts(t, p, "app", want)
}

// TestOnTrafficSamplesTheSentinels: with the default sentinel sampling, while the flow is idle
// the per-packet sentinels are attached only for a window of each period and kfree_skb all the
// time; a flow whose packets are all delivered (no drop to see) still arms within about a
// period; and a drop arms it while the sampled sentinels are detached, attaching them with
// the other layers, which then count every packet.
func TestOnTrafficSamplesTheSentinels(t *testing.T) {
	sampledStart := func(t *testing.T, window, period time.Duration) (*netnstest.Pair, *probe, []string, int) {
		pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
		cfg := footprint.DefaultConfig()
		cfg.Flows = []footprint.Flow{{Name: "app", Protocol: "udp", Local: host(pair.B.Addr), Peer: host(pair.A.Addr), LocalPort: 5320}}
		cfg.SentinelWindow, cfg.SentinelPeriod = window, period
		cfg.IdleDetach = 2 * time.Second
		p := start(t, cfg)
		sampled, w, per := p.SampledSentinels()
		slices.Sort(sampled)
		if !slices.Equal(sampled, []string{"net_dev_queue", "netif_receive_skb"}) || w != window || per != period {
			t.Fatalf("sampled sentinels %v, %s of every %s; want net_dev_queue and netif_receive_skb, %s of every %s", sampled, w, per, window, period)
		}
		hooks := 0
		for _, h := range p.Report().Hooks {
			if h.Attached != nil {
				hooks++
			}
		}
		return pair, p, sampled, hooks
	}
	// sampledAttached is how many of the sampled sentinels have a link now; it fails the test if
	// kfree_skb has none or a layer other than the sentinels has one.
	sampledAttached := func(t *testing.T, p *probe, sampled []string) int {
		links := programLinks(t, p)
		if links["kfree_skb"] != 1 {
			t.Fatalf("kfree_skb has %d links while idle, want 1 (links %v)", links["kfree_skb"], links)
		}
		n := 0
		for hook, k := range links {
			if slices.Contains(sampled, hook) {
				n += k
			} else if hook != "kfree_skb" {
				t.Fatalf("%s attached while idle (links %v)", hook, links)
			}
		}
		return n
	}

	t.Run("delivered_traffic", func(t *testing.T) {
		const period = time.Second
		pair, p, sampled, hooks := sampledStart(t, 200*time.Millisecond, period)
		var on, off int
		for end := time.Now().Add(3 * period); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			switch sampledAttached(t, p, sampled) {
			case len(sampled):
				on++
			case 0:
				off++
			}
		}
		if on == 0 || off <= on {
			t.Fatalf("over three idle periods the sampled sentinels were attached in %d looks and detached in %d; want some, and detached most of the time", on, off)
		}
		// B reads every datagram: nothing is dropped, only the sampled sentinels can see them.
		var srv *net.UDPConn
		var err error
		pair.B.Run(t, func() { srv, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(pair.B.Addr), Port: 5320}) })
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := srv.ReadFromUDP(buf); err != nil {
					return
				}
			}
		}()
		// A socket made in A's namespace sends from any goroutine.
		var cli net.Conn
		pair.A.Run(t, func() { cli, err = net.Dial("udp", fmt.Sprintf("%s:5320", pair.B.Addr)) })
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
					cli.Write(make([]byte, 100))
				}
			}
		}()
		netnstest.Eventually(t, 3*period+5*time.Second, "armed by delivered packets",
			fullyArmed(t, p, hooks, func(n uint64) bool { return n > 0 }))
	})

	t.Run("drop_arms_while_detached", func(t *testing.T) {
		// One window at the start, then none for an hour: only kfree_skb can arm.
		pair, p, sampled, hooks := sampledStart(t, 100*time.Millisecond, time.Hour)
		netnstest.Eventually(t, 10*time.Second, "the sampled sentinels detached after the first window", func() (bool, string) {
			n := sampledAttached(t, p, sampled)
			return n == 0, fmt.Sprintf("%d links", n)
		})
		// No socket on the port in B: the packet dies at L4 (NO_SOCKET), where kfree_skb sees it.
		pair.A.SendUDP(t, fmt.Sprintf("%s:5320", pair.B.Addr), 1)
		netnstest.Eventually(t, 10*time.Second, "armed by the drop", fullyArmed(t, p, hooks, func(n uint64) bool { return n == 1 }))
		exchangeCounted(t, pair, p, 5320)
	})
}

// TestNoFlowsAttachesNothing: an empty flow list is refused before anything is loaded.
func TestNoFlowsAttachesNothing(t *testing.T) {
	env := openEnv(t)
	links := netnstest.CountLinks(t)
	if _, err := footprint.Start(env, footprint.DefaultConfig()); err == nil || !strings.Contains(err.Error(), "no flows") {
		t.Fatalf("Start with no flows: %v, want an error saying there are none", err)
	}
	if got := netnstest.CountLinks(t); got != links {
		t.Fatalf("links %d after a refused start, %d before", got, links)
	}
}

func TestRestartLeavesNothingBehind(t *testing.T) {
	env := openEnv(t)
	linksBefore, fdsBefore := netnstest.CountLinks(t), netnstest.CountFDs(t)
	for i := 0; i < 2; i++ {
		p, err := footprint.Start(env, flowConfig(footprint.Flow{Name: "x", LocalPort: 9}))
		if err != nil {
			t.Fatal(err)
		}
		if got := netnstest.CountLinks(t); got <= linksBefore {
			t.Fatalf("start %d: %d links, want more than %d", i, got, linksBefore)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
	}
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("links after close: %d, before: %d", got, linksBefore)
	}
	if got := netnstest.CountFDs(t); got != fdsBefore {
		t.Errorf("fds after close: %d, before: %d", got, fdsBefore)
	}
}

func TestBadFlowsRefused(t *testing.T) {
	env := openEnv(t)
	for _, f := range []footprint.Flow{
		{Name: "mixed", Local: netip.MustParsePrefix("10.0.0.0/8"), Peer: netip.MustParsePrefix("fd00::/8")},
		{Name: "proto", Protocol: "sctp"},
	} {
		if p, err := footprint.Start(env, flowConfig(f)); err == nil {
			p.Close()
			t.Errorf("flow %+v accepted", f)
		}
	}
}

// expected says whether the kernel under test must support an attach mechanism (TCPACK_EXPECT,
// set per guest by the kernel matrix; unset on the host).
func expected(kind loader.Kind) bool {
	return slices.Contains(strings.Split(os.Getenv("TCPACK_EXPECT"), ","), string(kind))
}

// TestAttachReport prints one MATRIX line per hook for the README's kernel table; a hook a
// guest is expected to attach with fentry or kprobes and did not fails.
func TestAttachReport(t *testing.T) {
	p := start(t, flowConfig(footprint.Flow{Name: "report", LocalPort: 9}))
	hooks := p.Report().Hooks
	// Path order, transmit then receive, then the drops: how the table reads best.
	order := append(footprint.LayerNames(), "kfree_skb")
	slices.SortStableFunc(hooks, func(a, b loader.HookResult) int {
		return slices.Index(order, a.Hook) - slices.Index(order, b.Hook)
	})
	for _, h := range hooks {
		if h.Attached == nil {
			var reasons []string
			expectedKind := false
			for _, a := range h.Skipped {
				reasons = append(reasons, fmt.Sprintf("%s: %s", a.Strategy.Kind, a.Reason))
				expectedKind = expectedKind || expected(a.Strategy.Kind)
			}
			fmt.Printf("MATRIX family=footprint hook=%s attached=no reason=%q\n", h.Hook, strings.Join(reasons, "; "))
			if !h.Optional || expectedKind {
				t.Errorf("hook %s not attached: %+v", h.Hook, h.Skipped)
			}
			continue
		}
		attached := h.Attached.String()
		switch h.Attached.Kind {
		case loader.CgroupSkbIngress:
			attached = "cgroup_skb at the cgroup v2 root" // the path differs between hosts
		case loader.TPBTF, loader.RawTP:
			arity, err := kernel.TracepointArity(openEnv(t).BTF, h.Attached.Target)
			if err != nil {
				t.Fatal(err)
			}
			attached += fmt.Sprintf(" (%d args)", arity)
		}
		fmt.Printf("MATRIX family=footprint hook=%s attached=%s: %s\n", h.Hook, attached, h.Attached.Program)
		// The stack's functions: where fentry works, nothing slower may be in use.
		if expected(loader.FEntry) && slices.Contains([]string{"eth_type_trans", "tcp_v4_rcv", "tcp_v6_rcv", "udp_rcv",
			"udpv6_rcv", "sk_filter_trim_cap"}, h.Hook) && h.Attached.Kind != loader.FEntry {
			t.Errorf("hook %s attached with %s where fentry is expected", h.Hook, h.Attached.Kind)
		}
	}
}

// TestKprobeStrategy runs the UDP footprint with kprobes where the guest has them, so the
// kprobe programs are exercised and not only loaded.
func TestKprobeStrategy(t *testing.T) {
	if !expected(loader.Kprobe) {
		t.Skip("kernel without kprobes (CONFIG_KPROBES): the guests of the kernel matrix run this")
	}
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	cfg := flowConfig(footprint.Flow{Name: "k", Protocol: "udp", LocalPort: 5307})
	cfg.Strategies = []loader.Kind{loader.Kprobe, loader.TPBTF}
	p := start(t, cfg)
	for _, l := range []footprint.Layer{footprint.EthTypeTrans, footprint.UDPRcv, footprint.SkFilter} {
		if !p.Attached(l) {
			t.Fatalf("%s not attached with kprobes", l)
		}
	}
	udpExchange(t, pair, pair.A.Addr, pair.B.Addr, 5307, 6, 0)
	wantCounts(t, p, "k", map[string]uint64{"eth_type_trans/receive": 6, "udp_rcv/receive": 6,
		"sk_filter_trim_cap/receive": 6, "netif_receive_skb/receive": 6})
}
