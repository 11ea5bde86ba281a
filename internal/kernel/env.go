package kernel

import (
	"errors"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Env is what the probe families need to know about the running kernel, read once at start.
type Env struct {
	BTF      *btf.Spec
	Kallsyms *Kallsyms
	Netns    *NetnsNames
	// bootOffset converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall-clock time.
	bootOffset time.Duration
}

// Open checks privileges and reads BTF and kallsyms. Its one error names everything that is
// missing (capabilities, kernel symbols, BTF) and how to provide it; nothing is loaded into
// the kernel.
func Open() (*Env, error) {
	privileges := CheckPrivileges()
	syms, symbols := LoadKallsyms()
	spec, types := LoadBTF()
	if err := errors.Join(privileges, symbols, types); err != nil {
		return nil, err
	}
	return &Env{BTF: spec, Kallsyms: syms, Netns: &NetnsNames{}, bootOffset: monotonicOffset()}, nil
}

// monotonicOffset is wall-clock time minus CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonicOffset() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

// KtimeToTime converts a bpf_ktime_get_ns timestamp to wall-clock time.
func (e *Env) KtimeToTime(ktime uint64) time.Time {
	return time.Unix(0, int64(ktime)+int64(e.bootOffset))
}
