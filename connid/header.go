package connid

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// QUIC versions whose long-header type bits this package interprets.
const (
	// Version1 is QUIC version 1 (RFC 9000).
	Version1 uint32 = 0x00000001
	// Version2 is QUIC version 2 (RFC 9369 section 3.1).
	Version2 uint32 = 0x6b3343cf
	// VersionNegotiation is the version field of a Version Negotiation
	// packet (RFC 9000 section 17.2.1).
	VersionNegotiation uint32 = 0
)

// DCIDLenFromFirstOctet, passed as the short-header DCID length, makes the
// parsers read the DCID length from the DCID's own first octet: the QUIC-LB
// self-encoded length (draft-ietf-quic-load-balancers-21 section 3.3), low 5
// bits + 1.
const DCIDLenFromFirstOctet = -1

// Sentinel errors of the header parsers.
var (
	// ErrTruncated: the packet ends before a field it announces.
	ErrTruncated = errors.New("truncated QUIC packet")
	// ErrInvalidHeader: a field holds a value QUIC forbids, e.g. a v1/v2
	// connection ID longer than 20 bytes.
	ErrInvalidHeader = errors.New("invalid QUIC header")
	// ErrBadDCIDLen: the short-header DCID length argument is neither
	// DCIDLenFromFirstOctet nor 0..20.
	ErrBadDCIDLen = errors.New("short-header DCID length out of range")
)

// PacketKind classifies a QUIC packet for routing. The values are part of
// the contract with the XDP datapath: its C enum must use the same numbers.
type PacketKind uint8

// Packet kinds.
const (
	// KindInvalid: the packet cannot be parsed up to its DCID.
	KindInvalid PacketKind = 0
	// KindShort: short header, header form bit 0 (RFC 9000 section 17.3).
	KindShort PacketKind = 1
	// KindInitial: QUIC v1 or v2 Initial packet (RFC 9000 section 17.2.2,
	// RFC 9369 section 3.2).
	KindInitial PacketKind = 2
	// KindOtherLong: any other long header packet: v1/v2 0-RTT, Handshake,
	// Retry, and every packet of a version other than 0, 1 and 2 (whose DCID
	// is read per the version-independent layout of RFC 8999 section 5.1).
	KindOtherLong PacketKind = 3
	// KindVersionNegotiation: long header with version 0 (RFC 9000 section
	// 17.2.1).
	KindVersionNegotiation PacketKind = 4
)

func (k PacketKind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindShort:
		return "short"
	case KindInitial:
		return "initial"
	case KindOtherLong:
		return "other-long"
	case KindVersionNegotiation:
		return "version-negotiation"
	}
	return fmt.Sprintf("PacketKind(%d)", uint8(k))
}

// LongType is the type of a long header packet, independent of how a version
// encodes it in bits 5-4 of octet 0.
type LongType uint8

// Long header packet types.
const (
	// TypeNone: short header, Version Negotiation, or a version whose type
	// bits this package does not know.
	TypeNone LongType = iota
	TypeInitial
	Type0RTT
	TypeHandshake
	TypeRetry
)

func (t LongType) String() string {
	switch t {
	case TypeNone:
		return "none"
	case TypeInitial:
		return "Initial"
	case Type0RTT:
		return "0-RTT"
	case TypeHandshake:
		return "Handshake"
	case TypeRetry:
		return "Retry"
	}
	return fmt.Sprintf("LongType(%d)", uint8(t))
}

// longType maps the type bits (octet 0 bits 5-4) of a known version:
// RFC 9000 section 17.2 for v1, RFC 9369 section 3.2 for v2.
func longType(version uint32, bits byte) LongType {
	switch version {
	case Version1:
		return [4]LongType{TypeInitial, Type0RTT, TypeHandshake, TypeRetry}[bits]
	case Version2:
		return [4]LongType{TypeRetry, TypeInitial, Type0RTT, TypeHandshake}[bits]
	}
	return TypeNone
}

// longTypeBits is the inverse of longType.
func longTypeBits(version uint32, t LongType) byte {
	for bits := byte(0); bits < 4; bits++ {
		if longType(version, bits) == t {
			return bits
		}
	}
	return 0
}

// knownVersion reports whether the package parses version-specific fields
// of v.
func knownVersion(v uint32) bool { return v == Version1 || v == Version2 }

