package adversarial

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/quicext"
)

// tunnelPort is daemon.Config's default tunnel_port (docs/operations.md).
const tunnelPort = 7444

func startLoad(t *testing.T, c *demo.Cluster, node, conns int) *demo.Load {
	t.Helper()
	ld, err := c.StartLoad(context.Background(), c.Public(node), conns, quicext.StrategySymmetric)
	if err != nil {
		t.Fatalf("start load: %v", err)
	}
	return ld
}

// checkLoad stops the load and fails unless every request was answered, in order and right.
func checkLoad(t *testing.T, ld *demo.Load) *load.Report {
	t.Helper()
	rep, err := ld.Stop()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if rep.Received == 0 || !rep.OK() {
		for _, cr := range rep.Conns {
			t.Logf("conn %d: sent %d received %d lost %d wrong %d ooo %d err %q server %s",
				cr.Conn, cr.Sent, cr.Received, cr.Lost, cr.Wrong, cr.OutOfOrder, cr.Err, cr.ServerAddr)
		}
		t.Errorf("load: sent %d, received %d, lost %d, out of order %d, wrong %d, failed connections %d, max gap %.0f ms",
			rep.Sent, rep.Received, rep.Lost, rep.OutOfOrder, rep.Wrong, rep.Failed, rep.MaxGapMS)
	}
	return rep
}

