package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Kallsyms resolves kernel text addresses to function names. Addresses never leave the
// process: only names (and name+offset in events) are exported.
type Kallsyms struct {
	addrs []uint64
	names []string
}

// LoadKallsyms reads /proc/kallsyms. Without CAP_SYSLOG (or with kptr_restrict=2) the file
// shows zero addresses; that is an error, because every drop location would be unknown.
func LoadKallsyms() (*Kallsyms, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("open /proc/kallsyms: %w", err)
	}
	defer f.Close()
	return parseKallsyms(f)
}

func parseKallsyms(r io.Reader) (*Kallsyms, error) {
	type sym struct {
		addr uint64
		name string
	}
	var syms []sym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// "ffffffff81000000 T _stext" or "... t name\t[module]"
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		switch fields[1] {
		case "t", "T", "w", "W":
		default:
			continue
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		syms = append(syms, sym{addr, fields[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/kallsyms: %w", err)
	}
	if len(syms) == 0 {
		return nil, errors.New("/proc/kallsyms shows no addresses: run as root or with CAP_SYSLOG, and kernel.kptr_restrict < 2")
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	k := &Kallsyms{addrs: make([]uint64, len(syms)), names: make([]string, len(syms))}
	for i, s := range syms {
		k.addrs[i], k.names[i] = s.addr, s.name
	}
	return k, nil
}

// Resolve returns the function containing addr and the offset into it.
func (k *Kallsyms) Resolve(addr uint64) (name string, offset uint64, ok bool) {
	if k == nil || addr == 0 {
		return "", 0, false
	}
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr })
	if i == 0 {
		return "", 0, false
	}
	return k.names[i-1], addr - k.addrs[i-1], true
}

// Address returns the address of a text symbol, for tests and probes.
func (k *Kallsyms) Address(name string) (uint64, bool) {
	for i, n := range k.names {
		if n == name {
			return k.addrs[i], true
		}
	}
	return 0, false
}

// Len is the number of text symbols known.
func (k *Kallsyms) Len() int { return len(k.addrs) }
