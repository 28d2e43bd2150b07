package quicext

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/quic-go/quic-go/quicvarint"
)

// StreamType is the variable-length integer (RFC 9000 section 16) that starts each extension
// stream. It encodes on the wire as the two bytes 0x71 0x78 ("qx"). It is not an HTTP/3 stream
// type registered by RFC 9114 section 11.2.4 nor a reserved (grease) type 0x1f*N+0x21, so it can
// sit beside HTTP/3 unidirectional streams, which RFC 9114 section 6.2.3 lets a peer ignore.
const StreamType uint64 = 0x3178

// Message types carried on an extension stream. Each message is
//
//	type (varint) | length (varint, bytes of body) | body (length bytes)
//
// as HTTP/3 frames are (RFC 9114 section 7.1). The migration frame types keep the codepoints of
// the frame-level design: 0x32, 0x33, 0x34. See docs/quicext-wire.md.
const (
	// MsgNegotiate (0x30) body: strategy bitmask (varint). First message on each stream; the
	// client sends what it supports, the server answers with the intersection (0 = off).
	MsgNegotiate uint64 = 0x30
	// MsgStrategy (0x31) body: one strategy bit (varint). Server to client in Prepare: the
	// strategy of the coming migration.
	MsgStrategy uint64 = 0x31
	// MsgServerMigration (0x32) body: empty (Synchronized Symmetric: hold sends) or an address
	// body (Explicit: the address the server moves to).
	MsgServerMigration uint64 = 0x32
	// MsgServerMigrated (0x33) body: address body. Server to client after restore.
	MsgServerMigrated uint64 = 0x33
	// MsgPoolMigrationAddress (0x34) body: address body. One candidate address of the pool.
	MsgPoolMigrationAddress uint64 = 0x34
	// MsgMigrationAck (0x35) body: count (varint) of server messages 0x31..0x34, 0x36
	// processed so far on the server's stream. Client to server.
	MsgMigrationAck uint64 = 0x35
	// MsgMigrationCancel (0x36) body: empty. Server to client on Abort: forget the announced
	// address, release held sends.
	MsgMigrationCancel uint64 = 0x36
	// MsgPing (0x37) body: sequence number (varint). Client to server while a reactive or Pool
	// migration is announced: liveness probe of the active path (not counted by MsgMigrationAck).
	MsgPing uint64 = 0x37
	// MsgPong (0x38) body: the sequence number of the MsgPing it answers (varint). Server to
	// client (not counted by MsgMigrationAck).
	MsgPong uint64 = 0x38
)

// AddressBodyLen is the length in bytes of an address body:
//
//	IPv4 address (4) | IPv4 port (2, big-endian) | IPv6 address (16) | IPv6 port (2, big-endian)
//
// An all-zero address and port means that family is absent.
const AddressBodyLen = 24

// maxMessageLen bounds the body of any message; larger bodies close the stream (flood guard).
const maxMessageLen = 64

// Errors returned by the wire decoder.
var (
	// ErrMalformed is returned for a message whose body does not match its type.
	ErrMalformed = errors.New("quicext: malformed message")
	// ErrWrongStreamType is returned when a unidirectional stream does not start with StreamType.
	ErrWrongStreamType = errors.New("quicext: not an extension stream")
)

// Target is the pair of public addresses (one per family) a server is reachable at. A zero
// AddrPort means that family is absent. JSON: {"ipv4":"198.18.21.2:4433","ipv6":"[2001:2:0:21::2]:4433"}.
type Target struct {
	IPv4 netip.AddrPort `json:"ipv4"`
	IPv6 netip.AddrPort `json:"ipv6"`
}

// IsZero reports whether neither family is present.
func (t Target) IsZero() bool { return !t.IPv4.IsValid() && !t.IPv6.IsValid() }

// For returns the address of the family of remote (IPv4 for an IPv4 or IPv4-mapped address).
func (t Target) For(remote netip.AddrPort) netip.AddrPort {
	if remote.Addr().Unmap().Is4() {
		return t.IPv4
	}
	return t.IPv6
}

// String formats the target for logs.
func (t Target) String() string { return fmt.Sprintf("{ipv4=%v ipv6=%v}", t.IPv4, t.IPv6) }

