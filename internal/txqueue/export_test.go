package txqueue

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
