package datapath

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
	"time"
)

const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4

	cport = 50000
)

var quicPayload = shortHdr(cid(0, instLocal))

func ip4(src, dst netip.Addr, ttl uint8) ip4h {
	return ip4h{src: src, dst: dst, ttl: ttl, id: 7, frag: 0x4000, proto: 17}
}

// fromClient builds the frame a client sends to dst:dport.
func fromClient(src, dst netip.Addr, dport uint16, payload []byte) []byte {
	if src.Is4() {
		return eth(macUplink, macRouter, 0x0800, ipv4(ip4(src, dst, 60), udp(src, dst, cport, dport, payload, false)))
	}
	return eth(macUplink, macRouter, 0x86dd, ipv6(src, dst, 17, 60, nil, udp(src, dst, cport, dport, payload, false)))
}

// toPod builds the frame xdp_steer must redirect to the pod (DNAT, pod MACs).
func toPod(src, pod netip.Addr, payload []byte) []byte {
	if src.Is4() {
		return eth(macPod, macHost, 0x0800, ipv4(ip4(src, pod, 60), udp(src, pod, cport, podPort, payload, false)))
	}
	return eth(macPod, macHost, 0x86dd, ipv6(src, pod, 17, 60, nil, udp(src, pod, cport, podPort, payload, false)))
}

// entropyPort mirrors the outer source port hash of encap_forward.
func entropyPort(inner []byte, udpOff int) uint16 {
	u := inner[udpOff:]
	h := uint32(binary.LittleEndian.Uint16(u[0:]))<<16 | uint32(binary.LittleEndian.Uint16(u[2:]))
	h ^= uint32(len(inner))
	if inner[0]>>4 == 4 {
		h ^= binary.LittleEndian.Uint32(inner[12:])
	}
	h *= 0x9E3779B1
	return 0xC000 | uint16(h>>16)&0x3fff
}

// encapsulated builds the frame xdp_steer must send to a peer.
func encapsulated(inner []byte, udpOff int, peer netip.Addr) []byte {
	sp := entropyPort(inner, udpOff)
	if peer.Is4() {
		return eth(macRouter, macUplink, 0x0800, ipv4(ip4h{src: node4, dst: peer, ttl: 64, frag: 0x4000, proto: 17},
			udp(node4, peer, sp, tunnelPort, inner, true)))
	}
	return eth(macRouter, macUplink, 0x86dd, ipv6(node6, peer, 17, 64, nil, udp(node6, peer, sp, tunnelPort, inner, false)))
}

// fromPeer builds a tunnel frame from peer carrying inner.
func fromPeer(peer netip.Addr, inner []byte) []byte {
	if peer.Is4() {
		return eth(macUplink, macRouter, 0x0800, ipv4(ip4h{src: peer, dst: node4, ttl: 64, frag: 0x4000, proto: 17},
			udp(peer, node4, 49999, tunnelPort, inner, true)))
	}
	return eth(macUplink, macRouter, 0x86dd, ipv6(peer, node6, 17, 64, nil, udp(peer, node6, 49999, tunnelPort, inner, false)))
}

// zeroSumPayload returns a payload for which the UDP checksum of the datagram
// src:sport -> dst:dport is computed as 0 (and so sent as 0xFFFF).
func zeroSumPayload(src, dst netip.Addr, sport, dport uint16) []byte {
	p := append(shortHdr(cid(0, instLocal)), 0, 0)
	seg := udp(src, dst, sport, dport, p, true)
	w := ^inetSum(pseudo(src, dst, len(seg)), seg)
	binary.BigEndian.PutUint16(p[len(p)-2:], w)
	return p
}

type xdpCase struct {
	name    string
	in      []byte
	verdict uint32
	out     []byte // nil: unchanged
	counts  map[Reason]uint64
}

