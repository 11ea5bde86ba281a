package kernel

import (
	"fmt"
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
