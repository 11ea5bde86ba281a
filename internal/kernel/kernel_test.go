package kernel

import (
	"strings"
	"testing"
)

func TestMissingCaps(t *testing.T) {
	for _, tc := range []struct {
		name string
		eff  uint64
		want string // "" means allowed
	}{
		{"root", ^uint64(0), ""},
		{"sys_admin only", 1 << capSysAdmin, ""},
		{"bpf and perfmon", 1<<capBPF | 1<<capPerfmon, ""},
		{"bpf only", 1 << capBPF, "CAP_PERFMON"},
		{"none", 0, "CAP_BPF, CAP_PERFMON"},
	} {
		err := missingCaps(tc.eff)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want it to name %s", tc.name, err, tc.want)
		}
	}
}

func TestKallsymsResolve(t *testing.T) {
	table, err := parseKallsyms(strings.NewReader(`ffffffff81000000 T _stext
ffffffff81001000 t tcp_v4_rcv
ffffffff81002000 D some_data
ffffffff81003000 T __udp4_lib_rcv	[udp]
ffffffff81003000 t __udp4_lib_rcv_alias
ffffffff81004000 T _etext
`))
	if err != nil {
		t.Fatal(err)
	}
	k := &Kallsyms{table: table}
	for _, tc := range []struct {
		addr uint64
		sym  string
		off  uint64
		ok   bool
	}{
		{0xffffffff81001091, "tcp_v4_rcv", 0x91, true},
		{0xffffffff81002500, "", 0, false}, // in data: not inside tcp_v4_rcv
		{0xffffffff81003010, "__udp4_lib_rcv", 0x10, true},
		{0xffffffff80000000, "", 0, false},
		{0xffffffff81004010, "", 0, false}, // past the last symbol: unbounded, unknown
		{0, "", 0, false},
	} {
		sym, off, ok := k.Resolve(tc.addr)
		if sym != tc.sym || off != tc.off || ok != tc.ok {
			t.Errorf("Resolve(%#x) = %s+%#x %v, want %s+%#x %v", tc.addr, sym, off, ok, tc.sym, tc.off, tc.ok)
		}
	}
	if _, err := parseKallsyms(strings.NewReader("0000000000000000 T _stext\n")); err == nil {
		t.Error("zeroed kallsyms (no CAP_SYSLOG) accepted")
	}
}

func TestSemconvState(t *testing.T) {
	for kernel, want := range map[string]string{
		"established": "established", "close": "closed", "syn_recv": "syn_received", "fin_wait1": "fin_wait_1",
		"fin_wait2": "fin_wait_2", "time_wait": "time_wait", "new_syn_recv": "new_syn_recv",
	} {
		if got := semconvState(kernel); got != want {
			t.Errorf("semconvState(%s) = %s, want %s", kernel, got, want)
		}
	}
}

func TestRunningKernelBTF(t *testing.T) {
	spec, err := LoadBTF()
	if err != nil {
		t.Skipf("this kernel has no BTF: %v", err)
	}
	reasons, err := EnumNames(spec, "skb_drop_reason", "SKB_DROP_REASON_")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, name := range reasons {
		found = found || name == "NO_SOCKET"
	}
	if !found || len(reasons) < 50 {
		t.Errorf("skb_drop_reason: %d names, NO_SOCKET present: %v", len(reasons), found)
	}
	states, err := TCPStateNames(spec)
	if err != nil {
		t.Fatal(err)
	}
	if states[1] != "established" || states[2] != "syn_sent" {
		t.Errorf("TCP states: %v", states)
	}
	n, err := TracepointArity(spec, "tcp_receive_reset")
	if err != nil || n != 1 {
		t.Errorf("tcp_receive_reset arity %d, %v; want 1", n, err)
	}
	if n, err := TracepointArity(spec, "kfree_skb"); err != nil || n < 3 {
		t.Errorf("kfree_skb arity %d, %v; want 3 or 4", n, err)
	}
	if _, err := TracepointArity(spec, "no_such_tracepoint"); err == nil {
		t.Error("unknown tracepoint has an arity")
	}
}
