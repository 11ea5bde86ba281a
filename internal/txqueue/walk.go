package txqueue

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
)

// flowID is one connection: its namespace and its addresses and ports.
type flowID struct {
	netns               uint32
	local, peer         [16]uint8
	localPort, peerPort uint16
	l3proto             uint16
}

// flowWalks keeps, across walks, each connection's queue at the last walk and its queue
// changes, and the changes per interface: kernel_stats mode's flows and moves.
type flowWalks struct {
	mu     sync.Mutex
	last   map[flowID]*Flow
	moves  map[[2]uint32]uint64 // (netns, ifindex)
	latest []Flow
}

func newFlowWalks() *flowWalks {
	return &flowWalks{last: map[flowID]*Flow{}, moves: map[[2]uint32]uint64{}}
}

// walk reads every connected TCP socket's queue in each namespace: a connection on another
// queue (or interface) than at the last walk counts as a change, and so does one that closed
// since on another queue (closed, its queue at the close; nil where that hook is missing);
// connections gone since are forgotten.
func (w *flowWalks) walk(l *link.Iter, closed *ebpf.Map, paths []string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	const size = int(unsafe.Sizeof(txqueueFlowWalkRecord{}))
	seen := map[flowID]*Flow{}
	err := loader.WalkNetns(Family, l, paths, func(data []byte) {
		for ; len(data) >= size; data = data[size:] {
			var r txqueueFlowWalkRecord
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), size), data[:size])
			id := flowID{r.Netns, r.Flow.LocalAddr, r.Flow.PeerAddr, r.Flow.LocalPort, r.Flow.PeerPort, r.Flow.L3proto}
			f := &Flow{
				Netns: r.Netns, Ifindex: r.Ifindex, Network: networkType(r.Flow.L3proto), Transport: transport(r.Flow.L4proto),
				LocalPort: r.Flow.LocalPort, PeerPort: r.Flow.PeerPort, Queue: r.Queue, Active: true,
			}
			f.LocalAddr, f.PeerAddr = kernel.FlowAddrs(r.Flow.L3proto, r.Flow.LocalAddr, r.Flow.PeerAddr)
			if prev, ok := w.last[id]; ok {
				f.Moves = prev.Moves
				if prev.Queue != f.Queue || prev.Ifindex != f.Ifindex {
					f.Moves++
					w.moves[[2]uint32{f.Netns, f.Ifindex}]++
				}
			}
			seen[id] = f
		}
	})
	err = errors.Join(err, w.closedSince(closed, seen))
	live := kernel.NetnsInodes(paths)
	for key := range w.moves {
		if !live[key[0]] {
			delete(w.moves, key)
		}
	}
	w.last = seen
	w.latest = w.latest[:0]
	for _, f := range seen {
		w.latest = append(w.latest, *f)
	}
	slices.SortFunc(w.latest, func(a, b Flow) int {
		return cmp.Or(cmp.Compare(a.Netns, b.Netns), cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.LocalPort, b.LocalPort), cmp.Compare(a.PeerPort, b.PeerPort))
	})
	return err
}

// flows are the connections of the last walk.
func (w *flowWalks) flows() []Flow {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.latest)
}

// interfaceMoves sets the per-interface queue changes to the walks', naming interfaces from
// the devices: the moves the sampling windows saw are theirs to report as events, a share of
// the changes, which the walks count in full (but for a connection's changes inside one
// interval).
func (w *flowWalks) interfaceMoves(counts []InterfaceCount, devices []Interface) []InterfaceCount {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range counts {
		counts[i].FlowMoves = 0
	}
	for key, n := range w.moves {
		i := slices.IndexFunc(counts, func(c InterfaceCount) bool { return c.Netns == key[0] && c.Ifindex == key[1] })
		if i < 0 {
			c := InterfaceCount{Netns: key[0], Ifindex: key[1]}
			if d := slices.IndexFunc(devices, func(d Interface) bool { return d.Netns == key[0] && d.Ifindex == key[1] }); d >= 0 {
				c.Interface = devices[d].Interface
			}
			counts = append(counts, c)
			i = len(counts) - 1
		}
		counts[i].FlowMoves = n
	}
	return counts
}

// closedSince counts the queue changes of connections that closed since the last walk, on
// another queue than that walk saw, and empties the map of closed connections.
func (w *flowWalks) closedSince(closed *ebpf.Map, seen map[flowID]*Flow) error {
	if closed == nil {
		return nil
	}
	var keys []txqueueClosedFlowKey
	var k txqueueClosedFlowKey
	var v txqueueClosedFlowValue
	it := closed.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
		id := flowID{k.Netns, k.Flow.LocalAddr, k.Flow.PeerAddr, k.Flow.LocalPort, k.Flow.PeerPort, k.Flow.L3proto}
		if _, open := seen[id]; open {
			continue // a new connection on the same addresses and ports: the walk has it
		}
		if prev, ok := w.last[id]; ok && (prev.Queue != v.Queue || prev.Ifindex != v.Ifindex) {
			w.moves[[2]uint32{k.Netns, v.Ifindex}]++
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("%s: read closed connections: %w", Family, err)
	}
	if len(keys) > 0 {
		if _, err := closed.BatchDelete(keys, nil); err != nil {
			return fmt.Errorf("%s: forget closed connections: %w", Family, err)
		}
	}
	return nil
}
