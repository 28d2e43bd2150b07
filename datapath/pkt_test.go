package datapath

import (
	"encoding/binary"
	"net/netip"
)

// Tiny packet builders for the XDP tests, written byte by byte (RFC 791,
// RFC 8200, RFC 768). Checksums come from inetSum, independent of the C code.

type mac [6]byte

// inetSum returns the one's complement sum of the concatenated byte slices
// (RFC 1071), folded to 16 bits, not complemented.
func inetSum(parts ...[]byte) uint16 {
	var s uint32
	var odd bool
	var carry byte
	for _, p := range parts {
		for _, b := range p {
			if !odd {
				carry = b
			} else {
				s += uint32(carry)<<8 | uint32(b)
			}
			odd = !odd
		}
	}
	if odd {
		s += uint32(carry) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func eth(dst, src mac, proto uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:], proto)
	return append(b, payload...)
}

type ip4h struct {
	src, dst netip.Addr
	ttl      uint8
	id       uint16
	frag     uint16 // flags (DF 0x4000, MF 0x2000) | offset
	proto    uint8
	tos      uint8
	opts     []byte // multiple of 4
}

func ipv4(h ip4h, payload []byte) []byte {
	hl := 20 + len(h.opts)
	b := make([]byte, hl, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	b[1] = h.tos
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[4:], h.id)
	binary.BigEndian.PutUint16(b[6:], h.frag)
	b[8] = h.ttl
	b[9] = h.proto
	s, d := h.src.As4(), h.dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], h.opts)
	binary.BigEndian.PutUint16(b[10:], ^inetSum(b))
	return append(b, payload...)
}

// ipv6 builds an IPv6 packet; ext are complete extension headers (their
// next-header bytes already set), nh is the first next header.
func ipv6(src, dst netip.Addr, nh uint8, hop uint8, ext, payload []byte) []byte {
	b := make([]byte, 40, 40+len(ext)+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(ext)+len(payload)))
	b[6] = nh
	b[7] = hop
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, ext...)
	return append(b, payload...)
}

// pseudo returns the UDP pseudo-header (RFC 768 / RFC 8200 section 8.1).
func pseudo(src, dst netip.Addr, ulen int) []byte {
	var b []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		b = append(append(b, s[:]...), d[:]...)
		b = append(b, 0, 17, byte(ulen>>8), byte(ulen))
	} else {
		s, d := src.As16(), dst.As16()
		b = append(append(b, s[:]...), d[:]...)
		b = append(b, 0, 0, byte(ulen>>8), byte(ulen), 0, 0, 0, 17)
	}
	return b
}

// udp builds a UDP datagram with a correct checksum (0 computed -> 0xFFFF),
// or checksum 0 when noCsum.
func udp(src, dst netip.Addr, sport, dport uint16, payload []byte, noCsum bool) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b = append(b, payload...)
	if !noCsum {
		c := ^inetSum(pseudo(src, dst, len(b)), b)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(b[6:], c)
	}
	return b
}

// udpOK verifies a UDP checksum the way a receiver does.
func udpOK(src, dst netip.Addr, seg []byte) bool {
	if src.Is4() && binary.BigEndian.Uint16(seg[6:]) == 0 {
		return true
	}
	return inetSum(pseudo(src, dst, len(seg)), seg) == 0xffff
}

// cid returns a CID of length 1+2+nonce with config rotation cr and the
// self-encoded length, naming server ID sid (2 bytes).
func cid(cr uint8, sid uint16, nonce ...byte) []byte {
	if len(nonce) == 0 {
		nonce = []byte{0xa1, 0xa2, 0xa3, 0xa4, 0xa5}
	}
	b := []byte{cr<<5 | byte(3+len(nonce)-1), byte(sid >> 8), byte(sid)}
	return append(b, nonce...)
}

// shortHdr builds a short header packet: flags 0x40, DCID, then rest.
func shortHdr(dcid []byte, rest ...byte) []byte {
	if len(rest) == 0 {
		rest = []byte{1, 2, 3, 4, 5, 6, 7, 8}
	}
	return append(append([]byte{0x40}, dcid...), rest...)
}

// longHdr builds a long header packet: flags 0xc0|type<<4, version,
// DCID length and DCID, SCID length and SCID, then rest.
func longHdr(version uint32, typ uint8, dcid, scid []byte, rest ...byte) []byte {
	b := []byte{0xc0 | typ<<4, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	if len(rest) == 0 {
		rest = make([]byte, 32)
	}
	return append(b, rest...)
}
