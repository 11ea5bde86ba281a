package drops

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
)

// Event is one sampled drop, retransmit or reset.
type Event struct {
	Kind Kind
	Time time.Time
	// Reason is the drop reason, or the reset reason for resets sent where the kernel has one.
	Reason string
	// Symbol is the function that freed the skb, Location the symbol+offset (drops only).
	Symbol    string
	Location  string
	Netns     uint32
	NetnsName string // iproute2 name of the netns, if it has one
	Interface string
	Network   string // ipv4, ipv6
	Transport string // tcp, udp, ...
	// Direction is "receive" when the packet arrived on an interface, "transmit" when it was
	// sent from this host, empty when the event carried no packet.
	Direction string
	LocalAddr netip.Addr
	LocalPort uint16
	PeerAddr  netip.Addr
	PeerPort  uint16
	// TupleFrom says where the 5-tuple came from: "packet" headers or the "socket".
	TupleFrom string
	State     string // TCP state of the socket involved, if any
	Length    uint32 // skb->len
}

func (p *Probe) decode(r *dropsEvent) Event {
	e := Event{
		Kind:      Kind(r.Kind),
		Time:      p.env.KtimeToTime(r.TsNs),
		Netns:     r.Netns,
		Interface: unix.ByteSliceToString(int8sToBytes(r.Ifname[:])),
		Network:   networkType(r.Flow.L3proto),
		Transport: transport(r.Flow.L3proto, r.Flow.L4proto),
		State:     p.names.tcpState(r.State),
		Length:    r.Len,
	}
	switch e.Kind {
	case KindDrop:
		e.Reason = p.names.dropReason(r.Reason)
		if sym, off, ok := p.env.Kallsyms.Resolve(r.Location); ok {
			e.Symbol, e.Location = sym, fmt.Sprintf("%s+0x%x", sym, off)
		} else {
			e.Symbol, e.Location = "unknown", "unknown"
		}
	case KindResetSent:
		e.Reason = p.names.resetReason(r.Reason)
	}
	if name, ok := p.env.Netns.Name(r.Netns); ok {
		e.NetnsName = name
	}
	switch r.Flow.Direction {
	case 1:
		e.Direction = "receive"
	case 2:
		e.Direction = "transmit"
	}
	switch r.Flow.Source {
	case 1:
		e.TupleFrom = "packet"
	case 2:
		e.TupleFrom = "socket"
	}
	e.LocalAddr, e.PeerAddr = kernel.FlowAddrs(r.Flow.L3proto, r.Flow.LocalAddr, r.Flow.PeerAddr)
	if e.Network != "" {
		e.LocalPort, e.PeerPort = r.Flow.LocalPort, r.Flow.PeerPort
	}
	return e
}
