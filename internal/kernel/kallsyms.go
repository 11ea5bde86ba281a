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
	"sync"
	"time"
)

// Kallsyms resolves kernel text addresses to function names. Addresses never leave the
// process: only names (and name+offset in events) are exported. Modules loaded after start
// (nf_tables loads on the first nft rule) are picked up by a rate-limited reload on a miss.
type Kallsyms struct {
	mu       sync.Mutex
	table    *symbolTable
	loadedAt time.Time
	reload   func() (*symbolTable, error)
}

// symbolTable is every symbol sorted by address; only text symbols resolve, the others bound
// the function before them, so an address past a function's end is not blamed on it.
type symbolTable struct {
	addrs []uint64
	names []string
	text  []bool
}

// reloadInterval bounds how often a miss rereads /proc/kallsyms (~130 ms of work here).
const reloadInterval = 10 * time.Second

// LoadKallsyms reads /proc/kallsyms. Without CAP_SYSLOG (or with kptr_restrict=2) the file
// shows zero addresses; that is an error, because every drop location would be unknown.
func LoadKallsyms() (*Kallsyms, error) {
	read := func() (*symbolTable, error) {
		f, err := os.Open("/proc/kallsyms")
		if err != nil {
			return nil, fmt.Errorf("open /proc/kallsyms: %w", err)
		}
		defer f.Close()
		return parseKallsyms(f)
	}
	t, err := read()
	if err != nil {
		return nil, err
	}
	return &Kallsyms{table: t, loadedAt: time.Now(), reload: read}, nil
}

func parseKallsyms(r io.Reader) (*symbolTable, error) {
	type sym struct {
		addr uint64
		name string
		text bool
	}
	var syms []sym
	texts := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// "ffffffff81000000 T _stext" or "... t name\t[module]"
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		text := false
		switch fields[1] {
		case "t", "T", "w", "W":
			text = true
			texts++
		}
		syms = append(syms, sym{addr, fields[2], text})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/kallsyms: %w", err)
	}
	if texts == 0 {
		return nil, errors.New("/proc/kallsyms shows no addresses: run as root or with CAP_SYSLOG, and kernel.kptr_restrict < 2")
	}
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	t := &symbolTable{addrs: make([]uint64, len(syms)), names: make([]string, len(syms)), text: make([]bool, len(syms))}
	for i, s := range syms {
		t.addrs[i], t.names[i], t.text[i] = s.addr, s.name, s.text
	}
	return t, nil
}

func (t *symbolTable) resolve(addr uint64) (string, uint64, bool) {
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > addr })
	if i == 0 || i == len(t.addrs) {
		return "", 0, false // before the first symbol, or past the last one's start
	}
	// Of several symbols at one address, the first function listed names it.
	first := i - 1
	for first > 0 && t.addrs[first-1] == t.addrs[i-1] {
		first--
	}
	for j := first; j < i; j++ {
		if t.text[j] {
			return t.names[j], addr - t.addrs[j], true
		}
	}
	return "", 0, false
}

// Resolve returns the function containing addr and the offset into it.
func (k *Kallsyms) Resolve(addr uint64) (name string, offset uint64, ok bool) {
	if k == nil || addr == 0 {
		return "", 0, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if name, off, ok := k.table.resolve(addr); ok {
		return name, off, true
	}
	if k.reload != nil && time.Since(k.loadedAt) > reloadInterval {
		k.loadedAt = time.Now()
		if t, err := k.reload(); err == nil {
			k.table = t
			return t.resolve(addr)
		}
	}
	return "", 0, false
}

// Address returns the address of a text symbol, for tests and probes.
func (k *Kallsyms) Address(name string) (uint64, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, n := range k.table.names {
		if n == name && k.table.text[i] {
			return k.table.addrs[i], true
		}
	}
	return 0, false
}
