// Package loader loads a probe family's eBPF objects and attaches each of its hooks with the
// first strategy the running kernel accepts, in the family's order of preference.
//
// A hook lists strategies such as fentry -> kprobe -> tp_btf -> raw_tp -> sock_ops -> cgroup_skb. Each is first checked
// against kernel BTF and kallsyms (does the function or tracepoint exist, does the tracepoint
// pass as many arguments as the program reads), then loaded and attached for real; the first
// that works wins, and the report says what attached and why each other one was skipped:
//
//	drops: kfree_skb attached tp_btf/kfree_skb (kfree_skb_rx_sk_btf)
//	drops: tcp_send_reset attached tp_btf/tcp_send_reset (tcp_send_reset_reason_btf)
//
// Maps are created once and shared by every program of the family; nothing is pinned, so
// closing the Set (or the process dying) removes everything from the kernel.
package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/tcpack/tcpack/internal/kernel"
)

// Kind is an attach mechanism.
type Kind string

const (
	FEntry     Kind = "fentry"
	FExit      Kind = "fexit"
	Kprobe     Kind = "kprobe"
	Kretprobe  Kind = "kretprobe"
	TPBTF      Kind = "tp_btf"
	RawTP      Kind = "raw_tp"
	Tracepoint Kind = "tracepoint"
	// SockOps attaches to a cgroup (Target is its path) and sees that cgroup's TCP sockets.
	SockOps Kind = "sock_ops"
	// CgroupSetsockopt attaches to a cgroup (Target is its path) and sees its setsockopt calls.
	CgroupSetsockopt Kind = "cgroup_setsockopt"
	// CgroupSkbIngress attaches to a cgroup (Target is its path) and sees every packet
	// delivered to its TCP and UDP sockets (sk_filter_trim_cap runs it).
	CgroupSkbIngress Kind = "cgroup_skb"
	// Iter is a BPF iterator (Target "tcp", ...): attaching creates the link, and each
	// Set.Link(hook).(*link.Iter).Open() walks the objects of the opener's netns.
	Iter Kind = "iter"
)

// Strategy is one way to attach a hook: which program of the object, how, and to what.
type Strategy struct {
	Kind Kind
	// Program is the program's name in the object (its C function name).
	Program string
	// Target is the kernel function (fentry, kprobe) or tracepoint ("kfree_skb", or
	// "group/name" for perf tracepoints).
	Target string
	// Args is how many tracepoint arguments the program reads: the tracepoint must pass at
	// least that many. Variants of one hook differ here where kernels differ.
	Args int
	// Symbols are kernel functions the program compares addresses with (their addresses are
	// set as variables before the load): each must be in kallsyms.
	Symbols []string
}

func (s Strategy) String() string { return string(s.Kind) + "/" + s.Target }

// Hook is a kernel event a family needs, with its strategies in order of preference.
type Hook struct {
	Name       string
	Strategies []Strategy
	// Optional hooks may fail to attach without failing the family.
	Optional bool
}

// Attempt records why a strategy was not used.
type Attempt struct {
	Strategy Strategy
	Reason   string
}

// HookResult is what happened to one hook.
type HookResult struct {
	Hook     string
	Optional bool
	// Attached is the strategy in use; nil if none worked.
	Attached *Strategy
	Skipped  []Attempt
}

// Report is what a family attached and skipped, for logs and the tcpack.probe.attached metric.
type Report struct {
	Family string
	Hooks  []HookResult
}

// Lines renders the report one hook per line, for the collector's log.
func (r Report) Lines() []string {
	var lines []string
	for _, h := range r.Hooks {
		var skipped []string
		for _, a := range h.Skipped {
			skipped = append(skipped, fmt.Sprintf("%s: %s", a.Strategy, a.Reason))
		}
		line := fmt.Sprintf("%s: %s ", r.Family, h.Hook)
		if h.Attached != nil {
			line += fmt.Sprintf("attached %s (%s)", h.Attached, h.Attached.Program)
		} else if h.Optional {
			line += "not attached, family degraded"
		} else {
			line += "not attached"
		}
		if len(skipped) > 0 {
			line += "; skipped " + strings.Join(skipped, "; ")
		}
		lines = append(lines, line)
	}
	return lines
}

// Options tune a load.
type Options struct {
	// Only, if set, restricts each hook to strategies of these kinds (in the hook's order).
	// Users set it to avoid a mechanism; tests use it to exercise each fallback.
	Only []Kind
}

// Set is a loaded family: its maps and the programs and links of its attached hooks.
type Set struct {
	Maps     map[string]*ebpf.Map
	programs []*ebpf.Program
	byHook   map[string]*attachment
}

// attachment is a hook's program and how it attached; link is nil while suspended.
type attachment struct {
	prog     *ebpf.Program
	strategy Strategy
	link     link.Link
}

// Link is the link of an attached hook, or nil (never attached, detached or suspended).
func (s *Set) Link(hook string) link.Link {
	if a, ok := s.byHook[hook]; ok {
		return a.link
	}
	return nil
}