// TestHostilePackets sends malformed and hostile UDP at n0's service port (IPv4 and IPv6) while
// four QUIC connections run through n0. Every packet must end with the counter
// docs/datapath.md names, steerd must stay up, and the connections must not lose a request.
func TestHostilePackets(t *testing.T) {
	c := cluster(t)
	cl := c.TB.Clients[0]
	n0 := c.TB.Nodes[0]
	svc4 := netip.AddrPortFrom(n0.IPv4, demo.Port)
	svc6 := netip.AddrPortFrom(n0.IPv6, demo.Port)
	ld := startLoad(t, c, 0, 4)
	time.Sleep(300 * time.Millisecond)
	before := counters(t, c, 0)

	want := map[string]uint64{} // exact deltas of the quiet counters
	atLeast := map[string]uint64{}
	var vnFrom []netip.AddrPort
	err := cl.Do(func() error {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cl.IPv4, 40100)))
		if err != nil {
			return err
		}
		defer conn.Close()
		dst := net.UDPAddrFromAddrPort(svc4)
		send := func(reason string, p []byte) {
			if _, err := conn.WriteToUDP(p, dst); err != nil {
				t.Errorf("send %s: %v", reason, err)
			}
			if reason == "local" {
				atLeast[reason]++
			} else {
				want[reason]++
			}
		}
		// RFC 9000 17.2/17.3 violations and QUIC-LB draft-21 section 3 edge cases.
		send("drop_malformed", []byte{})                                           // empty payload
		send("drop_malformed", []byte{0xc0})                                       // long header cut after the flags
		send("drop_malformed", []byte{0xc0, 0, 0, 0, 1, 255, 1, 2, 3})             // v1, DCID length 255, truncated
		send("drop_malformed", longHeader(0xc0, 1, 21, make([]byte, 21), 1200))    // v1, DCID length 21
		send("drop_malformed", []byte{0x40, 0x0a, 0, 7, 1})                        // short header ends inside the DCID
		send("pass_unknown_instance", shortHeader(kvCID(demo.Instance, 0x0b), 30)) // self-encoded length lies (12)
		send("pass_unknown_instance", shortHeader(kvCID(demo.Instance, 0xea), 30)) // config rotation 0b111
		send("pass_unknown_instance", shortHeader(kvCID(9, 0x0a), 30))             // unknown instance
		send("local", shortHeader(kvCID(demo.Instance, 0x0a), 30))                 // our instance, junk
		send("local", longHeader(0xc0, 0x1a2a3a4a, 255, make([]byte, 255), 1200))  // unknown version, 255-byte DCID
		// Unknown version with our CID, 1200 bytes: quic-go answers Version Negotiation, which
		// must come back from the public address the client used (xdp_pod SNAT).
		send("local", longHeader(0xc0, 0x1a2a3a4a, 11, kvCID(demo.Instance, 0x0a), 1200))
		vnFrom = collect(conn, 500*time.Millisecond)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Raw IPv4 and IPv6: fragments, checksum 0, options, lying UDP length, extension headers.
	src4 := netip.AddrPortFrom(cl.IPv4, 40101)
	src6 := netip.AddrPortFrom(cl.IPv6, 40102)
	short := shortHeader(kvCID(demo.Instance, 0x0a), 40)
	err = cl.Do(func() error {
		u := udp(src4, svc4, short, false)
		frag1 := ipv4(cl.IPv4, n0.IPv4, 17, 0x2000, nil, u[:24])                 // MF, offset 0
		frag2 := ipv4(cl.IPv4, n0.IPv4, 17, 3, nil, u[24:])                      // offset 24 bytes
		zero := ipv4(cl.IPv4, n0.IPv4, 17, 0, nil, udp(src4, svc4, short, true)) // UDP checksum 0
		opts := ipv4(cl.IPv4, n0.IPv4, 17, 0, []byte{1, 1, 1, 0}, u)             // NOP NOP NOP EOL
		lie := append([]byte(nil), u...)
		lie[4], lie[5] = 0x05, 0xdc // UDP length 1500 > IP payload
		lying := ipv4(cl.IPv4, n0.IPv4, 17, 0, nil, lie)
		for _, p := range [][]byte{frag1, frag2, zero, opts, lying} {
			if err := sendRaw4(p); err != nil {
				return err
			}
		}
		want["pass_fragment"] += 2
		atLeast["local"] += 2
		want["pass_malformed"]++

		u6 := udp(src6, svc6, short, false)
		chain := u6
		for i := 0; i < 7; i++ { // 7 Destination Options headers > MAX_IPV6_EXT (6)
			nh := byte(60)
			if i == 0 {
				nh = 17
			}
			chain = append(ext6(60, nh, 0), chain...)
		}
		long := ipv6(cl.IPv6, n0.IPv6, 60, chain)
		ok := ipv6(cl.IPv6, n0.IPv6, 0, append(append(ext6(0, 60, 0), ext6(60, 17, 0)...), u6...))
		routed := ipv6(cl.IPv6, n0.IPv6, 43, append(ext6(43, 17, 1), u6...))                   // segments left 1
		frag := ipv6(cl.IPv6, n0.IPv6, 44, append([]byte{17, 0, 0, 1, 0, 0, 0, 9}, u6...))     // atomic fragment
		unknown := ipv6(cl.IPv6, n0.IPv6, 253, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, u6...)) // RFC 3692 experimental
		for _, p := range [][]byte{long, ok, routed, frag, unknown} {
			if err := sendRaw6(p); err != nil {
				return err
			}
		}
		atLeast["pass_not_udp"] += 2
		atLeast["local"]++
		atLeast["pass_not_service"]++
		want["pass_fragment"]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	after := counters(t, c, 0)
	d := delta(before, after)
	t.Logf("n0 counter deltas: %v", d)
	for k, v := range want {
		if d[k] != v {
			t.Errorf("counter %s: +%d, want +%d", k, d[k], v)
		}
	}
	for k, v := range atLeast {
		if d[k] < v {
			t.Errorf("counter %s: +%d, want at least +%d", k, d[k], v)
		}
	}
	if d["drop_error"] != 0 {
		t.Errorf("drop_error +%d: a helper failed on hostile input", d["drop_error"])
	}
	if len(vnFrom) == 0 {
		t.Errorf("no Version Negotiation came back for an unknown-version Initial with our CID")
	}
	for _, a := range vnFrom {
		if a != svc4 {
			t.Errorf("reply from %s, want the public address %s the client sent to", a, svc4)
		}
	}
	checkLoad(t, ld)
	if st := serviceState(c, 0, demo.Service); st != "running" {
		t.Errorf("kv on n0 after the hostile packets: %q, want running (steerd alive)", st)
	}
}

