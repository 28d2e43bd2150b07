package pod

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/steerd/steerd/internal/nsutil"
)

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("stdr-pod-a"), HostVethName("stdr-pod-b")
	if a == b {
		t.Fatalf("two pods share host veth name %s", a)
	}
	for _, n := range []string{a, b} {
		if len(n) > 15 || !strings.HasPrefix(n, LinkPrefix) {
			t.Fatalf("bad veth name %q: want <= 15 bytes starting with %q", n, LinkPrefix)
		}
	}
}

func TestSpecValidation(t *testing.T) {
	v4 := netip.MustParseAddr("198.19.9.1")
	for name, s := range map[string]Spec{
		"bad prefix":  {NetNS: "pod-a", IPv4: v4},
		"no address":  {NetNS: "stdr-x"},
		"v6 as v4":    {NetNS: "stdr-x", IPv4: netip.MustParseAddr("2001:2::1")},
		"v4 as v6":    {NetNS: "stdr-x", IPv6: netip.MustParseAddr("::ffff:198.19.0.1")},
		"MTU too low": {NetNS: "stdr-x", IPv4: v4, MTU: 576},
	} {
		if _, err := Create(s); !errors.Is(err, ErrBadSpec) {
			t.Errorf("%s: got %v, want ErrBadSpec", name, err)
		}
	}
}

// TestCreateDelete makes a pod inside a scratch node namespace, checks its links, addresses and
// routes on both sides, and checks that Delete leaves nothing behind.
func TestCreateDelete(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root is needed for network namespaces")
	}
	node := "stdr-podtest-node"
	if err := nsutil.Create(node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsutil.Delete(node) })
	spec := Spec{NetNS: "stdr-podtest-pod", NodeNS: node, IPv4: netip.MustParseAddr("198.19.200.1"), IPv6: netip.MustParseAddr("2001:2:0:ff::200:1")}
	p, err := Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(spec); err == nil {
		t.Fatal("second Create of the same pod succeeded")
	}
	h, err := nsutil.Handle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	host, err := h.LinkByName(p.HostVeth)
	if err != nil || host.Attrs().Index != p.HostIndex {
		t.Fatalf("host veth %s: %v (index %d, want %d)", p.HostVeth, err, host.Attrs().Index, p.HostIndex)
	}
	routes, err := h.RouteGet(spec.IPv4.AsSlice())
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != p.HostIndex {
		t.Fatalf("node route to %s: %v %+v, want via %s", spec.IPv4, err, routes, p.HostVeth)
	}
	ph, err := nsutil.Handle(p.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName(PodLink)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ph.AddrList(eth0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var has4, has6 bool
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		has4 = has4 || ip.Unmap() == spec.IPv4
		has6 = has6 || ip == spec.IPv6
	}
	if !has4 || !has6 {
		t.Fatalf("pod eth0 addresses %v lack %s or %s", addrs, spec.IPv4, spec.IPv6)
	}
	// Permanent neighbor entries on both ends: a restored service's first packet must not wait
	// for ARP / neighbor discovery (seedNeighbors).
	checkNeigh := func(where string, h *netlink.Handle, link, family int, ip netip.Addr, mac net.HardwareAddr) {
		t.Helper()
		ns, err := h.NeighList(link, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if got, _ := netip.AddrFromSlice(n.IP); got.Unmap() == ip {
				if n.State&netlink.NUD_PERMANENT == 0 || n.HardwareAddr.String() != mac.String() {
					t.Errorf("%s neighbor %s: state %#x mac %s, want permanent %s", where, ip, n.State, n.HardwareAddr, mac)
				}
				return
			}
		}
		t.Errorf("%s has no neighbor entry for %s (entries %v)", where, ip, ns)
	}
	checkNeigh("pod", ph, eth0.Attrs().Index, netlink.FAMILY_V4, Gateway4, p.HostMAC)
	checkNeigh("pod", ph, eth0.Attrs().Index, netlink.FAMILY_V6, Gateway6, p.HostMAC)
	checkNeigh("node", h, p.HostIndex, netlink.FAMILY_V4, spec.IPv4, p.PodMAC)
	checkNeigh("node", h, p.HostIndex, netlink.FAMILY_V6, spec.IPv6, p.PodMAC)
	if err := p.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := nsutil.Open(p.NetNS); !errors.Is(err, nsutil.ErrNotFound) {
		t.Fatalf("pod namespace still there: %v", err)
	}
	if _, err := h.LinkByName(p.HostVeth); err == nil {
		t.Fatalf("host veth %s still there", p.HostVeth)
	}
}
