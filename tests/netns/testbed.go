// Package netns builds declarative multi-node test networks out of Linux network namespaces:
// clients, one router and N edge nodes, with the pod namespaces of each node's containers, joined
// by veth pairs with IPv4 and IPv6 on every link (addresses from the benchmarking ranges
// 198.18.0.0/15 and 2001:2::/48, see docs/architecture.md).
//
//	client i  eth0 198.18.(10+i).2/24, 2001:2:0:(10+i)::2/64  <->  router ci 198.18.(10+i).1, ::1
//	node i    eth0 198.18.(20+i).2/24, 2001:2:0:(20+i)::2/64  <->  router ni 198.18.(20+i).1, ::1
//	pod j of node i: 198.19.i.(j+1)/32, 2001:2:0:ff::i:(j+1)/128 (package pod), routed by the router to node i
//
// Every namespace is named "stdr-t<id>-<role>", where id is unique per testbed; the owner's PID is
// recorded under OwnerDir so that Sweep can remove what a crashed run left behind without touching
// a testbed that is still in use.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/ethtool"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
	"github.com/steerd/steerd/pod"
)

// OwnerDir holds one file per live testbed, "<id>.pid", with the PID of the process that owns it.
const OwnerDir = "/run/steerd/testbed"

// Topology declares a testbed.
type Topology struct {
	// Clients, Nodes and PodsPerNode count the hosts. Nodes and Clients may be 0.
	Clients, Nodes, PodsPerNode int
	// NodeMTU is the MTU (bytes) of every node<->router link; 0 means 1600, so that a full-size
	// 1500-byte client packet still fits after the datapath's 48-byte IPv6 encapsulation.
	NodeMTU int
	// ClientMTU is the MTU of every client<->router link; 0 means 1500.
	ClientMTU int
	// NoPodRoutes leaves out the router's routes to pod addresses (pods then are reachable only
	// through the nodes' public addresses, as in a real deployment).
	NoPodRoutes bool
	// RouterXDPPass attaches the pass-through XDP program (loader.LoadPass) to the router's
	// node-facing veths: a node's XDP_TX or XDP_REDIRECT out of its veth uplink is dropped unless
	// the peer veth runs an XDP program (a physical NIC needs nothing of the kind).
	RouterXDPPass bool
}

// Host is one namespace of the testbed with one uplink.
type Host struct {
	// Name is the role ("router", "c0", "n1").
	Name string
	// NS is the network namespace name (under /var/run/netns).
	NS string
	// Link is the uplink interface inside NS ("eth0"; the router has one link per peer).
	Link string
	// IPv4 and IPv6 are the host's addresses on Link; Gateway4/Gateway6 the router's side.
	IPv4, IPv6         netip.Addr
	Gateway4, Gateway6 netip.Addr
}

// Do runs fn inside the host's namespace on a locked OS thread.
func (h *Host) Do(fn func() error) error { return nsutil.Do(h.NS, fn) }

// Command returns a command that runs inside the host's namespace (through `ip netns exec`).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// LinkIndex returns the ifindex of the host's uplink inside its namespace.
func (h *Host) LinkIndex() (int, error) {
	hd, err := nsutil.Handle(h.NS)
	if err != nil {
		return 0, err
	}
	defer hd.Close()
	l, err := hd.LinkByName(h.Link)
	if err != nil {
		return 0, fmt.Errorf("find %s in %s: %w", h.Link, h.NS, err)
	}
	return l.Attrs().Index, nil
}

// Node is an edge node: a host with pods.
type Node struct {
	*Host
	// Pods are the node's pod namespaces (package pod), created by the testbed.
	Pods []*pod.Pod
	// RouterLink is the router's interface toward this node.
	RouterLink string
}

// Testbed is a built topology.
type Testbed struct {
	ID      string
	Router  *Host
	Clients []*Host
	Nodes   []*Node
	// BuildTime is how long Build took.
	BuildTime time.Duration

	namespaces []string
	pods       []*pod.Pod
	closers    []io.Closer
}

