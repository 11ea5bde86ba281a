package txqueue

import (
	"errors"
	"fmt"
	"time"

	"github.com/tcpack/tcpack/internal/loader"
)

// windowHooks are the per-packet hooks ModeKernelStats attaches only in sampling windows.
var windowHooks = map[string]bool{HookXmit: true, HookPick: true, HookPickReturn: true}

// windows is ModeKernelStats' side of loader.Arming: for Window of every Period the per-packet
// hooks count per queue (for interfaces the kernel keeps no per-queue counter of), picks
// and flow_moved events; outside them nothing runs per packet.
type windows struct {
	p              *Probe
	hooks          []string // attached at load, so known to work on this kernel
	from           time.Time
	window, period time.Duration
	sampled        time.Duration // of the windows closed so far
	openedAt       time.Time     // the open window's start; zero while none is open
}

// startWindows detaches the per-packet hooks until the first window, which opens at the
// watcher's first poll.
func (p *Probe) startWindows() error {
	w := &windows{p: p, from: time.Now(), window: p.cfg.Window, period: p.cfg.Period}
	for _, h := range p.report.Hooks {
		if h.Attached != nil && windowHooks[h.Hook] {
			w.hooks = append(w.hooks, h.Hook)
		}
	}
	for _, h := range w.hooks {
		if err := p.set.Suspend(h); err != nil {
			return fmt.Errorf("%s: detach %s until the first sampling window: %w", Family, h, err)
		}
	}
	p.windows = w
	p.arming = loader.StartArming(w, &p.windowsMu, 0)
	return nil
}

func (w *windows) Busy(_ bool, now time.Time) (bool, error) {
	return loader.InWindow(w.from, now, w.window, w.period), nil
}

// Arm starts a new flow epoch, so that a flow's first packet in this window is not taken for
// a move from where it was in the last, then attaches the hooks. Without net_dev_start_xmit
// the window counts nothing: all or none, and the next poll tries again.
func (w *windows) Arm(now time.Time) (bool, error) {
	epochs := w.p.set.Maps[txqueueMapFlowEpoch]
	var epoch uint32
	if err := epochs.Lookup(uint32(0), &epoch); err != nil {
		return false, fmt.Errorf("%s: read flow epoch: %w", Family, err)
	}
	if err := epochs.Put(uint32(0), epoch+1); err != nil {
		return false, fmt.Errorf("%s: advance flow epoch: %w", Family, err)
	}
	var errs []error
	for _, h := range w.hooks {
		err := w.p.set.Resume(h)
		switch {
		case err != nil && h == HookXmit:
			for _, h := range w.hooks {
				w.p.set.Suspend(h)
			}
			return false, fmt.Errorf("%s: %w; the sampling window waits until it attaches", Family, err)
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w; picks are missing from this window", Family, err))
		}
	}
	w.openedAt = now
	return true, errors.Join(errs...)
}

func (w *windows) Disarm() (bool, error) {
	var errs []error
	for _, h := range w.hooks {
		errs = append(errs, w.p.set.Suspend(h))
	}
	w.sampled += time.Since(w.openedAt)
	w.openedAt = time.Time{}
	return true, errors.Join(errs...)
}

func (w *windows) Quiet(time.Time) error { return nil }

// Windowed says whether the per-packet hooks run in sampling windows (ModeKernelStats with
// a window).
func (p *Probe) Windowed() bool { return p.windows != nil }

// WindowOpen says whether a sampling window is open: the per-packet hooks are attached.
func (p *Probe) WindowOpen() bool {
	if p.arming == nil {
		return false
	}
	p.windowsMu.Lock()
	defer p.windowsMu.Unlock()
	return p.arming.Armed()
}

// SampledTime is how long the sampling windows have been open since the start: what the
// sampled counts (SourceSampled queues, picks, flow_moved events) cover in ModeKernelStats.
func (p *Probe) SampledTime() time.Duration {
	if p.windows == nil {
		return 0
	}
	p.windowsMu.Lock()
	defer p.windowsMu.Unlock()
	d := p.windows.sampled
	if !p.windows.openedAt.IsZero() {
		d += time.Since(p.windows.openedAt)
	}
	return d
}

// WindowErr returns the first error opening or closing a window since the last call, and
// forgets it.
func (p *Probe) WindowErr() error {
	if p.arming == nil {
		return nil
	}
	p.windowsMu.Lock()
	defer p.windowsMu.Unlock()
	return p.arming.TakeErr()
}
