package kernel

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// netnsDirs are where iproute2 (and most CNIs, via bind mounts) name network namespaces.
var netnsDirs = []string{"/run/netns", "/var/run/netns"}

// NetnsInode returns the inode of the network namespace a path refers to
// (/proc/<pid>/ns/net, /run/netns/<name>); BPF programs key on the same number.
func NetnsInode(path string) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
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
}

// Name returns the name of the netns with that inode, if it has one.
func (n *NetnsNames) Name(inode uint32) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if path, ok := n.paths[inode]; ok {
		if ino, err := NetnsInode(path); err == nil && ino == inode {
			return filepath.Base(path), true
		}
	}
	n.paths = scanNetnsNames()
	path, ok := n.paths[inode]
	return filepath.Base(path), ok
}

func scanNetnsNames() map[uint32]string {
	names := map[uint32]string{}
	for _, dir := range netnsDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if ino, err := NetnsInode(filepath.Join(dir, e.Name())); err == nil {
				names[ino] = filepath.Join(dir, e.Name())
			}
		}
	}
	return names
}