// New builds topo for a test and removes it when the test ends. Without root it skips the test.
func New(tb testing.TB, topo Topology) *Testbed {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skip: missing capability: root (CAP_SYS_ADMIN, CAP_NET_ADMIN) is needed for network namespaces")
	}
	t, err := Build(topo)
	if err != nil {
		tb.Fatalf("build testbed: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("tear down testbed %s: %v", t.ID, err)
		}
	})
	return t
}

// Build creates topo. On error it removes what it created.
func Build(topo Topology) (_ *Testbed, err error) {
	start := time.Now()
	if topo.NodeMTU == 0 {
		topo.NodeMTU = 1600
	}
	if topo.ClientMTU == 0 {
		topo.ClientMTU = 1500
	}
	if topo.Clients < 0 || topo.Nodes < 0 || topo.PodsPerNode < 0 || topo.Clients > 200 || topo.Nodes > 200 || topo.PodsPerNode > 250 {
		return nil, fmt.Errorf("build testbed: topology out of range: %+v", topo)
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	t := &Testbed{ID: hex.EncodeToString(b)}
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return nil, fmt.Errorf("build testbed: %w", err)
	}
	if err := os.WriteFile(filepath.Join(OwnerDir, t.ID+".pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("build testbed: %w", err)
	}
	defer func() {
		if err != nil {
			_ = t.Close()
		}
	}()
	if err := blackholeTestRanges(); err != nil {
		return nil, fmt.Errorf("build testbed: %w", err)
	}
	nsName := func(role string) string { return fmt.Sprintf("%st%s-%s", pod.NSPrefix, t.ID, role) }
	mk := func(role string) (string, error) {
		n := nsName(role)
		if err := nsutil.Create(n); err != nil {
			return "", fmt.Errorf("build testbed: %w", err)
		}
		t.namespaces = append(t.namespaces, n)
		return n, nsutil.Do(n, func() error { return setupNS() })
	}

	rns, err := mk("router")
	if err != nil {
		return nil, err
	}
	t.Router = &Host{Name: "router", NS: rns}
	if err := nsutil.Sysctl(rns, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	if err := nsutil.Sysctl(rns, "net.ipv6.conf.all.forwarding", "1"); err != nil {
		return nil, err
	}
	router, err := nsutil.Handle(rns)
	if err != nil {
		return nil, err
	}
	defer router.Close()

	link := func(role, rlink string, subnet, mtu int) (*Host, error) {
		ns, err := mk(role)
		if err != nil {
			return nil, err
		}
		h := &Host{
			Name: role, NS: ns, Link: "eth0",
			IPv4:     netip.AddrFrom4([4]byte{198, 18, byte(subnet), 2}),
			Gateway4: netip.AddrFrom4([4]byte{198, 18, byte(subnet), 1}),
			IPv6:     netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::2", subnet)),
			Gateway6: netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::1", subnet)),
		}
		hd, err := nsutil.Handle(ns)
		if err != nil {
			return nil, err
		}
		defer hd.Close()
		fd, err := nsutil.Open(ns)
		if err != nil {
			return nil, err
		}
		defer fd.Close()
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: rlink, MTU: mtu}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd))}
		if err := router.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("build testbed: veth %s<->%s: %w", rlink, role, err)
		}
		rl, err := router.LinkByName(rlink)
		if err != nil {
			return nil, err
		}
		hl, err := hd.LinkByName("eth0")
		if err != nil {
			return nil, err
		}
		if err := hd.LinkSetMTU(hl, mtu); err != nil {
			return nil, err
		}
		for _, a := range []struct {
			h    *netlink.Handle
			l    netlink.Link
			addr netip.Prefix
		}{
			{router, rl, netip.PrefixFrom(h.Gateway4, 24)}, {router, rl, netip.PrefixFrom(h.Gateway6, 64)},
			{hd, hl, netip.PrefixFrom(h.IPv4, 24)}, {hd, hl, netip.PrefixFrom(h.IPv6, 64)},
		} {
			if err := a.h.AddrAdd(a.l, &netlink.Addr{IPNet: ipnet(a.addr), Flags: unix.IFA_F_NODAD}); err != nil {
				return nil, fmt.Errorf("build testbed: address %s: %w", a.addr, err)
			}
		}
		// TX checksum offload off on both ends, as on a real NIC: XDP programs on the far end must
		// see full UDP checksums, not CHECKSUM_PARTIAL pseudo-header sums (internal/ethtool).
		if err := nsutil.Do(rns, func() error { return ethtool.SetTxChecksum(rlink, false) }); err != nil {
			return nil, fmt.Errorf("build testbed: %w", err)
		}
		if err := nsutil.Do(ns, func() error { return ethtool.SetTxChecksum("eth0", false) }); err != nil {
			return nil, fmt.Errorf("build testbed: %w", err)
		}
		if err := router.LinkSetUp(rl); err != nil {
			return nil, err
		}
		if err := hd.LinkSetUp(hl); err != nil {
			return nil, err
		}
		for _, gw := range []netip.Addr{h.Gateway4, h.Gateway6} {
			if err := hd.RouteReplace(&netlink.Route{LinkIndex: hl.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
				return nil, fmt.Errorf("build testbed: default route via %s in %s: %w", gw, role, err)
			}
		}
		return h, nil
	}

	for i := 0; i < topo.Clients; i++ {
		h, err := link(fmt.Sprintf("c%d", i), fmt.Sprintf("c%d", i), 10+i, topo.ClientMTU)
		if err != nil {
			return nil, err
		}
		t.Clients = append(t.Clients, h)
	}
	for i := 0; i < topo.Nodes; i++ {
		rlink := fmt.Sprintf("n%d", i)
		h, err := link(fmt.Sprintf("n%d", i), rlink, 20+i, topo.NodeMTU)
		if err != nil {
			return nil, err
		}
		n := &Node{Host: h, RouterLink: rlink}
		t.Nodes = append(t.Nodes, n)
		if topo.RouterXDPPass {
			if err := t.attachPass(rns, rlink); err != nil {
				return nil, err
			}
		}
		for j := 0; j < topo.PodsPerNode; j++ {
			p, err := pod.Create(pod.Spec{
				NetNS:  nsName(fmt.Sprintf("n%d-p%d", i, j)),
				NodeNS: h.NS,
				IPv4:   netip.AddrFrom4([4]byte{198, 19, byte(i), byte(j + 1)}),
				IPv6:   netip.MustParseAddr(fmt.Sprintf("2001:2:0:ff::%d:%d", i, j+1)),
			})
			if err != nil {
				return nil, fmt.Errorf("build testbed: %w", err)
			}
			t.pods = append(t.pods, p)
			n.Pods = append(n.Pods, p)
		}
		if topo.PodsPerNode > 0 && !topo.NoPodRoutes {
			rl, err := router.LinkByName(rlink)
			if err != nil {
				return nil, err
			}
			for _, r := range []struct{ dst, gw string }{
				{fmt.Sprintf("198.19.%d.0/24", i), h.IPv4.String()},
				{fmt.Sprintf("2001:2:0:ff::%d:0/112", i), h.IPv6.String()},
			} {
				dst := netip.MustParsePrefix(r.dst)
				if err := router.RouteReplace(&netlink.Route{LinkIndex: rl.Attrs().Index, Dst: ipnet(dst), Gw: net.ParseIP(r.gw)}); err != nil {
					return nil, fmt.Errorf("build testbed: router route %s: %w", r.dst, err)
				}
			}
		}
	}
	t.BuildTime = time.Since(start)
	return t, nil
}

