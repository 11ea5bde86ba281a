package txqueue

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
)

// Source says where an interface's per-queue counts come from.
type Source uint8

const (
	// SourceNone: the kernel keeps no per-queue counter of the interface (one queue, or a
	// root qdisc other than mq: noqueue, as veth has by default, fq, htb...), and no program
	// counts its packets (mode kernel_stats).
	SourceNone Source = iota
	// SourceQdisc: the child qdiscs of mq, the default root qdisc of a multi-queue device,
	// one per transmit queue, count what they hand to the driver.
	SourceQdisc
	// SourcePerPacket: a program on every packet sent (net_dev_start_xmit), mode per_packet.
	SourcePerPacket
	// SourceSampled: a multi-queue interface with no kernel counter per queue, counted by the
	// per-packet program in kernel_stats' sampling windows only (Probe.SampledTime).
	SourceSampled
	// SourceDriver: the driver's own per-queue counters (netdev netlink qstats), for a
	// multi-queue interface whose root qdisc is not mq. They count what the driver sent as
	// it counts it (virtio-net: skbs; most NICs: packets on the wire), with no drops.
	SourceDriver
)

func (s Source) String() string {
	switch s {
	case SourceQdisc:
		return "qdisc"
	case SourcePerPacket:
		return "per_packet"
	case SourceSampled:
		return "sampled"
	case SourceDriver:
		return "driver"
	}
	return "none"
}

// Interface is one interface as the per-queue source sees it at a read.
type Interface struct {
	Netns     uint32
	Ifindex   uint32
	Interface string
	// TxQueues is the number of transmit queues the device has (numtxqueues).
	TxQueues uint32
	Source   Source
	// RootQdisc is the kind of the interface's root qdisc (mq, noqueue, fq_codel...).
	RootQdisc string
	// TxPackets is the device's own tx_packets, cumulative since it was created.
	TxPackets uint64
}

// qdiscKey is one transmit queue of one interface; handle is its child qdisc's, so that a
// qdisc replaced (tc qdisc replace) starts counting again instead of going backwards.
type qdiscKey struct {
	netns, ifindex, queue uint32
}

// qdiscCounter extends a child qdisc's counters (packets, drops and requeues are 32-bit in
// gnet_stats) to cumulative 64-bit counts since the queue was first read.
type qdiscCounter struct {
	handle                  uint32
	lastPackets             uint32
	lastBytes               uint64
	lastDrops, lastRequeues uint32
	packets, bytes          uint64
	drops, requeues         uint64
}

// driverCounter is a driver queue's counts since its first read.
type driverCounter struct {
	lastPackets, lastBytes uint64
	packets, bytes         uint64
}

// qdiscReader reads per-queue counts from mq's child qdiscs in every namespace, each
// collection, with no program on the packet path, and from the drivers' own per-queue
// counters for multi-queue interfaces without mq.
type qdiscReader struct {
	mu       sync.Mutex
	counters map[qdiscKey]*qdiscCounter
	drivers  map[qdiscKey]*driverCounter
	// netdev is the netdev netlink family's id; 0 where the kernel has no per-queue driver
	// statistics (the family before 6.3, its qstats command before 6.9).
	netdev uint16
}

func newQdiscReader() *qdiscReader {
	r := &qdiscReader{counters: map[qdiscKey]*qdiscCounter{}, drivers: map[qdiscKey]*driverCounter{}}
	r.netdev, _ = netdevFamilyID() // an error leaves the driver source out, as on older kernels
	return r
}

// read returns the per-queue counts of every interface in the namespaces at paths, counted
// from the first read of each queue, and every interface with its source. Namespaces that
// went away since they were listed are skipped.
func (r *qdiscReader) read(paths []string) ([]QueueCount, []Interface, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var queues []QueueCount
	var ifaces []Interface
	var errs []error
	for _, path := range paths {
		ino, err := kernel.NetnsInode(path)
		if err != nil {
			continue // gone since the scan
		}
		q, i, err := r.readNetns(path, ino)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("%s: read the qdiscs of netns %s: %w", Family, path, err))
		}
		queues, ifaces = append(queues, q...), append(ifaces, i...)
	}
	// Queues of namespaces no longer listed are forgotten; a namespace listed but unreadable
	// once keeps its baselines, so that its counts never go back.
	live := kernel.NetnsInodes(paths)
	for key := range r.counters {
		if !live[key.netns] {
			delete(r.counters, key)
		}
	}
	for key := range r.drivers {
		if !live[key.netns] {
			delete(r.drivers, key)
		}
	}
	slices.SortFunc(queues, func(a, b QueueCount) int {
		return cmp.Or(cmp.Compare(a.Netns, b.Netns), cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.Queue, b.Queue))
	})
	return queues, ifaces, errors.Join(errs...)
}