func TestSteerTable(t *testing.T) {
	e := newEnv(t)
	l4 := fromClient(client4, node4, svcPort, quicPayload)
	l6 := fromClient(client6, node6, svcPort, quicPayload)
	r4 := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote4)))
	r6 := fromClient(client6, node6, svcPort, shortHdr(cid(0, instRemote4)))
	r46 := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote6)))
	r66 := fromClient(client6, node6, svcPort, shortHdr(cid(0, instRemote6)))
	initial := longHdr(1, 0, []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5}, []byte{9, 9, 9, 9})
	handshake := longHdr(1, 2, []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5}, []byte{9, 9, 9, 9})
	zero4 := zeroSumPayload(client4, pod4, cport, podPort)
	zero6 := zeroSumPayload(client6, pod6, cport, podPort)

	// IPv4 with checksum 0 and with options.
	nocsum4 := eth(macUplink, macRouter, 0x0800, ipv4(ip4(client4, node4, 60), udp(client4, node4, cport, svcPort, quicPayload, true)))
	nocsum4Out := eth(macPod, macHost, 0x0800, ipv4(ip4(client4, pod4, 60), udp(client4, pod4, cport, podPort, quicPayload, true)))
	opt := ip4(client4, node4, 60)
	opt.opts = []byte{1, 1, 1, 0} // NOP NOP NOP EOL
	opts4 := eth(macUplink, macRouter, 0x0800, ipv4(opt, udp(client4, node4, cport, svcPort, quicPayload, false)))
	optOut := opt
	optOut.dst = pod4
	opts4Out := eth(macPod, macHost, 0x0800, ipv4(optOut, udp(client4, pod4, cport, podPort, quicPayload, false)))
	// IPv6 with a hop-by-hop and a destination options header (PadN).
	ext := []byte{60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0}
	ext6 := eth(macUplink, macRouter, 0x86dd, ipv6(client6, node6, 0, 60, ext, udp(client6, node6, cport, svcPort, quicPayload, false)))
	ext6Out := eth(macPod, macHost, 0x86dd, ipv6(client6, pod6, 0, 60, ext, udp(client6, pod6, cport, podPort, quicPayload, false)))

	frag := func(f uint16) []byte {
		h := ip4(client4, node4, 60)
		h.frag = f
		return eth(macUplink, macRouter, 0x0800, ipv4(h, udp(client4, node4, cport, svcPort, quicPayload, false)))
	}
	fragHdr := []byte{17, 0, 0, 0, 0, 0, 0, 1} // atomic fragment, offset 0, M=0
	frag6 := eth(macUplink, macRouter, 0x86dd, ipv6(client6, node6, 44, 60, fragHdr, udp(client6, node6, cport, svcPort, quicPayload, false)))
	tcp4 := eth(macUplink, macRouter, 0x0800, ipv4(ip4h{src: client4, dst: node4, ttl: 60, proto: 6}, make([]byte, 20)))
	arp := eth(macUplink, macRouter, 0x0806, make([]byte, 28))
	trunc4 := fromClient(client4, node4, svcPort, quicPayload)[:14+12]
	big := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote4), make([]byte, mtu-20-8-9-27)...))
	fits := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote4), make([]byte, mtu-20-8-9-28)...))
	tooLongLen := fromClient(client4, node4, svcPort, quicPayload)
	binary.BigEndian.PutUint16(tooLongLen[14+2:], uint16(len(tooLongLen)-14+1))
	binary.BigEndian.PutUint16(tooLongLen[14+10:], 0)
	binary.BigEndian.PutUint16(tooLongLen[14+10:], ^inetSum(tooLongLen[14:14+20]))
	noNeigh := fromClient(client4, node4, svcPort, shortHdr(cid(0, instNoNeigh)))
	noNeighOut := eth(macUplink, macRouter, 0x0800, ipv4(ip4(client4, netip.MustParseAddr("198.19.0.4"), 60),
		udp(client4, netip.MustParseAddr("198.19.0.4"), cport, podPort, shortHdr(cid(0, instNoNeigh)), false)))
	decapRemote := fromPeer(peer1, r4[14:])
	unknownPeer := eth(macUplink, macRouter, 0x0800, ipv4(ip4h{src: netip.MustParseAddr("198.18.29.2"), dst: node4, ttl: 64, proto: 17},
		udp(netip.MustParseAddr("198.18.29.2"), node4, 1, tunnelPort, l4[14:], true)))
	// Spoofed tunnel packets (adversarial finding): outer source a peer, inner destination
	// no service address of the cluster. Must be dropped after decapsulation.
	foreign := netip.MustParseAddr("198.18.99.1")
	spoofed := fromClient(client4, foreign, 9, quicPayload)
	spoofedPort := fromClient(client4, node4, 9, quicPayload)
	spoofed6 := fromClient(client6, netip.MustParseAddr("2001:2:0:99::1"), svcPort, quicPayload)
	viaPeerAddr := fromClient(client4, peer1, svcPort, quicPayload)
	cases := []xdpCase{
		{"v4 short local", l4, xdpRedirect, toPod(client4, pod4, quicPayload), map[Reason]uint64{ReasonLocal: 1}},
		{"v6 short local", l6, xdpRedirect, toPod(client6, pod6, quicPayload), map[Reason]uint64{ReasonLocal: 1}},
		{"v4 initial unknown DCID to default", fromClient(client4, node4, svcPort, initial), xdpRedirect, toPod(client4, pod4, initial), map[Reason]uint64{ReasonLocal: 1}},
		{"v6 v2 initial unknown DCID to default", fromClient(client6, node6, svcPort, longHdr(0x6b3343cf, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil)), xdpRedirect,
			toPod(client6, pod6, longHdr(0x6b3343cf, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil)), map[Reason]uint64{ReasonLocal: 1}},
		{"v4 long header with known DCID", fromClient(client4, node4, svcPort, longHdr(1, 2, cid(0, instLocal), nil)), xdpRedirect,
			toPod(client4, pod4, longHdr(1, 2, cid(0, instLocal), nil)), map[Reason]uint64{ReasonLocal: 1}},
		{"v4 handshake unknown DCID", fromClient(client4, node4, svcPort, handshake), xdpPass, nil, map[Reason]uint64{ReasonPassUnknownInstance: 1}},
		{"v4 short unknown instance", fromClient(client4, node4, svcPort, shortHdr(cid(0, 0x7777))), xdpPass, nil, map[Reason]uint64{ReasonPassUnknownInstance: 1}},
		{"v4 short unroutable rotation 7", fromClient(client4, node4, svcPort, shortHdr(cid(7, instLocal))), xdpPass, nil, map[Reason]uint64{ReasonPassUnknownInstance: 1}},
		{"v4 short other rotation", fromClient(client4, node4, svcPort, shortHdr(cid(1, instLocal))), xdpPass, nil, map[Reason]uint64{ReasonPassUnknownInstance: 1}},
		{"v4 short wrong self-encoded length", fromClient(client4, node4, svcPort, shortHdr(cid(0, instLocal, 1, 2, 3, 4, 5, 6))), xdpPass, nil, map[Reason]uint64{ReasonPassUnknownInstance: 1}},
		{"v4 remote via v4 peer", r4, xdpTX, encapsulated(r4[14:], 20, peer1), map[Reason]uint64{ReasonForwarded: 1}},
		{"v6 remote via v4 peer", r6, xdpTX, encapsulated(r6[14:], 40, peer1), map[Reason]uint64{ReasonForwarded: 1}},
		{"v4 remote via v6 peer", r46, xdpTX, encapsulated(r46[14:], 20, peer2), map[Reason]uint64{ReasonForwarded: 1}},
		{"v6 remote via v6 peer", r66, xdpTX, encapsulated(r66[14:], 40, peer2), map[Reason]uint64{ReasonForwarded: 1}},
		{"v4 no-checksum remote via v6 peer", func() []byte {
			return eth(macUplink, macRouter, 0x0800, ipv4(ip4(client4, node4, 60), udp(client4, node4, cport, svcPort, shortHdr(cid(0, instRemote6)), true)))
		}(), xdpTX, func() []byte {
			in := ipv4(ip4(client4, node4, 60), udp(client4, node4, cport, svcPort, shortHdr(cid(0, instRemote6)), true))
			return encapsulated(in, 20, peer2)
		}(), map[Reason]uint64{ReasonForwarded: 1}},
		{"v4 initial to fallback peer", fromClient(client4, node4, fbPort, initial), xdpTX,
			encapsulated(fromClient(client4, node4, fbPort, initial)[14:], 20, peer1), map[Reason]uint64{ReasonForwarded: 1}},
		{"v4 remote largest that fits", fits, xdpTX, encapsulated(fits[14:], 20, peer1), map[Reason]uint64{ReasonForwarded: 1}},
		{"v4 remote too big", big, xdpDrop, nil, map[Reason]uint64{ReasonDropTooBig: 1}},
		{"decap v4 outer to local", fromPeer(peer1, l4[14:]), xdpRedirect, toPod(client4, pod4, quicPayload), map[Reason]uint64{ReasonDecapsulated: 1, ReasonLocal: 1}},
		{"decap v6 outer v6 inner to local", fromPeer(peer2, l6[14:]), xdpRedirect, toPod(client6, pod6, quicPayload), map[Reason]uint64{ReasonDecapsulated: 1, ReasonLocal: 1}},
		{"decap v6 outer v4 inner to local", fromPeer(peer2, l4[14:]), xdpRedirect, toPod(client4, pod4, quicPayload), map[Reason]uint64{ReasonDecapsulated: 1, ReasonLocal: 1}},
		{"decap initial to default", fromPeer(peer1, fromClient(client4, node4, svcPort, initial)[14:]), xdpRedirect, toPod(client4, pod4, initial), map[Reason]uint64{ReasonDecapsulated: 1, ReasonLocal: 1}},
		{"decap never re-forwards", decapRemote, xdpDrop, eth(macUplink, macRouter, 0x0800, r4[14:]), map[Reason]uint64{ReasonDecapsulated: 1, ReasonDropDecapUndeliverable: 1}},
		{"decap inner destination not a service", fromPeer(peer1, spoofed[14:]), xdpDrop, eth(macUplink, macRouter, 0x0800, spoofed[14:]),
			map[Reason]uint64{ReasonDecapsulated: 1, ReasonDropDecapNotService: 1}},
		{"decap inner service address, other port", fromPeer(peer1, spoofedPort[14:]), xdpDrop, eth(macUplink, macRouter, 0x0800, spoofedPort[14:]),
			map[Reason]uint64{ReasonDecapsulated: 1, ReasonDropDecapNotService: 1}},
		{"decap v6 inner destination not a service", fromPeer(peer2, spoofed6[14:]), xdpDrop, eth(macUplink, macRouter, 0x86dd, spoofed6[14:]),
			map[Reason]uint64{ReasonDecapsulated: 1, ReasonDropDecapNotService: 1}},
		{"decap inner destination a peer's service address", fromPeer(peer1, viaPeerAddr[14:]), xdpRedirect, toPod(client4, pod4, quicPayload),
			map[Reason]uint64{ReasonDecapsulated: 1, ReasonLocal: 1}},
		{"tunnel port from unknown peer", unknownPeer, xdpPass, nil, map[Reason]uint64{ReasonPassNotService: 1}},
		{"v4 MF fragment", frag(0x2000), xdpPass, nil, map[Reason]uint64{ReasonPassFragment: 1}},
		{"v4 offset fragment", frag(0x0010), xdpPass, nil, map[Reason]uint64{ReasonPassFragment: 1}},
		{"v6 fragment header", frag6, xdpPass, nil, map[Reason]uint64{ReasonPassFragment: 1}},
		{"tcp", tcp4, xdpPass, nil, map[Reason]uint64{ReasonPassNotUDP: 1}},
		{"arp", arp, xdpPass, nil, map[Reason]uint64{ReasonPassNotIP: 1}},
		{"unknown ethertype", eth(macUplink, macRouter, 0x88b5, nil), xdpPass, nil, map[Reason]uint64{ReasonPassNotIP: 1}},
		{"truncated IPv4 header", trunc4, xdpPass, nil, map[Reason]uint64{ReasonPassMalformed: 1}},
		{"IPv4 total length beyond frame", tooLongLen, xdpPass, nil, map[Reason]uint64{ReasonPassMalformed: 1}},
		{"not a service port", fromClient(client4, node4, 80, quicPayload), xdpPass, nil, map[Reason]uint64{ReasonPassNotService: 1}},
		{"not a service address", fromClient(client4, netip.MustParseAddr("198.18.20.3"), svcPort, quicPayload), xdpPass, nil, map[Reason]uint64{ReasonPassNotService: 1}},
		{"empty UDP payload", fromClient(client4, node4, svcPort, nil), xdpDrop, nil, map[Reason]uint64{ReasonDropMalformed: 1}},
		{"short header shorter than CID", fromClient(client4, node4, svcPort, []byte{0x40, 0x07, 0x01, 0x01}), xdpDrop, nil, map[Reason]uint64{ReasonDropMalformed: 1}},
		{"long header DCID length 21", fromClient(client4, node4, svcPort, longHdr(1, 0, make([]byte, 21), nil)), xdpDrop, nil, map[Reason]uint64{ReasonDropMalformed: 1}},
		{"long header truncated DCID", fromClient(client4, node4, svcPort, []byte{0xc0, 0, 0, 0, 1, 8, 1, 2}), xdpDrop, nil, map[Reason]uint64{ReasonDropMalformed: 1}},
		{"v4 UDP checksum 0 stays 0", nocsum4, xdpRedirect, nocsum4Out, map[Reason]uint64{ReasonLocal: 1}},
		{"v4 checksum computed 0 sent as FFFF", fromClient(client4, node4, svcPort, zero4), xdpRedirect, toPod(client4, pod4, zero4), map[Reason]uint64{ReasonLocal: 1}},
		{"v6 checksum computed 0 sent as FFFF", fromClient(client6, node6, svcPort, zero6), xdpRedirect, toPod(client6, pod6, zero6), map[Reason]uint64{ReasonLocal: 1}},
		{"v4 with IP options", opts4, xdpRedirect, opts4Out, map[Reason]uint64{ReasonLocal: 1}},
		{"v6 with extension headers", ext6, xdpRedirect, ext6Out, map[Reason]uint64{ReasonLocal: 1}},
		{"local without neighbour", noNeigh, xdpPass, noNeighOut, map[Reason]uint64{ReasonPassNoNeigh: 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.counters(t)
			verdict, out := e.run(t, e.dp.Objects().Steer, e.upIx, c.in)
			if verdict != c.verdict {
				t.Errorf("verdict = %d, want %d", verdict, c.verdict)
			}
			want := c.out
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output differs\n got %s\nwant %s", hex.EncodeToString(out), hex.EncodeToString(want))
			}
			if d := delta(before, e.counters(t)); !equalCounts(d, c.counts) {
				t.Errorf("counter deltas = %v, want %v", d, c.counts)
			}
			checkChecksums(t, out)
		})
	}
}

