// Package collectortest runs the otelcol-tcpack binary built by `make build` with a given
// config, for the end-to-end tests and the benchmarks.
package collectortest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary returns the built collector: $TCPACK_COLLECTOR, else build/otelcol-tcpack/ at the
// repository root.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TCPACK_COLLECTOR"); p != "" {
		return p
	}
	_, here, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(here), "..", "..", "build", "otelcol-tcpack", "otelcol-tcpack")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("collector not built (%v): run `make build` first, or `make test`, which does", err)
	}
	return p
}

// Process is a running collector.
type Process struct {
	cmd     *exec.Cmd
	config  string // the config file it reads
	mu      sync.Mutex
	log     strings.Builder
	exited  chan struct{} // closed once the process has been waited for
	waitErr error
}

// Start writes config to a temporary file, starts the collector with it and waits until it
// says it is ready. The process is killed at cleanup if the test did not stop it.
func Start(t testing.TB, bin, config string) *Process {
	t.Helper()
	return StartEnv(t, bin, config)
}

// StartEnv is Start with environment variables (KEY=value) added to the collector's.
func StartEnv(t testing.TB, bin, config string, env ...string) *Process {
	t.Helper()
	return StartWith(t, bin, config, Options{Env: env})
}

// Options change how the collector process is started.
type Options struct {
	// Env is added to the collector's environment (KEY=value).
	Env []string
	// Wrapper is a command line that execs the collector after it (nsenter, setpriv): the
	// process started is the collector itself, so signals reach it.
	Wrapper []string
}

// StartWith is Start with Options.
func StartWith(t testing.TB, bin, config string, o Options) *Process {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	argv := append(append(append([]string{}, o.Wrapper...), bin), "--config", path)
	p := &Process{cmd: exec.Command(argv[0], argv[1:]...), config: path}
	p.cmd.Env = append(os.Environ(), o.Env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		var once sync.Once
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "Everything is ready") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	p.exited = make(chan struct{})
	go func() {
		<-scanned // Wait closes the pipe: read all of it first
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("collector exited before it was ready (%v):\n%s", p.waitErr, p.Log())
	case <-time.After(30 * time.Second):
		t.Fatalf("collector not ready after 30s:\n%s", p.Log())
	}
	return p
}

// Reload rewrites the collector's config file and sends SIGHUP, as an operator reloading it
// would: the collector shuts its pipelines down and starts them again with the new config.
func (p *Process) Reload(t testing.TB, config string) {
	t.Helper()
	if err := os.WriteFile(p.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// Exited says whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Log is what the collector has written to stderr so far.
func (p *Process) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Stop sends SIGINT, as Ctrl-C does, and requires a clean exit within 15 s.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.waitErr != nil {
			t.Fatalf("collector exit: %v\n%s", p.waitErr, p.Log())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("collector did not stop within 15s of SIGINT:\n%s", p.Log())
	}
}

// Kill sends SIGKILL, as a crash or the OOM killer would, and waits for the process to go.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("collector still running 15s after SIGKILL")
	}
}

// PeakRSSKiB is the collector's peak resident memory so far (VmHWM).
func (p *Process) PeakRSSKiB(t testing.TB) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kib int
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib
		}
	}
	t.Fatal("VmHWM not in /proc/<pid>/status")
	return 0
}

// CPUTime is the CPU time the collector has used so far, in user and system mode
// (/proc/<pid>/stat utime + stime), at the kernel's USER_HZ of 100.
func (p *Process) CPUTime(t testing.TB) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count fields after its closing parenthesis.
	_, rest, ok := strings.Cut(string(data), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		t.Fatalf("/proc/%d/stat: unexpected %q", p.cmd.Process.Pid, data)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime: fields 14 and 15 of the whole line
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat: %v", p.cmd.Process.Pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
