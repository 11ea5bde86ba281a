package acks

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tcpack/tcpack/internal/loader"
)

// armPoll is how often the arming watcher reads the counts of in-scope sockets.
const armPoll = 100 * time.Millisecond

// perSegment are the hooks loader.AttachOnTraffic detaches while in-scope sockets are idle: each
// runs for segments of every TCP socket, in scope or not. sock_ops stays: it runs at
// a connection's establishment and, after that, only for in-scope sockets.
var perSegment = map[string]bool{
	"tcp_probe": true, "tcp_send_delayed_ack": true, hookDelackTimer: true,
}

// arming attaches the per-segment hooks while sock_ops sees in-scope sockets come and go, and
// detaches them after idleDetach with none open and none opened.
type arming struct {
	set        *loader.Set
	hooks      []string // attached at load, so known to work on this kernel
	idleDetach time.Duration

	mu       sync.Mutex
	armed    bool
	opened   int64     // in-scope sockets ever opened, as of the last poll
	idleFrom time.Time // when the last poll saw none open and none newly opened, while armed
	err      error     // the last attach or detach attempt's error, until the next attempt

	stopOnce sync.Once
	quit     chan struct{}
	done     chan struct{}
}

// startArming detaches the per-segment hooks that attached at load and starts the watcher.
func startArming(set *loader.Set, report loader.Report, idleDetach time.Duration) (*arming, error) {
	a := &arming{set: set, idleDetach: idleDetach, quit: make(chan struct{}), done: make(chan struct{})}
	for _, h := range report.Hooks {
		if h.Attached != nil && perSegment[h.Hook] {
			a.hooks = append(a.hooks, h.Hook)
		}
	}
	for _, h := range a.hooks {
		if err := set.Suspend(h); err != nil {
			return nil, fmt.Errorf("%s: detach %s until a socket in scope opens: %w", Family, h, err)
		}
	}
	go a.watch()
	return a, nil
}

func (a *arming) watch() {
	defer close(a.done)
	tick := time.NewTicker(armPoll)
	defer tick.Stop()
	for {
		select {
		case <-a.quit:
			return
		case now := <-tick.C:
			a.mu.Lock()
			a.step(now)
			a.mu.Unlock()
		}
	}
}

func (a *arming) step(now time.Time) {
	var open, opened int64
	m := a.set.Maps[acksMapSocksInScope]
	if err := errors.Join(m.Lookup(uint32(0), &open), m.Lookup(uint32(1), &opened)); err != nil {
		a.err = fmt.Errorf("%s: read sockets in scope: %w", Family, err)
		return
	}
	// A connection shorter than a poll shows only as a change of opened.
	busy := open > 0 || opened != a.opened
	a.opened = opened
	switch {
	case !a.armed && busy:
		a.err = a.arm()
	case a.armed && busy:
		a.idleFrom = time.Time{}
	case a.armed && a.idleFrom.IsZero():
		a.idleFrom = now
	case a.armed && now.Sub(a.idleFrom) >= a.idleDetach:
		a.err = a.disarm()
	}
}

// arm attaches the hooks, then lets sock_ops judge ACKs: an ACK whose segments tcp_probe could
// not see is then never in the statistics. Without tcp_probe nothing can be judged, so the
// family stays unarmed and tries again at the next poll; a missing delayed-ACK timer hook makes
// sock_ops infer timer ACKs from timing, as on kernels without it.
func (a *arming) arm() error {
	var errs []error
	hooked := uint32(0)
	for _, h := range a.hooks {
		err := a.set.Resume(h)
		switch {
		case err != nil && h == "tcp_probe":
			for _, h := range a.hooks {
				a.set.Suspend(h) // all or none, so that disarm has nothing to undo
			}
			return fmt.Errorf("%s: %w; ACK statistics wait until it attaches (acks.attach: always avoids re-attaching)", Family, err)
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w; that hook is missing until the next idle spell (acks.attach: always avoids re-attaching)", Family, err))
		case h == hookDelackTimer:
			hooked = hookedDelackTimer
		}
	}
	if err := a.set.Maps[acksMapHooked].Put(uint32(0), hooked); err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: record attached hooks: %w", Family, err))...)
	}
	if err := setArmed(a.set, true); err != nil {
		return errors.Join(append(errs, err)...)
	}
	a.armed, a.idleFrom = true, time.Time{}
	return errors.Join(errs...)
}

// disarm stops sock_ops judging first, then detaches the hooks.
func (a *arming) disarm() error {
	if err := setArmed(a.set, false); err != nil {
		return err
	}
	a.armed = false
	var errs []error
	for _, h := range a.hooks {
		errs = append(errs, a.set.Suspend(h))
	}
	return errors.Join(errs...)
}

// stop ends the watcher; nil-safe and idempotent.
func (a *arming) stop() {
	if a == nil {
		return
	}
	a.stopOnce.Do(func() {
		close(a.quit)
		<-a.done
	})
}

// state reports whether the hooks are attached, and the last attempt's error.
func (a *arming) state() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.armed, a.err
}

// setArmed tells sock_ops whether tcp_probe is attached, so whether its ACKs can be judged.
func setArmed(set *loader.Set, on bool) error {
	v := uint32(0)
	if on {
		v = 1
	}
	if err := set.Maps[acksMapArmed].Put(uint32(0), v); err != nil {
		return fmt.Errorf("%s: set armed: %w", Family, err)
	}
	return nil
}

// Armed says whether the per-segment hooks are attached and the statistics count (always
// true with loader.AttachAlways), and the last error attaching or detaching them, if the last
// attempt failed.
func (p *Probe) Armed() (bool, error) {
	if p.arming == nil {
		return true, nil
	}
	return p.arming.state()
}
