package drops

import (
	"fmt"
	"strconv"

	"github.com/tcpack/tcpack/internal/kernel"
)

// names turns kernel numbers into the kernel's own words, read from BTF at start.
type names struct {
	dropReasons  map[uint32]string
	resetReasons map[uint32]string // nil before 6.10: the kernel gives no reset reason
	tcpStates    map[uint8]string
}

func loadNames(env *kernel.Env) (names, error) {
	var n names
	var err error
	if n.dropReasons, err = kernel.EnumNames(env.BTF, "skb_drop_reason", "SKB_DROP_REASON_"); err != nil {
		return n, fmt.Errorf("%s: %w (drop reasons need kernel 5.17 or later)", Family, err)
	}
	n.resetReasons, _ = kernel.EnumNames(env.BTF, "sk_rst_reason", "SK_RST_REASON_")
	if n.tcpStates, err = kernel.TCPStateNames(env.BTF); err != nil {
		return n, fmt.Errorf("%s: %w", Family, err)
	}
	return n, nil
}

func (n names) dropReason(v uint32) string {
	if s, ok := n.dropReasons[v]; ok {
		return s
	}
	return "UNKNOWN_" + strconv.FormatUint(uint64(v), 10)
}

// resetReason is empty where the kernel does not say why it reset.
func (n names) resetReason(v uint32) string {
	if n.resetReasons == nil {
		return ""
	}
	if s, ok := n.resetReasons[v]; ok {
		return s
	}
	return "UNKNOWN_" + strconv.FormatUint(uint64(v), 10)
}

func (n names) tcpState(v uint8) string {
	if v == 0 {
		return ""
	}
	return n.tcpStates[v]
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

// transport is OpenTelemetry's network.transport for an IP protocol number, with IANA names
// for protocols semconv does not list.
func transport(l3proto uint16, proto uint8) string {
	if l3proto == 0 {
		return ""
	}
	switch proto {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	case 136:
		return "udplite"
	case 47:
		return "gre"
	case 50:
		return "esp"
	case 2:
		return "igmp"
	}
	return "ipproto_" + strconv.Itoa(int(proto))
}
