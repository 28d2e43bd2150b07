package connid

import "encoding/binary"

// Packet builders for tests (this package's and the XDP datapath's): they
// lay out QUIC headers byte by byte so that a test can hand the same packet
// to ParseDCID/RouteInfo and to the BPF program. Payloads are opaque bytes
// standing for packet number and protected payload; nothing is encrypted.

// AppendVarint appends v as a QUIC variable-length integer in its shortest
// form (RFC 9000 section 16). v must be below 2^62.
func AppendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x8000_0000)
	}
	return binary.BigEndian.AppendUint64(b, v|0xc000_0000_0000_0000)
}

// AppendShortHeaderPacket appends a 1-RTT packet (RFC 9000 section 17.3.1):
// octet 0 = 0x40 (fixed bit set, spin, key phase and packet number length
// bits clear), DCID, payload.
func AppendShortHeaderPacket(b, dcid, payload []byte) []byte {
	b = append(b, 0x40)
	b = append(b, dcid...)
	return append(b, payload...)
}

// AppendLongHeaderPacket appends a long header packet of a v1 or v2 type
// (RFC 9000 section 17.2, RFC 9369 section 3.2): octet 0 = 0xc0 | type
// bits << 4, version, DCID length, DCID, SCID length, SCID, then
//   - Initial: token length (varint), token, Length (varint) = len(payload), payload;
//   - 0-RTT, Handshake: Length (varint) = len(payload), payload;
//   - Retry: token, then payload as the 16-byte integrity tag.
//
// For any other version the type bits are those of v1 and the payload
// directly follows the SCID. Connection IDs longer than 255 bytes are cut
// to 255 in the length octet, which a test of invalid packets may want.
func AppendLongHeaderPacket(b []byte, version uint32, t LongType, dcid, scid, token, payload []byte) []byte {
	tv := version
	if !knownVersion(tv) {
		tv = Version1
	}
	b = append(b, 0xc0|longTypeBits(tv, t)<<4)
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	if !knownVersion(version) {
		return append(b, payload...)
	}
	switch t {
	case TypeRetry:
		b = append(b, token...)
		return append(b, payload...)
	case TypeInitial:
		b = AppendVarint(b, uint64(len(token)))
		b = append(b, token...)
	}
	b = AppendVarint(b, uint64(len(payload)))
	return append(b, payload...)
}

// AppendVersionNegotiation appends a Version Negotiation packet (RFC 9000
// section 17.2.1): octet 0 = 0x80, version 0, DCID, SCID, supported versions.
func AppendVersionNegotiation(b, dcid, scid []byte, versions ...uint32) []byte {
	b = append(b, 0x80)
	b = binary.BigEndian.AppendUint32(b, VersionNegotiation)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	for _, v := range versions {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}
