// Package netnstest gives kernel tests two network namespaces joined by a veth pair, the
// traffic to drive through them, and checks that nothing stays attached afterwards. Everything it creates is removed in t.Cleanup, also when the
// test fails; names carry the test process's pid so parallel test binaries never collide.
//
//	p := netnstest.NewPair(t)            // tcpk<pid>-<n>a (198.18.0.1) <-> tcpk<pid>-<n>b (198.18.0.2)
//	p.B.Run(t, func() { ... })           // code that creates sockets inside B
//	p.A.Exec(t, "nft", "add", "table", ...)
package netnstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// Addresses of the pair: inside the benchmarking range (RFC 2544), reachable only inside the
// test's own namespaces.
const (
	AddrA = "198.18.0.1"
	AddrB = "198.18.0.2"
)

var counter atomic.Uint32

// NS is a named network namespace made by the test.
type NS struct {
	Name string
	// Inode is the netns inode, the number BPF programs report.
	Inode uint32
	// Veth is this side's veth interface name.
	Veth string
	Addr string
}

// Pair is two namespaces joined by veth.
type Pair struct {
	A, B *NS
}

// PairOptions shape the veth pair.
type PairOptions struct {
	// TxQueues sets numtxqueues/numrxqueues on both ends (default 1).
	TxQueues int
	// NoIPv6 turns IPv6 off in both namespaces: no router solicitations or MLD reports,
	// so the only packets are the test's own (tests that count every event on a CPU).
	NoIPv6 bool
}

// NewPair creates namespaces A and B with a veth pair between them, both up and addressed.
func NewPair(t testing.TB) *Pair {
	return NewPairWith(t, PairOptions{})
}

// NewPairWith is NewPair with options.
func NewPairWith(t testing.TB, opts PairOptions) *Pair {
	t.Helper()
	RequireRoot(t)
	id := fmt.Sprintf("tcpk%d-%d", os.Getpid(), counter.Add(1))
	p := &Pair{
		A: &NS{Name: id + "a", Veth: id + "a", Addr: AddrA},
		B: &NS{Name: id + "b", Veth: id + "b", Addr: AddrB},
	}
	for _, ns := range []*NS{p.A, p.B} {
		run(t, "ip", "netns", "add", ns.Name)
		name := ns.Name
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		ino, err := inode("/run/netns/" + ns.Name)
		if err != nil {
			t.Fatalf("netns %s: %v", ns.Name, err)
		}
		ns.Inode = ino
		if opts.NoIPv6 {
			var werr error
			if err := ns.Do(func() {
				// /proc/sys/net follows the opening thread's namespace.
				for _, f := range []string{"all", "default"} {
					werr = errors.Join(werr, os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644))
				}
			}); err != nil || werr != nil {
				t.Fatalf("netns %s: disable IPv6: %v %v", ns.Name, err, werr)
			}
		}
	}
	args := []string{"link", "add", p.A.Veth}
	if opts.TxQueues > 1 {
		q := fmt.Sprint(opts.TxQueues)
		args = append(args, "numtxqueues", q, "numrxqueues", q)
	}
	args = append(args, "netns", p.A.Name, "type", "veth", "peer", "name", p.B.Veth)
	if opts.TxQueues > 1 {
		q := fmt.Sprint(opts.TxQueues)
		args = append(args, "numtxqueues", q, "numrxqueues", q)
	}
	args = append(args, "netns", p.B.Name)
	run(t, "ip", args...)
	for _, ns := range []*NS{p.A, p.B} {
		ns.Exec(t, "ip", "addr", "add", ns.Addr+"/24", "dev", ns.Veth)
		ns.Exec(t, "ip", "link", "set", "lo", "up")
		ns.Exec(t, "ip", "link", "set", ns.Veth, "up")
	}
	// IPv6 adds the link's fe80::/64 route a moment after link up: wait for it, so tests
	// that compare routing tables before and after see a settled namespace.
	for _, ns := range []*NS{p.A, p.B} {
		if opts.NoIPv6 {
			break
		}
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(ns.Exec(t, "ip", "-6", "route", "show", "dev", ns.Veth), "fe80::/64") {
				break
			}
		}
	}
	return p
}

