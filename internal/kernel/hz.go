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
// it is measured and rounded to the nearest rate Linux builds with. A BPF program reads
// jiffies (bpf_jiffies64) at two tick edges 200 ms apart; where it cannot load, jiffies come
// from /proc/timer_list (which container runtimes mask). HZ 250 and 300 are only 20% apart,
// and a loaded machine or an emulated one can stretch a short window: a measurement more than
// 4% from every rate is taken again, up to three times.
func HZ() (int, error) {
	var errs []error
	for _, measure := range []func() (float64, error){bpfJiffiesRate, timerListRate} {
		best, bestOff := 0, 1.0
		var err error
		for range 3 {
			var rate float64
			if rate, err = measure(); err != nil {
				break
			}
			hz := nearestHZ(rate)
			if off := abs(rate-float64(hz)) / float64(hz); off < bestOff {
				best, bestOff = hz, off
			}
			if bestOff <= 0.04 {
				break
			}
		}
		if best != 0 {
			return best, nil
		}
		if err == nil { // measured, but never within 100% of any CONFIG_HZ
			err = errors.New("jiffies advance at no CONFIG_HZ rate")
		}
		errs = append(errs, err)
	}
	return 0, fmt.Errorf("measure HZ: %w", errors.Join(errs...))
}

// timerListRate: jiffies against the clock in /proc/timer_list, 200 ms apart.
func timerListRate() (float64, error) {
	j1, t1, err := timerListJiffies()
	if err != nil {
		return 0, err
	}
	time.Sleep(200 * time.Millisecond)
	j2, t2, err := timerListJiffies()
	if err != nil {
		return 0, err
	}
	if t2 <= t1 {
		return 0, errors.New("/proc/timer_list: clock did not advance")
	}
	return float64(j2-j1) / (float64(t2-t1) / 1e9), nil
}

// bpfJiffiesRate runs a socket filter that returns bpf_jiffies64 (its low 32 bits: the
// program's return value is 32 bits wide), waits for the value to change twice about 200 ms
// apart, and divides the ticks by the time between the two changes.
func bpfJiffiesRate() (float64, error) {
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
	time.Sleep(200 * time.Millisecond)
	j2, t2, err := edge()
	if err != nil {
		return 0, err
	}
	return float64(j2-j1) / t2.Sub(t1).Seconds(), nil
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
