package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// cgroupChildEnv makes the test binary act as a process in a container's cgroup namespace
// (see TestMain) instead of running tests.
const cgroupChildEnv = "TCPACK_CGROUPNS_CHILD"

// cgroupChildDirEnv is where the "hostpath" child mounts its own cgroup2.
const cgroupChildDirEnv = "TCPACK_CGROUPNS_DIR"

func TestMain(m *testing.M) {
	if mode := os.Getenv(cgroupChildEnv); mode != "" {
		os.Exit(cgroupNamespaceChild(mode))
	}
	os.Exit(m.Run())
}

// cgroupNamespaceChild runs in a new mount and cgroup namespace whose root is a child cgroup,
// as a container does. "container": its own cgroup2 mount replaces every inherited one.
// "hostpath": its own mount is added elsewhere and the host's stays visible, as with a
// hostPath volume. It prints what CgroupV2Root returned.
func cgroupNamespaceChild(mode string) int {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		fmt.Println("SETUP", err)
		return 1
	}
	inherited, err := cgroup2Mounts(f)
	f.Close()
	if err != nil || len(inherited) == 0 {
		fmt.Println("SETUP no inherited cgroup2 mount", err)
		return 1
	}
	targets := inherited
	if mode == "hostpath" {
		targets = []string{os.Getenv(cgroupChildDirEnv)}
	}
	for _, p := range targets {
		if mode == "container" {
			// The same file system cannot be mounted again on its own mount point (EBUSY).
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
				fmt.Println("SETUP unmount", p, err)
				return 1
			}
		}
		if err := unix.Mount("none", p, "cgroup2", 0, ""); err != nil {
			fmt.Println("SETUP mount", p, err)
			return 1
		}
	}
	root, err := CgroupV2Root()
	if err != nil {
		fmt.Println("ERR", err)
	} else {
		fmt.Println("ROOT", root)
	}
	return 0
}

func TestCgroupV2RootInsideACgroupNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a cgroup and cgroup/mount namespaces")
	}
	hostRoot, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	if !IsCgroupHierarchyRoot(hostRoot) {
		t.Fatalf("CgroupV2Root() = %s, which has cgroup.events: not the hierarchy root", hostRoot)
	}
	child := filepath.Join(hostRoot, fmt.Sprintf("tcpack-test-%d", os.Getpid()))
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(child); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	if IsCgroupHierarchyRoot(child) {
		t.Fatalf("%s counted as a hierarchy root", child)
	}
	cgroupFD, err := unix.Open(child, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgroupFD)

	run := func(mode string) string {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), cgroupChildEnv+"="+mode, cgroupChildDirEnv+"="+t.TempDir())
		// Born in the child cgroup, then a new cgroup namespace makes it the namespace's root.
		cmd.SysProcAttr = &syscall.SysProcAttr{
			UseCgroupFD: true, CgroupFD: cgroupFD,
			Unshareflags: unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP,
		}
		out, err := cmd.CombinedOutput()
		if err != nil || strings.HasPrefix(string(out), "SETUP") {
			t.Fatalf("child %s: %v\n%s", mode, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := run("container"); !strings.HasPrefix(out, "ERR") || !strings.Contains(out, "hostPath") {
		t.Errorf("with only the namespace's own cgroup2 mount: %q, want an error that asks for the host's mount", out)
	}
	if out := run("hostpath"); out != "ROOT "+hostRoot {
		t.Errorf("with the host's mount still visible: %q, want ROOT %s", out, hostRoot)
	}
}
