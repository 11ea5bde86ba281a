package txqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The netdev generic netlink family's per-queue statistics (include/uapi/linux/netdev.h,
// 6.9+): the counters a driver keeps per hardware queue, where it implements them (virtio-net,
// mlx5, bnxt, gve, ...). Neither vishvananda/netlink nor x/sys has them yet.
const (
	netdevFamily           = "netdev"
	netdevCmdQstatsGet     = 12
	netdevQstatsIfindex    = 1
	netdevQstatsQueueType  = 2
	netdevQstatsQueueID    = 3
	netdevQstatsScope      = 4
	netdevQstatsTxPackets  = 10
	netdevQstatsTxBytes    = 11
	netdevQueueTypeTx      = 1
	netdevQstatsScopeQueue = 1
)

// driverQueue is one transmit queue's counters as its driver reports them.
type driverQueue struct {
	ifindex, queue uint32
	packets, bytes uint64
	hasPackets     bool
}

// netdevFamilyID is the netdev family's id, 0 where the kernel has no such family (before
// 6.3) or no qstats command; ids are global, not per namespace.
func netdevFamilyID() (uint16, error) {
	f, err := netlink.GenlFamilyGet(netdevFamily)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, err
	}
	for _, op := range f.Ops {
		if op.ID == netdevCmdQstatsGet {
			return f.ID, nil
		}
	}
	return 0, nil
}

// readDriverQueues dumps the per-queue transmit counters of every device in ns that has them
// (ns: netns.None() for the collector's own namespace).
func readDriverQueues(family uint16, ns netns.NsHandle) ([]driverQueue, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_GENERIC)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_DUMP)
	req.AddData(genlHeader{command: netdevCmdQstatsGet, version: 1})
	req.AddData(nl.NewRtAttr(netdevQstatsScope, nl.Uint32Attr(netdevQstatsScopeQueue)))
	msgs, err := dump(s, req)
	if err != nil {
		return nil, fmt.Errorf("netdev qstats dump: %w", err)
	}
	var out []driverQueue
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return nil, fmt.Errorf("netdev qstats: %w", err)
		}
		q, tx := driverQueue{}, false
		for _, a := range attrs {
			v, ok := netlinkUint(a.Value)
			if !ok {
				continue
			}
			switch a.Attr.Type {
			case netdevQstatsIfindex:
				q.ifindex = uint32(v)
			case netdevQstatsQueueType:
				tx = v == netdevQueueTypeTx
			case netdevQstatsQueueID:
				q.queue = uint32(v)
			case netdevQstatsTxPackets:
				q.packets, q.hasPackets = v, true
			case netdevQstatsTxBytes:
				q.bytes = v
			}
		}
		if tx && q.ifindex != 0 && q.hasPackets {
			out = append(out, q)
		}
	}
	return out, nil
}

// netlinkUint reads a netlink "uint" attribute: 4 bytes, or 8 when the value needs them.
func netlinkUint(b []byte) (uint64, bool) {
	switch len(b) {
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), true
	case 8:
		return binary.NativeEndian.Uint64(b), true
	}
	return 0, false
}

// genlHeader is struct genlmsghdr, reserved field zeroed: nl.Genlmsg serializes 4 bytes from
// a 2-byte struct, and the kernel refuses a dump whose reserved bytes happen not to be 0.
type genlHeader struct{ command, version uint8 }

func (g genlHeader) Len() int          { return nl.SizeofGenlmsg }
func (g genlHeader) Serialize() []byte { return []byte{g.command, g.version, 0, 0} }

// dump sends a dump request and reads its replies up to NLMSG_DONE. nl.NetlinkRequest.Execute
// stops at the first reply without NLM_F_MULTI, and the netdev family's queue statistics
// come without it (genlmsg_iput), one message per queue.
func dump(s *nl.NetlinkSocket, req *nl.NetlinkRequest) ([][]byte, error) {
	if err := s.SetExtAck(true); err != nil { // the kernel's reason, when it refuses
		return nil, err
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := s.SetReceiveTimeout(&tv); err != nil {
		return nil, err
	}
	if err := s.Send(req); err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("short netlink error")
				}
				if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
					return nil, fmt.Errorf("%w%s", unix.Errno(-errno), extackMessage(m))
				}
				return out, nil
			default:
				out = append(out, m.Data)
			}
		}
	}
}

// extackMessage is the kernel's text in an error's extended ACK, as ": text", or "".
func extackMessage(m syscall.NetlinkMessage) string {
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 || len(m.Data) < 4+unix.SizeofNlMsghdr {
		return ""
	}
	// The error code, then the request echoed: its header, and its payload unless capped.
	echoed := int(binary.NativeEndian.Uint32(m.Data[4:8]))
	if m.Header.Flags&unix.NLM_F_CAPPED != 0 {
		echoed = unix.SizeofNlMsghdr
	}
	start := 4 + (echoed+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)
	if start > len(m.Data) {
		return ""
	}
	attrs, err := nl.ParseRouteAttr(m.Data[start:])
	if err != nil {
		return ""
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.NLMSGERR_ATTR_MSG {
			return ": " + unix.ByteSliceToString(a.Value)
		}
	}
	return ""
}