// Close deletes both namespaces now, with the veth pair; cleanup would otherwise do it at the
// end of the test.
func (p *Pair) Close(t testing.TB) {
	t.Helper()
	for _, ns := range []*NS{p.A, p.B} {
		run(t, "ip", "netns", "del", ns.Name)
	}
}

// RequireRoot skips tests that need to create namespaces and load eBPF when not root; CI runs
// as root, so there they always run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and loads eBPF programs")
	}
}

// Exec runs a command inside the namespace and returns its output; failure fails the test.
func (ns *NS) Exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run calls fn on an OS thread switched into the namespace. Sockets created in fn belong to
// the namespace for their whole life, whatever goroutine uses them afterwards.
func (ns *NS) Run(t testing.TB, fn func()) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// Do is Run returning its error, for use outside a test goroutine.
func (ns *NS) Do(fn func()) error {
	h, err := netns.GetFromPath("/run/netns/" + ns.Name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	defer h.Close()
	return kernel.InNetns(h, func() error { fn(); return nil })
}

// Dial connects from inside the namespace.
func (ns *NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if e := ns.Do(func() { c, err = net.DialTimeout(network, addr, timeout) }); e != nil {
		return nil, e
	}
	return c, err
}

// Listen listens inside the namespace.
func (ns *NS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	ns.Run(t, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// SendUDP sends n small datagrams from inside the namespace to addr (host:port), from one
// socket, and returns its local port.
func (ns *NS) SendUDP(t testing.TB, addr string, n int) int {
	t.Helper()
	return ns.SendUDPSized(t, addr, n, 6)
}

// SendUDPFromCPU is SendUDP from a thread pinned to one CPU.
func (ns *NS) SendUDPFromCPU(t testing.TB, addr string, n, cpu int) int {
	t.Helper()
	return ns.sendUDP(t, addr, n, 6, cpu)
}

// SendUDPSized is SendUDP with a payload size. The socket stays unconnected: a connected one
// would fail the next send with the ICMP error a closed port returns, and not send it.
func (ns *NS) SendUDPSized(t testing.TB, addr string, n, size int) int {
	t.Helper()
	return ns.sendUDP(t, addr, n, size, -1)
}

func (ns *NS) sendUDP(t testing.TB, addr string, n, size, cpu int) int {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	payload := make([]byte, size)
	ns.Run(t, func() {
		if cpu >= 0 {
			// Run hands its thread back to the scheduler: give it back unpinned.
			var was, set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &was); err != nil {
				t.Errorf("CPU affinity: %v", err)
				return
			}
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				t.Errorf("pin to CPU %d: %v", cpu, err)
				return
			}
			defer unix.SchedSetaffinity(0, &was)
		}
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			t.Errorf("udp socket: %v", err)
			return
		}
		defer c.Close()
		port = c.LocalAddr().(*net.UDPAddr).Port
		for i := 0; i < n; i++ {
			if _, err := c.WriteToUDP(payload, dst); err != nil {
				t.Errorf("udp send %d to %s: %v", i, addr, err)
			}
		}
	})
	return port
}

