package quicext

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"
)

// FuzzReadMessage feeds arbitrary bytes to the extension-stream decoder: it must not panic,
// must reject bodies over maxMessageLen, and every message it accepts must re-encode to bytes
// that decode to the same message (run: go test -fuzz FuzzReadMessage ./quicext/).
func FuzzReadMessage(f *testing.F) {
	tg := Target{IPv4: mustAP("198.18.21.2:4433"), IPv6: mustAP("[2001:2:0:21::2]:443")}
	for _, m := range []message{
		{typ: MsgNegotiate, value: uint64(AllStrategies)},
		{typ: MsgStrategy, value: uint64(StrategyPool)},
		{typ: MsgServerMigration},
		{typ: MsgServerMigration, addr: tg, hasAddr: true},
		{typ: MsgServerMigrated, addr: tg},
		{typ: MsgPoolMigrationAddress, addr: Target{IPv4: tg.IPv4}},
		{typ: MsgMigrationAck, value: 300},
		{typ: MsgMigrationCancel},
		{typ: MsgPing, value: 7},
		{typ: MsgPong, value: 7},
	} {
		f.Add(appendMessage(nil, m))
	}
	f.Add([]byte{0x33, 3, 1, 2, 3})             // short address body
	f.Add([]byte{0x40, 0x99, 0x40, 0x41})       // unknown type, length 65
	f.Add([]byte{0x71, 0x78, 0x30, 0x01, 0x1f}) // stream type then NEGOTIATE
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		_ = readStreamType(bufio.NewReader(bytes.NewReader(data)))
		for {
			m, err := readMessage(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrMalformed) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			known := m.typ >= MsgNegotiate && m.typ <= MsgPong
			if !known {
				continue
			}
			b := appendMessage(nil, m)
			if l, _, err := quicvarint.Parse(b[quicvarint.Len(m.typ):]); err != nil || l > maxMessageLen {
				t.Fatalf("re-encoded body length %d: %v", l, err)
			}
			m2, err := readMessage(bufio.NewReader(bytes.NewReader(b)))
			if err != nil || m2 != m {
				t.Fatalf("round trip of %+v: got %+v, %v (bytes % x)", m, m2, err, b)
			}
		}
	})
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