func equalCounts(a, b map[Reason]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkChecksums verifies the IPv4 header and UDP checksums of an Ethernet
// frame (and of an encapsulated inner packet) with the Go implementation.
func checkChecksums(t *testing.T, frame []byte) {
	t.Helper()
	if len(frame) < 14 {
		return
	}
	pkt := frame[14:]
	for depth := 0; depth < 2 && len(pkt) > 0; depth++ {
		var src, dst netip.Addr
		var seg []byte
		switch pkt[0] >> 4 {
		case 4:
			if len(pkt) < 20 || pkt[9] != 17 || binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
				return
			}
			hl := int(pkt[0]&0xf) * 4
			if inetSum(pkt[:hl]) != 0xffff {
				t.Errorf("IPv4 header checksum wrong at depth %d", depth)
			}
			src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
			tl := int(binary.BigEndian.Uint16(pkt[2:]))
			if tl > len(pkt) {
				return
			}
			seg = pkt[hl:tl]
		case 6:
			if len(pkt) < 48 || pkt[6] != 17 {
				return
			}
			src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
			seg = pkt[40:]
			if binary.BigEndian.Uint16(seg[6:]) == 0 {
				t.Errorf("IPv6 UDP checksum 0 at depth %d", depth)
			}
		default:
			return
		}
		if len(seg) < 8 {
			return
		}
		if !udpOK(src, dst, seg) {
			t.Errorf("UDP checksum wrong at depth %d", depth)
		}
		if binary.BigEndian.Uint16(seg[2:]) != tunnelPort {
			return
		}
		pkt = seg[8:]
	}
}

