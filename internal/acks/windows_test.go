package acks_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/netnstest"
)

// In windows the per-segment hooks judge ACKs only inside the sampling windows. A connection
// open since before the start is judged in the windows only where the window's walk can ask
// its socket for callbacks (Linux 6.12+: bpf_setsockopt of TCP_BPF_SOCK_OPS_CB_FLAGS from
// iter/tcp); elsewhere it is never judged, and the walk says so. Connections established
// inside a window are judged on every kernel. Outside the windows nothing is judged: the
// judged ACKs are a fraction of the segments sent, and the sampled time a fraction of the
// time, both close to window/period.
func TestWindowsSampleThePerSegmentTier(t *testing.T) {
	const window, period = 200 * time.Millisecond, time.Second
	pair := netnstest.NewPair(t)
	old := pair.Connect(t, 5160) // open before the start: an existing socket

	cfg := acks.DefaultConfig()
	cfg.PerSegment = true
	cfg.Attach = acks.AttachWindows
	cfg.Window, cfg.Period = window, period
	cfg.LocalPorts = []uint16{5160, 5161}
	p, _ := startAs(t, cfg)
	if armed, _ := p.Armed(); armed {
		t.Fatal("armed at the start, before the first window")
	}

	began := time.Now()
	churned := churn(t, pair, 5161, 4*period)
	old.Exchange(t, int(4*period/(5*time.Millisecond)), 5*time.Millisecond, 0)
	if n, err := churned(); err != nil || n == 0 {
		t.Fatalf("fresh connections: %d, %v", n, err)
	}
	elapsed := time.Since(began)
	sampled := p.SampledTime()

	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	losses, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	server := map[uint16]acks.Stats{}
	for _, s := range snap {
		if s.Netns == pair.B.Inode && s.Role == acks.RoleServer {
			server[s.ServerPort] = s
		}
	}
	judged := func(s acks.Stats) uint64 { return s.Acks() + s.OtherAcks }
	for _, port := range []uint16{5160, 5161} {
		s := server[port]
		t.Logf("port %d: %d of %d segments sent judged; %d sockets established, %d existing", port, judged(s), s.SegmentsOut, s.SocketsEstablished, s.SocketsExisting)
		logStats(t, s)
	}
	t.Logf("sampled %s of %s (window %s of %s); sockets the windows could not reach: %d", sampled, elapsed, window, period, losses.WindowUnreached)

	// Four periods of 200 ms windows, each opened and closed within a 100 ms poll.
	want := time.Duration(float64(elapsed) * float64(window) / float64(period))
	if sampled < want/2 || sampled > want*2 {
		t.Errorf("sampled %s, want about %s", sampled, want)
	}
	fresh := server[5161]
	if judged(fresh) == 0 {
		t.Error("no ACK of the connections established during the run was judged")
	}
	if fresh.SegmentsOut == 0 || judged(fresh)*2 > fresh.SegmentsOut {
		t.Errorf("port 5161: %d of %d segments sent judged, want a sample (about %d%%)", judged(fresh), fresh.SegmentsOut, 100*window/period)
	}
	existing := server[5160]
	switch {
	case losses.WindowUnreached == 0 && judged(existing) == 0:
		t.Error("the windows reached every socket, but no ACK of the connection open since before the start was judged")
	case losses.WindowUnreached == 0 && judged(existing)*2 > existing.SegmentsOut:
		t.Errorf("port 5160: %d of %d segments sent judged, want a sample (about %d%%)", judged(existing), existing.SegmentsOut, 100*window/period)
	case losses.WindowUnreached > 0 && judged(existing) != 0:
		t.Errorf("the windows could not reach %d sockets, yet %d ACKs of the connection open since before the start were judged", losses.WindowUnreached, judged(existing))
	}
}

