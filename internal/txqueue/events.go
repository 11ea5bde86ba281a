package txqueue

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
)

// Kind tells the event kinds apart (bpf/txqueue.bpf.c enum event_kind).
type Kind uint32

const (
	// KindFlowMoved: a tracked flow's packet left on another queue than its previous one.
	KindFlowMoved Kind = 0
	// KindOtherhost: a packet was received for another host (pkt_type PACKET_OTHERHOST).
	KindOtherhost Kind = 1
	kindCount          = 2
)

func (k Kind) String() string {
	switch k {
	case KindFlowMoved:
		return "flow_moved"
	case KindOtherhost:
		return "otherhost"
	}
	return fmt.Sprintf("kind_%d", uint32(k))
}

// Event is one sampled queue change or OTHERHOST packet.
type Event struct {
	Kind      Kind
	Time      time.Time
	Netns     uint32
	NetnsName string // iproute2 name of the netns, if it has one
	Ifindex   uint32
	Interface string
	Network   string // ipv4, ipv6; empty for a non-IP OTHERHOST frame

	// Flow moved: the flow (from this host's side), its old and new queue, whether the
	// kernel allowed a re-pick (skb->ooo_okay), and how the new queue was picked.
	Transport string
	LocalAddr netip.Addr
	LocalPort uint16
	PeerAddr  netip.Addr
	PeerPort  uint16
	OldQueue  uint16
	NewQueue  uint16
	TxQueues  uint32
	OOOOkay   bool
	Selector  Selector

	// OTHERHOST: the frame's addresses, and the interface's own MAC it did not match.
	SrcAddr netip.Addr
	DstAddr netip.Addr
	SrcMAC  net.HardwareAddr
	DstMAC  net.HardwareAddr
	DevMAC  net.HardwareAddr
	Length  uint32
}

// decode tells the family's two records apart and decodes each.
func (p *Probe) decode() func([]byte) (Event, bool) {
	moved := eventreader.Decoder(p.decodeMoved)
	otherhost := eventreader.Decoder(p.decodeOtherhost)
	return func(b []byte) (Event, bool) {
		if len(b) < 12 {
			return Event{}, false
		}
		// Both records start with ts_ns then kind.
		switch Kind(binary.NativeEndian.Uint32(b[8:12])) {
		case KindFlowMoved:
			return moved(b)
		case KindOtherhost:
			return otherhost(b)
		}
		return Event{}, false
	}
}

func (p *Probe) common(kind Kind, ts uint64, netns, ifindex uint32, ifname []int8) Event {
	e := Event{Kind: kind, Time: p.env.KtimeToTime(ts), Netns: netns, Ifindex: ifindex, Interface: cString(ifname)}
	if name, ok := p.env.Netns.Name(netns); ok {
		e.NetnsName = name
	}
	return e
}

func (p *Probe) decodeMoved(r *txqueueMovedEvent) Event {
	e := p.common(KindFlowMoved, r.TsNs, r.Netns, r.Ifindex, r.Ifname[:])
	e.Network, e.Transport = networkType(r.Flow.L3proto), transport(r.Flow.L4proto)
	e.LocalAddr, e.PeerAddr = kernel.FlowAddrs(r.Flow.L3proto, r.Flow.LocalAddr, r.Flow.PeerAddr)
	e.LocalPort, e.PeerPort = r.Flow.LocalPort, r.Flow.PeerPort
	e.OldQueue, e.NewQueue, e.TxQueues = r.OldQueue, r.NewQueue, r.RealNumTxQueues
	e.OOOOkay, e.Selector = r.OooOkay != 0, Selector(r.Selector)
	return e
}

func (p *Probe) decodeOtherhost(r *txqueueOtherhostEvent) Event {
	e := p.common(KindOtherhost, r.TsNs, r.Netns, r.Ifindex, r.Ifname[:])
	e.Network = networkType(r.L3proto)
	e.SrcAddr, e.DstAddr = kernel.FlowAddrs(r.L3proto, r.SrcAddr, r.DstAddr)
	e.SrcMAC = net.HardwareAddr(append([]byte(nil), r.SrcMac[:]...))
	e.DstMAC = net.HardwareAddr(append([]byte(nil), r.DstMac[:]...))
	e.DevMAC = net.HardwareAddr(append([]byte(nil), r.DevMac[:]...))
	e.Length = r.Len
	return e
}
