package footprint

import (
	"testing"
)

func attachedLayers(ls ...Layer) [layerCount]bool {
	var a [layerCount]bool
	for _, l := range ls {
		a[l] = true
	}
	return a
}

// TestLossNeedsTwoSnapshots: a deficit seen once (packets in flight) is not loss; one seen
// twice is, once, with the drop reason of its path.
func TestLossNeedsTwoSnapshots(t *testing.T) {
	tr := newTracker([]Flow{{Name: "f", Protocol: "udp"}},
		attachedLayers(NetDevQueue, NetDevStartXmit, NetDevXmit, NapiGroReceive, NetifRx, NetifReceiveSkb, UDPRcv, SkFilter))
	counts := make([][layerCount][2]footprintLayerCount, 1)
	const recv = 1
	set := func(l Layer, n uint64) { counts[0][l][recv].Packets = n }

	// In flight: netif_rx saw 5, the core 3; by the next read the core has them all.
	set(NetifRx, 5)
	set(NetifReceiveSkb, 3)
	if lost, fresh := tr.update(counts, nil); len(lost)+len(fresh) != 0 {
		t.Fatalf("first read: lost %+v new %+v", lost, fresh)
	}
	set(NetifReceiveSkb, 5)
	set(UDPRcv, 5)
	set(SkFilter, 5)
	if lost, fresh := tr.update(counts, nil); len(lost)+len(fresh) != 0 {
		t.Fatalf("packets in flight reported as lost: %+v %+v", lost, fresh)
	}

	// Now 4 stop after the core: dropped by netfilter on the receive path.
	set(NetifRx, 9)
	set(NetifReceiveSkb, 9)
	drops := []Drop{
		{Flow: "f", Direction: Receive, Path: Receive, Reason: "NETFILTER_DROP", Symbol: "nft_do_chain", Packets: 4},
		{Flow: "f", Direction: Receive, Path: Transmit, Reason: "QDISC_DROP", Symbol: "__dev_queue_xmit", Packets: 7},
	}
	tr.update(counts, drops)
	lost, fresh := tr.update(counts, drops)
	if len(lost) != 1 || len(fresh) != 1 {
		t.Fatalf("lost %+v new %+v, want one each", lost, fresh)
	}
	want := Loss{Flow: "f", Direction: Receive, Layer: "netif_receive_skb", NextLayer: "udp_rcv", Packets: 4,
		Reason: "NETFILTER_DROP", Symbol: "nft_do_chain"}
	if fresh[0] != want {
		t.Fatalf("loss %+v, want %+v", fresh[0], want)
	}
	if _, fresh := tr.update(counts, drops); len(fresh) != 0 {
		t.Fatalf("the same loss reported again: %+v", fresh)
	}
}

// TestLossSkipsStagesADriverSkips: a driver that calls netif_receive_skb directly leaves the
// GRO/backlog stage at 0, which is not loss; the alternatives are named when none saw packets.
func TestLossSkipsStagesADriverSkips(t *testing.T) {
	tr := newTracker([]Flow{{Name: "f", Protocol: "tcp"}}, attachedLayers(EthTypeTrans, NapiGroReceive, NetifRx, NetifReceiveSkb, TCPv4Rcv, TCPv6Rcv))
	counts := make([][layerCount][2]footprintLayerCount, 1)
	counts[0][EthTypeTrans][0].Packets = 6
	counts[0][NetifReceiveSkb][0].Packets = 6
	tr.update(counts, nil)
	lost, _ := tr.update(counts, nil)
	if len(lost) != 1 || lost[0].Layer != "netif_receive_skb" || lost[0].NextLayer != "tcp_v4_rcv|tcp_v6_rcv" || lost[0].Packets != 6 {
		t.Fatalf("lost %+v: want only 6 between netif_receive_skb and tcp_v4_rcv|tcp_v6_rcv", lost)
	}
}