func TestPodSNAT(t *testing.T) {
	e := newEnv(t)
	maps := e.dp.Maps()
	put := func(c netip.Addr, cp uint16, pub netip.AddrPort) {
		ca, cf := addr16(c)
		pa, pf := addr16(pub.Addr())
		if err := maps.Clients.Put(ClientKey{Addr: ca, Port: cp, Family: cf}, ClientValue{Addr: pa, Port: pub.Port(), Family: pf}); err != nil {
			t.Fatal(err)
		}
	}
	put(client4, cport, netip.AddrPortFrom(node4, svcPort))
	put(client6, cport, netip.AddrPortFrom(node6, svcPort))
	migrated := netip.MustParseAddr("198.18.21.2") // the client used another node's address
	put(client4, cport+1, netip.AddrPortFrom(migrated, fbPort))
	reply := []byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	fromPod := func(src, dst netip.Addr, sport, dport uint16) []byte {
		if src.Is4() {
			return eth(macHost, macPod, 0x0800, ipv4(ip4(src, dst, 64), udp(src, dst, sport, dport, reply, false)))
		}
		return eth(macHost, macPod, 0x86dd, ipv6(src, dst, 17, 64, nil, udp(src, dst, sport, dport, reply, false)))
	}
	toClient := func(src, dst netip.Addr, sport, dport uint16) []byte {
		if src.Is4() {
			return eth(macRouter, macUplink, 0x0800, ipv4(ip4(src, dst, 64), udp(src, dst, sport, dport, reply, false)))
		}
		return eth(macRouter, macUplink, 0x86dd, ipv6(src, dst, 17, 64, nil, udp(src, dst, sport, dport, reply, false)))
	}
	cases := []xdpCase{
		{"v4 reply to known client", fromPod(pod4, client4, podPort, cport), xdpRedirect, toClient(node4, client4, svcPort, cport), map[Reason]uint64{ReasonSNAT: 1}},
		{"v6 reply to known client", fromPod(pod6, client6, podPort, cport), xdpRedirect, toClient(node6, client6, svcPort, cport), map[Reason]uint64{ReasonSNAT: 1}},
		{"v4 reply with the address the client used", fromPod(pod4, client4, podPort, cport+1), xdpRedirect, toClient(migrated, client4, fbPort, cport+1), map[Reason]uint64{ReasonSNAT: 1}},
		{"v4 reply to unknown client uses default", fromPod(pod4, client4, podPort, cport+2), xdpRedirect, toClient(node4, client4, svcPort, cport+2), map[Reason]uint64{ReasonSNATDefault: 1}},
		{"v6 reply to unknown client uses default", fromPod(pod6, client6, podPort, cport+2), xdpRedirect, toClient(node6, client6, svcPort, cport+2), map[Reason]uint64{ReasonSNATDefault: 1}},
		{"not from the service port", fromPod(pod4, client4, 53, cport), xdpPass, nil, map[Reason]uint64{}},
		{"fragment from pod", func() []byte {
			h := ip4(pod4, client4, 64)
			h.frag = 0x2000
			return eth(macHost, macPod, 0x0800, ipv4(h, udp(pod4, client4, podPort, cport, reply, false)))
		}(), xdpPass, nil, map[Reason]uint64{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.counters(t)
			verdict, out := e.run(t, e.dp.Objects().Pod, e.hvIx, c.in)
			if verdict != c.verdict {
				t.Errorf("verdict = %d, want %d", verdict, c.verdict)
			}
			want := c.out
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output differs\n got %s\nwant %s", hex.EncodeToString(out), hex.EncodeToString(want))
			}
			if d := delta(before, e.counters(t)); !equalCounts(d, c.counts) {
				t.Errorf("counter deltas = %v, want %v", d, c.counts)
			}
			checkChecksums(t, out)
		})
	}
}

