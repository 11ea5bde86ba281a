package footprint

import "strings"

// Stages of each path, in order. Layers in one stage are alternatives a packet takes one of
// (a NAPI driver hands packets to GRO, others to the backlog; one L4 entry per protocol).
// tcp_probe is left out: it sees only data on established connections, never every packet.
var (
	txStages = [][]Layer{{NetDevQueue}, {NetDevStartXmit}, {NetDevXmit}}
	rxStages = [][]Layer{{EthTypeTrans}, {NapiGroReceive, NetifRx}, {NetifReceiveSkb},
		{TCPv4Rcv, TCPv6Rcv, UDPRcv, UDPv6Rcv}, {SkFilter}}
)

// lossKey is the loss after one stage of one path, for a flow and direction.
type lossKey struct {
	flow  int
	dir   int // 0 transmit, 1 receive (the kernel's layer_counts order)
	rx    bool
	stage int
}

// dropGroup is where a drop is attributed: a flow, direction and path.
type dropGroup struct {
	flow string
	dir  string
	rx   bool
}

// tracker turns cumulative layer counts into losses: packets that reached a stage and not
// the next one the kernel counted. A deficit counts only once it has been seen at two
// snapshots in a row (the smaller of the two), so packets in flight are never loss.
type tracker struct {
	flows    []Flow
	tx, rx   [][]Layer // attached layers of each stage; stages with none are left out
	prev     map[lossKey]uint64
	reported map[lossKey]uint64
	// attributed is, per drop group and reason@symbol, the drops already given to a loss.
	attributed map[dropGroup]map[string]uint64
	// base is the counts when the layers last started counting (nil: zero), which update
	// subtracts: with loader.AttachOnTraffic each armed period is compared on its own.
	base [][layerCount][2]footprintLayerCount
}

// rebase starts the loss view again from counts, with the layers attached now. Drops already
// given to a loss stay given.
func (t *tracker) rebase(counts [][layerCount][2]footprintLayerCount, attached [layerCount]bool) {
	next := newTracker(t.flows, attached)
	next.attributed = t.attributed
	next.base = counts
	*t = next
}

func newTracker(flows []Flow, attached [layerCount]bool) tracker {
	keep := func(stages [][]Layer) [][]Layer {
		var out [][]Layer
		for _, s := range stages {
			var in []Layer
			for _, l := range s {
				if attached[l] {
					in = append(in, l)
				}
			}
			if len(in) > 0 {
				out = append(out, in)
			}
		}
		return out
	}
	return tracker{flows: flows, tx: keep(txStages), rx: keep(rxStages),
		prev: map[lossKey]uint64{}, reported: map[lossKey]uint64{}, attributed: map[dropGroup]map[string]uint64{}}
}

func (t *tracker) update(counts [][layerCount][2]footprintLayerCount, drops []Drop) (lost, fresh []Loss) {
	if t.base != nil {
		since := make([][layerCount][2]footprintLayerCount, len(counts))
		for f := range counts {
			for l := range counts[f] {
				for d := range counts[f][l] {
					b := t.base[f][l][d].Packets
					if c := counts[f][l][d].Packets; c > b {
						since[f][l][d].Packets = c - b
					}
				}
			}
		}
		counts = since
	}
	for f := range t.flows {
		for d, dir := range []string{Transmit, Receive} {
			for _, path := range []struct {
				rx     bool
				stages [][]Layer
			}{{false, t.tx}, {true, t.rx}} {
				l, n := t.path(f, d, dir, path.rx, path.stages, counts, drops)
				lost = append(lost, l...)
				fresh = append(fresh, n...)
			}
		}
	}
	return lost, fresh
}

func (t *tracker) path(f, d int, dir string, rx bool, stages [][]Layer, counts [][layerCount][2]footprintLayerCount,
	drops []Drop) (lost, fresh []Loss) {
	sum := func(s []Layer) uint64 {
		var n uint64
		for _, l := range s {
			n += counts[f][l][d].Packets
		}
		return n
	}
	for k := 0; k+1 < len(stages); k++ {
		key := lossKey{f, d, rx, k}
		here := sum(stages[k])
		// The next stage that saw any of the flow's packets: a driver may skip a stage
		// (netif_receive_skb straight from the driver). If none did, the next one counted.
		next := k + 1
		for j := k + 1; j < len(stages); j++ {
			if sum(stages[j]) > 0 {
				next = j
				break
			}
		}
		var deficit uint64
		if there := sum(stages[next]); here > there {
			deficit = here - there
		}
		settled := min(deficit, t.prev[key])
		t.prev[key] = deficit
		if settled == 0 {
			t.reported[key] = 0
			continue
		}
		loss := Loss{Flow: t.flows[f].Name, Direction: dir, Layer: t.name(f, d, stages[k], counts),
			NextLayer: t.name(f, d, stages[next], counts), Packets: settled}
		lost = append(lost, loss)
		if settled > t.reported[key] {
			n := loss
			n.Packets = settled - t.reported[key]
			n.Reason, n.Symbol = t.attribute(dropGroup{t.flows[f].Name, dir, rx}, drops)
			fresh = append(fresh, n)
		}
		t.reported[key] = settled
	}
	return lost, fresh
}

// name is the stage's layers that saw the flow's packets, or, if none did, those the flow's
// packets would go through.
func (t *tracker) name(f, d int, stage []Layer, counts [][layerCount][2]footprintLayerCount) string {
	var seen, fits []string
	for _, l := range stage {
		if counts[f][l][d].Packets > 0 {
			seen = append(seen, l.String())
		}
		if t.fits(t.flows[f], l) {
			fits = append(fits, l.String())
		}
	}
	if len(seen) > 0 {
		return strings.Join(seen, "|")
	}
	if len(fits) == 0 {
		for _, l := range stage {
			fits = append(fits, l.String())
		}
	}
	return strings.Join(fits, "|")
}

// fits says whether the flow's packets can go through an L4 entry point.
func (t *tracker) fits(f Flow, l Layer) bool {
	v, _ := l3proto(f)
	switch l {
	case TCPv4Rcv:
		return f.Protocol != "udp" && v != 0x86DD
	case TCPv6Rcv:
		return f.Protocol != "udp" && v != 0x0800
	case UDPRcv:
		return f.Protocol != "tcp" && v != 0x86DD
	case UDPv6Rcv:
		return f.Protocol != "tcp" && v != 0x0800
	}
	return true
}

// attribute picks the drop recorded most often in the group since its last loss, and marks
// the group's drops as given.
func (t *tracker) attribute(g dropGroup, drops []Drop) (reason, symbol string) {
	given := t.attributed[g]
	if given == nil {
		given = map[string]uint64{}
		t.attributed[g] = given
	}
	var best string
	var most uint64
	for _, dr := range drops {
		if dr.Flow != g.flow || dr.Direction != g.dir || (dr.Path == Receive) != g.rx {
			continue
		}
		name := dr.Reason + "@" + dr.Symbol
		if n := dr.Packets - given[name]; n > most || (n == most && n > 0 && name < best) {
			best, most = name, n
		}
	}
	for _, dr := range drops {
		if dr.Flow == g.flow && dr.Direction == g.dir && (dr.Path == Receive) == g.rx {
			given[dr.Reason+"@"+dr.Symbol] = dr.Packets
		}
	}
	if best == "" {
		return "", ""
	}
	reason, symbol, _ = strings.Cut(best, "@")
	return reason, symbol
}
