package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CgroupV2Root returns where the root of the unified (v2) cgroup hierarchy is mounted:
// /sys/fs/cgroup on most systems, /sys/fs/cgroup/unified on hybrid ones (our CI VMs).
// sock_ops programs attach there, at the root, because a socket's cgroup is fixed at creation
// and accepted sockets inherit their listener's.
//
// In a container with its own cgroup namespace (the default with cgroup v2 runtimes, so in
// Kubernetes), the cgroup2 mount at /sys/fs/cgroup is the container's own cgroup: a program
// attached there would see only this container's sockets. A mount of the host's hierarchy
// (a hostPath volume of /sys/fs/cgroup, anywhere) is found and used instead; without one the
// error says to add it.
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	mounts, err := cgroup2Mounts(f)
	if err != nil {
		return "", err
	}
	if len(mounts) == 0 {
		return "", errors.New("no cgroup v2 hierarchy mounted: sock_ops programs need one (mount -t cgroup2 none /sys/fs/cgroup)")
	}
	for _, m := range mounts {
		if IsCgroupHierarchyRoot(m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("the cgroup v2 mount at %s is not the root of the hierarchy but a cgroup namespace's "+
		"(a container's own cgroup), so cgroup programs there would see only this container's sockets: "+
		"mount the host's /sys/fs/cgroup into the container (a read-only hostPath volume; see deploy/kubernetes)",
		strings.Join(mounts, ", "))
}

// IsCgroupHierarchyRoot reports whether dir is the root cgroup of a v2 hierarchy. Only the
// root lacks cgroup.events (Documentation/admin-guide/cgroup-v2.rst: "exists on non-root
// cgroups"), whatever cgroup namespace the caller is in.
func IsCgroupHierarchyRoot(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, "cgroup.events"))
	return errors.Is(err, os.ErrNotExist)
}

// cgroup2Mounts lists the mount points of cgroup2 file systems in a mountinfo file, in order,
// without the ones hidden under a later mount on the same point.
func cgroup2Mounts(r *os.File) ([]string, error) {
	var points []string
	last := map[string]bool{} // mount point -> its newest mount is cgroup2
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		fs := strings.Fields(post)
		isCgroup2 := len(fs) > 0 && fs[0] == "cgroup2"
		if _, seen := last[f[4]]; !seen && isCgroup2 {
			points = append(points, f[4])
		}
		last[f[4]] = isCgroup2
	}
	var visible []string
	for _, p := range points {
		if last[p] {
			visible = append(visible, p)
		}
	}
	return visible, sc.Err()
}
