package netnstest

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// MQPerQueue adds an mq qdisc to the namespace's veth and returns a function reading each tx
// queue's packet count as the qdisc saw it: the kernel's own per-queue reference, to hold
// a per-queue count against.
func MQPerQueue(t testing.TB, ns *NS) func() map[uint32]uint64 {
	t.Helper()
	ns.Exec(t, "tc", "qdisc", "add", "dev", ns.Veth, "root", "handle", "1:", "mq")
	return func() map[uint32]uint64 {
		var qdiscs []struct {
			Kind    string `json:"kind"`
			Parent  string `json:"parent"`
			Packets uint64 `json:"packets"`
		}
		out := ns.Exec(t, "tc", "-s", "-j", "qdisc", "show", "dev", ns.Veth)
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
