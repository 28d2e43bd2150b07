package netns

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/pod"
)

// udpEcho listens on addr inside ns and echoes every datagram until the returned conn is closed.
func udpEcho(t *testing.T, ns string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := nsutil.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c
}

// roundTrip sends a datagram from inside ns to dst and returns the reply's source address.
func roundTrip(t *testing.T, ns string, dst netip.AddrPort) (netip.AddrPort, error) {
	t.Helper()
	var c *net.UDPConn
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	if err := nsutil.Do(ns, func() (err error) {
		c, err = net.ListenUDP(network, nil)
		return err
	}); err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	msg := []byte("steerd " + dst.String())
	buf := make([]byte, 2048)
	var lastErr error
	for try := 0; try < 20; try++ { // the first packets may wait for neighbour resolution
		if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			lastErr = err
			continue
		}
		if string(buf[:n]) != string(msg) {
			t.Fatalf("echo from %s: got %q, want %q", from, buf[:n], msg)
		}
		return from, nil
	}
	return netip.AddrPort{}, lastErr
}

func TestTopologyReachability(t *testing.T) {
	start := time.Now()
	tb := New(t, Topology{Clients: 2, Nodes: 3, PodsPerNode: 1, RouterXDPPass: true})
	if len(tb.Clients) != 2 || len(tb.Nodes) != 3 {
		t.Fatalf("got %d clients, %d nodes", len(tb.Clients), len(tb.Nodes))
	}
	for _, n := range tb.Nodes {
		p := n.Pods[0]
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			srv := udpEcho(t, p.NetNS, netip.AddrPortFrom(a, 7000))
			defer srv.Close()
			for _, c := range tb.Clients {
				from, err := roundTrip(t, c.NS, netip.AddrPortFrom(a, 7000))
				if err != nil {
					t.Fatalf("client %s -> pod %s on %s: %v", c.Name, a, n.Name, err)
				}
				if from.Addr().Unmap() != a {
					t.Errorf("client %s: reply from %s, want %s", c.Name, from, a)
				}
			}
		}
	}
	names := tb.Namespaces()
	if err := tb.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	elapsed := time.Since(start)
	left, err := nsutil.List(pod.NSPrefix + "t" + tb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	for _, n := range names {
		if _, err := nsutil.Open(n); err == nil {
			t.Errorf("namespace %s still opens after Close", n)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		for _, n := range tb.Nodes {
			for _, p := range n.Pods {
				if l.Attrs().Name == p.HostVeth {
					t.Errorf("link %s left in the root namespace", l.Attrs().Name)
				}
			}
		}
	}
	t.Logf("testbed 2 clients, 1 router, 3 nodes x 1 pod: build %v, build+check IPv4/IPv6+teardown %v", tb.BuildTime, elapsed)
	if elapsed > 2*time.Second {
		t.Errorf("build+check+teardown took %v, want < 2s", elapsed)
	}
}

func TestSweepRemovesOrphans(t *testing.T) {
	tb := New(t, Topology{Nodes: 1, PodsPerNode: 1})
	// A testbed whose owner is alive (this process) must survive a sweep.
	removed, err := Sweep(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range removed {
		if strings.Contains(r, tb.ID) {
			t.Fatalf("sweep removed live testbed namespace %s", r)
		}
	}
	// Fake a crashed owner: point the owner file at a PID that cannot exist.
	orphan := pod.NSPrefix + "t" + "dead00-n0"
	if err := nsutil.Create(orphan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsutil.Delete(orphan) })
	removed, err = Sweep(false)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range removed {
		found = found || r == orphan
	}
	if !found {
		t.Fatalf("sweep did not remove orphan %s (removed %v)", orphan, removed)
	}
	if _, err := nsutil.Open(orphan); err == nil {
		t.Fatalf("orphan %s still exists", orphan)
	}
}

// TestRootBlackhole checks that testbed traffic cannot leave through the root namespace: Build
// installs blackhole routes for the test ranges there, and sending to a node address from the root
// namespace fails instead of going out of the machine's uplink.
func TestRootBlackhole(t *testing.T) {
	tb := New(t, Topology{Nodes: 1})
	for _, p := range TestRanges {
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: ipnet(p)}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 1 || routes[0].Type != unix.RTN_BLACKHOLE {
			t.Fatalf("root namespace routes for %s: %+v, want one blackhole route", p, routes)
		}
	}
	for _, a := range []netip.Addr{tb.Nodes[0].IPv4, tb.Nodes[0].IPv6} {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
		if err == nil {
			_, err = c.Write([]byte("x"))
			c.Close()
		}
		if err == nil {
			t.Errorf("a root-namespace socket could send to testbed address %s", a)
		}
	}
}
