package connid

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVarint checks the examples of RFC 9000 Appendix A.1 and that
// AppendVarint writes the shortest form at each length boundary.
func TestVarint(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
	}{
		{"c2197c5eff14e88c", 151288809941952652},
		{"9d7f3e7d", 494878333},
		{"7bbd", 15293},
		{"25", 37},
		{"4025", 37},
	} {
		b := unhex(t, tt.in)
		v, n, err := readVarint(b)
		if err != nil || v != tt.want || n != len(b) {
			t.Errorf("readVarint(%s) = %d, %d, %v; want %d, %d", tt.in, v, n, err, tt.want, len(b))
		}
		if _, _, err := readVarint(b[:len(b)-1]); len(b) > 1 && !errors.Is(err, ErrTruncated) {
			t.Errorf("readVarint(%s minus one byte) = %v, want ErrTruncated", tt.in, err)
		}
	}
	for _, tt := range []struct {
		v    uint64
		size int
	}{{0, 1}, {63, 1}, {64, 2}, {16383, 2}, {16384, 4}, {1<<30 - 1, 4}, {1 << 30, 8}, {1<<62 - 1, 8}} {
		b := AppendVarint(nil, tt.v)
		v, n, err := readVarint(b)
		if len(b) != tt.size || err != nil || v != tt.v || n != tt.size {
			t.Errorf("AppendVarint(%d) = %x (%d bytes), read back %d, %v; want %d bytes", tt.v, b, len(b), v, err, tt.size)
		}
	}
}

// TestParseDCIDHandBuilt parses packets written out byte by byte (not with
// the Append* builders), so that a builder and parser sharing one mistake
// cannot hide it.
func TestParseDCIDHandBuilt(t *testing.T) {
	tests := []struct {
		name     string
		pkt      string
		shortLen int
		kind     PacketKind
		typ      LongType
		version  uint32
		dcid     string
		scid     string
		token    string
		length   uint64
		pktLen   int
	}{
		{
			name: "v1 Initial", pkt: "c3" + "00000001" + "08" + "0102030405060708" + "02" + "aabb" + "03" + "ddeeff" + "4005" + "0011223344",
			kind: KindInitial, typ: TypeInitial, version: Version1, dcid: "0102030405060708", scid: "aabb", token: "ddeeff", length: 5, pktLen: 28,
		},
		{
			name: "v2 Initial (type bits 01)", pkt: "d0" + "6b3343cf" + "04" + "01020304" + "00" + "00" + "02" + "9999",
			kind: KindInitial, typ: TypeInitial, version: Version2, dcid: "01020304", length: 2, pktLen: 15,
		},
		{
			name: "v1 0-RTT (type bits 01)", pkt: "d0" + "00000001" + "04" + "01020304" + "00" + "02" + "9999",
			kind: KindOtherLong, typ: Type0RTT, version: Version1, dcid: "01020304", length: 2, pktLen: 14,
		},
		{
			name: "v2 0-RTT (type bits 10)", pkt: "e0" + "6b3343cf" + "01" + "aa" + "00" + "01" + "99",
			kind: KindOtherLong, typ: Type0RTT, version: Version2, dcid: "aa", length: 1, pktLen: 10,
		},
		{
			name: "v1 Handshake (type bits 10)", pkt: "e0" + "00000001" + "01" + "aa" + "01" + "bb" + "01" + "99",
			kind: KindOtherLong, typ: TypeHandshake, version: Version1, dcid: "aa", scid: "bb", length: 1, pktLen: 11,
		},
		{
			name: "v2 Handshake (type bits 11)", pkt: "f0" + "6b3343cf" + "01" + "aa" + "00" + "01" + "99",
			kind: KindOtherLong, typ: TypeHandshake, version: Version2, dcid: "aa", length: 1, pktLen: 10,
		},
		{
			name: "v1 Retry (type bits 11)", pkt: "f0" + "00000001" + "01" + "aa" + "01" + "bb" + "7777" + "00112233445566778899aabbccddeeff",
			kind: KindOtherLong, typ: TypeRetry, version: Version1, dcid: "aa", scid: "bb", token: "7777", pktLen: 27,
		},
		{
			name: "v2 Retry (type bits 00)", pkt: "c0" + "6b3343cf" + "01" + "aa" + "01" + "bb" + "00112233445566778899aabbccddeeff",
			kind: KindOtherLong, typ: TypeRetry, version: Version2, dcid: "aa", scid: "bb", token: "", pktLen: 25,
		},
		{
			name: "version negotiation", pkt: "80" + "00000000" + "02" + "abcd" + "01" + "ef" + "00000001" + "6b3343cf",
			kind: KindVersionNegotiation, dcid: "abcd", scid: "ef", pktLen: 18,
		},
		{
			name: "unknown version, 21-byte DCID", pkt: "c0" + "ff00001d" + "15" + "000102030405060708090a0b0c0d0e0f1011121314" + "00" + "deadbeef",
			kind: KindOtherLong, version: 0xff00001d, dcid: "000102030405060708090a0b0c0d0e0f1011121314", pktLen: 32,
		},
		{
			name: "short header, given length", pkt: "41" + "0102030405" + "9999", shortLen: 5,
			kind: KindShort, dcid: "0102030405", pktLen: 8,
		},
		{
			name: "short header, zero length", pkt: "40" + "99", shortLen: 0,
			kind: KindShort, dcid: "", pktLen: 2,
		},
		{
			name: "short header, self-encoded length", pkt: "40" + "27" + "11223344556677" + "99", shortLen: DCIDLenFromFirstOctet,
			kind: KindShort, dcid: "2711223344556677", pktLen: 10,
		},
		{
			name: "short header, fixed bit greased", pkt: "00" + "0102030405", shortLen: 5,
			kind: KindShort, dcid: "0102030405", pktLen: 6,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := unhex(t, tt.pkt)
			h, err := ParseDCID(pkt, tt.shortLen)
			if err != nil {
				t.Fatalf("ParseDCID(%x): %v", pkt, err)
			}
			if h.Kind != tt.kind || h.Type != tt.typ || h.Version != tt.version {
				t.Fatalf("kind %v type %v version %#x, want %v %v %#x", h.Kind, h.Type, h.Version, tt.kind, tt.typ, tt.version)
			}
			if !bytes.Equal(h.DCID, unhex(t, tt.dcid)) || !bytes.Equal(h.SCID, unhex(t, tt.scid)) || !bytes.Equal(h.Token, unhex(t, tt.token)) {
				t.Fatalf("DCID %x SCID %x token %x, want %s %s %s", h.DCID, h.SCID, h.Token, tt.dcid, tt.scid, tt.token)
			}
			if h.Length != tt.length || h.PacketLen != tt.pktLen {
				t.Fatalf("Length %d PacketLen %d, want %d %d", h.Length, h.PacketLen, tt.length, tt.pktLen)
			}
			if tt.length > 0 && h.HeaderLen+int(h.Length) != h.PacketLen {
				t.Fatalf("HeaderLen %d + Length %d != PacketLen %d", h.HeaderLen, h.Length, h.PacketLen)
			}
		})
	}
}

