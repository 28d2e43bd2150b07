package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
)

// Test topology inside one stdr- namespace (see docs/architecture.md addresses):
//
//	up0 (node uplink, 198.18.20.2/24, 2001:2:0:20::2/64, MTU 1600) <-> rt0
//	    gateway 198.18.20.1 / 2001:2:0:20::1 = macRouter (static neighbours)
//	hv0 (pod host-side veth) <-> pv0
//	    198.19.0.1/32, 2001:2:0:ff::1/128 = macPod (static neighbours),
//	    198.19.0.0/16 and 2001:2:0:ff::/64 routed to hv0 (no neighbours)
var (
	macRouter = mac{2, 0, 0, 0, 0, 1}
	macUplink = mac{2, 0, 0, 0, 0, 2}
	macHost   = mac{2, 0, 0, 0, 0, 0x10}
	macPod    = mac{2, 0, 0, 0, 0, 0x99}

	node4   = netip.MustParseAddr("198.18.20.2")
	node6   = netip.MustParseAddr("2001:2:0:20::2")
	gw4     = netip.MustParseAddr("198.18.20.1")
	gw6     = netip.MustParseAddr("2001:2:0:20::1")
	client4 = netip.MustParseAddr("198.18.10.2")
	client6 = netip.MustParseAddr("2001:2:0:10::2")
	pod4    = netip.MustParseAddr("198.19.0.1")
	pod6    = netip.MustParseAddr("2001:2:0:ff::1")
	peer1   = netip.MustParseAddr("198.18.21.2")    // peer 1, IPv4
	peer2   = netip.MustParseAddr("2001:2:0:21::2") // peer 2, IPv6
)

const (
	tunnelPort = 6081
	svcPort    = 443
	fbPort     = 4443 // service with a fallback peer and no default
	podPort    = 4433
	mtu        = 1600

	instLocal   = 0x0101 // local pod
	instRemote4 = 0x0202 // on peer 1 (IPv4 outer)
	instRemote6 = 0x0303 // on peer 2 (IPv6 outer)
	instNoNeigh = 0x0404 // local, pod address without neighbour entry
)

// requireBPF skips when the process cannot load XDP programs.
func requireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) for XDP and network namespaces")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Skipf("skip: missing capability: remove memlock rlimit: %v", err)
	}
}

type env struct {
	ns         string
	dp         *Datapath
	upIx, hvIx int
}

var nsSeq int