// attachPass attaches xdp_pass to link inside namespace ns.
func (t *Testbed) attachPass(ns, link string) error {
	prog, err := loader.LoadPass()
	if err != nil {
		return fmt.Errorf("build testbed: %w", err)
	}
	t.closers = append(t.closers, prog)
	hd, err := nsutil.Handle(ns)
	if err != nil {
		return err
	}
	defer hd.Close()
	l, err := hd.LinkByName(link)
	if err != nil {
		return fmt.Errorf("build testbed: find %s: %w", link, err)
	}
	xl, _, err := loader.AttachXDPAt(prog, nsutil.Path(ns), l.Attrs().Index)
	if err != nil {
		return fmt.Errorf("build testbed: attach xdp_pass to %s in %s: %w", link, ns, err)
	}
	t.closers = append(t.closers, xl)
	return nil
}

// TestRanges are the address ranges of every testbed (RFC 2544 / RFC 5180 benchmarking ranges).
var TestRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}

// blackholeTestRanges installs blackhole routes for TestRanges in the caller's (root) namespace, so
// that a socket opened there by mistake can never send testbed traffic out of the machine's real
// uplink. The routes stay after the testbed ends; they cover only the benchmarking ranges.
func blackholeTestRanges() error {
	for _, p := range TestRanges {
		r := &netlink.Route{Dst: ipnet(p), Type: unix.RTN_BLACKHOLE}
		if p.Addr().Is6() {
			r.Family = netlink.FAMILY_V6
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("blackhole route %s in the root namespace: %w", p, err)
		}
	}
	return nil
}

