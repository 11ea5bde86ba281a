package drops

import (
	"fmt"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"

	"golang.org/x/sys/unix"
)

// DropCount is the cumulative count of one kind of drop since the family started.
type DropCount struct {
	Netns     uint32
	Interface string // empty when the skb had no device
	Reason    string // enum skb_drop_reason name, e.g. NO_SOCKET
	Symbol    string // function that freed the skb, e.g. tcp_v4_rcv; "unknown" if unresolvable
	Network   string // ipv4, ipv6 or empty
	Transport string // tcp, udp, icmp, ... or empty
	Packets   uint64
	Bytes     uint64
}

// Kind tells retransmits and resets apart.
type Kind uint32

// Event kinds, as in bpf/drops.bpf.c enum event_kind.
const (
	KindDrop          Kind = 0
	KindRetransmit    Kind = 1
	KindResetSent     Kind = 2
	KindResetReceived Kind = 3
	kindCount              = 4
)

func (k Kind) String() string {
	switch k {
	case KindDrop:
		return "drop"
	case KindRetransmit:
		return "retransmit"
	case KindResetSent:
		return "reset_sent"
	case KindResetReceived:
		return "reset_received"
	}
	return fmt.Sprintf("kind_%d", uint32(k))
}

// TCPCount is the cumulative count of retransmits or resets of one kind.
type TCPCount struct {
	Netns   uint32
	Kind    Kind
	Reason  string // reset reason where the kernel gives one
	Network string
	State   string // socket state, empty when there was no socket
	Count   uint64
}

// Stats count what the kernel side could not report in full.
type Stats struct {
	// SampledOut counts events the per-CPU rate limit suppressed, by kind.
	SampledOut [kindCount]uint64
	// RingBufferFull counts events lost because the ring buffer was full, by kind.
	RingBufferFull [kindCount]uint64
	// DropKeysFull and TCPKeysFull count packets and TCP events not counted because their
	// map reached its configured size.
	DropKeysFull uint64
	TCPKeysFull  uint64
}

// Snapshot is the family's cumulative state at one moment.
type Snapshot struct {
	Drops []DropCount
	TCP   []TCPCount
	Stats Stats
}

// pruneAt is how full a counting map may get before counters of network namespaces that no
// longer exist are forgotten: containers come and go, their keys would fill the map for good.
const pruneAt = 0.9

// Snapshot reads and sums the per-CPU counting maps. Counts are cumulative since Start.
func (p *Probe) Snapshot() (Snapshot, error) {
	var snap Snapshot
	var err error
	var dropKeys int
	if snap.Drops, dropKeys, err = p.readDrops(); err != nil {
		return snap, err
	}
	if snap.TCP, err = p.readTCP(); err != nil {
		return snap, err
	}
	if snap.Stats, err = p.readStats(); err != nil {
		return snap, err
	}
	if float64(dropKeys) >= pruneAt*float64(p.cfg.MaxDropKeys) || float64(len(snap.TCP)) >= pruneAt*float64(p.cfg.MaxTCPKeys) {
		_, err = p.PruneDeadNetns()
	}
	return snap, err
}

