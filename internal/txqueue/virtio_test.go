package txqueue_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/netnstest"
	"github.com/tcpack/tcpack/internal/txqueue"
)

// virtioNIC is the multi-queue virtio-net NIC make vmtest gives each guest (4 queue pairs;
// its host end goes nowhere). The host has none.
func virtioNIC(t *testing.T) string {
	t.Helper()
	entries, _ := os.ReadDir("/sys/class/net")
	var seen []string
	for _, e := range entries {
		driver, err := os.Readlink(filepath.Join("/sys/class/net", e.Name(), "device/driver"))
		txqs, _ := filepath.Glob(filepath.Join("/sys/class/net", e.Name(), "queues/tx-*"))
		// sysfs lists the queues in use: as many pairs as CPUs until ethtool -L asks for more.
		if err == nil && filepath.Base(driver) == "virtio_net" && len(txqs) >= 2 {
			return e.Name()
		}
		seen = append(seen, fmt.Sprintf("%s (driver %q, %d tx queues)", e.Name(), filepath.Base(driver), len(txqs)))
	}
	if slices.Contains(strings.Split(os.Getenv("TCPACK_EXPECT"), ","), "virtio_mq") {
		t.Fatalf("TCPACK_EXPECT names virtio_mq, yet there is no multi-queue virtio-net NIC: %v", seen)
	}
	t.Skip("no multi-queue virtio-net NIC here; make vmtest's guests have one")
	return ""
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func nicUint(t *testing.T, dev, file string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/net", dev, file))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// nicQueues is the family's per-queue counts of the NIC, which is in the test's own namespace.
func nicQueues(t *testing.T, p *txqueue.Probe, dev string) (map[uint32]txqueue.QueueCount, txqueue.Interface) {
	t.Helper()
	own, err := kernel.NetnsInode(kernel.OwnNetns)
	if err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, p)
	out := map[uint32]txqueue.QueueCount{}
	for _, q := range snap.Queues {
		if q.Netns == own && q.Interface == dev {
			out[q.Queue] = q
		}
	}
	for _, d := range snap.Devices {
		if d.Netns == own && d.Interface == dev {
			return out, d
		}
	}
	if p.KernelStats() {
		t.Fatalf("%s not among the devices", dev)
	}
	return out, txqueue.Interface{} // per_packet reads no devices
}

// sendEightFlows sends 150 single-segment datagrams on each of 8 UDP flows to a peer that
// does not exist beyond the NIC: each flow hashes to a queue of its own choosing.
func sendEightFlows(t *testing.T, peer string, port int) {
	t.Helper()
	payload := make([]byte, 100)
	for i := range 8 {
		c, err := net.Dial("udp4", net.JoinHostPort(peer, strconv.Itoa(port+i)))
		if err != nil {
			t.Fatal(err)
		}
		for range 150 {
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
}

// A multi-queue NIC: the guest's virtio-net with 4 queue pairs, no IPv6 and a permanent
// neighbour, so that every packet it sends is a test datagram. Under mq, each queue's count is
// its child qdisc's, summed the NIC's tx_packets delta. With another root qdisc (pfifo_fast)
// mq's children are gone: where virtio-net keeps per-queue statistics for netdev netlink
// (6.12 here, not 6.1), the counts come from the driver and equal, queue by queue, what the
// per-packet mode counts at net_dev_start_xmit alongside, and summed tx_packets; on 6.1 the
// NIC has no per-queue source, as documented.
func TestKernelStatsOnAMultiqueueNIC(t *testing.T) {
	dev := virtioNIC(t)
	const addr, peer = "198.18.91.1/24", "198.18.91.2"
	os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", []byte("1"), 0o644)
	run(t, "ethtool", "-L", dev, "combined", "4")
	if txqs, _ := filepath.Glob(filepath.Join("/sys/class/net", dev, "queues/tx-*")); len(txqs) != 4 {
		t.Fatalf("%s has %d transmit queues after ethtool -L combined 4, want 4", dev, len(txqs))
	}
	run(t, "ip", "addr", "add", addr, "dev", dev)
	run(t, "ip", "link", "set", dev, "up")
	t.Cleanup(func() {
		exec.Command("ip", "link", "set", dev, "down").Run()
		exec.Command("ip", "addr", "flush", "dev", dev).Run()
		exec.Command("tc", "qdisc", "del", "dev", dev, "root").Run()
	})
	run(t, "ip", "neigh", "replace", peer, "lladdr", "02:00:00:00:91:02", "dev", dev, "nud", "permanent")
	qdisc := netnstest.MQPerQueueHere(t, dev)
	time.Sleep(100 * time.Millisecond) // the link's own first packets, if any, are out

	p, _ := start(t, windowsConfig(0, 0))
	base, txBefore := qdisc(), nicUint(t, dev, "statistics/tx_packets")
	sendEightFlows(t, peer, 5700)
	sent := map[uint32]uint64{}
	var total uint64
	for q, n := range qdisc() {
		sent[q] = n - base[q]
		total += sent[q]
	}
	if delta := nicUint(t, dev, "statistics/tx_packets") - txBefore; delta != total || total != 8*150 {
		t.Fatalf("the qdiscs counted %d packets, tx_packets grew %d, 1200 datagrams were sent", total, delta)
	}
	netnstest.Eventually(t, 5*time.Second, "per-queue counts equal the child qdiscs'", func() (bool, string) {
		ours, d := nicQueues(t, p, dev)
		if d.Source != txqueue.SourceQdisc || d.RootQdisc != "mq" {
			return false, fmt.Sprintf("device %+v, want source qdisc under mq", d)
		}
		for q, n := range sent {
			if ours[q].Packets != n {
				return false, fmt.Sprintf("queue %d: ours %+v, the qdisc counted %d (all: %v)", q, ours[q], n, sent)
			}
		}
		return true, ""
	})
	used := 0
	for _, n := range sent {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("8 flows all left on one queue: %v", sent)
	}

	run(t, "tc", "qdisc", "replace", "dev", dev, "root", "pfifo_fast")
	_, d := nicQueues(t, p, dev)
	if release := kernelRelease(t); release < 610 {
		if d.Source != txqueue.SourceNone {
			t.Errorf("Linux %d.%d has no per-queue driver statistics, yet %s's source is %s", release/100, release%100, dev, d.Source)
		}
		return
	}
	if d.Source != txqueue.SourceDriver || d.RootQdisc != "pfifo_fast" {
		t.Fatalf("under pfifo_fast: %+v, want the driver's counters (%s)", d, txqueue.DriverQueues())
	}
	// The per-packet mode's counts of the same NIC, at net_dev_start_xmit: the skbs handed to
	// the driver on each queue, the unit virtio-net counts in.
	perPacket, _ := start(t, perPacketConfig())
	xmits := func() map[uint32]uint64 {
		out := map[uint32]uint64{}
		ours, _ := nicQueues(t, perPacket, dev)
		for q, c := range ours {
			out[q] = c.Xmits
		}
		return out
	}
	driverBase, xmitBase, txBefore := map[uint32]uint64{}, xmits(), nicUint(t, dev, "statistics/tx_packets")
	ours, _ := nicQueues(t, p, dev)
	for q, c := range ours {
		driverBase[q] = c.Packets
	}
	sendEightFlows(t, peer, 5710)
	seen := xmits()
	netnstest.Eventually(t, 5*time.Second, "per-queue counts equal the driver's", func() (bool, string) {
		ours, _ := nicQueues(t, p, dev)
		var sum uint64
		used := 0
		for q := range uint32(4) {
			got, want := ours[q].Packets-driverBase[q], seen[q]-xmitBase[q]
			if got != want || (got > 0 && ours[q].Source != txqueue.SourceDriver) {
				return false, fmt.Sprintf("queue %d: driver %+v (+%d), net_dev_start_xmit saw +%d", q, ours[q], got, want)
			}
			if got > 0 {
				used++
			}
			sum += got
		}
		if delta := nicUint(t, dev, "statistics/tx_packets") - txBefore; sum != delta || sum != 8*150 || used < 2 {
			return false, fmt.Sprintf("the driver's queues counted %d on %d queues, tx_packets grew %d, 1200 datagrams were sent", sum, used, delta)
		}
		return true, ""
	})
}

// kernelRelease is the running kernel's major*100+minor.
func kernelRelease(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(b), "%d.%d", &major, &minor); err != nil {
		t.Fatal(err)
	}
	return major*100 + minor
}