// Header is what ParseDCID reads from one QUIC packet. Its byte slices alias
// the packet.
type Header struct {
	Kind PacketKind
	// Type is the long header type for v1/v2, TypeNone otherwise.
	Type LongType
	// Version is the long header version; 0 for short headers.
	Version uint32
	// DCID is the Destination Connection ID.
	DCID []byte
	// SCID is the Source Connection ID of a long header.
	SCID []byte
	// Token is the Token of a v1/v2 Initial or the Retry Token of a Retry.
	Token []byte
	// Length is the Length field of a v1/v2 Initial, 0-RTT or Handshake
	// packet: bytes of packet number and payload (RFC 9000 section 17.2).
	Length uint64
	// HeaderLen is the offset just after the last field parsed: for
	// Initial, 0-RTT and Handshake the packet number's offset; for a short
	// header the end of the DCID.
	HeaderLen int
	// PacketLen is how many bytes of the datagram this packet occupies:
	// HeaderLen + Length for Initial, 0-RTT and Handshake, all the rest of
	// the datagram for the others (RFC 9000 section 12.2).
	PacketLen int
}

// ParseDCID parses the header of the QUIC packet at the start of pkt.
//
// Short header (octet 0 bit 7 clear): the DCID length is not on the wire;
// shortHeaderDCIDLen gives it (0..20), or DCIDLenFromFirstOctet reads it from
// the QUIC-LB self-encoded length in the DCID's first octet.
//
// Long header (bit 7 set): version (4 bytes), DCID length, DCID, SCID length,
// SCID (RFC 8999 section 5.1). For v1 and v2 the connection IDs are at most 20
// bytes and ParseDCID continues: Initial token length, token, and Length
// (variable-length integers, RFC 9000 section 16), or the Retry token and its
// 16-byte integrity tag. A Version Negotiation packet (version 0) must carry
// whole 4-byte versions.
//
// The fixed bit (0x40) is not checked: RFC 9287 lets endpoints grease it.
// ParseDCID never reads outside pkt. Errors wrap ErrTruncated,
// ErrInvalidHeader or ErrBadDCIDLen.
func ParseDCID(pkt []byte, shortHeaderDCIDLen int) (Header, error) {
	h, off, err := parseToDCID(pkt, shortHeaderDCIDLen)
	if err != nil || h.Kind == KindShort {
		return h, err
	}
	// SCID (RFC 8999 section 5.1).
	if off >= len(pkt) {
		return Header{}, fmt.Errorf("parse header: SCID length: %w", ErrTruncated)
	}
	sl := int(pkt[off])
	off++
	if sl > MaxCIDLen && knownVersion(h.Version) {
		return Header{}, fmt.Errorf("parse header: SCID length %d: %w", sl, ErrInvalidHeader)
	}
	if len(pkt)-off < sl {
		return Header{}, fmt.Errorf("parse header: SCID of %d bytes: %w", sl, ErrTruncated)
	}
	h.SCID = pkt[off : off+sl]
	off += sl
	h.HeaderLen, h.PacketLen = off, len(pkt)

	switch {
	case h.Kind == KindVersionNegotiation:
		if (len(pkt)-off)%4 != 0 {
			return Header{}, fmt.Errorf("parse header: version negotiation list of %d bytes: %w", len(pkt)-off, ErrInvalidHeader)
		}
		return h, nil
	case !knownVersion(h.Version):
		return h, nil
	case h.Type == TypeRetry:
		// Retry Token, then Retry Integrity Tag (RFC 9000 section 17.2.5).
		if len(pkt)-off < 16 {
			return Header{}, fmt.Errorf("parse header: retry integrity tag: %w", ErrTruncated)
		}
		h.Token = pkt[off : len(pkt)-16]
		return h, nil
	case h.Type == TypeInitial:
		tl, n, err := readVarint(pkt[off:])
		if err != nil {
			return Header{}, fmt.Errorf("parse header: token length: %w", err)
		}
		off += n
		if uint64(len(pkt)-off) < tl {
			return Header{}, fmt.Errorf("parse header: token of %d bytes: %w", tl, ErrTruncated)
		}
		h.Token = pkt[off : off+int(tl)]
		off += int(tl)
	}
	length, n, err := readVarint(pkt[off:])
	if err != nil {
		return Header{}, fmt.Errorf("parse header: length: %w", err)
	}
	off += n
	if uint64(len(pkt)-off) < length {
		return Header{}, fmt.Errorf("parse header: length %d with %d bytes left: %w", length, len(pkt)-off, ErrTruncated)
	}
	h.Length = length
	h.HeaderLen = off
	h.PacketLen = off + int(length)
	return h, nil
}

