package datapath

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
	testnetns "github.com/steerd/steerd/tests/netns"
)

// TestNetnsForwardAndReply sends real UDP from a client to node A's public
// address; the instance lives in the pod on node B. Node A encapsulates to B
// (XDP_TX), B decapsulates, DNATs and redirects into the pod; the pod's reply
// is SNATed by xdp_pod on B to node A's address — the address the client
// sent to — and leaves through B's uplink. The same for a client that sends
// to node B directly (local delivery). IPv4 and IPv6.
func TestNetnsForwardAndReply(t *testing.T) {
	requireBPF(t)
	tb := testnetns.New(t, testnetns.Topology{Clients: 1, Nodes: 2, PodsPerNode: 1, NoPodRoutes: true})
	a, b := tb.Nodes[0], tb.Nodes[1]
	const inst connid.InstanceID = 0x0042
	cidCfg := connid.DefaultConfig(2, 5)

	// XDP_TX/XDP_REDIRECT into a veth needs an XDP program on its peer:
	// the router's links toward the nodes get xdp_pass.
	open := func(n *testnetns.Node) *Datapath {
		var dp *Datapath
		err := n.Do(func() error {
			var err error
			dp, err = Open(Config{Uplink: n.Link, NodeAddrs: []netip.Addr{n.IPv4, n.IPv6}, CID: cidCfg, TunnelPort: tunnelPort})
			return err
		})
		if err != nil {
			t.Fatalf("open datapath on %s: %v", n.Name, err)
		}
		t.Cleanup(func() { dp.Close() })
		err = tb.Router.Do(func() error {
			rl, err := netLinkIndex(n.RouterLink)
			if err != nil {
				return err
			}
			l, _, err := loader.AttachXDP(dp.Objects().Pass, rl)
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			return nil
		})
		if err != nil {
			t.Fatalf("attach xdp_pass on router: %v", err)
		}
		return dp
	}
	dpA, dpB := open(a), open(b)
	p := b.Pods[0]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Do(func() error { return dpA.AddPeer(2, Peer{Addr: b.IPv4}) }))
	must(b.Do(func() error { return dpB.AddPeer(1, Peer{Addr: a.IPv4}) }))
	must(dpA.SetRemote(inst, 2))
	for _, addr := range []netip.Addr{a.IPv4, a.IPv6} {
		must(dpA.AddService(Service{Public: netip.AddrPortFrom(addr, svcPort), FallbackPeer: 2, HasFallback: true}))
	}
	// B delivers decapsulated packets only to service addresses of the cluster: its own and
	// A's public addresses (the daemon installs both, daemon/wire.go SetLocal).
	for _, addr := range []netip.Addr{b.IPv4, b.IPv6, a.IPv4, a.IPv6} {
		must(dpB.AddService(Service{Public: netip.AddrPortFrom(addr, svcPort), DefaultInstance: inst, HasDefault: true}))
	}
	must(dpB.SetLocal(inst, LocalTarget{HostIfindex: p.HostIndex, Pod4: p.IPv4, Pod6: p.IPv6, PodPort: podPort,
		Public: []netip.AddrPort{netip.AddrPortFrom(b.IPv4, svcPort), netip.AddrPortFrom(b.IPv6, svcPort)}}))
	must(b.Do(func() error { return dpB.AttachPod(p.HostIndex, p.Path(), p.PodIndex) }))

	// Echo server in the pod.
	var srv *net.UDPConn
	must(nsutil.Do(p.NetNS, func() error {
		var err error
		srv, err = net.ListenUDP("udp", &net.UDPAddr{Port: podPort})
		return err
	}))
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			srv.WriteToUDP(buf[:n], from)
		}
	}()

	c := tb.Clients[0]
	// Testbed artifact: veth TX checksum offload would hand node A
	// CHECKSUM_PARTIAL packets (see SetTxChecksum); a NIC never does.
	must(c.Do(func() error { return SetTxChecksum(c.Link, false) }))
	payload := shortHdr(cid(0, uint16(inst)), bytes.Repeat([]byte{0x5a}, 1100)...)
	exchange := func(dst netip.AddrPort) (netip.AddrPort, error) {
		var conn *net.UDPConn
		if err := c.Do(func() error {
			var err error
			conn, err = net.ListenUDP("udp", nil)
			return err
		}); err != nil {
			return netip.AddrPort{}, err
		}
		defer conn.Close()
		buf := make([]byte, 2048)
		for try := 0; try < 5; try++ { // first packets may race neighbour resolution
			if _, err := conn.WriteToUDPAddrPort(payload, dst); err != nil {
				return netip.AddrPort{}, err
			}
			conn.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				return netip.AddrPort{}, err
			}
			if !bytes.Equal(buf[:n], payload) {
				return from, errors.New("reply payload differs")
			}
			return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
		}
		return netip.AddrPort{}, errors.New("no reply")
	}
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(a.IPv4, svcPort), netip.AddrPortFrom(a.IPv6, svcPort),
		netip.AddrPortFrom(b.IPv4, svcPort), netip.AddrPortFrom(b.IPv6, svcPort),
	} {
		before, _ := dpA.Counters()
		from, err := exchange(dst)
		if err != nil {
			ca, _ := dpA.Counters()
			cb, _ := dpB.Counters()
			for _, cmd := range [][]string{{"ip", "netns", "exec", p.NetNS, "ip", "-s", "link"}, {"ip", "netns", "exec", p.NetNS, "nstat", "-az", "Udp*"}, {"ip", "netns", "exec", b.NS, "ip", "-s", "link", "show", p.HostVeth}, {"ip", "netns", "exec", b.NS, "ip", "neigh"}, {"ip", "netns", "exec", p.NetNS, "ip", "route"}} {
				out, _ := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
				t.Logf("%v:\n%s", cmd, out)
			}
			t.Fatalf("exchange with %s: %v\nnode A counters %v\nnode B counters %v", dst, err, nonZero(ca), nonZero(cb))
		}
		if from != dst {
			t.Errorf("reply from %s, want %s (the address the client sent to)", from, dst)
		}
		after, _ := dpA.Counters()
		if dst.Addr() == a.IPv4 || dst.Addr() == a.IPv6 {
			if after[ReasonForwarded] == before[ReasonForwarded] {
				t.Errorf("%s: node A forwarded nothing", dst)
			}
		}
	}
	cb, _ := dpB.Counters()
	if cb[ReasonDecapsulated] == 0 || cb[ReasonLocal] == 0 || cb[ReasonSNAT] == 0 {
		t.Errorf("node B counters %v: want decapsulated, local and snat", nonZero(cb))
	}
	if pk, seen, err := dpA.InstanceStats(inst); err != nil || pk == 0 || time.Since(seen) > 10*time.Second {
		t.Errorf("node A instance stats: %d packets, last seen %v, err %v", pk, seen, err)
	}
}

func nonZero(m map[Reason]uint64) map[Reason]uint64 {
	out := map[Reason]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func netLinkIndex(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}
