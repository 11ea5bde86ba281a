package footprint

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/tcpack/tcpack/internal/loader"
)

// Directions of a packet relative to its flow.
const (
	Transmit = "transmit" // from the flow's local side to its peer
	Receive  = "receive"  // from the peer to the local side
)

// Count is the cumulative number of a flow's packets seen at one layer in one direction.
type Count struct {
	Flow      string
	Layer     Layer
	Direction string
	// Packets counts wire packets (segments): a GRO-merged or GSO skb counts gso_segs.
	Packets uint64
}

// Drop is the cumulative number of a flow's packets the kernel freed for one reason at one
// place (skb:kfree_skb).
type Drop struct {
	Flow      string
	Direction string
	// Path is the path the packet was freed on: Receive when it had arrived on an interface.
	Path    string
	Reason  string // enum skb_drop_reason name, e.g. NETFILTER_DROP
	Symbol  string // function that freed it, e.g. nf_hook_slow
	Packets uint64
}

// Loss is packets of a flow that reached Layer and not NextLayer, the next layer of the same
// path that the kernel counts. Layer names are joined with "|" where a path has alternatives
// (napi_gro_receive|netif_rx) and none saw the packets.
type Loss struct {
	Flow      string
	Direction string
	Layer     string
	NextLayer string
	Packets   uint64
	// Reason and Symbol are the drop the kernel recorded most often for the flow, direction
	// and path since the previous loss was reported; empty when it recorded none (the packets
	// left the paths tcpack follows, e.g. forwarded, or are still queued).
	Reason string
	Symbol string
}

// Snapshot is the family's state at one moment.
type Snapshot struct {
	// Counts has every attached layer of every flow, both directions, zero or not.
	Counts []Count
	Drops  []Drop
	// Lost are the packets missing between consecutive layers now, counted only once they
	// have been missing at two snapshots in a row, so packets in flight are not loss. It can
	// go down: a packet a slow qdisc held for longer than one interval arrives after all.
	Lost []Loss
	// NewLosses is what Lost grew by since the previous snapshot, with the drop reason.
	NewLosses []Loss
	// DropKeysFull counts drops not counted because the drop map was full.
	DropKeysFull uint64
	// Armed says every layer is attached and counting. With loader.AttachOnTraffic it is false while
	// the flows are idle; then Lost and NewLosses are empty.
	Armed bool
	// Unobserved counts the sentinel runs that matched a flow's packet while the other layers
	// were detached: packets counted at no layer (one packet can pass up to three sentinels:
	// net_dev_queue, netif_receive_skb and kfree_skb).
	Unobserved uint64
	// ArmErr is what went wrong attaching or detaching layers since the previous snapshot
	// (nil if nothing); the snapshot is complete without the layers it names.
	ArmErr error
}

// Counter slots, as in bpf/footprint.bpf.c.
const (
	counterDropKeysFull = 0
	counterUnobserved   = 1
)

// Snapshot reads the kernel counters and derives where packets were lost since the previous
// call. Call it from one goroutine at a regular interval (the receiver's collection interval).
func (p *Probe) Snapshot() (Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var snap Snapshot
	maps, err := p.maps()
	if err != nil {
		return snap, err
	}
	counts, err := p.readCounts(maps)
	if err != nil {
		return snap, err
	}
	for f, flow := range p.cfg.Flows {
		for l := Layer(0); l < layerCount; l++ {
			if !p.attached[l] {
				continue
			}
			for d, dir := range []string{Transmit, Receive} {
				c := counts[f][l][d]
				snap.Counts = append(snap.Counts, Count{Flow: flow.Name, Layer: l, Direction: dir, Packets: c.Packets})
			}
		}
	}

	if snap.Drops, err = p.readDrops(maps); err != nil {
		return snap, err
	}
	c, err := loader.SumPerCPUSlots(maps[footprintMapCounters])
	if err != nil {
		return snap, fmt.Errorf("%s: %w", Family, err)
	}
	snap.DropKeysFull, snap.Unobserved = c[counterDropKeysFull], c[counterUnobserved]
	snap.Armed = p.armed()
	if snap.Armed {
		snap.Lost, snap.NewLosses = p.tracker.update(counts, snap.Drops)
	}
	if p.arming != nil {
		snap.ArmErr = p.arming.TakeErr()
	}
	return snap, nil
}

// readCounts sums the per-CPU layer counts: [flow][layer][direction].
func (p *Probe) readCounts(maps map[string]*ebpf.Map) ([][layerCount][2]footprintLayerCount, error) {
	counts := make([][layerCount][2]footprintLayerCount, len(p.cfg.Flows))
	var idx uint32
	var perCPU []footprintLayerCount
	it := maps[footprintMapLayerCounts].Iterate()
	for it.Next(&idx, &perCPU) {
		flow, rest := int(idx)/(int(layerCount)*2), int(idx)%(int(layerCount)*2)
		if flow >= len(counts) {
			continue
		}
		c := &counts[flow][rest/2][rest%2]
		for _, v := range perCPU {
			c.Packets += v.Packets
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read layer counts: %w", Family, err)
	}
	return counts, nil
}

func (p *Probe) readDrops(maps map[string]*ebpf.Map) ([]Drop, error) {
	type key struct {
		flow    uint16
		dir, rx uint8
		reason  uint32
		symbol  string
	}
	agg := map[key]uint64{}
	var k footprintDropKey
	var perCPU []uint64
	it := maps[footprintMapDropCounts].Iterate()
	for it.Next(&k, &perCPU) {
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		if n == 0 || int(k.Flow) >= len(p.cfg.Flows) {
			continue
		}
		symbol, _, ok := p.env.Kallsyms.Resolve(k.Location)
		if !ok {
			symbol = "unknown"
		}
		// Call sites within one function fold together: metrics name functions.
		agg[key{k.Flow, k.Direction, k.Rx, k.Reason, symbol}] += n
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: read drop counts: %w", Family, err)
	}
	out := make([]Drop, 0, len(agg))
	for k, n := range agg {
		path := Transmit
		if k.rx != 0 {
			path = Receive
		}
		out = append(out, Drop{Flow: p.cfg.Flows[k.flow].Name, Direction: direction(k.dir), Path: path,
			Reason: p.reasonName(k.reason), Symbol: k.symbol, Packets: n})
	}
	slices.SortFunc(out, func(a, b Drop) int {
		return strings.Compare(a.Flow+a.Direction+a.Path+a.Reason+a.Symbol, b.Flow+b.Direction+b.Path+b.Reason+b.Symbol)
	})
	return out, nil
}

func (p *Probe) reasonName(v uint32) string {
	if s, ok := p.reasons[v]; ok {
		return s
	}
	return "UNKNOWN_" + strconv.FormatUint(uint64(v), 10)
}

// direction names the kernel's enum direction (common.h): 2 is transmit, 1 receive.
func direction(d uint8) string {
	if d == 1 {
		return Receive
	}
	return Transmit
}
