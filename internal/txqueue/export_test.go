package txqueue

import (
	"fmt"

	"github.com/vishvananda/netns"
)

// QueueSlotsHeld counts the per-CPU queue slots held by a key of the network namespace.
func QueueSlotsHeld(p *Probe, netns uint32) (int, error) {
	n := 0
	var slot uint32
	var slots []txqueueQueueSlot
	it := p.set.Maps[txqueueMapQueueSlots].Iterate()
	for it.Next(&slot, &slots) {
		for _, s := range slots {
			if s.Key.Ifindex != 0 && s.Key.Netns == netns {
				n++
			}
		}
	}
	return n, it.Err()
}

// DriverQueues is what netdev netlink's per-queue statistics hold in the test's namespace,
// for a failure's message.
func DriverQueues() string {
	family, err := netdevFamilyID()
	if err != nil || family == 0 {
		return fmt.Sprintf("netdev family %d, %v", family, err)
	}
	qs, err := readDriverQueues(family, netns.None())
	return fmt.Sprintf("netdev family %d: %+v, %v", family, qs, err)
}