func TestParseDCIDErrors(t *testing.T) {
	tests := []struct {
		name     string
		pkt      string
		shortLen int
		want     error
	}{
		{"empty", "", 8, ErrTruncated},
		{"short header missing DCID byte", "40" + "01020304", 5, ErrTruncated},
		{"short header self-encoded length missing", "40", DCIDLenFromFirstOctet, ErrTruncated},
		{"short header self-encoded length 21", "40" + "14" + "0102030405060708090a0b0c0d0e0f10111213", DCIDLenFromFirstOctet, ErrInvalidHeader},
		{"short header self-encoded length 32", "40" + "ff", DCIDLenFromFirstOctet, ErrInvalidHeader},
		{"short header length argument 21", "40" + "01", 21, ErrBadDCIDLen},
		{"short header length argument -2", "40" + "01", -2, ErrBadDCIDLen},
		{"long header without version", "c0000000", 0, ErrTruncated},
		{"long header without DCID length", "c000000001", 0, ErrTruncated},
		{"v1 DCID length 21", "c0" + "00000001" + "15" + "000102030405060708090a0b0c0d0e0f1011121314" + "00", 0, ErrInvalidHeader},
		{"v2 SCID length 21", "d0" + "6b3343cf" + "00" + "15" + "000102030405060708090a0b0c0d0e0f1011121314", 0, ErrInvalidHeader},
		{"DCID cut", "c0" + "00000001" + "08" + "01020304", 0, ErrTruncated},
		{"SCID length missing", "c0" + "00000001" + "01" + "aa", 0, ErrTruncated},
		{"SCID cut", "c0" + "00000001" + "01" + "aa" + "04" + "bb", 0, ErrTruncated},
		{"Initial token length missing", "c0" + "00000001" + "01" + "aa" + "00", 0, ErrTruncated},
		{"Initial token cut", "c0" + "00000001" + "01" + "aa" + "00" + "05" + "0102", 0, ErrTruncated},
		{"Initial token length varint cut", "c0" + "00000001" + "01" + "aa" + "00" + "80ff", 0, ErrTruncated},
		{"Initial huge token length", "c0" + "00000001" + "01" + "aa" + "00" + "ffffffffffffffff", 0, ErrTruncated},
		{"Initial Length missing", "c0" + "00000001" + "01" + "aa" + "00" + "00", 0, ErrTruncated},
		{"Initial Length past datagram", "c0" + "00000001" + "01" + "aa" + "00" + "00" + "05" + "01020304", 0, ErrTruncated},
		{"Handshake huge Length", "e0" + "00000001" + "01" + "aa" + "00" + "ffffffffffffffff", 0, ErrTruncated},
		{"Retry without integrity tag", "f0" + "00000001" + "01" + "aa" + "00" + "00112233445566778899aabbccddee", 0, ErrTruncated},
		{"version negotiation partial version", "80" + "00000000" + "00" + "00" + "000001", 0, ErrInvalidHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := unhex(t, tt.pkt)
			if _, err := ParseDCID(pkt, tt.shortLen); !errors.Is(err, tt.want) {
				t.Fatalf("ParseDCID(%x, %d) = %v, want %v", pkt, tt.shortLen, err, tt.want)
			}
		})
	}
}

