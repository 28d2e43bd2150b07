package adversarial

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Packet builders for hostile traffic. Checksums follow RFC 1071 (IPv4 header) and RFC 768 /
// RFC 8200 section 8.1 (UDP with pseudo-header).

// kvCID returns a DCID of kvservice's layout (docs/architecture.md, kvservice -sid-len 2
// -cid-len 11): octet 0 = config rotation 0 | length-1 (10), server ID = instance (2 bytes BE),
// 8 nonce bytes.
func kvCID(instance uint16, first byte) []byte {
	c := []byte{first, byte(instance >> 8), byte(instance), 1, 2, 3, 4, 5, 6, 7, 8}
	return c
}

// shortHeader is an RFC 9000 section 17.3 1-RTT packet: 0x40 | dcid | n junk bytes.
func shortHeader(dcid []byte, n int) []byte {
	b := append([]byte{0x40}, dcid...)
	for i := 0; i < n; i++ {
		b = append(b, byte(i*7))
	}
	return b
}

// longHeader is an RFC 8999 long header: flags, version, dcid length octet, dcid, scid length,
// scid, then padding to size bytes.
func longHeader(flags byte, version uint32, dcidLen byte, dcid []byte, size int) []byte {
	b := []byte{flags, 0, 0, 0, 0, dcidLen}
	binary.BigEndian.PutUint32(b[1:], version)
	b = append(b, dcid...)
	b = append(b, 4, 9, 9, 9, 9) // SCID
	for len(b) < size {
		b = append(b, 0)
	}
	return b
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// udp builds a UDP datagram from src to dst carrying payload; zeroCsum leaves the checksum 0
// (allowed over IPv4 only, RFC 768).
func udp(src, dst netip.AddrPort, payload []byte, zeroCsum bool) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	if zeroCsum {
		return b
	}
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	sum := csumAdd(0, s)
	sum = csumAdd(sum, d)
	sum += 17 + uint32(len(b))
	sum = csumAdd(sum, b)
	c := csumFold(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[6:], c)
	return b
}

// ipv4 builds an IPv4 packet (RFC 791). fragOff is the raw flags+offset field.
func ipv4(src, dst netip.Addr, proto byte, fragOff uint16, opts []byte, payload []byte) []byte {
	hl := 20 + len(opts)
	b := make([]byte, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x5151)
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], opts)
	binary.BigEndian.PutUint16(b[10:], csumFold(csumAdd(0, b[:hl])))
	copy(b[hl:], payload)
	return b
}

// ipv6 builds an IPv6 packet (RFC 8200) whose first next header is nh and whose payload (ext
// headers + upper layer) is payload.
func ipv6(src, dst netip.Addr, nh byte, payload []byte) []byte {
	b := make([]byte, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = nh
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], payload)
	return b
}

// ext6 is an 8-byte IPv6 extension header (Hop-by-Hop, Routing, Destination Options) with next
// header nh; for Routing (43) segLeft is octet 3, else octets 2..7 are a PadN option.
func ext6(typ, nh, segLeft byte) []byte {
	if typ == 43 {
		return []byte{nh, 0, 0, segLeft, 0, 0, 0, 0}
	}
	return []byte{nh, 0, 1, 4, 0, 0, 0, 0} // PadN of 4 bytes
}

// sendRaw4 sends a complete IPv4 packet (IP_HDRINCL via IPPROTO_RAW) from the calling thread's
// network namespace. Linux fills in the IPv4 header checksum and total length.
func sendRaw4(pkt []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	var d [4]byte
	copy(d[:], pkt[16:20])
	return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d})
}

// sendRaw6 sends a complete IPv6 packet (IPPROTO_RAW implies IPV6_HDRINCL on Linux).
func sendRaw6(pkt []byte) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	var d [16]byte
	copy(d[:], pkt[24:40])
	return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: d})
}

// collect reads every datagram arriving on conn for d and returns their source addresses.
func collect(conn *net.UDPConn, d time.Duration) []netip.AddrPort {
	var srcs []netip.AddrPort
	buf := make([]byte, 2048)
	deadline := time.Now().Add(d)
	for {
		conn.SetReadDeadline(deadline)
		_, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return srcs
		}
		srcs = append(srcs, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
}