// newEnv builds the topology and a Datapath with the test routing state.
func newEnv(t testing.TB) *env {
	requireBPF(t)
	nsSeq++
	e := &env{ns: fmt.Sprintf("stdr-dpt-%d-%d", os.Getpid(), nsSeq)}
	if err := nsutil.Create(e.ns); err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { nsutil.Delete(e.ns) })
	h, err := nsutil.Handle(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	must := func(err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		must(nsutil.Sysctl(e.ns, s, "1"), s)
	}
	mk := func(name, peer string, hw mac, m int) netlink.Link {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.HardwareAddr = name, m, net.HardwareAddr(hw[:])
		must(h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}), "add veth "+name)
		l, err := h.LinkByName(name)
		must(err, "link "+name)
		p, err := h.LinkByName(peer)
		must(err, "link "+peer)
		must(h.LinkSetUp(l), "up "+name)
		must(h.LinkSetUp(p), "up "+peer)
		return l
	}
	up := mk("up0", "rt0", macUplink, mtu)
	hv := mk("hv0", "pv0", macHost, 1500)
	e.upIx, e.hvIx = up.Attrs().Index, hv.Attrs().Index
	for _, a := range []string{"198.18.20.2/24", "2001:2:0:20::2/64"} {
		ad, _ := netlink.ParseAddr(a)
		ad.Flags = unix.IFA_F_NODAD
		must(h.AddrAdd(up, ad), "addr "+a)
	}
	for _, g := range []netip.Addr{gw4, gw6} {
		must(h.RouteAdd(&netlink.Route{LinkIndex: e.upIx, Gw: net.IP(g.AsSlice())}), "default route")
		must(h.NeighAdd(&netlink.Neigh{LinkIndex: e.upIx, IP: net.IP(g.AsSlice()), HardwareAddr: net.HardwareAddr(macRouter[:]), State: netlink.NUD_PERMANENT}), "gw neigh")
	}
	for _, p := range []string{"198.19.0.0/16", "2001:2:0:ff::/64"} {
		pf := netip.MustParsePrefix(p)
		must(h.RouteAdd(&netlink.Route{LinkIndex: e.hvIx, Dst: &net.IPNet{IP: pf.Addr().AsSlice(), Mask: net.CIDRMask(pf.Bits(), pf.Addr().BitLen())}}), "pod route")
	}
	for _, a := range []netip.Addr{pod4, pod6} {
		must(h.NeighAdd(&netlink.Neigh{LinkIndex: e.hvIx, IP: net.IP(a.AsSlice()), HardwareAddr: net.HardwareAddr(macPod[:]), State: netlink.NUD_PERMANENT}), "pod neigh")
	}

	dp, err := Open(Config{
		NodeAddrs:  []netip.Addr{node4, node6},
		CID:        connid.DefaultConfig(2, 5),
		TunnelPort: tunnelPort,
		UplinkMTU:  mtu,
	})
	must(err, "open datapath")
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	must(nsutil.Do(e.ns, func() error {
		if err := dp.AddPeer(1, Peer{Addr: peer1}); err != nil {
			return err
		}
		return dp.AddPeer(2, Peer{Addr: peer2})
	}), "add peers")
	pub := []netip.AddrPort{netip.AddrPortFrom(node4, svcPort), netip.AddrPortFrom(node6, svcPort)}
	must(dp.SetLocal(instLocal, LocalTarget{HostIfindex: e.hvIx, Pod4: pod4, Pod6: pod6, PodPort: podPort, Public: pub}), "set local")
	must(dp.SetLocal(instNoNeigh, LocalTarget{HostIfindex: e.hvIx, Pod4: netip.MustParseAddr("198.19.0.4"), PodPort: podPort}), "set local")
	must(dp.SetRemote(instRemote4, 1), "set remote")
	must(dp.SetRemote(instRemote6, 2), "set remote")
	// peer1's public address of the service too, as the daemon installs it for forwarded
	// Initials: decapsulated packets are delivered only to the cluster's service addresses.
	must(dp.AddService(Service{Public: netip.AddrPortFrom(peer1, svcPort), DefaultInstance: instLocal, HasDefault: true}), "add service")
	for _, a := range []netip.Addr{node4, node6} {
		must(dp.AddService(Service{Public: netip.AddrPortFrom(a, svcPort), DefaultInstance: instLocal, HasDefault: true}), "add service")
		must(dp.AddService(Service{Public: netip.AddrPortFrom(a, fbPort), FallbackPeer: 1, HasFallback: true}), "add service")
	}
	return e
}

// xdpMd mirrors struct xdp_md for BPF_PROG_TEST_RUN's context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run runs prog on pkt as if received on ifindex, inside the test netns.
func (e *env) run(t testing.TB, prog *ebpf.Program, ifindex int, pkt []byte) (uint32, []byte) {
	t.Helper()
	var (
		ret uint32
		out = make([]byte, len(pkt)+256)
	)
	err := nsutil.Do(e.ns, func() error {
		opts := ebpf.RunOptions{
			Data: pkt, DataOut: out,
			Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)},
		}
		var err error
		ret, err = prog.Run(&opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	return ret, out
}

func (e *env) counters(t testing.TB) map[Reason]uint64 {
	t.Helper()
	c, err := e.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func delta(before, after map[Reason]uint64) map[Reason]uint64 {
	d := map[Reason]uint64{}
	for r, v := range after {
		if v != before[r] {
			d[r] = v - before[r]
		}
	}
	return d
}
