package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// HZ measures the kernel's tick rate (CONFIG_HZ), which some socket fields count in (the
// delayed-ACK timeout icsk_ack.ato). It is not in BTF, and /boot/config-* is often absent, so
// it is measured: jiffies against the clock in /proc/timer_list, 50 ms apart, rounded to the
// nearest rate Linux builds with. Container runtimes mask /proc/timer_list; jiffies are then
// read by a BPF program (bpf_jiffies64) at two tick edges.
func HZ() (int, error) {
	hz, err := timerListHZ()
	if err == nil {
		return hz, nil
	}
	hz, bpfErr := bpfJiffiesHZ()
	if bpfErr != nil {
		return 0, errors.Join(err, bpfErr)
	}
	return hz, nil
}

func timerListHZ() (int, error) {
	j1, t1, err := timerListJiffies()
	if err != nil {
		return 0, err
	}
	time.Sleep(50 * time.Millisecond)
	j2, t2, err := timerListJiffies()
	if err != nil {
		return 0, err
	}
	if t2 <= t1 {
		return 0, errors.New("/proc/timer_list: clock did not advance")
	}
	return nearestHZ(float64(j2-j1) / (float64(t2-t1) / 1e9)), nil
}

// bpfJiffiesHZ runs a socket filter that returns bpf_jiffies64 (its low 32 bits: the program's
// return value is 32 bits wide), waits for the value to change twice about 100 ms apart, and
// divides the ticks by the time between the two changes.
func bpfJiffiesHZ() (int, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.FnJiffies64.Call(),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return 0, fmt.Errorf("load a bpf_jiffies64 program: %w", err)
	}
	defer prog.Close()
	packet := make([]byte, 64) // test runs of socket filters need at least an Ethernet header
	jiffies := func() (uint32, error) {
		return prog.Run(&ebpf.RunOptions{Data: packet})
	}
	// edge waits for the next tick and returns its jiffies and when it was seen.
	edge := func() (uint32, time.Time, error) {
		start, err := jiffies()
		if err != nil {
			return 0, time.Time{}, err
		}
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
			j, err := jiffies()
			if err != nil {
				return 0, time.Time{}, err
			}
			if j != start {
				return j, time.Now(), nil
			}
		}
		return 0, time.Time{}, errors.New("bpf_jiffies64 did not advance in 1 s")
	}
	j1, t1, err := edge()
	if err != nil {
		return 0, err
	}
	time.Sleep(100 * time.Millisecond)
	j2, t2, err := edge()
	if err != nil {
		return 0, err
	}
	return nearestHZ(float64(j2-j1) / t2.Sub(t1).Seconds()), nil
}

// nearestHZ rounds a measured tick rate to the nearest one Linux builds with.
func nearestHZ(measured float64) int {
	best := 0
	for _, hz := range []int{100, 250, 300, 1000} {
		if best == 0 || abs(measured-float64(hz)) < abs(measured-float64(best)) {
			best = hz
		}
	}
	return best
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// timerListJiffies reads the first "now at N nsecs" and "jiffies: N" of /proc/timer_list.
func timerListJiffies() (jiffies uint64, nowNs uint64, err error) {
	f, err := os.Open("/proc/timer_list")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() && (jiffies == 0 || nowNs == 0) {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "now at "); ok && nowNs == 0 {
			nowNs, _ = strconv.ParseUint(strings.TrimSuffix(v, " nsecs"), 10, 64)
		} else if v, ok := strings.CutPrefix(line, "jiffies: "); ok && jiffies == 0 {
			jiffies, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if jiffies == 0 || nowNs == 0 {
		return 0, 0, errors.New("/proc/timer_list has no jiffies or clock line")
	}
	return jiffies, nowNs, nil
}
