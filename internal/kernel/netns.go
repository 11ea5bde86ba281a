package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// OwnNetns names the process's own network namespace. Not /proc/self/ns/net: that is the
// namespace of the first thread, and Go parks (never ends) the first thread when a goroutine
// that locked it exits, so a library that entered another namespace there leaves
// /proc/self/ns/net naming that one for good. A goroutine that has not locked its thread
// always runs on a thread of the process's own namespace.
const OwnNetns = "/proc/thread-self/ns/net"

// NetnsPath is the path to open for a configured netns path: /proc/self/ns/net, the usual
// way to say "the namespace tcpack runs in", is read as OwnNetns.
func NetnsPath(path string) string {
	if filepath.Clean(path) == "/proc/self/ns/net" {
		return OwnNetns
	}
	return path
}

// InNetns runs fn on a thread switched into the namespace, then switches the thread back
// before handing it back to the Go scheduler. A thread that cannot be switched back is never
// handed back: it ends with the goroutine, so no other code runs in the wrong namespace.
func InNetns(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns of this thread: %w", err)
			return
		}
		defer home.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread() // still at home
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err = fn()
		if netns.Set(home) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// netnsDirs are where iproute2 (and most CNIs, via bind mounts) name network namespaces.
var netnsDirs = []string{"/run/netns", "/var/run/netns"}

// NetnsInode returns the inode of the network namespace a path refers to
// (/proc/<pid>/ns/net, /run/netns/<name>); BPF programs key on the same number.
func NetnsInode(path string) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(NetnsPath(path), &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// NetnsNames names network namespaces by inode, from iproute2's bind mounts. The host
// namespace and unnamed ones stay unnamed. Inodes are recycled once a namespace is gone, so a
// cached name is confirmed with one stat before use.
type NetnsNames struct {
	mu    sync.Mutex
	paths map[uint32]string
	// dirsChanged is when the netns directories last changed, as of the last scan: most
	// events come from unnamed namespaces (the host's, containers'), and each is a miss
	// that must not cost a directory scan unless a namespace was added since.
	dirsChanged time.Time
	// settled says the last scan saw the directories at rest. A name is made as an empty
	// file and bind-mounted onto after, and the mount leaves the directory's mtime alone;
	// mtimes also come from a coarse clock, so a second name added in the same tick as the
	// scan does not move it. Until a scan is settled, a miss scans again.
	settled  bool
	lastScan time.Time
}

const (
	// netnsSettle is how long after the directories' last change a scan is trusted.
	netnsSettle = time.Second
	// netnsPendingLimit is how long an entry that is not (yet) a namespace keeps scans
	// coming: iproute2 mounts within milliseconds, so one still a plain file by then is a
	// stray, not a mount in progress.
	netnsPendingLimit = 10 * time.Second
	// netnsRescanGap bounds the scans of an unsettled directory to one per gap, whatever
	// the event rate.
	netnsRescanGap = time.Millisecond
)

// Name returns the name of the netns with that inode, if it has one.
func (n *NetnsNames) Name(inode uint32) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if path, ok := n.paths[inode]; ok {
		if ino, err := NetnsInode(path); err == nil && ino == inode {
			return filepath.Base(path), true
		}
	}
	changed := netnsDirsChanged()
	now := time.Now()
	if n.paths != nil && !changed.After(n.dirsChanged) && (n.settled || now.Sub(n.lastScan) < netnsRescanGap) {
		return "", false
	}
	var pending bool
	n.paths, pending = scanNetnsNames()
	n.dirsChanged, n.lastScan = changed, now
	age := now.Sub(changed)
	n.settled = age >= netnsSettle && (!pending || age >= netnsPendingLimit)
	path, ok := n.paths[inode]
	if !ok {
		return "", false
	}
	return filepath.Base(path), true
}

// netnsDirsChanged is the latest modification time of the netns directories: adding or
// removing a name changes it.
func netnsDirsChanged() time.Time {
	var latest time.Time
	for _, dir := range netnsDirs {
		if st, err := os.Stat(dir); err == nil && st.ModTime().After(latest) {
			latest = st.ModTime()
		}
	}
	return latest
}

// scanNetnsNames maps the inode of each named namespace to its path. pending says some
// entry is not a namespace: a name whose bind mount has not happened yet.
func scanNetnsNames() (names map[uint32]string, pending bool) {
	names = map[uint32]string{}
	var own syscall.Stat_t
	if err := syscall.Stat(OwnNetns, &own); err != nil {
		return names, false
	}
	for _, dir := range netnsDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			var st syscall.Stat_t
			path := filepath.Join(dir, e.Name())
			if err := syscall.Stat(path, &st); err != nil {
				continue
			}
			if st.Dev != own.Dev { // not on nsfs
				pending = true
				continue
			}
			names[uint32(st.Ino)] = path
		}
	}
	return names, pending
}

// LiveNetns returns the inodes of every network namespace something still holds: a process
// (/proc/<pid>/ns/net of each thread group leader) or a bind mount under /run/netns. A
// namespace held only by a non-leader thread, or by an open fd, is missed;
// callers use this to forget counters, never to drop data they still report.
func LiveNetns() map[uint32]bool {
	live := map[uint32]bool{}
	if entries, err := os.ReadDir("/proc"); err == nil {
		for _, e := range entries {
			if e.Name()[0] < '0' || e.Name()[0] > '9' {
				continue
			}
			if ino, err := NetnsInode("/proc/" + e.Name() + "/ns/net"); err == nil {
				live[ino] = true
			}
		}
	}
	names, _ := scanNetnsNames()
	for ino := range names {
		live[ino] = true
	}
	return live
}

// NetnsInodes are the inodes of the namespaces at paths that still exist.
func NetnsInodes(paths []string) map[uint32]bool {
	inodes := map[uint32]bool{}
	for _, path := range paths {
		if ino, err := NetnsInode(path); err == nil {
			inodes[ino] = true
		}
	}
	return inodes
}

// AllNetns lists every network namespace a process or an iproute2 name holds on the host,
// each once, as a path to open (OwnNetns first). Namespaces only a socket or a bind mount
// elsewhere keeps alive are not found: nothing names them.
func AllNetns() []string {
	seen := map[uint32]bool{}
	paths := []string{}
	add := func(path string) {
		ino, err := NetnsInode(path)
		if err != nil || seen[ino] {
			return
		}
		seen[ino] = true
		paths = append(paths, path)
	}
	add(OwnNetns)
	if procs, err := os.ReadDir("/proc"); err == nil {
		for _, p := range procs {
			if p.Name()[0] >= '0' && p.Name()[0] <= '9' {
				add(filepath.Join("/proc", p.Name(), "ns", "net"))
			}
		}
	}
	for _, dir := range netnsDirs {
		if entries, err := os.ReadDir(dir); err == nil {
			for _, e := range entries {
				add(filepath.Join(dir, e.Name()))
			}
		}
	}
	return paths
}
