package kernel

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"
)

// HZ measures the kernel's tick rate (CONFIG_HZ), which some socket fields count in (the
// delayed-ACK timeout icsk_ack.ato). It is not in BTF, and /boot/config-* is often absent, so
// it is measured: jiffies against the clock in /proc/timer_list, 50 ms apart, rounded to the
// nearest rate Linux builds with.
func HZ() (int, error) {
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
	measured := float64(j2-j1) / (float64(t2-t1) / 1e9)
	best := 0
	for _, hz := range []int{100, 250, 300, 1000} {
		if best == 0 || abs(measured-float64(hz)) < abs(measured-float64(best)) {
			best = hz
		}
	}
	return best, nil
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