// TestParseDCIDPrefixes: every strict prefix of an Initial, 0-RTT or
// Handshake packet is truncated (its Length field covers the payload).
func TestParseDCIDPrefixes(t *testing.T) {
	dcid, scid := unhex(t, "0102030405060708"), unhex(t, "a1a2a3a4")
	payload := bytes.Repeat([]byte{0x5a}, 70) // Length needs 2 bytes
	for _, v := range []uint32{Version1, Version2} {
		for _, typ := range []LongType{TypeInitial, Type0RTT, TypeHandshake} {
			pkt := AppendLongHeaderPacket(nil, v, typ, dcid, scid, []byte("tok"), payload)
			h, err := ParseDCID(pkt, 0)
			if err != nil || h.Type != typ || h.PacketLen != len(pkt) || h.Length != 70 {
				t.Fatalf("v %#x %v: ParseDCID = %+v, %v", v, typ, h, err)
			}
			if typ == TypeInitial && string(h.Token) != "tok" {
				t.Fatalf("v %#x Initial: token %q", v, h.Token)
			}
			for n := range len(pkt) {
				if _, err := ParseDCID(pkt[:n], 0); !errors.Is(err, ErrTruncated) {
					t.Fatalf("v %#x %v: prefix of %d/%d bytes: %v, want ErrTruncated", v, typ, n, len(pkt), err)
				}
			}
		}
	}
}

func TestParseCoalesced(t *testing.T) {
	dcid := unhex(t, "0a0b0c0d0e0f1011")
	var d []byte
	d = AppendLongHeaderPacket(d, Version1, TypeInitial, dcid, []byte{1}, nil, bytes.Repeat([]byte{1}, 40))
	d = AppendLongHeaderPacket(d, Version1, Type0RTT, dcid, []byte{1}, nil, bytes.Repeat([]byte{2}, 300))
	d = AppendLongHeaderPacket(d, Version1, TypeHandshake, dcid, []byte{1}, nil, bytes.Repeat([]byte{3}, 20))
	d = AppendShortHeaderPacket(d, dcid, bytes.Repeat([]byte{4}, 30))
	hs, err := ParseCoalesced(d, len(dcid))
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := []LongType{TypeInitial, Type0RTT, TypeHandshake, TypeNone}
	if len(hs) != len(wantTypes) {
		t.Fatalf("%d packets, want %d", len(hs), len(wantTypes))
	}
	total := 0
	for i, h := range hs {
		if h.Type != wantTypes[i] || !bytes.Equal(h.DCID, dcid) {
			t.Fatalf("packet %d: type %v DCID %x", i, h.Type, h.DCID)
		}
		total += h.PacketLen
	}
	if total != len(d) {
		t.Fatalf("packet lengths sum to %d, datagram is %d", total, len(d))
	}
	if hs[3].Kind != KindShort || hs[3].PacketLen != 1+8+30 {
		t.Fatalf("last packet %+v, want a 39-byte short header packet", hs[3])
	}

	// A Retry runs to the end of the datagram, whatever follows.
	r := AppendLongHeaderPacket(nil, Version2, TypeRetry, dcid, nil, []byte("token"), make([]byte, 16))
	r = append(r, AppendLongHeaderPacket(nil, Version1, TypeHandshake, dcid, nil, nil, []byte{1})...)
	hs, err = ParseCoalesced(r, 8)
	if err != nil || len(hs) != 1 || hs[0].Type != TypeRetry {
		t.Fatalf("Retry datagram: %d packets, %v", len(hs), err)
	}

	// A broken second packet: the first is returned with the error.
	bad := AppendLongHeaderPacket(nil, Version1, TypeInitial, dcid, nil, nil, []byte{1, 2, 3})
	bad = append(bad, 0xe0, 0, 0, 0, 1, 30)
	hs, err = ParseCoalesced(bad, 8)
	if len(hs) != 1 || !errors.Is(err, ErrInvalidHeader) {
		t.Fatalf("datagram with bad second packet: %d packets, %v; want 1, ErrInvalidHeader", len(hs), err)
	}
	if hs, err := ParseCoalesced(nil, 8); len(hs) != 0 || err != nil {
		t.Fatalf("empty datagram: %d packets, %v", len(hs), err)
	}
}

