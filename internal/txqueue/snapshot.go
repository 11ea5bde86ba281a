package txqueue

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// Selector is how netdev_pick_tx chose a queue (bpf/txqueue.bpf.c enum pick_selector).
type Selector uint8

const (
	// SelectorUnknown: the pick hooks are not attached, or the transmit was not the pick's
	// skb on the same CPU (a qdisc queued it).
	SelectorUnknown Selector = 0
	// SelectorSocket: the socket's recorded queue (sk_tx_queue_mapping) was kept.
	SelectorSocket Selector = 1
	// SelectorXPS: re-picked with an XPS CPU map for the sending CPU.
	SelectorXPS Selector = 2
	// SelectorHash: re-picked by hash (skb_tx_hash), no XPS map for the sending CPU.
	SelectorHash  Selector = 3
	selectorCount          = 4
)

func (s Selector) String() string {
	switch s {
	case SelectorSocket:
		return "socket"
	case SelectorXPS:
		return "xps"
	case SelectorHash:
		return "hash"
	}
	return "unknown"
}

// QueueCount is what one transmit queue of one interface has sent since the family started.
type QueueCount struct {
	Netns     uint32
	Ifindex   uint32
	Interface string
	Queue     uint32
	// Packets counts segments (gso_segs of a GSO skb), as qdiscs and most NICs count;
	// Xmits counts skbs handed to the driver, as veth's own tx_packets does.
	Packets uint64
	Xmits   uint64
	Bytes   uint64
	// Drops and Requeues, where the source counts them (SourceQdisc).
	Drops, Requeues uint64
	// TxQueues is the interface's real_num_tx_queues at its last transmit (SourcePerPacket),
	// or its number of transmit queues (SourceQdisc).
	TxQueues uint32
	Source   Source
}

// InterfaceCount is one interface's per-interface counters.
type InterfaceCount struct {
	Netns     uint32
	Ifindex   uint32
	Interface string
	// FlowMoves counts tracked flows seen on another queue than their previous packet's.
	FlowMoves uint64
	// Otherhost counts packets received with pkt_type PACKET_OTHERHOST.
	Otherhost uint64
	// Picks counts netdev_pick_tx calls by Selector (zero where the pick hooks are absent).
	Picks [selectorCount]uint64
}

// Stats count what the kernel side could not report in full.
type Stats struct {
	SampledOut     [kindCount]uint64
	RingBufferFull [kindCount]uint64
	// QueueKeysFull counts packets not counted because queue_counts was full;
	// InterfaceKeysFull interface events (moves, OTHERHOST, picks) because if_counts was.
	QueueKeysFull     uint64
	InterfaceKeysFull uint64
}

// Snapshot is the family's cumulative state at one moment.
type Snapshot struct {
	Queues     []QueueCount
	Interfaces []InterfaceCount
	// Devices are every interface of every namespace with the source of its per-queue
	// counts (ModeKernelStats only).
	Devices []Interface
	Stats   Stats
	// Unread says which namespaces could not be read (ModeKernelStats): their queues and
	// connections are missing, the others' are here.
	Unread error
}

// Flow is a connected socket's flow out of one interface, as the flow map holds it.
type Flow struct {
	Netns     uint32
	Ifindex   uint32
	Network   string // ipv4, ipv6
	Transport string // tcp, udp
	LocalAddr netip.Addr
	LocalPort uint16
	PeerAddr  netip.Addr
	PeerPort  uint16
	// Queue is the queue of the flow's last packet.
	Queue uint16
	Moves uint64
	// Active: the flow sent a packet since the previous call of Flows (since the start, at
	// the first call).
	Active bool
}

// pruneAt is how full a counting map may get before counters of network namespaces that no
// longer exist are forgotten.
const pruneAt = 0.9

