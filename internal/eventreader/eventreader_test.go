package eventreader

import (
	"encoding/binary"
	"testing"
)

type record struct {
	A uint32
	B uint16
	_ [2]byte
}

func TestDecoder(t *testing.T) {
	dec := Decoder(func(r *record) uint32 { return r.A + uint32(r.B) })
	b := binary.NativeEndian.AppendUint32(nil, 40)
	b = binary.NativeEndian.AppendUint16(b, 2)
	b = append(b, 0, 0)
	if got, ok := dec(b); !ok || got != 42 {
		t.Errorf("decoded %d, %v; want 42, true", got, ok)
	}
	if _, ok := dec(b[:5]); ok {
		t.Error("a short record was decoded")
	}
}
