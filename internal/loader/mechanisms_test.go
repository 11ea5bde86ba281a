package loader_test

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/loader"
)

// expected lists the attach mechanisms the kernel under test must support, from
// TCPACK_EXPECT (set per kernel by the kernel matrix, `make vmtest`). A mechanism that is
// expected and fails is a failure; one that is not expected and fails is skipped with the
// kernel's reason.
func expected(kind loader.Kind) bool {
	return slices.Contains(strings.Split(os.Getenv("TCPACK_EXPECT"), ","), string(kind))
}

// countingProgram increments slot 0 of m each time it runs.
func countingProgram(m *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}

// TestMechanisms attaches a counting program to the TCP connect path with each mechanism the
// loader supports besides tp_btf/raw_tp (which every family test uses), connects to a closed
// loopback port, and checks the program ran. It prints one MATRIX line per mechanism for the
// README's kernel table.
func TestMechanisms(t *testing.T) {
	env := open(t)
	mountTracefs(t)
	for _, tc := range []struct {
		kind   loader.Kind
		target string
		prog   *ebpf.ProgramSpec
		always bool // every kernel tcpack supports has it
	}{
		{loader.FEntry, "tcp_v4_connect", &ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "tcp_v4_connect"}, false},
		{loader.FExit, "tcp_v4_connect", &ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFExit, AttachTo: "tcp_v4_connect"}, false},
		{loader.Kprobe, "tcp_v4_connect", &ebpf.ProgramSpec{Type: ebpf.Kprobe, AttachTo: "tcp_v4_connect"}, false},
		{loader.Kretprobe, "tcp_v4_connect", &ebpf.ProgramSpec{Type: ebpf.Kprobe, AttachTo: "tcp_v4_connect"}, false},
		{loader.Tracepoint, "sock/inet_sock_set_state", &ebpf.ProgramSpec{Type: ebpf.TracePoint}, true},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer counter.Close()
			tc.prog.License = "GPL"
			tc.prog.Instructions = countingProgram(counter)
			spec := &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"count": tc.prog}}
			hooks := []loader.Hook{{Name: "connect", Strategies: []loader.Strategy{
				{Kind: tc.kind, Program: "count", Target: tc.target},
			}}}
			set, report, err := loader.Load("mechanisms", env, spec, hooks, loader.Options{})
			if err != nil {
				if len(report.Hooks) == 0 || len(report.Hooks[0].Skipped) == 0 {
					t.Fatal(err)
				}
				reason := report.Hooks[0].Skipped[0].Reason
				fmt.Printf("MATRIX mechanism=%s available=no reason=%q\n", tc.kind, reason)
				if tc.always || expected(tc.kind) {
					t.Fatalf("%s is expected on this kernel: %s", tc.kind, reason)
				}
				t.Skipf("this kernel does not support %s: %s", tc.kind, reason)
			}
			defer set.Close()
			const n = 3
			for i := 0; i < n; i++ {
				if c, err := net.DialTimeout("tcp4", "127.0.0.1:1", time.Second); err == nil {
					c.Close()
				}
			}
			var hits uint64
			if err := counter.Lookup(uint32(0), &hits); err != nil {
				t.Fatal(err)
			}
			if hits < n {
				t.Fatalf("%s on %s ran %d times for %d connects", tc.kind, tc.target, hits, n)
			}
			fmt.Printf("MATRIX mechanism=%s available=yes\n", tc.kind)
		})
	}
}

// mountTracefs mounts tracefs for perf tracepoints where the system has not, and unmounts it
// afterwards.
func mountTracefs(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/kernel/tracing/events"); err == nil {
		return
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		t.Fatalf("mount tracefs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount("/sys/kernel/tracing", 0) })
}
