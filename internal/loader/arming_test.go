package loader

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// scripted is a Traffic whose answers the test sets, recording what the watcher asked.
type scripted struct {
	busy      bool
	armFails  bool
	calls     []string
	disarmErr error
}

func (s *scripted) Busy(bool, time.Time) (bool, error) { return s.busy, nil }
func (s *scripted) Arm(time.Time) (bool, error) {
	s.calls = append(s.calls, "arm")
	if s.armFails {
		return false, errors.New("no tcp_probe")
	}
	return true, nil
}
func (s *scripted) Disarm() (bool, error) {
	s.calls = append(s.calls, "disarm")
	return s.disarmErr == nil, s.disarmErr
}
func (s *scripted) Quiet(time.Time) error { s.calls = append(s.calls, "quiet"); return nil }

func TestArmingCycle(t *testing.T) {
	s := &scripted{}
	var mu sync.Mutex
	a := &Arming{traffic: s, idleDetach: time.Second, mu: &mu}
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	if err := a.step(at(0)); err != nil || a.Armed() {
		t.Fatalf("idle and unarmed: armed %v, err %v", a.Armed(), err)
	}
	s.busy, s.armFails = true, true
	if err := a.step(at(100 * time.Millisecond)); err == nil || a.Armed() {
		t.Fatalf("a failed arm must leave it unarmed with the error: armed %v, err %v", a.Armed(), err)
	}
	s.armFails = false
	if err := a.step(at(200 * time.Millisecond)); err != nil || !a.Armed() {
		t.Fatalf("busy: armed %v, err %v", a.Armed(), err)
	}
	s.busy = false
	if a.step(at(1100 * time.Millisecond)); !a.Armed() {
		t.Fatal("disarmed before idle_detach had passed since the last busy poll")
	}
	s.disarmErr = errors.New("map write failed")
	if err := a.step(at(1200 * time.Millisecond)); err == nil || !a.Armed() {
		t.Fatalf("a failed disarm must leave it armed with the error: armed %v, err %v", a.Armed(), err)
	}
	s.disarmErr = nil
	if a.step(at(1300 * time.Millisecond)); a.Armed() {
		t.Fatal("still armed after idle_detach without traffic")
	}
	want := []string{"quiet", "arm", "arm", "disarm", "disarm", "quiet"}
	a.step(at(1400 * time.Millisecond))
	if got := s.calls; len(got) != len(want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	for i := range want {
		if s.calls[i] != want[i] {
			t.Fatalf("calls %v, want %v", s.calls, want)
		}
	}
}

func TestArmingKeepsFirstErrorUntilTaken(t *testing.T) {
	s := &scripted{busy: true, armFails: true}
	var mu sync.Mutex
	a := StartArming(s, &mu, time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		last := a.LastErr()
		mu.Unlock()
		if last != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never polled")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.Stop()
	a.Stop() // idempotent
	if err := a.TakeErr(); err == nil {
		t.Fatal("TakeErr lost the arm error")
	}
	if err := a.TakeErr(); err != nil {
		t.Fatalf("TakeErr returned %v twice", err)
	}
}
