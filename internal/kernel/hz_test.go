package kernel

import (
	"os"
	"testing"
)

// TestHZFromBPFMatchesTimerList checks the fallback used where /proc/timer_list is masked
// (containers) against the /proc/timer_list measurement.
func TestHZFromBPFMatchesTimerList(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads a BPF program")
	}
	want, err := timerListHZ()
	if err != nil {
		t.Fatal(err)
	}
	got, err := bpfJiffiesHZ()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("HZ from bpf_jiffies64: %d, from /proc/timer_list: %d", got, want)
	}
	t.Logf("HZ=%d", got)
}
