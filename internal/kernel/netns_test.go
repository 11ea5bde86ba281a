package kernel

import (
	"path/filepath"
	"time"

	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netns"
)

// Every thread InNetns borrowed is back home afterwards, the first thread included: Go parks
// rather than ends that one, and a goroutine that entered a namespace on it and exited locked
// used to leave /proc/self/ns/net naming the wrong namespace.
func TestInNetnsLeavesEveryThreadAtHome(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	name := fmt.Sprintf("tcpk%d-inns", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	other, err := netns.GetFromPath("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	otherInode, err := NetnsInode("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	home, err := NetnsInode(OwnNetns)
	if err != nil {
		t.Fatal(err)
	}

	for i := 0; i < 1000; i++ {
		var inside uint32
		if err := InNetns(other, func() (err error) {
			inside, err = NetnsInode(OwnNetns)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if inside != otherInode {
			t.Fatalf("call %d ran in netns %d, want %d", i, inside, otherInode)
		}
	}

	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ino, err := NetnsInode("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // the thread has ended
		}
		if ino != home {
			t.Errorf("thread %s is in netns %d, not at home (%d)", task.Name(), ino, home)
		}
	}
	if self, err := NetnsInode("/proc/self/ns/net"); err != nil || self != home {
		t.Errorf("/proc/self/ns/net is netns %d (%v), want %d", self, err, home)
	}
}

func TestNetnsPathReadsProcSelfAsOwn(t *testing.T) {
	for in, want := range map[string]string{
		"/proc/self/ns/net":  OwnNetns,
		"/proc/self//ns/net": OwnNetns,
		"/proc/42/ns/net":    "/proc/42/ns/net",
		"/run/netns/x":       "/run/netns/x",
	} {
		if got := NetnsPath(in); got != want {
			t.Errorf("NetnsPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// A name appears as an empty file first and becomes a namespace when iproute2 bind-mounts onto
// it, which leaves the directory's mtime alone; mtimes also tick coarsely, so a second name
// can land without moving it. Either way a namespace named moments after a scan must still be
// found, while a scan of directories at rest is trusted and a miss costs no rescan.
func TestNetnsNamesFindsNamesMountedAfterAScan(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and bind mounts")
	}
	inodes := map[string]uint32{}
	for _, ns := range []string{"a", "b", "c"} {
		name := fmt.Sprintf("tcpk%d-names-%s", os.Getpid(), ns)
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		ino, err := NetnsInode("/run/netns/" + name)
		if err != nil {
			t.Fatal(err)
		}
		inodes[ns] = ino
	}
	dir := t.TempDir()
	saved := netnsDirs
	netnsDirs = []string{dir}
	t.Cleanup(func() { netnsDirs = saved })
	name := func(ns string) string { return fmt.Sprintf("tcpk%d-names-%s", os.Getpid(), ns) }
	placeholder := func(ns string) string {
		path := filepath.Join(dir, ns)
		if err := os.WriteFile(path, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		return path
	}
	mount := func(ns, path string) {
		if err := unix.Mount("/run/netns/"+name(ns), path, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
	}
	setMtime := func(m time.Time) {
		if err := os.Chtimes(dir, m, m); err != nil {
			t.Fatal(err)
		}
	}
	wait := func() { time.Sleep(2 * netnsRescanGap) }

	var names NetnsNames
	pathA := placeholder("a")
	if got, ok := names.Name(inodes["a"]); ok {
		t.Fatalf("named %q before the mount", got)
	}
	mount("a", pathA)
	wait()
	if got, ok := names.Name(inodes["a"]); !ok || got != "a" {
		t.Errorf("mounted after the scan that saw its file: Name = %q, %v; want a", got, ok)
	}

	// b lands in the same mtime tick as the last scan.
	seen, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	mount("b", placeholder("b"))
	setMtime(seen.ModTime())
	wait()
	if got, ok := names.Name(inodes["b"]); !ok || got != "b" {
		t.Errorf("added in the tick of the last scan: Name = %q, %v; want b", got, ok)
	}

	// Directories at rest: one scan settles them, and a later miss does not scan again.
	old := time.Now().Add(-2 * netnsSettle)
	setMtime(old)
	wait()
	if _, ok := names.Name(inodes["c"]); ok {
		t.Fatal("c named before it was")
	}
	mount("c", placeholder("c"))
	setMtime(old)
	wait()
	if got, ok := names.Name(inodes["c"]); ok {
		t.Errorf("a settled scan was not trusted: a miss scanned again and found %q", got)
	}
	if got, ok := names.Name(inodes["a"]); !ok || got != "a" {
		t.Errorf("cached name: Name = %q, %v; want a", got, ok)
	}
}