// churn opens a fresh connection to B:port every 25 ms for the given time, each sending 4
// 64-byte requests 2 ms apart that the server reads at once; wait says how many ran.
func churn(t *testing.T, pair *netnstest.Pair, port int, lasting time.Duration) (wait func() (int, error)) {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", pair.B.Addr, port)
	ln := pair.B.Listen(t, "tcp4", addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() { done <- r }()
		msg := make([]byte, 64)
		for began := time.Now(); time.Since(began) < lasting; r.n++ {
			c, err := pair.A.Dial("tcp4", addr, time.Second)
			if err != nil {
				r.err = err
				return
			}
			for range 4 {
				if _, r.err = c.Write(msg); r.err != nil {
					c.Close()
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
			c.Close()
			time.Sleep(25 * time.Millisecond)
		}
	}()
	return func() (int, error) {
		r := <-done
		return r.n, r.err
	}
}

// A window closes on its schedule, but an ACK of data that arrived in it is judged when it
// leaves, also after the close: else no delay longer than what was left of the window would
// ever be measured. The client sends every 37 ms and the server reads every 200 ms, so past
// the quick-ACK quota the delayed-ACK timer sends each ACK about 40 ms after its data: those
// of data that came in a window's last 40 ms leave after it closed, and are judged (seen as
// tcpack.ack.delayed events sent between windows). Needs the windows' walk to reach the open
// connection (Linux 6.12+).
func TestWindowsJudgeACKsOfWindowDataAfterTheClose(t *testing.T) {
	const window, period = 100 * time.Millisecond, 300 * time.Millisecond
	pair := netnstest.NewPair(t)
	cfg := acks.DefaultConfig()
	cfg.PerSegment = true
	cfg.Attach = acks.AttachWindows
	cfg.Window, cfg.Period = window, period
	cfg.LocalPorts = []uint16{5162}
	p, log := startAs(t, cfg)

	// The windows as the family's state shows them, polled every 2 ms.
	type span struct{ open, close time.Time }
	var spans []span
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		var cur *span
		for {
			select {
			case <-stop:
				return
			case now := <-time.After(2 * time.Millisecond):
				armed, _ := p.Armed()
				switch {
				case armed && cur == nil:
					cur = &span{open: now}
				case !armed && cur != nil:
					cur.close = now
					spans = append(spans, *cur)
					cur = nil
				}
			}
		}
	}()
	netnstest.Eventually(t, 2*time.Second, "a window opens", func() (bool, string) {
		armed, err := p.Armed()
		return armed, fmt.Sprintf("armed %v, %v", armed, err)
	})
	c := pair.Connect(t, 5162)
	// 37 ms, out of step with the windows, so that arrivals fall at every point of them.
	c.Exchange(t, 150, 37*time.Millisecond, 200*time.Millisecond)
	time.Sleep(period)
	close(stop)
	<-polled

	s := serverStats(t, p, pair.B.Inode, 5162)
	logStats(t, s)
	losses, err := p.Losses()
	if err != nil {
		t.Fatal(err)
	}
	if losses.WindowUnreached > 0 {
		t.Skipf("this kernel refuses bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS) from iter/tcp (Linux 6.12+ has it; %d sockets unreached): a connection is sampled only in the window it was established in, and the timer's ACKs come only after its quick-ACK quota is spent, later than that", losses.WindowUnreached)
	}
	var after, between int
	events := log.Matching(func(e acks.Event) bool { return e.LocalPort == 5162 })
	for _, e := range events {
		for i, w := range spans {
			if i+1 < len(spans) && e.Time.After(w.close) && e.Time.Before(spans[i+1].open) {
				between++
				// Within the timer's 40 ms (and a poll of the state) of a close: judged
				// after it, as meant; later, a window's judging leaked out of it.
				if e.Time.Before(w.close.Add(60 * time.Millisecond)) {
					after++
				}
			}
		}
	}
	t.Logf("%d windows; %d delayed-ACK events, %d sent between windows, %d of them within 60 ms of a close", len(spans), len(events), between, after)
	if after == 0 {
		t.Error("no ACK of data that came in a window was judged after the window closed")
	}
	if between != after {
		t.Errorf("%d ACKs judged later than 60 ms after a window closed", between-after)
	}
}

// serverStats are the statistics of a server port in a namespace, now.
func serverStats(t *testing.T, p *acks.Probe, netns uint32, port uint16) acks.Stats {
	t.Helper()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		if s.Netns == netns && s.ServerPort == port && s.Role == acks.RoleServer {
			return s
		}
	}
	t.Fatalf("no statistics of port %d in netns %d: %+v", port, netns, snap)
	return acks.Stats{}
}