// Detach detaches one hook for good, keeping the rest; Close still frees its program.
func (s *Set) Detach(hook string) error {
	a, ok := s.byHook[hook]
	if !ok {
		return nil
	}
	delete(s.byHook, hook)
	if a.link == nil {
		return nil
	}
	return a.link.Close()
}

// Suspend detaches a hook but keeps its program and strategy, so Resume attaches it again
// without loading or verifying anything: the kernel runs nothing for it meanwhile.
func (s *Set) Suspend(hook string) error {
	a, ok := s.byHook[hook]
	if !ok || a.link == nil {
		return nil
	}
	err := a.link.Close()
	a.link = nil
	return err
}

// Resume attaches a suspended hook again with the strategy it attached with at load.
func (s *Set) Resume(hook string) error {
	a, ok := s.byHook[hook]
	if !ok || a.link != nil {
		return nil
	}
	l, err := attachProgram(a.prog, a.strategy)
	if err != nil {
		return fmt.Errorf("resume %s (%s): %s", hook, a.strategy, summarize(err))
	}
	a.link = l
	return nil
}

// Close detaches every link and closes every program and map. It is safe to call twice.
func (s *Set) Close() error {
	var errs []error
	for _, a := range s.byHook {
		if a.link != nil {
			errs = append(errs, a.link.Close())
		}
	}
	for _, p := range s.programs {
		errs = append(errs, p.Close())
	}
	for _, m := range s.Maps {
		errs = append(errs, m.Close())
	}
	s.programs, s.Maps, s.byHook = nil, nil, nil
	return errors.Join(errs...)
}

// ErrRequiredHook is wrapped by Load when a non-optional hook could not be attached.
var ErrRequiredHook = errors.New("required hook not attached")

// Load creates the spec's maps and attaches every hook. spec is not modified; callers set
// variables and map sizes on it beforehand. On error nothing stays loaded.
func Load(family string, env *kernel.Env, spec *ebpf.CollectionSpec, hooks []Hook, opts Options) (*Set, Report, error) {
	report := Report{Family: family}
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	cache := btf.NewCache()
	coll, err := ebpf.NewCollectionWithOptions(mapsOnly, ebpf.CollectionOptions{Cache: cache})
	if err != nil {
		return nil, report, fmt.Errorf("%s: create maps: %w", family, err)
	}
	set := &Set{Maps: coll.Maps, byHook: map[string]*attachment{}}

	for _, hook := range hooks {
		result := HookResult{Hook: hook.Name, Optional: hook.Optional}
		for _, s := range hook.Strategies {
			if !allowed(s.Kind, opts.Only) {
				result.Skipped = append(result.Skipped, Attempt{s, "not in the configured strategies"})
				continue
			}
			prog, l, err := attach(env, spec, set.Maps, cache, s)
			if err != nil {
				result.Skipped = append(result.Skipped, Attempt{s, err.Error()})
				continue
			}
			set.programs = append(set.programs, prog)
			set.byHook[hook.Name] = &attachment{prog: prog, strategy: s, link: l}
			attached := s
			result.Attached = &attached
			break
		}
		report.Hooks = append(report.Hooks, result)
		if result.Attached == nil && !hook.Optional {
			set.Close()
			return nil, report, fmt.Errorf("%s: %s: %w; tried %s", family, hook.Name, ErrRequiredHook, describe(result.Skipped))
		}
	}
	return set, report, nil
}

func describe(attempts []Attempt) string {
	var parts []string
	for _, a := range attempts {
		parts = append(parts, fmt.Sprintf("%s (%s)", a.Strategy, a.Reason))
	}
	return strings.Join(parts, ", ")
}

func allowed(k Kind, only []Kind) bool {
	if len(only) == 0 {
		return true
	}
	for _, o := range only {
		if o == k {
			return true
		}
	}
	return false
}

// attach checks a strategy against the kernel, loads its program and attaches it.
func attach(env *kernel.Env, spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map, cache *btf.Cache, s Strategy) (*ebpf.Program, link.Link, error) {
	if err := precheck(env, s); err != nil {
		return nil, nil, err
	}
	progSpec, ok := spec.Programs[s.Program]
	if !ok {
		return nil, nil, fmt.Errorf("program %s not in object", s.Program)
	}
	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{s.Program: progSpec.Copy()}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: maps, Cache: cache})
	if err != nil {
		if errors.Is(err, os.ErrPermission) && (s.Kind == FEntry || s.Kind == FExit) {
			// Seen with kernel lockdown: BPF trampolines are refused even to root.
			return nil, nil, errors.New("load: kernel refuses fentry/fexit programs (EPERM; lockdown or no BPF trampoline support)")
		}
		return nil, nil, fmt.Errorf("load: %s", summarize(err))
	}
	prog := coll.DetachProgram(s.Program)
	coll.Close() // the maps are clones of the shared ones
	l, err := attachProgram(prog, s)
	if err != nil {
		prog.Close()
		return nil, nil, fmt.Errorf("attach: %s", summarize(err))
	}
	return prog, l, nil
}

