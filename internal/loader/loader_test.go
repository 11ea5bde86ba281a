package loader_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/netnstest"
)

func ret0() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
}

// testSpec has one program per attach kind, all doing nothing, all on TCP connect/reset paths.
func testSpec() *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"unused": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"fentry_connect": {Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "tcp_v4_connect", License: "GPL", Instructions: ret0()},
			"kprobe_connect": {Type: ebpf.Kprobe, AttachTo: "tcp_v4_connect", License: "GPL", Instructions: ret0()},
			"tp_reset":       {Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "tcp_receive_reset", License: "GPL", Instructions: ret0()},
			"raw_reset":      {Type: ebpf.RawTracepoint, AttachTo: "tcp_receive_reset", License: "GPL", Instructions: ret0()},
		},
	}
}

func open(t *testing.T) *kernel.Env {
	t.Helper()
	netnstest.RequireRoot(t)
	env, err := kernel.Open()
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestFallsBackInOrderAndSaysWhy(t *testing.T) {
	env := open(t)
	hooks := []loader.Hook{{Name: "connect_or_reset", Strategies: []loader.Strategy{
		{Kind: loader.FEntry, Program: "fentry_connect", Target: "tcp_v4_connect"},
		{Kind: loader.Kprobe, Program: "kprobe_connect", Target: "tcp_v4_connect"},
		{Kind: loader.TPBTF, Program: "tp_reset", Target: "tcp_receive_reset", Args: 9},
		{Kind: loader.TPBTF, Program: "tp_reset", Target: "tcp_receive_reset", Args: 1},
		{Kind: loader.RawTP, Program: "raw_reset", Target: "tcp_receive_reset", Args: 1},
	}}}
	before := netnstest.CountLinks(t)
	set, report, err := loader.Load("test", env, testSpec(), hooks, loader.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range report.Lines() {
		t.Log(l)
	}
	h := report.Hooks[0]
	if h.Attached == nil {
		t.Fatal("nothing attached")
	}
	// Every strategy before the attached one must be skipped with a reason.
	if len(h.Skipped) == 0 && h.Attached.Kind != loader.FEntry {
		t.Fatalf("attached %s without recording why the earlier strategies failed", h.Attached)
	}
	for _, s := range h.Skipped {
		if s.Reason == "" {
			t.Errorf("%s skipped without a reason", s.Strategy)
		}
		if s.Strategy.Args == 9 && !strings.Contains(s.Reason, "passes 1 args") {
			t.Errorf("arity check: %q", s.Reason)
		}
	}
	if h.Attached.Kind == loader.TPBTF && h.Attached.Args != 1 {
		t.Errorf("attached the 9-arg variant on a 1-arg tracepoint")
	}
	if netnstest.CountLinks(t) != before+1 {
		t.Errorf("links: %d, want %d", netnstest.CountLinks(t), before+1)
	}
	if err := set.Close(); err != nil {
		t.Fatal(err)
	}
	if netnstest.CountLinks(t) != before {
		t.Errorf("links after Close: %d, want %d", netnstest.CountLinks(t), before)
	}
}

func TestOnlyRestrictsKinds(t *testing.T) {
	env := open(t)
	hooks := []loader.Hook{{Name: "reset", Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: "tp_reset", Target: "tcp_receive_reset", Args: 1},
		{Kind: loader.RawTP, Program: "raw_reset", Target: "tcp_receive_reset", Args: 1},
	}}}
	set, report, err := loader.Load("test", env, testSpec(), hooks, loader.Options{Only: []loader.Kind{loader.RawTP}})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if a := report.Hooks[0].Attached; a == nil || a.Kind != loader.RawTP {
		t.Fatalf("attached %v, want raw_tp", a)
	}
}

func TestRequiredHookFailureUnloadsEverything(t *testing.T) {
	env := open(t)
	before := netnstest.CountLinks(t)
	hooks := []loader.Hook{
		{Name: "reset", Strategies: []loader.Strategy{{Kind: loader.TPBTF, Program: "tp_reset", Target: "tcp_receive_reset", Args: 1}}},
		{Name: "optional_missing", Optional: true, Strategies: []loader.Strategy{{Kind: loader.TPBTF, Program: "tp_reset", Target: "no_such_tracepoint"}}},
		{Name: "required_missing", Strategies: []loader.Strategy{{Kind: loader.RawTP, Program: "raw_reset", Target: "no_such_tracepoint_tcpack"}}},
	}
	_, report, err := loader.Load("test", env, testSpec(), hooks, loader.Options{})
	if !errors.Is(err, loader.ErrRequiredHook) {
		t.Fatalf("error %v, want ErrRequiredHook", err)
	}
	if !strings.Contains(err.Error(), "required_missing") || !strings.Contains(err.Error(), "tracepoint not in this kernel") {
		t.Errorf("error does not say which hook and why: %v", err)
	}
	if report.Hooks[1].Attached != nil || !strings.Contains(strings.Join(report.Lines(), "\n"), "family degraded") {
		t.Errorf("optional hook report: %v", report.Lines())
	}
	if got := netnstest.CountLinks(t); got != before {
		t.Errorf("links left after a failed load: %d, want %d", got, before)
	}
}

func TestSuspendAndResume(t *testing.T) {
	env := open(t)
	hooks := []loader.Hook{{Name: "reset", Strategies: []loader.Strategy{
		{Kind: loader.TPBTF, Program: "tp_reset", Target: "tcp_receive_reset", Args: 1},
		{Kind: loader.RawTP, Program: "raw_reset", Target: "tcp_receive_reset", Args: 1},
	}}}
	before := netnstest.CountLinks(t)
	set, _, err := loader.Load("test", env, testSpec(), hooks, loader.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	for i := 0; i < 2; i++ {
		if err := set.Suspend("reset"); err != nil {
			t.Fatal(err)
		}
		if set.Link("reset") != nil || netnstest.CountLinks(t) != before {
			t.Fatalf("suspended: link %v, %d links, want none of ours (%d)", set.Link("reset"), netnstest.CountLinks(t), before)
		}
		if err := set.Resume("reset"); err != nil {
			t.Fatal(err)
		}
		if set.Link("reset") == nil || netnstest.CountLinks(t) != before+1 {
			t.Fatalf("resumed: link %v, %d links, want %d", set.Link("reset"), netnstest.CountLinks(t), before+1)
		}
	}
	// Suspended at Close: nothing left behind either way.
	if err := set.Suspend("reset"); err != nil {
		t.Fatal(err)
	}
	if err := set.Close(); err != nil {
		t.Fatal(err)
	}
	if got := netnstest.CountLinks(t); got != before {
		t.Errorf("links after Close: %d, want %d", got, before)
	}
}

func TestCheckAttach(t *testing.T) {
	for _, tc := range []struct {
		mode string
		idle time.Duration
		want string // "" means accepted
	}{
		{"", 0, ""},
		{loader.AttachOnTraffic, time.Minute, ""},
		{loader.AttachOnTraffic, loader.MinIdleDetach, ""},
		{loader.AttachOnTraffic, loader.MinIdleDetach - 1, "at least 1s"},
		{loader.AttachAlways, time.Millisecond, ""}, // idle_detach means nothing without detaching
		{"lazy", 0, `attach "lazy", want on_traffic or always`},
	} {
		err := loader.CheckAttach(tc.mode, tc.idle)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckAttach(%q, %s): %v, want accepted", tc.mode, tc.idle, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckAttach(%q, %s): %v, want an error with %q", tc.mode, tc.idle, err, tc.want)
		}
	}
}