func (r *qdiscReader) readNetns(path string, ino uint32) ([]QueueCount, []Interface, error) {
	own, _ := kernel.NetnsInode(kernel.OwnNetns)
	var h *netlink.Handle
	var err error
	ns := netns.None()
	if ino == own {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		if ns, err = netns.GetFromPath(kernel.NetnsPath(path)); err != nil {
			return nil, nil, err
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	qdiscs, err := h.QdiscList(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("list qdiscs: %w", err)
	}
	// mq's handle per interface, then its children: parent major:minor, queue minor-1.
	mq := map[int]uint32{}
	roots := map[int]string{}
	for _, q := range qdiscs {
		a := q.Attrs()
		if a.Parent == netlink.HANDLE_ROOT {
			roots[a.LinkIndex] = q.Type()
			if q.Type() == "mq" {
				mq[a.LinkIndex] = a.Handle >> 16
			}
		}
	}
	var queues []QueueCount
	sourced := map[int]bool{}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, q := range qdiscs {
		a := q.Attrs()
		major, ok := mq[a.LinkIndex]
		minor := a.Parent & 0xffff
		if !ok || a.Parent>>16 != major || minor == 0 || a.Parent == netlink.HANDLE_ROOT || a.Statistics == nil ||
			a.Statistics.Basic == nil {
			continue
		}
		key := qdiscKey{ino, uint32(a.LinkIndex), minor - 1}
		c := r.count(key, a.Handle, a.Statistics)
		sourced[a.LinkIndex] = true
		queues = append(queues, QueueCount{
			Netns: ino, Ifindex: uint32(a.LinkIndex), Interface: names[a.LinkIndex], Queue: minor - 1,
			Packets: c.packets, Bytes: c.bytes, Drops: c.drops, Requeues: c.requeues, Source: SourceQdisc,
		})
	}
	// Multi-queue interfaces without mq: their drivers' counters, where they keep them.
	driven := map[int]bool{}
	var unsourced bool
	for _, l := range links {
		unsourced = unsourced || l.Attrs().NumTxQueues > 1 && !sourced[l.Attrs().Index]
	}
	if unsourced && r.netdev != 0 {
		dqs, err := readDriverQueues(r.netdev, ns)
		if err != nil {
			return nil, nil, err
		}
		for _, dq := range dqs {
			if sourced[int(dq.ifindex)] {
				continue
			}
			c := r.countDriver(qdiscKey{ino, dq.ifindex, dq.queue}, dq)
			driven[int(dq.ifindex)] = true
			queues = append(queues, QueueCount{
				Netns: ino, Ifindex: dq.ifindex, Interface: names[int(dq.ifindex)], Queue: dq.queue,
				Packets: c.packets, Bytes: c.bytes, Source: SourceDriver,
			})
		}
	}
	ifaces := make([]Interface, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		i := Interface{Netns: ino, Ifindex: uint32(a.Index), Interface: a.Name, TxQueues: uint32(a.NumTxQueues), RootQdisc: roots[a.Index]}
		switch {
		case sourced[a.Index]:
			i.Source = SourceQdisc
		case driven[a.Index]:
			i.Source = SourceDriver
		}
		if a.Statistics != nil {
			i.TxPackets = a.Statistics.TxPackets
		}
		ifaces = append(ifaces, i)
	}
	for i := range queues {
		for _, f := range ifaces {
			if f.Ifindex == queues[i].Ifindex {
				queues[i].TxQueues = f.TxQueues
			}
		}
	}
	return queues, ifaces, nil
}

// countDriver folds a driver queue's counters into its cumulative counts; counters that went
// back (the device was reset or its queues reconfigured) start a new baseline from zero.
func (r *qdiscReader) countDriver(key qdiscKey, q driverQueue) *driverCounter {
	c, ok := r.drivers[key]
	if !ok {
		c = &driverCounter{lastPackets: q.packets, lastBytes: q.bytes}
		r.drivers[key] = c
		return c
	}
	if q.packets < c.lastPackets || q.bytes < c.lastBytes {
		c.lastPackets, c.lastBytes = 0, 0
	}
	c.packets += q.packets - c.lastPackets
	c.bytes += q.bytes - c.lastBytes
	c.lastPackets, c.lastBytes = q.packets, q.bytes
	return c
}

// count folds a child qdisc's counters into its queue's cumulative counts. The 32-bit ones
// wrap; a qdisc replaced, or counters that went back (the 64-bit byte count cannot wrap),
// start a new baseline: what the new qdisc counted is added from zero.
func (r *qdiscReader) count(key qdiscKey, handle uint32, st *netlink.QdiscStatistics) *qdiscCounter {
	var drops, requeues uint32
	if st.Queue != nil {
		drops, requeues = st.Queue.Drops, st.Queue.Requeues
	}
	b := st.Basic
	c, ok := r.counters[key]
	if !ok {
		// Counted from the first read: the family reports what was sent since it started.
		c = &qdiscCounter{handle: handle, lastPackets: b.Packets, lastBytes: b.Bytes, lastDrops: drops, lastRequeues: requeues}
		r.counters[key] = c
		return c
	}
	if c.handle != handle || b.Bytes < c.lastBytes {
		c.handle, c.lastPackets, c.lastBytes, c.lastDrops, c.lastRequeues = handle, 0, 0, 0, 0
	}
	c.packets += uint64(b.Packets - c.lastPackets)
	c.bytes += b.Bytes - c.lastBytes
	c.drops += uint64(drops - c.lastDrops)
	c.requeues += uint64(requeues - c.lastRequeues)
	c.lastPackets, c.lastBytes, c.lastDrops, c.lastRequeues = b.Packets, b.Bytes, drops, requeues
	return c
}