// parseToDCID reads octet 0, and for long headers the version and DCID; it
// returns the header so far and the offset after the DCID. This is the
// whole of what RouteInfo (and the XDP datapath) reads.
func parseToDCID(pkt []byte, shortLen int) (Header, int, error) {
	if len(pkt) < 1 {
		return Header{}, 0, fmt.Errorf("parse header: first octet: %w", ErrTruncated)
	}
	if pkt[0]&0x80 == 0 {
		n := shortLen
		switch {
		case n == DCIDLenFromFirstOctet:
			if len(pkt) < 2 {
				return Header{}, 0, fmt.Errorf("parse header: DCID first octet: %w", ErrTruncated)
			}
			n = int(pkt[1]&0x1f) + 1
			if n > MaxCIDLen {
				return Header{}, 0, fmt.Errorf("parse header: self-encoded DCID length %d: %w", n, ErrInvalidHeader)
			}
		case n < 0 || n > MaxCIDLen:
			return Header{}, 0, fmt.Errorf("parse header: short-header DCID length argument %d: %w", n, ErrBadDCIDLen)
		}
		if len(pkt)-1 < n {
			return Header{}, 0, fmt.Errorf("parse header: short-header DCID of %d bytes: %w", n, ErrTruncated)
		}
		h := Header{Kind: KindShort, DCID: pkt[1 : 1+n], HeaderLen: 1 + n, PacketLen: len(pkt)}
		return h, 1 + n, nil
	}
	if len(pkt) < 6 {
		return Header{}, 0, fmt.Errorf("parse header: long header version and DCID length: %w", ErrTruncated)
	}
	h := Header{Version: binary.BigEndian.Uint32(pkt[1:5])}
	switch {
	case h.Version == VersionNegotiation:
		h.Kind = KindVersionNegotiation
	case knownVersion(h.Version):
		h.Type = longType(h.Version, pkt[0]>>4&0x3)
		h.Kind = KindOtherLong
		if h.Type == TypeInitial {
			h.Kind = KindInitial
		}
	default:
		h.Kind = KindOtherLong
	}
	dl := int(pkt[5])
	if dl > MaxCIDLen && knownVersion(h.Version) {
		return Header{}, 0, fmt.Errorf("parse header: DCID length %d: %w", dl, ErrInvalidHeader)
	}
	if len(pkt)-6 < dl {
		return Header{}, 0, fmt.Errorf("parse header: DCID of %d bytes: %w", dl, ErrTruncated)
	}
	h.DCID = pkt[6 : 6+dl]
	h.HeaderLen, h.PacketLen = 6+dl, len(pkt)
	return h, 6 + dl, nil
}

// readVarint reads a QUIC variable-length integer (RFC 9000 section 16):
// the 2 high bits of the first byte give its length, 1, 2, 4 or 8 bytes.
func readVarint(b []byte) (uint64, int, error) {
	if len(b) < 1 {
		return 0, 0, ErrTruncated
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrTruncated
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n, nil
}

// ParseCoalesced parses every QUIC packet in a UDP datagram (RFC 9000
// section 12.2): each v1/v2 Initial, 0-RTT or Handshake packet ends after its
// Length field's bytes and may be followed by another packet; any other
// packet runs to the end of the datagram. It returns the headers parsed
// before the first error, and that error (wrapping ParseDCID's) with the
// index and offset of the packet that failed.
//
// Receivers should ignore packets whose DCID differs from the first one's
// (RFC 9000 section 12.2); ParseCoalesced reports them unchanged.
func ParseCoalesced(datagram []byte, shortHeaderDCIDLen int) ([]Header, error) {
	var hs []Header
	for off := 0; off < len(datagram); {
		h, err := ParseDCID(datagram[off:], shortHeaderDCIDLen)
		if err != nil {
			return hs, fmt.Errorf("parse coalesced packet %d at offset %d: %w", len(hs), off, err)
		}
		hs = append(hs, h)
		off += h.PacketLen
	}
	return hs, nil
}

// RouteInfo is what the XDP datapath computes for a packet, and what its
// differential tests compare against. It reads only octet 0 and, for long
// headers, the version, the DCID length and the DCID (rules of ParseDCID up
// to the DCID: v1/v2 DCIDs above 20 bytes are invalid, other versions allow
// up to 255); a short-header DCID is codec.CIDLen() bytes. It then decodes
// the DCID with codec, whatever the kind.
//
// Results: (0, KindInvalid, err wrapping ErrTruncated or ErrInvalidHeader)
// when the packet does not reach the end of its DCID; (0, kind, err wrapping
// a Codec.Decode error) when the DCID is not one of codec's routable CIDs;
// (id, kind, nil) otherwise.
func RouteInfo(pkt []byte, codec *Codec) (InstanceID, PacketKind, error) {
	h, _, err := parseToDCID(pkt, codec.CIDLen())
	if err != nil {
		return 0, KindInvalid, fmt.Errorf("route packet: %w", err)
	}
	id, err := codec.Decode(h.DCID)
	if err != nil {
		return 0, h.Kind, fmt.Errorf("route %s packet: %w", h.Kind, err)
	}
	return id, h.Kind, nil
}
