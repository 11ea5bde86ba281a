package netnstest

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// MQPerQueue adds an mq qdisc to the namespace's veth and returns a function reading each tx
// queue's packet count as the qdisc saw it: the kernel's own per-queue reference, to hold
// a per-queue count against.
func MQPerQueue(t testing.TB, ns *NS) func() map[uint32]uint64 {
	t.Helper()
	return mqPerQueue(t, ns.Veth, func(args ...string) string { return ns.Exec(t, args[0], args[1:]...) })
}

// MQPerQueueHere is MQPerQueue for a device of the test's own namespace (a guest's NIC),
// replacing its root qdisc.
func MQPerQueueHere(t testing.TB, dev string) func() map[uint32]uint64 {
	t.Helper()
	return mqPerQueue(t, dev, func(args ...string) string {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	})
}

func mqPerQueue(t testing.TB, dev string, run func(args ...string) string) func() map[uint32]uint64 {
	t.Helper()
	run("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "mq")
	return func() map[uint32]uint64 {
		var qdiscs []struct {
			Kind    string `json:"kind"`
			Parent  string `json:"parent"`
			Packets uint64 `json:"packets"`
		}
		out := run("tc", "-s", "-j", "qdisc", "show", "dev", dev)
		if err := json.Unmarshal([]byte(out), &qdiscs); err != nil {
			t.Fatalf("tc -j: %v\n%s", err, out)
		}
		sent := map[uint32]uint64{}
		for _, q := range qdiscs {
			// mq's children hang off 1:1 .. 1:N, one per tx queue.
			if minor, ok := strings.CutPrefix(q.Parent, "1:"); ok && q.Kind != "mq" {
				n, err := strconv.ParseUint(minor, 16, 32)
				if err != nil || n == 0 {
					t.Fatalf("tc: unexpected parent %q", q.Parent)
				}
				sent[uint32(n-1)] = q.Packets
			}
		}
		return sent
	}
}
