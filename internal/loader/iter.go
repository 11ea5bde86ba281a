package loader

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
)

// WalkNetns runs an iterator (an iter/tcp walk covers the namespace it is opened in) in each
// namespace at paths and hands read what it wrote there. A namespace gone since it was listed
// (its process exited) is skipped; the others' errors name the namespace, and the walk goes on.
func WalkNetns(family string, l *link.Iter, paths []string, read func([]byte)) error {
	own, _ := kernel.NetnsInode(kernel.OwnNetns)
	var errs []error
	for _, path := range paths {
		walk := func() error {
			rd, err := l.Open()
			if err != nil {
				return err
			}
			defer rd.Close()
			data, err := io.ReadAll(rd)
			read(data)
			return err
		}
		var err error
		if ino, _ := kernel.NetnsInode(path); ino == own {
			err = walk()
		} else if h, herr := netns.GetFromPath(kernel.NetnsPath(path)); herr != nil {
			err = herr
		} else {
			err = kernel.InNetns(h, walk)
			h.Close()
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("%s: walk the sockets of netns %s: %w", family, path, err))
		}
	}
	return errors.Join(errs...)
}
