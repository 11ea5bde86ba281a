// Package selector fills the socket selector of bpf/headers/selector.h: the sockets a family
// names by local port, peer port or peer prefix, per network namespace. The ACK family
// selects the sockets it observes with it, the quickack family those it forces.
package selector

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// The maps' names in every object that includes selector.h.
const (
	netnsMap = "select_netns"
	portsMap = "select_ports"
	peersMap = "select_peers"
)

// MaxNetns is how many namespaces a family can name (SELECT_MAX_NETNS).
const MaxNetns = 64

// Side is which end of the connection a port names (SELECT_SIDE_* in selector.h).
type Side uint8

const (
	Local Side = 1
	Peer  Side = 2
)

// portKey and peerKey are struct select_port_key and struct select_peer_key.
type portKey struct {
	Netns uint32
	Port  uint16
	Side  Side
	_     uint8
}

type peerKey struct {
	Prefixlen uint32
	Netns     uint32
	Addr      [16]byte
}

// Entry selects sockets by one port or one peer prefix; Value (never 0) is what a match
// returns in the kernel.
type Entry struct {
	Side  Side // with Port
	Port  uint16
	Peer  netip.Prefix // or a peer prefix
	Value uint32
}

// Size sets both maps' capacity for entries names in each of namespaces namespaces (at least
// one: netns 0 when the family names none).
func Size(spec *ebpf.CollectionSpec, entries []Entry, namespaces int) error {
	var ports, peers uint32
	for _, e := range entries {
		if e.Peer.IsValid() {
			peers++
		} else {
			ports++
		}
	}
	ns := uint32(max(namespaces, 1))
	for name, n := range map[string]uint32{portsMap: ports * ns, peersMap: peers * ns} {
		m, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("map %s: not in the object", name)
		}
		m.MaxEntries = max(n, 1)
	}
	return nil
}

// AddNetns names the namespace with inode netns; only the family's own check of it makes it
// matter (the ACK family with netns scope, quickack always).
func AddNetns(maps map[string]*ebpf.Map, netns uint32) error {
	if err := maps[netnsMap].Put(netns, uint8(1)); err != nil {
		return fmt.Errorf("netns %d: %w", netns, err)
	}
	return nil
}

// Fill adds entries for the namespace with inode netns (0: the family names none). A later
// entry for the same port or prefix replaces an earlier one.
func Fill(maps map[string]*ebpf.Map, netns uint32, entries []Entry) error {
	for _, e := range entries {
		if e.Value == 0 {
			return fmt.Errorf("selector entry %+v: value 0 means not selected", e)
		}
		if e.Peer.IsValid() {
			p := e.Peer.Masked()
			bits := p.Bits()
			if p.Addr().Is4() {
				bits += 96 // stored v4-mapped
			}
			key := peerKey{Prefixlen: uint32(32 + bits), Netns: netns, Addr: p.Addr().As16()}
			if err := maps[peersMap].Put(key, e.Value); err != nil {
				return fmt.Errorf("peer %s: %w", p, err)
			}
			continue
		}
		if err := maps[portsMap].Put(portKey{Netns: netns, Port: e.Port, Side: e.Side}, e.Value); err != nil {
			return fmt.Errorf("port %d: %w", e.Port, err)
		}
	}
	return nil
}