// tunnelPacket builds an encapsulated packet (docs/datapath.md "Encapsulation", outer IPv4, UDP
// checksum 0) from outerSrc to node's tunnel port whose inner IPv4/UDP packet goes from
// innerSrc to innerDst with an unknown-version long header carrying kv's CID (1200 bytes, so
// that quic-go answers with Version Negotiation).
func tunnelPacket(outerSrc, node netip.Addr, innerSrc, innerDst netip.AddrPort) []byte {
	q := longHeader(0xc0, 0x1a2a3a4a, 11, kvCID(demo.Instance, 0x0a), 1200)
	inner := ipv4(innerSrc.Addr(), innerDst.Addr(), 17, 0x4000, nil, udp(innerSrc, innerDst, q, false))
	outer := udp(netip.AddrPortFrom(outerSrc, 0xc123), netip.AddrPortFrom(node, tunnelPort), inner, true)
	return ipv4(outerSrc, node, 17, 0x4000, nil, outer)
}

// TestTunnelFromNonPeer sends an encapsulated packet to n0's tunnel port from the client's own
// address (not a peer): it must not be decapsulated (pass_not_service, the kernel has no socket
// on the tunnel port) and the pod must not answer the inner packet.
func TestTunnelFromNonPeer(t *testing.T) {
	c := cluster(t)
	cl := c.TB.Clients[0]
	n0 := c.TB.Nodes[0]
	before := counters(t, c, 0)
	var got []netip.AddrPort
	err := cl.Do(func() error {
		inner := netip.AddrPortFrom(cl.IPv4, 40200)
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(inner))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := sendRaw4(tunnelPacket(cl.IPv4, n0.IPv4, inner, netip.AddrPortFrom(n0.IPv4, demo.Port))); err != nil {
			return err
		}
		got = collect(conn, 500*time.Millisecond)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d := delta(before, counters(t, c, 0))
	t.Logf("n0 counter deltas: %v", d)
	if d["decapsulated"] != 0 {
		t.Errorf("a tunnel packet from the non-peer %s was decapsulated (%d)", cl.IPv4, d["decapsulated"])
	}
	if d["pass_not_service"] < 1 {
		t.Errorf("pass_not_service +%d, want the tunnel packet counted", d["pass_not_service"])
	}
	if len(got) != 0 {
		t.Errorf("the inner packet of a non-peer's tunnel packet was answered from %v", got)
	}
}

// TestTunnelInnerDestination spoofs peer n1's address to n0's tunnel port (UDP carries no
// authentication; any host on the path, or any host when the network does not filter source
// addresses, can do this). The inner packet is addressed to 198.18.99.1:9, which is no service
// address of any node. Decapsulation forbids forwarding, but not delivering an inner packet
// whose destination is arbitrary: n0 recorded clients[client] = 198.18.99.1:9 and its pod's
// answer left n0 with source 198.18.99.1:9 (xdp_pod SNAT). Fixed: a decapsulated packet is
// delivered only when its inner destination is a service address of the cluster (services
// map), else dropped and counted drop_decap_not_service (docs/datapath.md "Tunnel trust"), so
// a node never emits packets from foreign addresses.
func TestTunnelInnerDestination(t *testing.T) {
	c := cluster(t)
	cl := c.TB.Clients[0]
	n0, n1 := c.TB.Nodes[0], c.TB.Nodes[1]
	foreign := netip.AddrPortFrom(netip.MustParseAddr("198.18.99.1"), 9)
	before := counters(t, c, 0)
	var got []netip.AddrPort
	err := cl.Do(func() error {
		inner := netip.AddrPortFrom(cl.IPv4, 40300)
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(inner))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := sendRaw4(tunnelPacket(n1.IPv4, n0.IPv4, inner, foreign)); err != nil {
			return err
		}
		got = collect(conn, 500*time.Millisecond)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d := delta(before, counters(t, c, 0))
	t.Logf("n0 counter deltas: %v; client received from %v", d, got)
	if d["decapsulated"] == 0 {
		t.Skip("skip: the router did not forward the spoofed outer source (reverse path filter): nothing to test")
	}
	var bad []netip.AddrPort
	for _, a := range got {
		if a.Addr() == foreign.Addr() {
			bad = append(bad, a)
		}
	}
	if len(bad) > 0 {
		t.Errorf("n0 answered a spoofed tunnel packet from the foreign address: %v", bad)
	}
	if d["local"] != 0 {
		t.Errorf("local +%d: the inner packet to %s was delivered to the pod", d["local"], foreign)
	}
	if d["drop_decap_not_service"] != 1 {
		t.Errorf("drop_decap_not_service +%d, want +1", d["drop_decap_not_service"])
	}
}