// readDrops returns the drop counts folded by symbol, and how many kernel keys it read.
func (p *Probe) readDrops() ([]DropCount, int, error) {
	type aggKey struct {
		netns                               uint32
		ifname, reason, symbol, net, transp string
	}
	agg := map[aggKey]*DropCount{}
	keys := 0
	var key dropsDropKey
	var perCPU []dropsDropValue
	it := p.set.Maps[dropsMapDropCounts].Iterate()
	for it.Next(&key, &perCPU) {
		keys++
		var packets, bytes uint64
		ifname := ""
		for _, v := range perCPU {
			packets += v.Packets
			bytes += v.Bytes
			if ifname == "" {
				ifname = unix.ByteSliceToString(int8sToBytes(v.Ifname[:]))
			}
		}
		if packets == 0 {
			continue
		}
		symbol, _, ok := p.env.Kallsyms.Resolve(key.Location)
		if !ok {
			symbol = "unknown"
		}
		// Several call sites in one function fold into one series: metrics name functions.
		k := aggKey{key.Netns, ifname, p.names.dropReason(key.Reason), symbol,
			networkType(key.L3proto), transport(key.L3proto, key.L4proto)}
		d, ok := agg[k]
		if !ok {
			d = &DropCount{Netns: k.netns, Interface: k.ifname, Reason: k.reason, Symbol: k.symbol,
				Network: k.net, Transport: k.transp}
			agg[k] = d
		}
		d.Packets += packets
		d.Bytes += bytes
	}
	if err := it.Err(); err != nil {
		return nil, keys, fmt.Errorf("%s: read drop counts: %w", Family, err)
	}
	out := make([]DropCount, 0, len(agg))
	for _, d := range agg {
		out = append(out, *d)
	}
	return out, keys, nil
}

func (p *Probe) readTCP() ([]TCPCount, error) {
	var out []TCPCount
	var key dropsTcpEventKey
	var perCPU []uint64
	it := p.set.Maps[dropsMapTcpCounts].Iterate()
	for it.Next(&key, &perCPU) {
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		c := TCPCount{Netns: key.Netns, Kind: Kind(key.Kind), Network: networkType(key.L3proto),
			State: p.names.tcpState(key.State), Count: n}
		if c.Kind == KindResetSent {
			c.Reason = p.names.resetReason(key.Reason)
		}
		out = append(out, c)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read tcp counts: %w", Family, err)
	}
	return out, nil
}

// Counter slots, as in bpf/drops.bpf.c enum counter.
const (
	counterSampledOut   = 0
	counterRingbufFull  = 4
	counterDropKeysFull = 8
	counterTCPKeysFull  = 9
)

func (p *Probe) readStats() (Stats, error) {
	var s Stats
	c, err := loader.SumPerCPUSlots(p.set.Maps[dropsMapCounters])
	if err != nil {
		return s, fmt.Errorf("%s: %w", Family, err)
	}
	for k := uint32(0); k < kindCount; k++ {
		s.SampledOut[k], s.RingBufferFull[k] = c[counterSampledOut+k], c[counterRingbufFull+k]
	}
	s.DropKeysFull, s.TCPKeysFull = c[counterDropKeysFull], c[counterTCPKeysFull]
	return s, nil
}

func int8sToBytes(s []int8) []byte {
	b := make([]byte, len(s))
	for i, c := range s {
		b[i] = byte(c)
	}
	return b
}

// PruneDeadNetns deletes the counters of network namespaces that no longer exist and returns
// how many it deleted. Their series stop being reported; nothing can add to them any more.
func (p *Probe) PruneDeadNetns() (int, error) {
	live := kernel.LiveNetns()
	deleted := 0
	var dk dropsDropKey
	var dv []dropsDropValue
	var dead []dropsDropKey
	it := p.set.Maps[dropsMapDropCounts].Iterate()
	for it.Next(&dk, &dv) {
		if dk.Netns != 0 && !live[dk.Netns] {
			dead = append(dead, dk)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("%s: prune drop counts: %w", Family, err)
	}
	for i := range dead {
		if p.set.Maps[dropsMapDropCounts].Delete(&dead[i]) == nil {
			deleted++
		}
	}
	var tk dropsTcpEventKey
	var tv []uint64
	var deadTCP []dropsTcpEventKey
	it = p.set.Maps[dropsMapTcpCounts].Iterate()
	for it.Next(&tk, &tv) {
		if tk.Netns != 0 && !live[tk.Netns] {
			deadTCP = append(deadTCP, tk)
		}
	}
	if err := it.Err(); err != nil {
		return deleted, fmt.Errorf("%s: prune tcp counts: %w", Family, err)
	}
	for i := range deadTCP {
		if p.set.Maps[dropsMapTcpCounts].Delete(&deadTCP[i]) == nil {
			deleted++
		}
	}
	return deleted, nil
}
