package loader

import (
	"fmt"
	"sync"
	"time"
)

// ArmPoll is how often an AttachOnTraffic family's watcher polls for traffic: the longest a
// flow's or socket's first packets wait for the hooks.
const ArmPoll = 100 * time.Millisecond

// Traffic is a family's side of AttachOnTraffic: how it tells traffic from idle, and how it
// attaches and detaches the hooks that run per packet. The watcher calls it under the
// family's lock, one call at a time.
type Traffic interface {
	// Busy says whether traffic wants the hooks attached now (while armed: keeps them).
	Busy(armed bool, now time.Time) (bool, error)
	// Arm attaches the hooks and starts counting; armed false means it stays unarmed and the
	// watcher tries again at the next busy poll.
	Arm(now time.Time) (armed bool, err error)
	// Disarm stops counting and detaches the hooks; disarmed false means counting goes on
	// (the hooks stay, and the watcher tries again at the next idle poll).
	Disarm() (disarmed bool, err error)
	// Quiet runs at each poll while unarmed and not busy.
	Quiet(now time.Time) error
}

// Arming is the watcher both on-traffic families share: unarmed, it arms at the first busy
// poll; armed, it disarms after idleDetach without one.
type Arming struct {
	traffic    Traffic
	idleDetach time.Duration
	mu         sync.Locker

	armed    bool
	lastBusy time.Time
	lastErr  error // the last poll's, until the next
	firstErr error // the first since TakeErr

	stopOnce sync.Once
	quit     chan struct{}
	done     chan struct{}
}

// StartArming starts the watcher of a family whose hooks are detached (unarmed); mu is the
// family's lock, held around every Traffic call.
func StartArming(t Traffic, mu sync.Locker, idleDetach time.Duration) *Arming {
	a := &Arming{traffic: t, idleDetach: idleDetach, mu: mu, quit: make(chan struct{}), done: make(chan struct{})}
	go a.watch()
	return a
}

func (a *Arming) watch() {
	defer close(a.done)
	tick := time.NewTicker(ArmPoll)
	defer tick.Stop()
	for {
		select {
		case <-a.quit:
			return
		case now := <-tick.C:
			a.mu.Lock()
			a.lastErr = a.step(now)
			if a.firstErr == nil {
				a.firstErr = a.lastErr
			}
			a.mu.Unlock()
		}
	}
}

func (a *Arming) step(now time.Time) error {
	busy, err := a.traffic.Busy(a.armed, now)
	if err != nil {
		return err
	}
	switch {
	case busy && !a.armed:
		armed, err := a.traffic.Arm(now)
		if armed {
			a.armed, a.lastBusy = true, now
		}
		return err
	case busy:
		a.lastBusy = now
	case !a.armed:
		return a.traffic.Quiet(now)
	case now.Sub(a.lastBusy) >= a.idleDetach:
		disarmed, err := a.traffic.Disarm()
		if disarmed {
			a.armed = false
		}
		return err
	}
	return nil
}

// Stop ends the watcher; nil-safe and idempotent. Call it without the family's lock.
func (a *Arming) Stop() {
	if a == nil {
		return
	}
	a.stopOnce.Do(func() {
		close(a.quit)
		<-a.done
	})
}

// Armed says whether the hooks are attached; call it with the family's lock held.
func (a *Arming) Armed() bool { return a.armed }

// LastErr is the last poll's error, nil once a poll went well; with the family's lock held.
func (a *Arming) LastErr() error { return a.lastErr }

// TakeErr returns the first error since the previous TakeErr and forgets it; with the
// family's lock held.
func (a *Arming) TakeErr() error {
	err := a.firstErr
	a.firstErr = nil
	return err
}

// MinWindow is the shortest sampling window: one poll of the watcher that opens and closes
// the windows.
const MinWindow = ArmPoll

// CheckWindows validates a sampling window and period.
func CheckWindows(window, period time.Duration) error {
	switch {
	case window < MinWindow:
		return fmt.Errorf("window %s, at least %s", window, MinWindow)
	case period <= window:
		return fmt.Errorf("period %s, longer than the window %s", period, window)
	}
	return nil
}

// InWindow says whether now falls in one of the windows that open at from and every period
// after it, each window long; a Traffic that samples in windows is busy then.
func InWindow(from, now time.Time, window, period time.Duration) bool {
	return now.Sub(from)%period < window
}
