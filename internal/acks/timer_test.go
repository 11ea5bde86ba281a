package acks_test

import (
	"testing"

	"github.com/tcpack/tcpack/internal/acks"
)

func TestTimerCountsAgree(t *testing.T) {
	for _, c := range []struct {
		counted, deferred, kernel uint64
		hooked, want              bool
	}{
		{236, 0, 236, true, true},
		{235, 0, 236, true, false},   // the handler sees every ACK
		{237, 0, 236, false, false},  // never more than the kernel sent
		{230, 2, 236, false, true},   // 4 of 236 unseen: within 4%
		{200, 20, 236, false, false}, // 16 of 236 unseen
		{100, 136, 236, false, true}, // deferred ones leave unseen
	} {
		if got, why := acks.TimerCountsAgree(c.counted, c.deferred, c.kernel, c.hooked); got != c.want {
			t.Errorf("%+v: %v (%s), want %v", c, got, why, c.want)
		}
	}
}