// appendAddressBody appends the 24-byte address body of t.
func appendAddressBody(b []byte, t Target) []byte {
	var body [AddressBodyLen]byte
	if t.IPv4.IsValid() && t.IPv4.Addr().Unmap().Is4() {
		a := t.IPv4.Addr().Unmap().As4()
		copy(body[0:4], a[:])
		binary.BigEndian.PutUint16(body[4:6], t.IPv4.Port())
	}
	if t.IPv6.IsValid() && t.IPv6.Addr().Is6() {
		a := t.IPv6.Addr().As16()
		copy(body[6:22], a[:])
		binary.BigEndian.PutUint16(body[22:24], t.IPv6.Port())
	}
	return append(b, body[:]...)
}

// parseAddressBody decodes a 24-byte address body.
func parseAddressBody(b []byte) (Target, error) {
	if len(b) != AddressBodyLen {
		return Target{}, fmt.Errorf("parse address body of %d bytes: %w", len(b), ErrMalformed)
	}
	var t Target
	v4 := netip.AddrFrom4([4]byte(b[0:4]))
	p4 := binary.BigEndian.Uint16(b[4:6])
	if !v4.IsUnspecified() || p4 != 0 {
		t.IPv4 = netip.AddrPortFrom(v4, p4)
	}
	v6 := netip.AddrFrom16([16]byte(b[6:22]))
	p6 := binary.BigEndian.Uint16(b[22:24])
	if !v6.IsUnspecified() || p6 != 0 {
		t.IPv6 = netip.AddrPortFrom(v6, p6)
	}
	return t, nil
}

// message is one decoded extension message.
type message struct {
	typ   uint64
	value uint64 // MsgNegotiate, MsgStrategy, MsgMigrationAck, MsgPing, MsgPong
	addr  Target // MsgServerMigration (if hasAddr), MsgServerMigrated, MsgPoolMigrationAddress
	// hasAddr is false for an empty SERVER_MIGRATION (Synchronized Symmetric).
	hasAddr bool
}

// appendMessage encodes m.
func appendMessage(b []byte, m message) []byte {
	var body []byte
	switch m.typ {
	case MsgNegotiate, MsgStrategy, MsgMigrationAck, MsgPing, MsgPong:
		body = quicvarint.Append(nil, m.value)
	case MsgServerMigration:
		if m.hasAddr {
			body = appendAddressBody(nil, m.addr)
		}
	case MsgServerMigrated, MsgPoolMigrationAddress:
		body = appendAddressBody(nil, m.addr)
	}
	b = quicvarint.Append(b, m.typ)
	b = quicvarint.Append(b, uint64(len(body)))
	return append(b, body...)
}

// readMessage reads one message. Unknown message types are skipped (returned with their type
// and no payload) so later versions can add messages.
func readMessage(r *bufio.Reader) (message, error) {
	typ, err := quicvarint.Read(r)
	if err != nil {
		return message{}, err
	}
	l, err := quicvarint.Read(r)
	if err != nil {
		return message{}, noEOF(err)
	}
	if l > maxMessageLen {
		return message{}, fmt.Errorf("read message type %#x of %d bytes: %w", typ, l, ErrMalformed)
	}
	body := make([]byte, l)
	if _, err := io.ReadFull(r, body); err != nil {
		return message{}, noEOF(err)
	}
	m := message{typ: typ}
	switch typ {
	case MsgNegotiate, MsgStrategy, MsgMigrationAck, MsgPing, MsgPong:
		v, n, err := quicvarint.Parse(body)
		if err != nil || n != len(body) {
			return message{}, fmt.Errorf("read message type %#x: %w", typ, ErrMalformed)
		}
		m.value = v
	case MsgServerMigration:
		if len(body) == 0 {
			return m, nil
		}
		m.hasAddr = true
		if m.addr, err = parseAddressBody(body); err != nil {
			return message{}, err
		}
	case MsgServerMigrated, MsgPoolMigrationAddress:
		if m.addr, err = parseAddressBody(body); err != nil {
			return message{}, err
		}
	case MsgMigrationCancel:
		if len(body) != 0 {
			return message{}, fmt.Errorf("read message type %#x: %w", typ, ErrMalformed)
		}
	}
	return m, nil
}

// readStreamType reads the stream type varint at the start of a unidirectional stream.
func readStreamType(r *bufio.Reader) error {
	t, err := quicvarint.Read(r)
	if err != nil {
		return fmt.Errorf("read stream type: %w", err)
	}
	if t != StreamType {
		return fmt.Errorf("read stream type %#x: %w", t, ErrWrongStreamType)
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// udpAddrPort converts a net.Addr of a UDP endpoint into a netip.AddrPort (unmapped).
func udpAddrPort(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
