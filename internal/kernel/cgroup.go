package kernel

import (
	"bufio"
	"errors"
	"os"
	"strings"
)

// CgroupV2Root returns where the unified (v2) cgroup hierarchy is mounted: /sys/fs/cgroup on
// most systems, /sys/fs/cgroup/unified on hybrid ones (our CI VMs). sock_ops programs attach
// there, at the root, because a socket's cgroup is fixed at creation and accepted sockets
// inherit their listener's.
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) > 0 && fs[0] == "cgroup2" {
			if f := strings.Fields(pre); len(f) >= 5 && f[3] == "/" {
				return f[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy mounted: sock_ops programs need one (mount -t cgroup2 none /sys/fs/cgroup)")
}