func TestRouteInfo(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		cfg := DefaultConfig(2, 8)
		cfg.ConfigRotation = 2
		cfg.Key = key
		c, err := NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := c.Encode(0x4242, bytes.Repeat([]byte{7}, 8))
		if err != nil {
			t.Fatal(err)
		}
		other := append([]byte(nil), ours...)
		other[0] = 3<<5 | 10
		unroutable := append([]byte(nil), ours...)
		unroutable[0] = 7<<5 | 10
		clientDCID := unhex(t, "8394c8f03e515708") // RFC 9001 Appendix A
		tests := []struct {
			name    string
			pkt     []byte
			id      InstanceID
			kind    PacketKind
			wantErr error
		}{
			{"short ours", AppendShortHeaderPacket(nil, ours, []byte{1, 2, 3}), 0x4242, KindShort, nil},
			{"short, DCID only", AppendShortHeaderPacket(nil, ours, nil), 0x4242, KindShort, nil},
			{"short other config", AppendShortHeaderPacket(nil, other, []byte{1}), 0, KindShort, ErrConfigMismatch},
			{"short unroutable", AppendShortHeaderPacket(nil, unroutable, []byte{1}), 0, KindShort, ErrUnroutable},
			{"short truncated", AppendShortHeaderPacket(nil, ours[:5], nil), 0, KindInvalid, ErrTruncated},
			{"v1 Initial client DCID", AppendLongHeaderPacket(nil, Version1, TypeInitial, clientDCID, nil, nil, []byte{1}), 0, KindInitial, ErrCIDLen},
			{"v2 Initial ours", AppendLongHeaderPacket(nil, Version2, TypeInitial, ours, nil, nil, []byte{1}), 0x4242, KindInitial, nil},
			{"v1 Handshake ours", AppendLongHeaderPacket(nil, Version1, TypeHandshake, ours, nil, nil, []byte{1}), 0x4242, KindOtherLong, nil},
			{"v2 Retry ours", AppendLongHeaderPacket(nil, Version2, TypeRetry, ours, nil, nil, make([]byte, 16)), 0x4242, KindOtherLong, nil},
			{"unknown version ours", AppendLongHeaderPacket(nil, 0x1a2a3a4a, TypeInitial, ours, nil, nil, nil), 0x4242, KindOtherLong, nil},
			{"version negotiation ours", AppendVersionNegotiation(nil, ours, nil, Version1), 0x4242, KindVersionNegotiation, nil},
			// RouteInfo stops after the DCID: a cut Length is not its concern.
			{"Initial cut after DCID", AppendLongHeaderPacket(nil, Version1, TypeInitial, ours, nil, nil, nil)[:6+len(ours)], 0x4242, KindInitial, nil},
			{"Initial cut in DCID", AppendLongHeaderPacket(nil, Version1, TypeInitial, ours, nil, nil, nil)[:6+len(ours)-1], 0, KindInvalid, ErrTruncated},
			{"v1 DCID 21 bytes", AppendLongHeaderPacket(nil, Version1, TypeHandshake, make([]byte, 21), nil, nil, nil), 0, KindInvalid, ErrInvalidHeader},
			{"empty", nil, 0, KindInvalid, ErrTruncated},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id, kind, err := RouteInfo(tt.pkt, c)
				if id != tt.id || kind != tt.kind || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Fatalf("RouteInfo(%x) = %#x, %v, %v; want %#x, %v, %v", tt.pkt, id, kind, err, tt.id, tt.kind, tt.wantErr)
				}
			})
		}
	}
}

func TestPacketKindString(t *testing.T) {
	want := map[PacketKind]string{
		KindInvalid: "invalid", KindShort: "short", KindInitial: "initial",
		KindOtherLong: "other-long", KindVersionNegotiation: "version-negotiation", 9: "PacketKind(9)",
	}
	for k, s := range want {
		if k.String() != s {
			t.Errorf("PacketKind(%d).String() = %q, want %q", k, k.String(), s)
		}
	}
}
