package kernel

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Capability bits (include/uapi/linux/capability.h).
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// CheckPrivileges returns one error naming every missing capability, so the user fixes the
// deployment once instead of discovering each missing bit in turn.
func CheckPrivileges() error {
	eff, err := effectiveCaps()
	if err != nil {
		return err
	}
	return missingCaps(eff)
}

func missingCaps(eff uint64) error {
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if has(capSysAdmin) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("tcpack needs %s (or CAP_SYS_ADMIN, or root) to load eBPF programs: run the collector as root, "+
		"or grant them with CAP_SYSLOG for kernel symbols, e.g. `setcap cap_bpf,cap_perfmon,cap_syslog+ep otelcol-tcpack`, "+
		"or in Kubernetes securityContext.capabilities.add", strings.Join(missing, ", "))
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("CapEff not found in /proc/self/status")
}
