package kernel

import "testing"

func TestFlowAddrs(t *testing.T) {
	var v4l, v4p, v6l, v6p [16]byte
	copy(v4l[:], []byte{198, 18, 0, 1})
	copy(v4p[:], []byte{198, 18, 0, 2})
	v6l[0], v6l[15] = 0xfd, 1
	copy(v6p[10:], []byte{0xff, 0xff, 192, 0, 2, 7}) // v4-mapped, as dual-stack sockets hold it
	for _, tc := range []struct {
		l3           uint16
		local, peer  [16]byte
		wantL, wantP string
	}{
		{0x0800, v4l, v4p, "198.18.0.1", "198.18.0.2"},
		{0x86DD, v6l, v6p, "fd00::1", "192.0.2.7"},
		{0, v4l, v4p, "invalid IP", "invalid IP"},
	} {
		l, p := FlowAddrs(tc.l3, tc.local, tc.peer)
		if l.String() != tc.wantL || p.String() != tc.wantP {
			t.Errorf("l3proto %#x: %s %s, want %s %s", tc.l3, l, p, tc.wantL, tc.wantP)
		}
	}
}
