package acks

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcpack/tcpack/internal/loader"
)

// perSegment are the hooks loader.AttachOnTraffic detaches while in-scope sockets are idle: each
// runs for segments of every TCP socket, in scope or not. sock_ops stays: it runs at
// a connection's establishment and, after that, only for in-scope sockets.
var perSegment = map[string]bool{
	"tcp_probe": true, "tcp_send_delayed_ack": true,
}

// sockTraffic is the ACK family's side of loader.Arming: traffic is an in-scope socket open,
// or opened since the last poll, as sock_ops counts them.
type sockTraffic struct {
	p      *Probe
	set    *loader.Set
	hooks  []string // attached at load, so known to work on this kernel
	opened int64    // in-scope sockets ever opened, as of the last poll
}

// startArming detaches the per-segment hooks that attached at load and starts the watcher.
func (p *Probe) startArming(idleDetach time.Duration) error {
	t, err := p.suspendPerSegment("until a socket in scope opens")
	if err != nil {
		return err
	}
	p.arming = loader.StartArming(t, &p.mu, idleDetach)
	return nil
}

// suspendPerSegment detaches the per-segment hooks that attached at load.
func (p *Probe) suspendPerSegment(until string) (*sockTraffic, error) {
	t := &sockTraffic{p: p, set: p.set}
	for _, h := range p.report.Hooks {
		if h.Attached != nil && perSegment[h.Hook] {
			t.hooks = append(t.hooks, h.Hook)
		}
	}
	for _, h := range t.hooks {
		if err := p.set.Suspend(h); err != nil {
			return nil, fmt.Errorf("%s: detach %s %s: %w", Family, h, until, err)
		}
	}
	return t, nil
}

// windowTraffic is the ACK family's side of loader.Arming in windows: "traffic" is the
// window at the start of each period. The watcher polls every loader.ArmPoll, so a window
// opens and closes within a poll of its schedule.
type windowTraffic struct {
	*sockTraffic
	from           time.Time
	window, period time.Duration
}

// startWindows detaches the per-segment hooks until the first window.
func (p *Probe) startWindows() error {
	t, err := p.suspendPerSegment("until the first sampling window")
	if err != nil {
		return err
	}
	w := &windowTraffic{sockTraffic: t, from: time.Now(), window: p.cfg.Window, period: p.cfg.Period}
	// Disarmed at the first poll outside a window: no idle spell.
	p.arming = loader.StartArming(w, &p.mu, 0)
	return nil
}

func (w *windowTraffic) Busy(_ bool, now time.Time) (bool, error) {
	return loader.InWindow(w.from, now, w.window, w.period), nil
}

// Arm attaches the hooks, arms, then asks the sockets already open for their per-segment
// callbacks (established ones get it from sock_ops while armed).
func (w *windowTraffic) Arm(now time.Time) (bool, error) {
	armed, err := w.sockTraffic.Arm(now)
	if !armed {
		return false, err
	}
	return true, errors.Join(err, w.p.openWindow())
}

// openWindow runs the window's walk, where the kernel took its program, in the namespaces
// of the last collection's walk; a namespace new since has only its connections established
// in a window sampled until the next collection. No socket counted, no walk: it would visit
// every bucket of the kernel's socket tables for nothing.
func (p *Probe) openWindow() error {
	namespaces := p.walked.Load()
	if p.set.Link(hookWindowWalk) == nil || namespaces == nil {
		return nil
	}
	var key uint64
	if err := p.set.Maps[acksMapAckSockIds].NextKey(nil, &key); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return p.walkEach(hookWindowWalk, *namespaces, func([]byte) {})
}

func (t *sockTraffic) Busy(bool, time.Time) (bool, error) {
	var open, opened int64
	m := t.set.Maps[acksMapSocksInScope]
	if err := errors.Join(m.Lookup(uint32(0), &open), m.Lookup(uint32(1), &opened)); err != nil {
		return false, fmt.Errorf("%s: read sockets in scope: %w", Family, err)
	}
	// A connection shorter than a poll shows only as a change of opened.
	busy := open > 0 || opened != t.opened
	t.opened = opened
	return busy, nil
}

// Arm attaches the hooks, then lets sock_ops judge ACKs: an ACK whose segments tcp_probe could
// not see is then never in the statistics. Without tcp_probe nothing can be judged, so the
// family stays unarmed and tries again at the next poll.
func (t *sockTraffic) Arm(now time.Time) (bool, error) {
	var errs []error
	for _, h := range t.hooks {
		err := t.set.Resume(h)
		switch {
		case err != nil && h == "tcp_probe":
			for _, h := range t.hooks {
				t.set.Suspend(h) // all or none, so that disarm has nothing to undo
			}
			return false, fmt.Errorf("%s: %w; ACK statistics wait until it attaches (acks.per_segment.attach: always avoids re-attaching)", Family, err)
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w; that hook is missing until the next idle spell (acks.per_segment.attach: always avoids re-attaching)", Family, err))
		}
	}
	if err := setArmed(t.set, true); err != nil {
		return false, errors.Join(append(errs, err)...)
	}
	t.p.judgingSince = now
	return true, errors.Join(errs...)
}

// Disarm stops sock_ops judging first, then detaches the hooks.
func (t *sockTraffic) Disarm() (bool, error) {
	if err := setArmed(t.set, false); err != nil {
		return false, err
	}
	t.p.sampled += time.Since(t.p.judgingSince)
	t.p.judgingSince = time.Time{}
	var errs []error
	for _, h := range t.hooks {
		errs = append(errs, t.set.Suspend(h))
	}
	return true, errors.Join(errs...)
}

func (t *sockTraffic) Quiet(time.Time) error { return nil }

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
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.arming.Armed(), p.arming.LastErr()
}

// SampledTime is how long the per-segment hooks have judged ACKs since the start: the
// per-segment statistics cover that much of the time (all of it with loader.AttachAlways).
func (p *Probe) SampledTime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.sampled
	if !p.judgingSince.IsZero() {
		d += time.Since(p.judgingSince)
	}
	return d
}