// SendSYNs makes n TCP connection attempts from inside the namespace to addr, from source
// ports firstPort, firstPort+1, ...; with nothing listening each is one SYN answered by a RST.
// The source port is bound explicitly because the kernel forgets an autobound port when the
// connection fails.
func (ns *NS) SendSYNs(t testing.TB, addr string, n, firstPort int) {
	t.Helper()
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	fmt.Sscan(portStr, &port)
	dst := &unix.SockaddrInet4{Port: port}
	copy(dst.Addr[:], net.ParseIP(host).To4())
	for i := 0; i < n; i++ {
		ns.Run(t, func() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Errorf("socket: %v", err)
				return
			}
			defer unix.Close(fd)
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: firstPort + i}); err != nil {
				t.Errorf("bind :%d: %v", firstPort+i, err)
				return
			}
			if err := unix.Connect(fd, dst); err != unix.ECONNREFUSED {
				t.Errorf("connect %s: want ECONNREFUSED, got %v", addr, err)
			}
		})
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func inode(path string) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// PruneAfterClose deletes the pair, so its namespaces are gone, and calls a family's prune,
// which must delete something: the pair's counters.
func PruneAfterClose(t testing.TB, gone *Pair, prune func() (int, error)) {
	t.Helper()
	gone.Close(t)
	deleted, err := prune()
	if err != nil {
		t.Fatal(err)
	}
	if deleted == 0 {
		t.Fatal("nothing pruned after deleting a namespace with counters")
	}
}

// CountLinks counts the BPF links attached in the whole kernel, to check that what a test
// started left nothing attached. The count is global, so kernel test packages must not run
// in parallel with each other: `make test` runs them with -p 1.
func CountLinks(t testing.TB) int {
	t.Helper()
	n := 0
	EachLink(t, func(link.Link) { n++ })
	return n
}

