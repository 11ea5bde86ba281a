package acks

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tcpack/tcpack/internal/loader"
)

// armPoll is how often the arming watcher reads the count of open in-scope sockets.
const armPoll = 100 * time.Millisecond

// perSegment are the hooks loader.AttachOnTraffic detaches while no in-scope socket is open: each
// runs for segments or reads of every TCP socket, in scope or not. sock_ops stays: it runs at
// a connection's establishment and, after that, only for in-scope sockets.
var perSegment = map[string]bool{
	"tcp_probe": true, "tcp_rcv_space_adjust": true, "tcp_send_delayed_ack": true, hookDelackTimer: true,
}

// arming attaches the per-segment hooks while sock_ops counts an open in-scope socket and
// detaches them after idleDetach without one.
type arming struct {
	set        *loader.Set
	hooks      []string // attached at load, so known to work on this kernel
	idleDetach time.Duration

	mu       sync.Mutex
	armed    bool
	idleFrom time.Time // when the count of open sockets was last seen at 0 while armed
	err      error     // the last arming error, until one succeeds

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
			a.err = a.step(now)
			a.mu.Unlock()
		}
	}
}

func (a *arming) step(now time.Time) error {
	var live int64
	if err := a.set.Maps[acksMapLiveSocks].Lookup(uint32(0), &live); err != nil {
		return fmt.Errorf("%s: read open sockets in scope: %w", Family, err)
	}
	switch {
	case !a.armed && live > 0:
		return a.arm()
	case a.armed && live > 0:
		a.idleFrom = time.Time{}
	case a.armed && a.idleFrom.IsZero():
		a.idleFrom = now
	case a.armed && now.Sub(a.idleFrom) >= a.idleDetach:
		return a.disarm()
	}
	return nil
}

// arm attaches the hooks, then lets sock_ops count: an ACK whose segments tcp_probe could not
// see is then never in the statistics. A hook that fails to attach again is left out until
// the next arming.
func (a *arming) arm() error {
	var errs []error
	for _, h := range a.hooks {
		if err := a.set.Resume(h); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w; that hook is missing until the next idle spell (acks.attach: always avoids re-attaching)", Family, err))
		}
	}
	if err := setArmed(a.set, true); err != nil {
		return errors.Join(append(errs, err)...)
	}
	a.armed, a.idleFrom = true, time.Time{}
	return errors.Join(errs...)
}

// disarm stops sock_ops counting first, then detaches the hooks.
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

// state reports whether the hooks are attached, and the last arming error.
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
