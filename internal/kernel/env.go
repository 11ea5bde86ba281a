package kernel

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Env is what the probe families need to know about the running kernel, read once at start.
type Env struct {
	BTF      *btf.Spec
	Kallsyms *Kallsyms
	Netns    *NetnsNames
	// HostNetns is the inode of the collector's own network namespace.
	HostNetns uint32
	// bootOffset converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall-clock time.
	bootOffset time.Duration
}

// Open checks privileges and reads BTF and kallsyms. Its errors say what is missing and how
// to provide it; nothing is loaded into the kernel.
func Open() (*Env, error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	spec, err := LoadBTF()
	if err != nil {
		return nil, err
	}
	syms, err := LoadKallsyms()
	if err != nil {
		return nil, err
	}
	host, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("own network namespace: %w", err)
	}
	return &Env{BTF: spec, Kallsyms: syms, Netns: &NetnsNames{}, HostNetns: host, bootOffset: monotonicOffset()}, nil
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
