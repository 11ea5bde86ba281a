package kernel

import "net/netip"

// FlowAddrs turns a struct flow's addresses (bpf/headers/common.h: 16 bytes each, IPv4 in
// the first 4) into addresses, by its l3proto (ETH_P_IP, ETH_P_IPV6); invalid when unknown.
func FlowAddrs(l3proto uint16, local, peer [16]byte) (netip.Addr, netip.Addr) {
	switch l3proto {
	case 0x0800:
		return netip.AddrFrom4([4]byte(local[:4])), netip.AddrFrom4([4]byte(peer[:4]))
	case 0x86DD:
		return netip.AddrFrom16(local).Unmap(), netip.AddrFrom16(peer).Unmap()
	}
	return netip.Addr{}, netip.Addr{}
}
