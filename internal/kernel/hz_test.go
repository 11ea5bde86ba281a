package kernel

import (
	"os"
	"testing"
)

// TestHZFromBPFMatchesTimerList checks the two ways of measuring HZ against each other
// (containers mask /proc/timer_list, so the BPF one is what runs there).
func TestHZFromBPFMatchesTimerList(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads a BPF program")
	}
	timerList, err := timerListRate()
	if err != nil {
		t.Fatal(err)
	}
	bpf, err := bpfJiffiesRate()
	if err != nil {
		t.Fatal(err)
	}
	if nearestHZ(bpf) != nearestHZ(timerList) {
		t.Errorf("HZ from bpf_jiffies64: %.1f, from /proc/timer_list: %.1f", bpf, timerList)
	}
	hz, err := HZ()
	if err != nil || hz != nearestHZ(bpf) {
		t.Errorf("HZ() = %d, %v; the measurements say %d", hz, err, nearestHZ(bpf))
	}
	t.Logf("HZ=%d (bpf_jiffies64 %.2f/s, /proc/timer_list %.2f/s)", hz, bpf, timerList)
}