// EachLink calls fn for every BPF link in the kernel. A link being freed while the walk passes
// it makes the kernel answer EAGAIN (seen on 6.1); the walk then starts again, a few times.
func EachLink(t testing.TB, fn func(link.Link)) {
	t.Helper()
	var links []link.Link
	for attempt := 0; ; attempt++ {
		var it link.Iterator
		for it.Next() {
			links = append(links, it.Take())
		}
		err := it.Err()
		if err == nil {
			break
		}
		for _, l := range links {
			l.Close()
		}
		links = nil
		if !errors.Is(err, unix.EAGAIN) || attempt == 10 {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, l := range links {
		fn(l)
		l.Close()
	}
}

// CountFDs counts this process's open file descriptors, to check for leaked maps and programs.
func CountFDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// PolicyRouting is every rule and route of the namespace, both families, apart from the
// kernel's own local table (IPv6 link-local addresses join it whenever DAD finishes): what
// tests compare before and after code that changes policy routing.
func PolicyRouting(t testing.TB, ns *NS) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []string{"-4", "-6"} {
		b.WriteString(ns.Exec(t, "ip", f, "rule"))
		for _, line := range strings.Split(ns.Exec(t, "ip", f, "route", "show", "table", "all"), "\n") {
			if line != "" && !strings.Contains(line, " table local ") {
				b.WriteString(line + "\n")
			}
		}
	}
	return b.String()
}

// Paced is a TCP connection from A to B carrying small messages at a fixed pace, with a
// server that reads at its own pace: the workload that shows delayed ACKs.
type Paced struct {
	Client, Server *net.TCPConn
}

// PacedTraffic connects A to B:port, sends count 64-byte messages every `every`, and has B
// read them with readEvery between reads (0: read continuously). It returns when the server
// has read everything; both connections stay open until the test ends.
func (p *Pair) PacedTraffic(t testing.TB, port, count int, every, readEvery time.Duration) *Paced {
	t.Helper()
	c := p.Connect(t, port)
	c.Exchange(t, count, every, readEvery)
	return c
}

// Connect opens a connection from A to B:port; it stays open until the test ends.
func (p *Pair) Connect(t testing.TB, port int) *Paced {
	t.Helper()
	return Connect(t, p.A, p.B, p.B.Addr, port)
}

// Connect opens a TCP connection from a client namespace to addr:port, listening in the
// server namespace (the two may be the same); it stays open until the test ends.
func Connect(t testing.TB, client, server *NS, addr string, port int) *Paced {
	t.Helper()
	return ConnectFrom(t, client, "", server, addr, port)
}

// ConnectFrom is Connect from a chosen source address of the client ("": any).
func ConnectFrom(t testing.TB, client *NS, source string, server *NS, addr string, port int) *Paced {
	t.Helper()
	network := "tcp4"
	if strings.Contains(addr, ":") {
		network = "tcp6"
	}
	ln := server.Listen(t, network, net.JoinHostPort(addr, fmt.Sprint(port)))
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.(*net.TCPConn)
	}()
	var c net.Conn
	var err error
	if source == "" {
		c, err = client.Dial(network, net.JoinHostPort(addr, fmt.Sprint(port)), time.Second)
	} else {
		err = client.Do(func() {
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
			c, err = d.Dial(network, net.JoinHostPort(addr, fmt.Sprint(port)))
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	cl := c.(*net.TCPConn)
	t.Cleanup(func() { cl.Close() })
	srv, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { srv.Close() })
	return &Paced{Client: cl, Server: srv}
}

// Exchange sends count 64-byte messages from client to server every `every`, the server
// reading with readEvery between reads (0: continuously), and returns once all is read.
func (c *Paced) Exchange(t testing.TB, count int, every, readEvery time.Duration) {
	t.Helper()
	const size = 64
	read := make(chan error, 1)
	go func() {
		buf := make([]byte, 64*1024)
		total := 0
		for total < count*size {
			n, err := c.Server.Read(buf)
			if err != nil {
				read <- err
				return
			}
			total += n
			if readEvery > 0 {
				time.Sleep(readEvery)
			}
		}
		read <- nil
	}()
	msg := make([]byte, size)
	next := time.Now()
	for i := 0; i < count; i++ {
		if _, err := c.Client.Write(msg); err != nil {
			t.Fatal(err)
		}
		next = next.Add(every)
		time.Sleep(time.Until(next))
	}
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server did not read everything within 30 s")
	}
}

// Covered says whether an ACK count covers the data segments the server of c received:
// exactly, or short by no more than the segments the client retransmitted. A retransmission
// (a tail-loss probe while the server delays its ACK) can arrive as a duplicate whose ACK
// acknowledges nothing new.
func (c *Paced) Covered(t testing.TB, acked uint64) (bool, string) {
	t.Helper()
	in, retrans := uint64(TCPInfo(t, c.Server).Data_segs_in), c.Retransmits(t)
	return acked <= in && acked+retrans >= in, fmt.Sprintf("%d data segments received, %d retransmitted", in, retrans)
}

// Retransmits is how many segments the client of c retransmitted: each duplicate that reaches
// the server puts it back in quick-ACK mode with a fresh quota.
func (c *Paced) Retransmits(t testing.TB) uint64 {
	t.Helper()
	return uint64(TCPInfo(t, c.Client).Total_retrans)
}

// AnswerLate runs requests 64-byte requests on c, the server reading each only think after
// it came, then answering at once: once the quick-ACK quota is spent, the delayed-ACK timer
// sends the ACK of every request (a read would send it, but none comes in time).
func (c *Paced) AnswerLate(requests int, think time.Duration) error {
	served := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		for range requests {
			time.Sleep(think)
			if _, err := io.ReadFull(c.Server, buf); err != nil {
				served <- err
				return
			}
			if _, err := c.Server.Write(buf); err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	buf := make([]byte, 64)
	for range requests {
		if _, err := c.Client.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c.Client, buf); err != nil {
			return err
		}
	}
	return <-served
}

// AnswerLateAll runs AnswerLate on every connection at once; wait returns when all are
// done, with their errors.
func AnswerLateAll(conns []*Paced, requests int, think time.Duration) (wait func() error) {
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() { errs <- c.AnswerLate(requests, think) }()
	}
	return func() error {
		var all []error
		for range conns {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	}
}

// ConnectMany opens n connections from A to one listener on B:port.
func (p *Pair) ConnectMany(t testing.TB, port, n int) []*Paced {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", p.B.Addr, port)
	ln := p.B.Listen(t, "tcp4", addr)
	var out []*Paced
	for range n {
		c, err := p.A.Dial("tcp4", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		out = append(out, &Paced{Client: c.(*net.TCPConn), Server: s.(*net.TCPConn)})
	}
	return out
}

// Netstat reads one counter of /proc/net/netstat in the namespace, such as TcpExt
// DelayedACKs (the ACKs the delayed-ACK timer sent).
func (ns *NS) Netstat(t testing.TB, group, name string) uint64 {
	t.Helper()
	var raw []byte
	var err error
	// thread-self: /proc/net follows the process's first thread, not the one in ns.
	ns.Run(t, func() { raw, err = os.ReadFile("/proc/thread-self/net/netstat") })
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != group+":" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == name {
				v, err := strconv.ParseUint(values[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatalf("no %s %s in /proc/net/netstat", group, name)
	return 0
}

// Finish closes the connection in the orderly way (client FIN, server FIN, each side reading
// to the end first), waits until both sockets are closed in the kernel (TCP_CLOSE), and
// returns their TCP_INFO then, which holds every segment each will ever have sent or
// received. The sockets stay open (in TCP_CLOSE) until the test ends.
func (c *Paced) Finish(t testing.TB) (client, server *unix.TCPInfo) {
	t.Helper()
	if err := c.Client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		read  *net.TCPConn
		close func() error
	}{{c.Server, c.Server.CloseWrite}, {c.Client, func() error { return nil }}} {
		step.read.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, step.read); err != nil {
			t.Fatal(err)
		}
		if err := step.close(); err != nil {
			t.Fatal(err)
		}
	}
	const tcpClose = 7
	Eventually(t, 5*time.Second, "both sockets in TCP_CLOSE", func() (bool, string) {
		client, server = TCPInfo(t, c.Client), TCPInfo(t, c.Server)
		return client.State == tcpClose && server.State == tcpClose, fmt.Sprintf("client state %d, server state %d", client.State, server.State)
	})
	return client, server
}

// TCPInfo returns the kernel's TCP_INFO for a connection.
func TCPInfo(t testing.TB, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return info
}

var (
	envOnce sync.Once
	env     *kernel.Env
	envErr  error
)

// KernelEnv opens the kernel environment (BTF, kallsyms) once per test binary: reading them
// takes ~120 ms here. Not root: the test is skipped.
func KernelEnv(t testing.TB) *kernel.Env {
	t.Helper()
	RequireRoot(t)
	envOnce.Do(func() { env, envErr = kernel.Open() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

// Events collects the batches a family's event sink receives, for tests.
type Events[T any] struct {
	mu     sync.Mutex
	events []T
}

// Add is the sink to hand to a family's Start.
func (e *Events[T]) Add(batch []T) {
	e.mu.Lock()
	e.events = append(e.events, batch...)
	e.mu.Unlock()
}

// Matching returns the events collected so far for which f is true.
func (e *Events[T]) Matching(f func(T) bool) []T {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []T
	for _, ev := range e.events {
		if f(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// ProgramLinks counts the links in the kernel whose program is one of the report's attached
// programs, by hook: what is attached, not what the family believes.
func ProgramLinks(t testing.TB, report loader.Report) map[string]int {
	t.Helper()
	byProgram := map[string]string{}
	for _, h := range report.Hooks {
		if h.Attached != nil {
			byProgram[h.Attached.Program] = h.Hook
		}
	}
	out := map[string]int{}
	EachLink(t, func(l link.Link) {
		info, err := l.Info()
		if err != nil {
			return
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return
		}
		pi, err := prog.Info()
		prog.Close()
		if err != nil {
			return
		}
		// The kernel keeps 15 characters of a program's name.
		for name, hook := range byProgram {
			if len(name) > 15 && pi.Name == name[:15] || pi.Name == name {
				out[hook]++
			}
		}
	})
	return out
}

// Eventually polls cond every 50 ms until it holds, and fails t with what and cond's last
// state once within has passed. Not require.Eventually: that runs cond on another goroutine,
// where the t.Fatal of a helper cond calls cannot stop the test.
func Eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