// Snapshot reads and sums the per-CPU counting maps. Counts are cumulative since Start.
func (p *Probe) Snapshot() (Snapshot, error) {
	var snap Snapshot
	var err, unread error
	counted := 0 // entries of queue_counts, for pruning
	if p.qdiscs != nil {
		// A namespace that cannot be read is reported, the others still are.
		namespaces := kernel.AllNetns()
		snap.Queues, snap.Devices, unread = p.qdiscs.read(namespaces)
		if l, ok := p.set.Link(HookFlowWalk).(*link.Iter); ok {
			var closed *ebpf.Map
			if p.set.Link(HookFlowClosed) != nil {
				closed = p.set.Maps[txqueueMapClosedFlows]
			}
			unread = errors.Join(unread, p.walks.walk(l, closed, namespaces))
		}
		if p.windows != nil {
			sampled, err := p.readQueues()
			if err != nil {
				return snap, err
			}
			counted = len(sampled)
			snap.Queues = withSampled(snap.Queues, snap.Devices, sampled)
		}
	} else if snap.Queues, err = p.readQueues(); err != nil {
		return snap, err
	} else {
		counted = len(snap.Queues)
	}
	if snap.Interfaces, err = p.readInterfaces(); err != nil {
		return snap, err
	}
	if p.walks != nil {
		snap.Interfaces = p.walks.interfaceMoves(snap.Interfaces, snap.Devices)
	}
	if snap.Stats, err = p.readStats(); err != nil {
		return snap, err
	}
	if float64(counted) >= pruneAt*float64(p.cfg.MaxQueueKeys) ||
		float64(len(snap.Interfaces)) >= pruneAt*float64(p.cfg.MaxInterfaces) {
		_, err = p.PruneDeadNetns()
	}
	snap.Unread = unread
	return snap, err
}

// withSampled adds to the kernel's per-queue counts the windows' counts of the multi-queue
// interfaces that have none (SourceNone), and marks those devices SourceSampled. A one-queue
// interface's count is its own tx_packets; those of interfaces with a kernel counter are
// exact without the sample.
func withSampled(queues []QueueCount, devices []Interface, sampled []QueueCount) []QueueCount {
	unsourced := map[[2]uint32]*Interface{}
	for i := range devices {
		if d := &devices[i]; d.Source == SourceNone && d.TxQueues > 1 {
			unsourced[[2]uint32{d.Netns, d.Ifindex}] = d
		}
	}
	for _, q := range sampled {
		d := unsourced[[2]uint32{q.Netns, q.Ifindex}]
		if d == nil {
			continue
		}
		d.Source = SourceSampled
		q.Source, q.Interface, q.TxQueues = SourceSampled, d.Interface, d.TxQueues
		queues = append(queues, q)
	}
	slices.SortFunc(queues, func(a, b QueueCount) int {
		return cmp.Or(cmp.Compare(a.Netns, b.Netns), cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.Queue, b.Queue))
	})
	return queues
}

