package connid

import (
	"bytes"
	"errors"
	"testing"
	"unsafe"
)

// seedPackets returns one packet of each shape the parsers know, for the
// fuzz seed corpora.
func seedPackets() [][]byte {
	cid := TestVectors()[0].CID
	return [][]byte{
		AppendShortHeaderPacket(nil, cid, []byte{1, 2, 3, 4}),
		AppendLongHeaderPacket(nil, Version1, TypeInitial, cid, []byte{9, 9}, []byte("token"), make([]byte, 30)),
		AppendLongHeaderPacket(nil, Version2, TypeInitial, cid, nil, nil, make([]byte, 64)),
		AppendLongHeaderPacket(nil, Version1, Type0RTT, cid, nil, nil, make([]byte, 3)),
		AppendLongHeaderPacket(nil, Version2, TypeHandshake, cid, cid, nil, make([]byte, 100)),
		AppendLongHeaderPacket(nil, Version1, TypeRetry, cid, cid, []byte("retry"), make([]byte, 16)),
		AppendLongHeaderPacket(nil, 0xfaceb00c, TypeInitial, make([]byte, 40), nil, nil, []byte{1}),
		AppendVersionNegotiation(nil, cid, cid, Version1, Version2),
		{0x40}, {0xc0, 0, 0, 0, 1, 0xff}, {},
	}
}

// within reports whether sub lies inside buf's memory (it aliases buf).
func within(sub, buf []byte) bool {
	if len(sub) == 0 {
		return true
	}
	if len(buf) == 0 {
		return false
	}
	s, b := uintptr(unsafe.Pointer(&sub[0])), uintptr(unsafe.Pointer(&buf[0]))
	return s >= b && s+uintptr(len(sub)) <= b+uintptr(len(buf))
}

func FuzzParseDCID(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p, int8(8))
		f.Add(p, int8(DCIDLenFromFirstOctet))
	}
	f.Fuzz(func(t *testing.T, pkt []byte, shortLen int8) {
		h, err := ParseDCID(pkt, int(shortLen))
		pre, _, preErr := parseToDCID(pkt, int(shortLen))
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrInvalidHeader) && !errors.Is(err, ErrBadDCIDLen) {
				t.Fatalf("untyped error %v", err)
			}
			if h.Kind != KindInvalid || h.DCID != nil {
				t.Fatalf("error %v with non-zero header %+v", err, h)
			}
			return
		}
		if preErr != nil || pre.Kind != h.Kind || !bytes.Equal(pre.DCID, h.DCID) {
			t.Fatalf("ParseDCID %v %x but the DCID-only parse %v %x, %v", h.Kind, h.DCID, pre.Kind, pre.DCID, preErr)
		}
		if !within(h.DCID, pkt) || !within(h.SCID, pkt) || !within(h.Token, pkt) {
			t.Fatal("header slices outside the packet")
		}
		if h.PacketLen < 1 || h.PacketLen > len(pkt) || h.HeaderLen > h.PacketLen {
			t.Fatalf("HeaderLen %d PacketLen %d for %d bytes", h.HeaderLen, h.PacketLen, len(pkt))
		}
		if knownVersion(h.Version) && (len(h.DCID) > MaxCIDLen || len(h.SCID) > MaxCIDLen) {
			t.Fatalf("v%#x CIDs of %d and %d bytes accepted", h.Version, len(h.DCID), len(h.SCID))
		}
		if h.Kind == KindInvalid {
			t.Fatal("KindInvalid without an error")
		}
	})
}

func FuzzCoalesced(f *testing.F) {
	seeds := seedPackets()
	for i, p := range seeds {
		f.Add(append(append([]byte(nil), p...), seeds[(i+1)%len(seeds)]...), int8(8))
	}
	f.Fuzz(func(t *testing.T, d []byte, shortLen int8) {
		hs, err := ParseCoalesced(d, int(shortLen))
		total := 0
		for _, h := range hs {
			if h.PacketLen < 1 || !within(h.DCID, d) {
				t.Fatalf("bad header %+v", h)
			}
			total += h.PacketLen
		}
		if total > len(d) || (err == nil && total != len(d)) {
			t.Fatalf("packets cover %d of %d bytes, err %v", total, len(d), err)
		}
		if len(d) > 0 && err == nil && len(hs) == 0 {
			t.Fatal("no packet and no error for a non-empty datagram")
		}
	})
}

func FuzzDecode(f *testing.F) {
	for _, v := range TestVectors() {
		f.Add(v.CID, uint8(len(v.ServerID)), uint8(len(v.Nonce)), v.Key != nil)
	}
	f.Add([]byte{}, uint8(2), uint8(6), false)
	f.Fuzz(func(t *testing.T, cid []byte, sidLen, nonceLen uint8, keyed bool) {
		cfg := Config{ServerIDLen: int(sidLen), NonceLen: int(nonceLen), LengthSelfEncoding: true}
		if len(cid) > 0 {
			cfg.ConfigRotation = cid[0] >> 5 % 7
		}
		if keyed {
			cfg.Key = testKey
		}
		c, err := newCodec(cfg, draftMaxServerIDLen)
		if err != nil {
			return
		}
		sid, err := c.DecodeServerID(cid)
		if err != nil {
			return
		}
		// Decoding accepted cid: decrypting it whole and encoding the
		// result must give cid back, since every mode is a permutation of
		// the bytes after octet 0.
		body := append([]byte(nil), cid[1:]...)
		switch {
		case c.block == nil:
		case c.plainLen == 16:
			c.block.Decrypt(body, body)
		default:
			c.fourPassDecrypt(body)
		}
		if !bytes.Equal(body[:len(sid)], sid) {
			t.Fatalf("DecodeServerID %x, full decryption %x", sid, body)
		}
		again, err := c.EncodeServerID(sid, body[len(sid):])
		if err != nil || !bytes.Equal(again, cid) {
			t.Fatalf("re-encode = %x, %v; want %x", again, err, cid)
		}
	})
}