func precheck(env *kernel.Env, s Strategy) error {
	for _, sym := range s.Symbols {
		if addr, ok := env.Kallsyms.Address(sym); !ok || addr == 0 {
			return fmt.Errorf("%s not in kallsyms (or its address hidden by kptr_restrict)", sym)
		}
	}
	switch s.Kind {
	case TPBTF, RawTP:
		n, err := kernel.TracepointArity(env.BTF, s.Target)
		if err != nil {
			return errors.New("tracepoint not in this kernel")
		}
		if n < s.Args {
			return fmt.Errorf("tracepoint passes %d args on this kernel, program reads %d", n, s.Args)
		}
	case FEntry, FExit:
		if !kernel.HasFunc(env.BTF, s.Target) {
			return errors.New("function not in kernel BTF")
		}
	case Kprobe, Kretprobe:
		if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
			return errors.New("kernel has no kprobe support (CONFIG_KPROBES)")
		}
		if _, ok := env.Kallsyms.Address(s.Target); !ok {
			return errors.New("function not in kallsyms (inlined or absent)")
		}
	case SockOps, CgroupSetsockopt, CgroupSkbIngress:
		if _, err := os.Stat(s.Target); err != nil {
			return fmt.Errorf("cgroup %s: %w", s.Target, err)
		}
	case Tracepoint:
		group, name, ok := strings.Cut(s.Target, "/")
		if !ok {
			return fmt.Errorf("perf tracepoint target %q must be group/name", s.Target)
		}
		if _, err := os.Stat("/sys/kernel/tracing/events/" + group + "/" + name); err != nil {
			return errors.New("tracepoint not in tracefs (is tracefs mounted at /sys/kernel/tracing?)")
		}
	}
	return nil
}

func attachProgram(prog *ebpf.Program, s Strategy) (link.Link, error) {
	switch s.Kind {
	case TPBTF, FEntry, FExit:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case RawTP:
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: s.Target, Program: prog})
	case Kprobe:
		return link.Kprobe(s.Target, prog, nil)
	case Kretprobe:
		return link.Kretprobe(s.Target, prog, nil)
	case Tracepoint:
		group, name, _ := strings.Cut(s.Target, "/")
		return link.Tracepoint(group, name, prog, nil)
	case SockOps:
		return link.AttachCgroup(link.CgroupOptions{Path: s.Target, Attach: ebpf.AttachCGroupSockOps, Program: prog})
	case CgroupSetsockopt:
		return link.AttachCgroup(link.CgroupOptions{Path: s.Target, Attach: ebpf.AttachCGroupSetsockopt, Program: prog})
	case CgroupSkbIngress:
		return link.AttachCgroup(link.CgroupOptions{Path: s.Target, Attach: ebpf.AttachCGroupInetIngress, Program: prog})
	case Iter:
		return link.AttachIter(link.IterOptions{Program: prog})
	}
	return nil, fmt.Errorf("unknown attach kind %q", s.Kind)
}

// summarize keeps an error to one line: a verifier log runs to thousands of lines, and
// cilium/ebpf's error text already ends with the verifier's last words.
func summarize(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return msg
}

// SumPerCPU reads one slot of a per-CPU array and sums it over the CPUs: how the families
// keep their loss counters (sampled out, ring buffer full, map full) without atomics.
func SumPerCPU(m *ebpf.Map, slot uint32) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(slot, &perCPU); err != nil {
		return 0, fmt.Errorf("read counter %d: %w", slot, err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// SumPerCPUSlots reads every slot of a per-CPU array of uint64 counters, each summed over the
// CPUs, indexed by slot: one call for a family's whole set of loss counters.
func SumPerCPUSlots(m *ebpf.Map) ([]uint64, error) {
	sums := make([]uint64, m.MaxEntries())
	var slot uint32
	var perCPU []uint64
	it := m.Iterate()
	for it.Next(&slot, &perCPU) {
		for _, v := range perCPU {
			sums[slot] += v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	return sums, nil
}

// Attach modes of the families that can leave hooks detached while there is nothing to
// observe (acks, footprint): each family says what it keeps detached, and until when.
const (
	// AttachOnTraffic attaches the costly hooks only while there is something to observe.
	AttachOnTraffic = "on_traffic"
	// AttachAlways keeps every hook attached from the start.
	AttachAlways = "always"
)

// MinIdleDetach is the shortest idle spell after which an AttachOnTraffic family detaches:
// ten polls of its watcher.
const MinIdleDetach = time.Second

// CheckAttach validates a family's attach mode ("" means AttachOnTraffic) and idle spell (0
// means the family's default).
func CheckAttach(mode string, idleDetach time.Duration) error {
	switch mode {
	case "", AttachOnTraffic:
		if idleDetach != 0 && idleDetach < MinIdleDetach {
			return fmt.Errorf("idle detach %s, at least %s", idleDetach, MinIdleDetach)
		}
	case AttachAlways:
	default:
		return fmt.Errorf("attach %q, want %s or %s", mode, AttachOnTraffic, AttachAlways)
	}
	return nil
}

// HookNames are the names of hooks, for reporting a family that could not start.
func HookNames(hooks []Hook) []string {
	names := make([]string, len(hooks))
	for i, h := range hooks {
		names[i] = h.Name
	}
	return names
}