// TestDeliverRecordsClientAndStats checks the clients LRU entry and the
// per-instance packet counter and last-seen time after a local delivery.
func TestDeliverRecordsClientAndStats(t *testing.T) {
	e := newEnv(t)
	p0, _, err := e.dp.InstanceStats(instLocal)
	if err != nil {
		t.Fatal(err)
	}
	e.run(t, e.dp.Objects().Steer, e.upIx, fromClient(client4, node4, svcPort, quicPayload))
	ck, cf := addr16(client4)
	v, err := e.dp.Maps().Clients.Lookup(ClientKey{Addr: ck, Port: cport, Family: cf})
	if err != nil {
		t.Fatalf("clients entry: %v", err)
	}
	if got := netip.AddrPortFrom(addrFrom16(v.Addr, v.Family), v.Port); got != netip.AddrPortFrom(node4, svcPort) {
		t.Errorf("clients entry = %s, want %s", got, netip.AddrPortFrom(node4, svcPort))
	}
	p1, seen, err := e.dp.InstanceStats(instLocal)
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p0+1 {
		t.Errorf("packets = %d, want %d", p1, p0+1)
	}
	if age := time.Since(seen); age < 0 || age > 5*time.Second {
		t.Errorf("last seen %v ago", age)
	}
	// SetLocal again keeps the statistics.
	if err := e.dp.SetRemote(instLocal, 1); err != nil {
		t.Fatal(err)
	}
	if p2, _, _ := e.dp.InstanceStats(instLocal); p2 != p1 {
		t.Errorf("packets after SetRemote = %d, want %d", p2, p1)
	}
}