// readQueues sums each queue's entry in queue_counts, where it counts on CPUs whose slot
// another queue took first, and the per-CPU slots that hold it. A slot whose key has no entry
// (pruned, its namespace gone) is not reported.
func (p *Probe) readQueues() ([]QueueCount, error) {
	byKey := map[txqueueQueueKey]*QueueCount{}
	add := func(key txqueueQueueKey, v txqueueQueueValue) {
		q := byKey[key]
		if q == nil {
			return
		}
		q.Packets += v.Packets
		q.Xmits += v.Xmits
		q.Bytes += v.Bytes
		q.TxQueues = max(q.TxQueues, v.RealNumTxQueues)
		if q.Interface == "" {
			q.Interface = cString(v.Ifname[:])
		}
	}
	var key txqueueQueueKey
	var perCPU []txqueueQueueValue
	it := p.set.Maps[txqueueMapQueueCounts].Iterate()
	for it.Next(&key, &perCPU) {
		byKey[key] = &QueueCount{Netns: key.Netns, Ifindex: key.Ifindex, Queue: key.Queue, Source: SourcePerPacket}
		for _, v := range perCPU {
			add(key, v)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read queue counts: %w", Family, err)
	}
	var slot uint32
	var slots []txqueueQueueSlot
	it = p.set.Maps[txqueueMapQueueSlots].Iterate()
	for it.Next(&slot, &slots) {
		for _, s := range slots {
			if s.Key.Ifindex != 0 {
				add(s.Key, s.Value)
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read queue slots: %w", Family, err)
	}
	out := make([]QueueCount, 0, len(byKey))
	for _, q := range byKey {
		out = append(out, *q)
	}
	slices.SortFunc(out, func(a, b QueueCount) int {
		return cmp.Or(cmp.Compare(a.Netns, b.Netns), cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.Queue, b.Queue))
	})
	return out, nil
}

func (p *Probe) readInterfaces() ([]InterfaceCount, error) {
	var out []InterfaceCount
	var key txqueueIfKey
	var perCPU []txqueueIfValue
	it := p.set.Maps[txqueueMapIfCounts].Iterate()
	for it.Next(&key, &perCPU) {
		c := InterfaceCount{Netns: key.Netns, Ifindex: key.Ifindex}
		for _, v := range perCPU {
			c.FlowMoves += v.FlowMoves
			c.Otherhost += v.Otherhost
			for i := range c.Picks {
				c.Picks[i] += v.Picks[i]
			}
			if c.Interface == "" {
				c.Interface = cString(v.Ifname[:])
			}
		}
		out = append(out, c)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read interface counts: %w", Family, err)
	}
	return out, nil
}

// Counter slots, as in bpf/txqueue.bpf.c enum counter.
const (
	counterSampledOut    = 0
	counterRingbufFull   = 2
	counterQueueKeysFull = 4
	counterIfKeysFull    = 5
)

func (p *Probe) readStats() (Stats, error) {
	var s Stats
	c, err := loader.SumPerCPUSlots(p.set.Maps[txqueueMapCounters])
	if err != nil {
		return s, fmt.Errorf("%s: %w", Family, err)
	}
	for k := uint32(0); k < kindCount; k++ {
		s.SampledOut[k], s.RingBufferFull[k] = c[counterSampledOut+k], c[counterRingbufFull+k]
	}
	s.QueueKeysFull, s.InterfaceKeysFull = c[counterQueueKeysFull], c[counterIfKeysFull]
	return s, nil
}

// Flows reads the flow map: every flow the LRU still holds, closed ones included, each told
// active if it sent since the previous call. The kernel marks a flow with the current epoch at
// its first packet in that epoch, which costs one compare per packet instead of a clock read
// and a shared counter. In ModeKernelStats it returns the connections of the last Snapshot's
// socket walk, each with its queue at that walk and its changes between walks.
func (p *Probe) Flows() ([]Flow, error) {
	if p.walks != nil {
		return p.walks.flows(), nil
	}
	p.flowsMu.Lock()
	defer p.flowsMu.Unlock()
	epochs := p.set.Maps[txqueueMapFlowEpoch]
	var epoch uint32
	if err := epochs.Lookup(uint32(0), &epoch); err != nil {
		return nil, fmt.Errorf("%s: read flow epoch: %w", Family, err)
	}
	// Advanced first: a packet sent while the map is read is then active next time too,
	// rather than in neither read.
	if err := epochs.Put(uint32(0), epoch+1); err != nil {
		return nil, fmt.Errorf("%s: advance flow epoch: %w", Family, err)
	}
	var out []Flow
	var key txqueueFlowKey
	var v txqueueFlowValue
	it := p.set.Maps[txqueueMapFlows].Iterate()
	for it.Next(&key, &v) {
		fl := v.Flow
		f := Flow{
			Netns: key.Netns, Ifindex: key.Ifindex,
			Network: networkType(fl.L3proto), Transport: transport(fl.L4proto),
			LocalPort: fl.LocalPort, PeerPort: fl.PeerPort,
			Queue: v.Queue, Moves: v.Moves,
			Active: v.Epoch == epoch || v.Epoch == epoch+1,
		}
		f.LocalAddr, f.PeerAddr = kernel.FlowAddrs(fl.L3proto, fl.LocalAddr, fl.PeerAddr)
		out = append(out, f)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read flows: %w", Family, err)
	}
	return out, nil
}

// PruneDeadNetns deletes the counters of network namespaces that no longer exist and returns
// how many it deleted. The flow map needs no pruning: it is an LRU.
func (p *Probe) PruneDeadNetns() (int, error) {
	live := kernel.LiveNetns()
	deleted := 0
	var qk txqueueQueueKey
	var qv []txqueueQueueValue
	var deadQ []txqueueQueueKey
	it := p.set.Maps[txqueueMapQueueCounts].Iterate()
	for it.Next(&qk, &qv) {
		if qk.Netns != 0 && !live[qk.Netns] {
			deadQ = append(deadQ, qk)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("%s: prune queue counts: %w", Family, err)
	}
	for i := range deadQ {
		if p.set.Maps[txqueueMapQueueCounts].Delete(&deadQ[i]) == nil {
			deleted++
		}
	}
	// A slot is cleared only when every CPU's copy of it is empty or held by a namespace that
	// is gone: those see no packets, and a live copy rewritten from this read would lose what
	// it counted since. An empty copy claimed between the read and the write loses the few
	// packets it counted in that time, and is claimed again at the next.
	slotsMap := p.set.Maps[txqueueMapQueueSlots]
	var slot uint32
	var slots []txqueueQueueSlot
	var staleSlots []uint32
	it = slotsMap.Iterate()
	for it.Next(&slot, &slots) {
		stale, held := false, false
		for _, s := range slots {
			switch {
			case s.Key.Ifindex == 0:
			case s.Key.Netns != 0 && !live[s.Key.Netns]:
				stale = true
			default:
				held = true
			}
		}
		if stale && !held {
			staleSlots = append(staleSlots, slot)
		}
	}
	if err := it.Err(); err != nil {
		return deleted, fmt.Errorf("%s: prune queue slots: %w", Family, err)
	}
	empty := make([]txqueueQueueSlot, len(slots))
	for _, slot := range staleSlots {
		if err := slotsMap.Update(slot, empty, ebpf.UpdateExist); err != nil {
			return deleted, fmt.Errorf("%s: prune queue slot %d: %w", Family, slot, err)
		}
		deleted++
	}
	var ik txqueueIfKey
	var iv []txqueueIfValue
	var deadI []txqueueIfKey
	it = p.set.Maps[txqueueMapIfCounts].Iterate()
	for it.Next(&ik, &iv) {
		if ik.Netns != 0 && !live[ik.Netns] {
			deadI = append(deadI, ik)
		}
	}
	if err := it.Err(); err != nil {
		return deleted, fmt.Errorf("%s: prune interface counts: %w", Family, err)
	}
	for i := range deadI {
		if p.set.Maps[txqueueMapIfCounts].Delete(&deadI[i]) == nil {
			deleted++
		}
	}
	return deleted, nil
}

func cString(s []int8) string {
	b := make([]byte, len(s))
	for i, c := range s {
		b[i] = byte(c)
	}
	return unix.ByteSliceToString(b)
}

// networkType is OpenTelemetry's network.type for an ethertype.
func networkType(l3proto uint16) string {
	switch l3proto {
	case 0x0800:
		return "ipv4"
	case 0x86DD:
		return "ipv6"
	}
	return ""
}

// transport is OpenTelemetry's network.transport; flows are only tracked for TCP and UDP.
func transport(proto uint8) string {
	switch proto {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return fmt.Sprintf("ipproto_%d", proto)
}
