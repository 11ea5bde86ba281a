package acks_test

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// segments are the three counters of TCP_INFO the family's counts come from.
type segments struct{ out, dataOut, dataIn uint64 }

func segmentsOf(i *unix.TCPInfo) segments {
	return segments{uint64(i.Segs_out), uint64(i.Data_segs_out), uint64(i.Data_segs_in)}
}

func (s segments) minus(o segments) segments {
	return segments{s.out - o.out, s.dataOut - o.dataOut, s.dataIn - o.dataIn}
}

func (s segments) plus(o segments) segments {
	return segments{s.out + o.out, s.dataOut + o.dataOut, s.dataIn + o.dataIn}
}

func countsOf(s acks.Stats) segments {
	return segments{s.SegmentsOut, s.DataSegmentsOut, s.DataSegmentsIn}
}

// keyed finds the statistics of one (netns, service port, role) in a snapshot.
func keyed(snap []acks.Stats, netns uint32, port uint16, role acks.Role) (acks.Stats, bool) {
	for _, s := range snap {
		if s.Netns == netns && s.ServerPort == port && s.Role == role {
			return s, true
		}
	}
	return acks.Stats{}, false
}

func snapshot(t *testing.T, p *acks.Probe) []acks.Stats {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestCountsEqualTheSocketsOwn: with no per-segment hook, the counts per service port equal
// the sums of the sockets' own TCP_INFO counters, read once the sockets are closed, exactly;
// and the ACKs counted as the delayed-ACK timer's equal the kernel's TcpExtDelayedACKs of the
// namespace, on a workload where the timer fires for nearly every request. A connection
// opened before the family started is counted from the start on; the walk in between counts
// every open socket once, by quick-ACK mode.
func TestCountsEqualTheSocketsOwn(t *testing.T) {
	pair := netnstest.NewPair(t)
	early := pair.Connect(t, 5142)
	early.Exchange(t, 20, time.Millisecond, 0)
	// Idle from here until the family has started: nothing is sent in between.
	earlyClient, earlyServer := segmentsOf(netnstest.TCPInfo(t, early.Client)), segmentsOf(netnstest.TCPInfo(t, early.Server))

	p, _ := startAs(t, acks.DefaultConfig())
	for _, h := range p.Report().Hooks {
		if h.Hook == "tcp_probe" || h.Hook == "tcp_send_delayed_ack" {
			t.Fatalf("per-segment hook %s loaded without the per-segment tier", h.Hook)
		}
	}
	if err := p.WalkErr(); err != nil {
		t.Fatalf("sockets open at the start: %v", err)
	}
	timerBefore := delayedACKs(t, pair.B)
	lockedBefore := pair.B.Netstat(t, "TcpExt", "DelayedACKLocked")

	early.Exchange(t, 30, 2*time.Millisecond, 0)
	slow := pair.PacedTraffic(t, 5140, 300, 2*time.Millisecond, 50*time.Millisecond)

	const conns, requests = 4, 75
	rr := pair.ConnectMany(t, 5141, conns)
	wait := netnstest.AnswerLateAll(rr, requests, 100*time.Millisecond)
	// Mid-run, every open socket is walked once: four of 5141 on each side, one of 5140
	// and of 5142.
	time.Sleep(time.Second)
	mid := snapshot(t, p)
	for _, want := range []struct {
		netns uint32
		port  uint16
		role  acks.Role
		n     uint64
	}{
		{pair.B.Inode, 5141, acks.RoleServer, conns}, {pair.A.Inode, 5141, acks.RoleClient, conns},
		{pair.B.Inode, 5140, acks.RoleServer, 1}, {pair.B.Inode, 5142, acks.RoleServer, 1}, {pair.A.Inode, 5142, acks.RoleClient, 1},
	} {
		s, _ := keyed(mid, want.netns, want.port, want.role)
		var open uint64
		for _, n := range s.Sockets {
			open += n
		}
		if open != want.n {
			t.Errorf("port %d %s: %d sockets open at the walk %v, want %d", want.port, want.role, open, s.Sockets, want.n)
		}
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}

	want := map[string]segments{}
	add := func(port uint16, client, server segments) {
		want[fmt.Sprintf("%d/client", port)] = want[fmt.Sprintf("%d/client", port)].plus(client)
		want[fmt.Sprintf("%d/server", port)] = want[fmt.Sprintf("%d/server", port)].plus(server)
	}
	c, s := early.Finish(t)
	add(5142, segmentsOf(c).minus(earlyClient), segmentsOf(s).minus(earlyServer))
	c, s = slow.Finish(t)
	add(5140, segmentsOf(c), segmentsOf(s))
	for _, conn := range rr {
		c, s := conn.Finish(t)
		add(5141, segmentsOf(c), segmentsOf(s))
	}

	final := snapshot(t, p)
	for _, port := range []uint16{5140, 5141, 5142} {
		for _, side := range []struct {
			netns uint32
			role  acks.Role
		}{{pair.B.Inode, acks.RoleServer}, {pair.A.Inode, acks.RoleClient}} {
			got, ok := keyed(final, side.netns, port, side.role)
			if !ok {
				t.Errorf("port %d %s: no statistics", port, side.role)
				continue
			}
			w := want[fmt.Sprintf("%d/%s", port, side.role)]
			t.Logf("port %d %s: counted %+v, TCP_INFO %+v; %d control segments sent, %d timer ACKs",
				port, side.role, countsOf(got), w, got.ControlSegmentsOut(), got.TimerAcks)
			if countsOf(got) != w {
				t.Errorf("port %d %s: counted {segs_out, data_segs_out, data_segs_in} %+v, TCP_INFO says %+v", port, side.role, countsOf(got), w)
			}
			if m, ok := keyed(mid, side.netns, port, side.role); ok && (m.SegmentsOut > got.SegmentsOut || m.DataSegmentsIn > got.DataSegmentsIn) {
				t.Errorf("port %d %s: counts went backwards: mid-run %+v, final %+v", port, side.role, countsOf(m), countsOf(got))
			}
		}
	}
	if s, _ := keyed(final, pair.B.Inode, 5142, acks.RoleServer); s.SocketsExisting != 1 || s.SocketsEstablished != 0 {
		t.Errorf("port 5142: %d sockets counted as existing, %d as established; want 1 and 0", s.SocketsExisting, s.SocketsEstablished)
	}
	if s, _ := keyed(final, pair.B.Inode, 5141, acks.RoleServer); s.SocketsEstablished != conns {
		t.Errorf("port 5141: %d sockets counted as established, want %d", s.SocketsEstablished, conns)
	}

	var timer, deferred uint64
	for _, s := range final {
		if s.Netns == pair.B.Inode {
			timer += s.TimerAcks
			deferred += s.TimerDeferred
		}
	}
	kernel := delayedACKs(t, pair.B) - timerBefore
	locked := pair.B.Netstat(t, "TcpExt", "DelayedACKLocked") - lockedBefore
	t.Logf("delayed-ACK timer: %d ACKs counted, %d expiries deferred to the socket's release; TcpExtDelayedACKs %d, TcpExtDelayedACKLocked %d",
		timer, deferred, kernel, locked)
	if kernel < conns*requests/2 {
		t.Fatalf("the server's delayed-ACK timer sent %d ACKs for %d late answers: the workload did not make it fire", kernel, conns*requests)
	}
	if ok, why := acks.TimerCountsAgree(timer, deferred, kernel, p.TimerDeferredSeen()); !ok {
		t.Error(why)
	} else {
		t.Log(why)
	}
	losses, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	if losses.TimerUnknown != 0 || losses.SocketsFull != 0 || losses.KeysFull != 0 {
		t.Errorf("losses %+v, want none", losses)
	}
}

// TestCountsWithEveryTimerStrategy: the delayed-ACK timer's ACKs are counted by whichever
// mechanism the kernel offers (fentry or kprobe on the handler, else timer_expire_entry),
// each exercised where the kernel matrix says it must work.
func TestCountsWithEveryTimerStrategy(t *testing.T) {
	runs := []struct {
		kind loader.Kind
		only []loader.Kind
	}{
		{loader.FEntry, []loader.Kind{loader.SockOps, loader.TPBTF, loader.FEntry, loader.Iter}},
		{loader.Kprobe, []loader.Kind{loader.SockOps, loader.TPBTF, loader.Kprobe, loader.Iter}},
		{loader.TPBTF, []loader.Kind{loader.SockOps, loader.TPBTF, loader.Iter}},
	}
	for i, run := range runs {
		t.Run(string(run.kind), func(t *testing.T) {
			cfg := acks.DefaultConfig()
			cfg.Strategies = run.only
			p, _ := startAs(t, cfg)
			var got *loader.Strategy
			for _, h := range p.Report().Hooks {
				if h.Hook == "delack_timer" {
					got = h.Attached
				}
			}
			if got == nil || got.Kind != run.kind {
				if run.kind == loader.TPBTF || expected(run.kind) {
					t.Fatalf("delack_timer attached with %v, want %s", got, run.kind)
				}
				t.Skipf("this kernel has no %s for tcp_delack_timer_handler (TCPACK_EXPECT does not name it)", run.kind)
			}
			pair := netnstest.NewPair(t)
			before := delayedACKs(t, pair.B)
			port := uint16(5145 + i)
			conn := pair.Connect(t, int(port))
			if err := conn.AnswerLate(40, 100*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			conn.Finish(t)
			s, _ := keyed(snapshot(t, p), pair.B.Inode, port, acks.RoleServer)
			kernel := delayedACKs(t, pair.B) - before
			t.Logf("%s: %d timer ACKs counted (%d deferred), TcpExtDelayedACKs %d", run.kind, s.TimerAcks, s.TimerDeferred, kernel)
			if kernel < 10 {
				t.Fatalf("the timer sent only %d ACKs: the workload did not make it fire", kernel)
			}
			if ok, why := acks.TimerCountsAgree(s.TimerAcks, s.TimerDeferred, kernel, p.TimerDeferredSeen()); !ok {
				t.Error(why)
			} else {
				t.Log(why)
			}
		})
	}
}
