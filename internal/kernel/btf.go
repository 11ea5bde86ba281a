// Package kernel reads what the running kernel says about itself: BTF types and enums,
// kallsyms, privileges, network namespaces and clocks. Every probe family shares one Env.
package kernel

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// KernelBTFPath is where kernels built with CONFIG_DEBUG_INFO_BTF expose their types.
const KernelBTFPath = "/sys/kernel/btf/vmlinux"

// ErrNoBTF says the kernel has no BTF; every tcpack program relies on CO-RE.
var ErrNoBTF = errors.New("kernel BTF not found at " + KernelBTFPath +
	": tcpack needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, RHEL, Fedora kernels have it since 5.x)")

// LoadBTF loads the running kernel's BTF.
func LoadBTF() (*btf.Spec, error) {
	if _, err := os.Stat(KernelBTFPath); err != nil {
		return nil, ErrNoBTF
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	return spec, nil
}

// EnumNames maps the values of a named kernel enum to their names with prefix trimmed,
// e.g. enum skb_drop_reason -> {2: "NOT_SPECIFIED", ...}. Values differ between kernels,
// so names must always come from the running kernel, never from a table.
func EnumNames(spec *btf.Spec, enum, prefix string) (map[uint32]string, error) {
	var e *btf.Enum
	if err := spec.TypeByName(enum, &e); err != nil {
		return nil, fmt.Errorf("enum %s in kernel BTF: %w", enum, err)
	}
	names := make(map[uint32]string, len(e.Values))
	for _, v := range e.Values {
		names[uint32(v.Value)] = strings.TrimPrefix(v.Name, prefix)
	}
	return names, nil
}

// TCPStateNames returns TCP socket states (include/net/tcp_states.h) by value, lower-case,
// in the spelling of OpenTelemetry's network.connection.state where it has one.
// The kernel declares them in an anonymous enum, found by its TCP_ESTABLISHED member.
func TCPStateNames(spec *btf.Spec) (map[uint8]string, error) {
	var found *btf.Enum
	for typ, err := range spec.All() {
		if err != nil {
			return nil, fmt.Errorf("walk kernel BTF: %w", err)
		}
		e, ok := typ.(*btf.Enum)
		if !ok || e.Name != "" {
			continue
		}
		for _, v := range e.Values {
			if v.Name == "TCP_ESTABLISHED" {
				found = e
				break
			}
		}
		if found != nil {
			break
		}
	}
	if found == nil {
		return nil, errors.New("TCP states (TCP_ESTABLISHED) not found in kernel BTF")
	}
	names := make(map[uint8]string, len(found.Values))
	for _, v := range found.Values {
		name := strings.ToLower(strings.TrimPrefix(v.Name, "TCP_"))
		if name == "max_states" {
			continue
		}
		names[uint8(v.Value)] = semconvState(name)
	}
	return names, nil
}

// semconvState spells kernel state names the way network.connection.state does
// (close -> closed, syn_recv -> syn_received, fin_wait1 -> fin_wait_1); the others are the
// same in both, except new_syn_recv (a request socket), which stays as the kernel says.
func semconvState(kernel string) string {
	switch {
	case kernel == "close":
		return "closed"
	case kernel == "syn_recv":
		return "syn_received"
	case strings.HasPrefix(kernel, "fin_wait") && len(kernel) == len("fin_wait")+1:
		return "fin_wait_" + kernel[len("fin_wait"):]
	}
	return kernel
}

// TracepointArity returns how many arguments a tracepoint passes to BPF programs, from the
// btf_trace_<name> typedef (its first parameter is the tracepoint's private data, not an
// argument). Programs must not read past it: the verifier rejects them at load.
func TracepointArity(spec *btf.Spec, tracepoint string) (int, error) {
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+tracepoint, &td); err != nil {
		return 0, fmt.Errorf("tracepoint %s not in kernel BTF: %w", tracepoint, err)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s is not a function pointer", tracepoint)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s is not a function pointer", tracepoint)
	}
	return len(proto.Params) - 1, nil
}

// HasFunc says whether the kernel's BTF describes a function of that name, which fentry and
// fexit need. A function can be in BTF and still be inlined at some call sites.
func HasFunc(spec *btf.Spec, name string) bool {
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}
