package drops_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
)

func openEnv(t *testing.T) *kernel.Env { return netnstest.KernelEnv(t) }

type eventLog = netnstest.Events[drops.Event]

func start(t *testing.T, cfg drops.Config) (*drops.Probe, *eventLog) {
	t.Helper()
	log := &eventLog{}
	p, err := drops.Start(openEnv(t), cfg, log.Add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, l := range p.Report().Lines() {
		t.Log(l)
	}
	return p, log
}

// dropsWhere sums drop packets matching the filter.
func dropsWhere(t *testing.T, p *drops.Probe, f func(drops.DropCount) bool) uint64 {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, d := range snap.Drops {
		if f(d) {
			n += d.Packets
		}
	}
	return n
}

func tcpWhere(t *testing.T, p *drops.Probe, f func(drops.TCPCount) bool) uint64 {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range snap.TCP {
		if f(c) {
			n += c.Count
		}
	}
	return n
}

func equalCount(t *testing.T, what string, want uint64, get func() uint64) {
	t.Helper()
	netnstest.Eventually(t, 5*time.Second, what, func() (bool, string) {
		got := get()
		return got == want, fmt.Sprintf("got %d, want %d", got, want)
	})
	// And it stays there: nothing else in the namespace adds to it.
	time.Sleep(100 * time.Millisecond)
	if got := get(); got != want {
		t.Fatalf("%s: settled at %d, want %d", what, got, want)
	}
}

func TestTCPSynToClosedPort(t *testing.T) {
	for _, tc := range []struct {
		name       string
		strategies []loader.Kind
	}{
		{"default", nil},
		{"raw_tp", []loader.Kind{loader.RawTP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := drops.DefaultConfig()
			cfg.Strategies = tc.strategies
			p, events := start(t, cfg)
			if tc.strategies != nil {
				for _, h := range p.Report().Hooks {
					if h.Attached == nil || h.Attached.Kind != loader.RawTP {
						t.Fatalf("hook %s: want raw_tp, got %+v", h.Hook, h.Attached)
					}
				}
			}
			pair := netnstest.NewPair(t)
			const n, firstPort, dport = 5, 41000, 5002
			pair.A.SendSYNs(t, fmt.Sprintf("%s:%d", pair.B.Addr, dport), n, firstPort)

			equalCount(t, "NO_SOCKET drops at tcp_v4_rcv in B", n, func() uint64 {
				return dropsWhere(t, p, func(d drops.DropCount) bool {
					return d.Netns == pair.B.Inode && d.Reason == "NO_SOCKET" && d.Symbol == "tcp_v4_rcv" &&
						d.Transport == "tcp" && d.Network == "ipv4" && d.Interface == pair.B.Veth
				})
			})
			socketless := tracesSocketlessResets(t)
			if socketless {
				equalCount(t, "resets sent by B", n, func() uint64 {
					return tcpWhere(t, p, func(c drops.TCPCount) bool {
						return c.Netns == pair.B.Inode && c.Kind == drops.KindResetSent
					})
				})
			}
			equalCount(t, "resets received by A", n, func() uint64 {
				return tcpWhere(t, p, func(c drops.TCPCount) bool {
					return c.Netns == pair.A.Inode && c.Kind == drops.KindResetReceived && c.State == "syn_sent"
				})
			})

			var got []drops.Event
			netnstest.Eventually(t, 5*time.Second, "drop events", func() (bool, string) {
				got = events.Matching(func(e drops.Event) bool {
					return e.Kind == drops.KindDrop && e.Netns == pair.B.Inode && e.Reason == "NO_SOCKET"
				})
				return len(got) == n, fmt.Sprintf("got %d events, want %d", len(got), n)
			})
			var ports []int
			for _, e := range got {
				if e.LocalAddr != netip.MustParseAddr(pair.B.Addr) || e.LocalPort != dport ||
					e.PeerAddr != netip.MustParseAddr(pair.A.Addr) || e.Transport != "tcp" ||
					e.Direction != "receive" || e.Interface != pair.B.Veth || e.NetnsName != pair.B.Name ||
					!strings.HasPrefix(e.Location, "tcp_v4_rcv+0x") {
					t.Errorf("event %+v: want %s:%d <- %s, tcp, receive on %s in %s, at tcp_v4_rcv+0x...",
						e, pair.B.Addr, dport, pair.A.Addr, pair.B.Veth, pair.B.Name)
				}
				ports = append(ports, int(e.PeerPort))
			}
			slices.Sort(ports)
			if want := []int{firstPort, firstPort + 1, firstPort + 2, firstPort + 3, firstPort + 4}; !slices.Equal(ports, want) {
				t.Errorf("peer ports %v, want %v", ports, want)
			}

			resets := events.Matching(func(e drops.Event) bool {
				return e.Kind == drops.KindResetSent && e.Netns == pair.B.Inode
			})
			if !socketless {
				t.Logf("this kernel's tcp_send_reset fires only for resets sent from a socket: %d socketless resets seen", len(resets))
				return
			}
			if len(resets) != n {
				t.Fatalf("reset-sent events: got %d, want %d", len(resets), n)
			}
			for _, e := range resets {
				if e.LocalPort != dport || e.PeerAddr != netip.MustParseAddr(pair.A.Addr) {
					t.Errorf("reset event %+v: want local port %d, peer %s", e, dport, pair.A.Addr)
				}
				if _, err := kernel.EnumNames(openEnv(t).BTF, "sk_rst_reason", ""); err == nil && e.Reason != "NO_SOCKET" {
					t.Errorf("reset reason %q, want NO_SOCKET on a kernel with enum sk_rst_reason", e.Reason)
				}
			}
		})
	}
}

func TestUDPToClosedPort(t *testing.T) {
	p, events := start(t, drops.DefaultConfig())
	pair := netnstest.NewPair(t)
	const n, dport = 7, 5003
	sport := pair.A.SendUDP(t, fmt.Sprintf("%s:%d", pair.B.Addr, dport), n)

	equalCount(t, "NO_SOCKET drops at __udp4_lib_rcv in B", n, func() uint64 {
		return dropsWhere(t, p, func(d drops.DropCount) bool {
			return d.Netns == pair.B.Inode && d.Reason == "NO_SOCKET" && d.Symbol == "__udp4_lib_rcv" &&
				d.Transport == "udp" && d.Interface == pair.B.Veth
		})
	})
	netnstest.Eventually(t, 5*time.Second, "udp drop events", func() (bool, string) {
		got := events.Matching(func(e drops.Event) bool {
			return e.Kind == drops.KindDrop && e.Netns == pair.B.Inode && e.Transport == "udp" &&
				e.LocalPort == dport && e.PeerPort == uint16(sport) &&
				e.PeerAddr == netip.MustParseAddr(pair.A.Addr) && strings.HasPrefix(e.Location, "__udp4_lib_rcv+")
		})
		return len(got) == n, fmt.Sprintf("got %d, want %d", len(got), n)
	})
}

func TestNftablesDrop(t *testing.T) {
	p, events := start(t, drops.DefaultConfig())
	pair := netnstest.NewPair(t)
	pair.B.Exec(t, "nft", "add table inet tcpack_test; "+
		"add chain inet tcpack_test input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet tcpack_test input udp dport 5004 drop")
	const n = 6
	sport := pair.A.SendUDP(t, fmt.Sprintf("%s:5004", pair.B.Addr), n)

	equalCount(t, "NETFILTER_DROP drops in B", n, func() uint64 {
		return dropsWhere(t, p, func(d drops.DropCount) bool {
			return d.Netns == pair.B.Inode && d.Reason == "NETFILTER_DROP" && d.Transport == "udp"
		})
	})
	var got []drops.Event
	netnstest.Eventually(t, 5*time.Second, "NETFILTER_DROP events", func() (bool, string) {
		got = events.Matching(func(e drops.Event) bool {
			return e.Netns == pair.B.Inode && e.Reason == "NETFILTER_DROP"
		})
		return len(got) == n, fmt.Sprintf("got %d, want %d", len(got), n)
	})
	for _, e := range got {
		if e.LocalAddr != netip.MustParseAddr(pair.B.Addr) || e.LocalPort != 5004 || e.PeerAddr != netip.MustParseAddr(pair.A.Addr) ||
			e.PeerPort != uint16(sport) || e.Transport != "udp" || e.Direction != "receive" || e.NetnsName != pair.B.Name {
			t.Errorf("event %+v: want %s:5004 <- %s:%d, udp, receive, in %s", e, pair.B.Addr, pair.A.Addr, sport, pair.B.Name)
		}
	}
	t.Logf("nftables drop at %s", got[0].Location)
}

func TestQdiscDrop(t *testing.T) {
	p, events := start(t, drops.DefaultConfig())
	pair := netnstest.NewPair(t)
	// A token bucket far too small for the burst: tbf drops what exceeds its one-packet queue.
	pair.A.Exec(t, "tc", "qdisc", "add", "dev", pair.A.Veth, "root", "tbf", "rate", "8kbit", "burst", "1600", "limit", "1600")
	const n = 50
	sport := pair.A.SendUDPSized(t, fmt.Sprintf("%s:5005", pair.B.Addr), n, 1000)

	// The qdisc's own drop counter is the reference.
	out := pair.A.Exec(t, "tc", "-s", "qdisc", "show", "dev", pair.A.Veth)
	var sent, qdropped uint64
	if i := strings.Index(out, "Sent "); i >= 0 {
		var bytes uint64
		fmt.Sscanf(out[i:], "Sent %d bytes %d pkt (dropped %d", &bytes, &sent, &qdropped)
	}
	if qdropped == 0 {
		t.Fatalf("tbf dropped nothing; tc says:\n%s", out)
	}
	var reasons []string
	equalCount(t, "qdisc drops in A", qdropped, func() uint64 {
		reasons = nil
		return dropsWhere(t, p, func(d drops.DropCount) bool {
			if d.Netns != pair.A.Inode || d.Transport != "udp" || d.Interface != pair.A.Veth {
				return false
			}
			reasons = append(reasons, d.Reason+"@"+d.Symbol)
			return strings.HasPrefix(d.Reason, "QDISC")
		})
	})
	t.Logf("tbf dropped %d of %d: %v", qdropped, n, reasons)

	// Sent by this host: the local side is the sender, and the default budget (burst 200)
	// samples every one of them.
	netnstest.Eventually(t, 5*time.Second, "qdisc drop events", func() (bool, string) {
		got := events.Matching(func(e drops.Event) bool {
			return e.Netns == pair.A.Inode && strings.HasPrefix(e.Reason, "QDISC")
		})
		for _, e := range got {
			if e.LocalAddr != netip.MustParseAddr(pair.A.Addr) || e.LocalPort != uint16(sport) ||
				e.PeerAddr != netip.MustParseAddr(pair.B.Addr) || e.PeerPort != 5005 || e.Transport != "udp" ||
				e.Direction != "transmit" || e.Interface != pair.A.Veth || e.NetnsName != pair.A.Name {
				return false, fmt.Sprintf("event %+v: want %s:%d -> %s:5005, udp, transmit on %s", e, pair.A.Addr, sport, pair.B.Addr, pair.A.Veth)
			}
		}
		return uint64(len(got)) == qdropped, fmt.Sprintf("%d events, want %d", len(got), qdropped)
	})
}

func TestRestartLeavesNothingBehind(t *testing.T) {
	e := openEnv(t)
	linksBefore, fdsBefore := netnstest.CountLinks(t), netnstest.CountFDs(t)
	for i := 0; i < 3; i++ {
		p, err := drops.Start(e, drops.DefaultConfig(), nil)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if got := netnstest.CountLinks(t); got <= linksBefore {
			t.Fatalf("start %d: %d links attached, want more than %d", i, got, linksBefore)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second close %d: %v", i, err)
		}
	}
	if got := netnstest.CountLinks(t); got != linksBefore {
		t.Errorf("links after shutdown: %d, before: %d", got, linksBefore)
	}
	if got := netnstest.CountFDs(t); got != fdsBefore {
		t.Errorf("fds after shutdown: %d, before: %d", got, fdsBefore)
	}
}

func TestEventRateLimit(t *testing.T) {
	cfg := drops.DefaultConfig()
	cfg.EventsPerSecond = 1
	cfg.EventBurst = 3
	began := time.Now()
	p, events := start(t, cfg)
	// No IPv6: its router solicitations and MLD reports are drops too, and could spend the
	// burst before the test's own packets.
	pair := netnstest.NewPairWith(t, netnstest.PairOptions{NoIPv6: true})
	const n = 40
	// From one CPU: veth delivers in the sender's softirq, so every drop lands on that CPU's
	// bucket and the bound below is one CPU's budget, whatever the machine's size.
	pair.A.SendUDPFromCPU(t, fmt.Sprintf("%s:5006", pair.B.Addr), n, 0)
	equalCount(t, "drops counted regardless of sampling", n, func() uint64 {
		return dropsWhere(t, p, func(d drops.DropCount) bool {
			return d.Netns == pair.B.Inode && d.Reason == "NO_SOCKET" && d.Transport == "udp"
		})
	})
	time.Sleep(300 * time.Millisecond) // one flush interval and more
	got := len(events.Matching(func(e drops.Event) bool {
		return e.Netns == pair.B.Inode && e.Reason == "NO_SOCKET" && e.LocalPort == 5006
	}))
	// The burst, plus one token per second the probe has run (slow under qemu).
	maxEvents := int(cfg.EventBurst) + int(time.Since(began).Seconds()) + 1
	if got == 0 || got > maxEvents {
		t.Fatalf("events emitted: %d, want 1..%d with burst 3 and 1/s on one CPU", got, maxEvents)
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if out := snap.Stats.SampledOut[drops.KindDrop]; out < uint64(n-got) {
		t.Fatalf("sampled out %d, want at least %d (%d drops, %d events)", out, n-got, n, got)
	}
}

func TestRetransmitsAreCounted(t *testing.T) {
	p, events := start(t, drops.DefaultConfig())
	pair := netnstest.NewPair(t)
	ln := pair.B.Listen(t, "tcp4", pair.B.Addr+":5020")
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			time.Sleep(5 * time.Second)
		}
	}()
	c, err := pair.A.Dial("tcp4", pair.B.Addr+":5020", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// From now on B drops everything A sends: A must retransmit (RTO 200 ms, then doubling).
	pair.B.Exec(t, "nft", "add table inet tcpack_rtx; "+
		"add chain inet tcpack_rtx input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet tcpack_rtx input tcp dport 5020 drop")
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	retransmits := func() uint64 {
		return tcpWhere(t, p, func(c drops.TCPCount) bool {
			return c.Netns == pair.A.Inode && c.Kind == drops.KindRetransmit && c.State == "established"
		})
	}
	netnstest.Eventually(t, 5*time.Second, "retransmits by A", func() (bool, string) {
		n := retransmits()
		return n >= 2, fmt.Sprintf("%d retransmits", n)
	})
	// Every copy A sent, the first and each retransmit, is dropped by B's rule (the drop
	// follows the retransmit tracepoint by a softirq, hence eventually).
	netnstest.Eventually(t, 5*time.Second, "each retransmit dropped by B", func() (bool, string) {
		n := retransmits()
		dropped := dropsWhere(t, p, func(d drops.DropCount) bool {
			return d.Netns == pair.B.Inode && d.Reason == "NETFILTER_DROP" && d.Transport == "tcp"
		})
		return dropped > n, fmt.Sprintf("B dropped %d segments, A retransmitted %d", dropped, n)
	})
	local := c.LocalAddr().(*net.TCPAddr)
	netnstest.Eventually(t, 5*time.Second, "retransmit events", func() (bool, string) {
		got := events.Matching(func(e drops.Event) bool {
			return e.Kind == drops.KindRetransmit && e.Netns == pair.A.Inode
		})
		for _, e := range got {
			if e.LocalPort != uint16(local.Port) || e.PeerPort != 5020 || e.PeerAddr != netip.MustParseAddr(pair.B.Addr) ||
				e.State != "established" || e.Transport != "tcp" {
				return false, fmt.Sprintf("event %+v: want %s:%d -> %s:5020, established", e, pair.A.Addr, local.Port, pair.B.Addr)
			}
		}
		return len(got) >= 2, fmt.Sprintf("%d events", len(got))
	})
}

// TestAttachReport checks the loader chose each hook's variant from the running kernel's
// tracepoint arity, and prints one MATRIX line per hook for the README's kernel table.
func TestAttachReport(t *testing.T) {
	e := openEnv(t)
	p, _ := start(t, drops.DefaultConfig())
	for _, h := range p.Report().Hooks {
		if h.Attached == nil {
			t.Errorf("hook %s not attached: %+v", h.Hook, h.Skipped)
			continue
		}
		arity, err := kernel.TracepointArity(e.BTF, h.Attached.Target)
		if err != nil {
			t.Fatal(err)
		}
		// The first variant in order of preference whose arguments the tracepoint provides.
		wantArgs := map[string][]int{"kfree_skb": {4, 3}, "tcp_send_reset": {3, 2}}[h.Hook]
		for _, a := range wantArgs {
			if a <= arity {
				if h.Attached.Args != a {
					t.Errorf("%s: tracepoint has %d args, attached the %d-arg variant, want %d", h.Hook, arity, h.Attached.Args, a)
				}
				break
			}
		}
		fmt.Printf("MATRIX family=drops hook=%s attached=%s (%d args): %s\n", h.Hook, h.Attached, arity, h.Attached.Program)
	}
}

// tracesSocketlessResets says whether tcp_send_reset fires for resets sent in reply to a
// packet that matched no socket. Linux 6.10 made it do so, in the same release that gave it
// the reset reason argument; before, it fired only when a socket sent the reset.
func tracesSocketlessResets(t *testing.T) bool {
	n, err := kernel.TracepointArity(openEnv(t).BTF, "tcp_send_reset")
	if err != nil {
		t.Fatal(err)
	}
	return n >= 3
}

// TestResetFromSocket aborts an established connection (SO_LINGER 0): the socket sends the
// reset, which every kernel traces, and the peer receives it.
func TestResetFromSocket(t *testing.T) {
	p, events := start(t, drops.DefaultConfig())
	pair := netnstest.NewPair(t)
	ln := pair.B.Listen(t, "tcp4", pair.B.Addr+":5030")
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	c, err := pair.A.Dial("tcp4", pair.B.Addr+":5030", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server := <-accepted
	if err := server.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	server.Close()

	// tcp_disconnect moves the socket to TCP_CLOSE before it sends the reset.
	equalCount(t, "resets sent by B from its socket", 1, func() uint64 {
		return tcpWhere(t, p, func(c drops.TCPCount) bool {
			return c.Netns == pair.B.Inode && c.Kind == drops.KindResetSent && c.State == "closed"
		})
	})
	equalCount(t, "resets received by A", 1, func() uint64 {
		return tcpWhere(t, p, func(c drops.TCPCount) bool {
			return c.Netns == pair.A.Inode && c.Kind == drops.KindResetReceived && c.State == "established"
		})
	})
	local := c.LocalAddr().(*net.TCPAddr)
	netnstest.Eventually(t, 5*time.Second, "reset-sent event", func() (bool, string) {
		got := events.Matching(func(e drops.Event) bool {
			return e.Kind == drops.KindResetSent && e.Netns == pair.B.Inode && e.LocalPort == 5030 &&
				e.PeerPort == uint16(local.Port) && e.PeerAddr == netip.MustParseAddr(pair.A.Addr) && e.TupleFrom == "socket"
		})
		all := events.Matching(func(e drops.Event) bool { return e.Kind == drops.KindResetSent })
		return len(got) == 1, fmt.Sprintf("%d matching events, all resets sent: %+v", len(got), all)
	})
}

// TestPruneDeadNetns: counters of a namespace that is gone are forgotten, so namespaces that
// come and go cannot fill the map for good; those of a live one stay.
func TestPruneDeadNetns(t *testing.T) {
	p, _ := start(t, drops.DefaultConfig())
	gone, alive := netnstest.NewPair(t), netnstest.NewPair(t)
	gone.A.SendSYNs(t, fmt.Sprintf("%s:5040", gone.B.Addr), 2, 45000)
	alive.A.SendSYNs(t, fmt.Sprintf("%s:5040", alive.B.Addr), 2, 45000)
	inNetns := func(ino uint32) func() uint64 {
		return func() uint64 {
			return dropsWhere(t, p, func(d drops.DropCount) bool { return d.Netns == ino && d.Reason == "NO_SOCKET" })
		}
	}
	equalCount(t, "drops in the namespace to delete", 2, inNetns(gone.B.Inode))
	equalCount(t, "drops in the namespace that stays", 2, inNetns(alive.B.Inode))

	netnstest.PruneAfterClose(t, gone, p.PruneDeadNetns)
	if n := inNetns(gone.B.Inode)(); n != 0 {
		t.Errorf("deleted namespace still has %d drops counted", n)
	}
	if n := inNetns(alive.B.Inode)(); n != 2 {
		t.Errorf("live namespace lost its counters: %d, want 2", n)
	}
}