// TestDecapSpoofedDestinationLeavesNoClient checks the adversarial finding end to end at the
// map level: a tunnel packet whose outer source is a peer and whose inner packet goes to an
// address that is no service of the cluster must not reach the pod and must not create a
// clients entry (xdp_pod would SNAT the pod's reply to that foreign address).
func TestDecapSpoofedDestinationLeavesNoClient(t *testing.T) {
	e := newEnv(t)
	foreign := netip.MustParseAddr("198.18.99.1")
	const sport = 40300
	inner := eth(macUplink, macRouter, 0x0800, ipv4(ip4(client4, foreign, 60), udp(client4, foreign, sport, 9, quicPayload, false)))
	p0, _, err := e.dp.InstanceStats(instLocal)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := e.run(t, e.dp.Objects().Steer, e.upIx, fromPeer(peer1, inner[14:])); v != xdpDrop {
		t.Errorf("verdict = %d, want XDP_DROP", v)
	}
	ck, cf := addr16(client4)
	if v, err := e.dp.Maps().Clients.Lookup(ClientKey{Addr: ck, Port: sport, Family: cf}); err == nil {
		t.Errorf("clients entry written for a spoofed tunnel packet: %s", netip.AddrPortFrom(addrFrom16(v.Addr, v.Family), v.Port))
	}
	if p1, _, _ := e.dp.InstanceStats(instLocal); p1 != p0 {
		t.Errorf("instance packets %d -> %d: the spoofed packet was steered", p0, p1)
	}
}