// setupNS brings up lo in the current namespace and turns off IPv6 DAD for new addresses.
func setupNS() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for _, k := range []string{"/proc/sys/net/ipv6/conf/all/accept_dad", "/proc/sys/net/ipv6/conf/default/accept_dad"} {
		_ = os.WriteFile(k, []byte("0"), 0o644)
	}
	return nil
}

// Close removes every namespace of the testbed (their links go with them) and its owner file.
func (t *Testbed) Close() error {
	var errs []error
	for i := len(t.closers) - 1; i >= 0; i-- {
		t.closers[i].Close()
	}
	t.closers = nil
	for i := len(t.pods) - 1; i >= 0; i-- {
		if err := t.pods[i].Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(t.namespaces) - 1; i >= 0; i-- {
		if err := nsutil.Delete(t.namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(OwnerDir, t.ID+".pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Namespaces returns the names of the testbed's namespaces, pods included.
func (t *Testbed) Namespaces() []string {
	out := append([]string(nil), t.namespaces...)
	for _, p := range t.pods {
		out = append(out, p.NetNS)
	}
	return out
}

// Do runs fn inside the namespace ns on a locked OS thread.
func Do(ns string, fn func() error) error { return nsutil.Do(ns, fn) }

// Sweep removes testbed namespaces ("stdr-t<id>-...") whose owner process is gone, and returns
// their names. With all set it removes every namespace starting with "stdr-" and every link in
// the caller's namespace starting with "stdr", whoever made them (`make clean`).
func Sweep(all bool) ([]string, error) {
	names, err := nsutil.List(pod.NSPrefix)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		if !all {
			id, ok := testbedID(n)
			if !ok || ownerAlive(id) {
				continue
			}
		}
		if err := nsutil.Delete(n); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n)
	}
	if ents, err := os.ReadDir(OwnerDir); err == nil {
		for _, e := range ents {
			id := strings.TrimSuffix(e.Name(), ".pid")
			if all || !ownerAlive(id) {
				_ = os.Remove(filepath.Join(OwnerDir, e.Name()))
			}
		}
	}
	if all {
		links, err := netlink.LinkList()
		if err != nil {
			errs = append(errs, err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, pod.LinkPrefix) {
				if err := netlink.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
				} else {
					removed = append(removed, "link:"+l.Attrs().Name)
				}
			}
		}
	}
	return removed, errors.Join(errs...)
}

func testbedID(ns string) (string, bool) {
	rest, ok := strings.CutPrefix(ns, pod.NSPrefix+"t")
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "-")
	return id, ok
}

func ownerAlive(id string) bool {
	b, err := os.ReadFile(filepath.Join(OwnerDir, id+".pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