// TestFenced: while the pod behind hv0 is fenced, xdp_pod drops every frame it sends (UDP
// replies, other ports, ARP) and xdp_steer drops packets for instances on that veth, direct
// or decapsulated, without recording a client; unfenced, both work as before.
func TestFenced(t *testing.T) {
	e := newEnv(t)
	reply := []byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	fromPod := eth(macHost, macPod, 0x0800, ipv4(ip4(pod4, client4, 64), udp(pod4, client4, podPort, cport+7, reply, false)))
	toClient := eth(macRouter, macUplink, 0x0800, ipv4(ip4(node4, client4, 64), udp(node4, client4, svcPort, cport+7, reply, false)))
	otherPort := eth(macHost, macPod, 0x0800, ipv4(ip4(pod4, client4, 64), udp(pod4, client4, 53, cport, reply, false)))
	arp := eth(macHost, macPod, 0x0806, make([]byte, 28))
	const fport = 50007
	in := eth(macUplink, macRouter, 0x0800, ipv4(ip4(client4, node4, 60), udp(client4, node4, fport, svcPort, quicPayload, false)))
	out := eth(macPod, macHost, 0x0800, ipv4(ip4(client4, pod4, 60), udp(client4, pod4, fport, podPort, quicPayload, false)))
	remote := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote4)))

	if err := e.dp.SetFenced(e.hvIx, true); err != nil {
		t.Fatal(err)
	}
	if f, err := e.dp.Fenced(e.hvIx); err != nil || !f {
		t.Fatalf("Fenced = %v, %v; want true", f, err)
	}
	if got, err := e.dp.FencedPods(); err != nil || len(got) != 1 || got[0] != e.hvIx {
		t.Fatalf("FencedPods = %v, %v; want [%d]", got, err, e.hvIx)
	}
	steer, pod := e.dp.Objects().Steer, e.dp.Objects().Pod
	type runCase struct {
		name    string
		steer   bool // xdp_steer on the uplink, else xdp_pod on hv0
		in      []byte
		verdict uint32
		out     []byte
		counts  map[Reason]uint64
	}
	fencedCases := []runCase{
		{"pod reply dropped", false, fromPod, xdpDrop, nil, map[Reason]uint64{ReasonDropFenced: 1}},
		{"pod other port dropped", false, otherPort, xdpDrop, nil, map[Reason]uint64{ReasonDropFenced: 1}},
		{"pod ARP dropped", false, arp, xdpDrop, nil, map[Reason]uint64{ReasonDropFenced: 1}},
		{"to fenced instance dropped", true, in, xdpDrop, nil, map[Reason]uint64{ReasonDropFenced: 1}},
		{"decapsulated to fenced instance dropped", true, fromPeer(peer1, in[14:]), xdpDrop, eth(macUplink, macRouter, 0x0800, in[14:]),
			map[Reason]uint64{ReasonDecapsulated: 1, ReasonDropFenced: 1}},
		{"remote instance unaffected", true, remote, xdpTX, encapsulated(remote[14:], 20, peer1), map[Reason]uint64{ReasonForwarded: 1}},
	}
	unfencedCases := []runCase{
		{"pod reply SNAT", false, fromPod, xdpRedirect, toClient, map[Reason]uint64{ReasonSNATDefault: 1}},
		{"pod other port passes", false, otherPort, xdpPass, nil, map[Reason]uint64{}},
		{"to instance delivered", true, in, xdpRedirect, out, map[Reason]uint64{ReasonLocal: 1}},
	}
	check := func(cases []runCase) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				prog, ix := pod, e.hvIx
				if c.steer {
					prog, ix = steer, e.upIx
				}
				before := e.counters(t)
				v, got := e.run(t, prog, ix, c.in)
				if v != c.verdict {
					t.Errorf("verdict = %d, want %d", v, c.verdict)
				}
				want := c.out
				if want == nil {
					want = c.in
				}
				if !bytes.Equal(got, want) {
					t.Errorf("output differs\n got %s\nwant %s", hex.EncodeToString(got), hex.EncodeToString(want))
				}
				if d := delta(before, e.counters(t)); !equalCounts(d, c.counts) {
					t.Errorf("counter deltas = %v, want %v", d, c.counts)
				}
			})
		}
	}
	check(fencedCases)
	ck, cf := addr16(client4)
	if _, err := e.dp.Maps().Clients.Lookup(ClientKey{Addr: ck, Port: fport, Family: cf}); err == nil {
		t.Errorf("clients entry recorded for a packet to a fenced pod")
	}
	if err := e.dp.SetFenced(e.hvIx, false); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.SetFenced(e.hvIx, false); err != nil {
		t.Errorf("unfence twice: %v", err)
	}
	if f, _ := e.dp.Fenced(e.hvIx); f {
		t.Errorf("still fenced after SetFenced(false)")
	}
	check(unfencedCases)
	if err := e.dp.SetFenced(0, true); !errors.Is(err, ErrConfig) {
		t.Errorf("SetFenced(0) = %v, want ErrConfig", err)
	}
}
