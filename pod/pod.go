// Package pod creates and removes the pod network namespace of a service container on a node.
//
// A pod is a network namespace with one veth pair to its node. Its addresses are *stable*: the same
// IPv4 /32 and IPv6 /128 on every node, so a container checkpointed on one node restores its
// sockets (bound to the pod address) unchanged on another (see docs/architecture.md). Layout:
//
//	node netns:  <HostVeth> (198.19.255.254/32, fe80::1/64)  route <pod IPv4>/32 and <pod IPv6>/128 dev <HostVeth>
//	pod netns:   lo, eth0 (<pod IPv4>/32, <pod IPv6>/128)      default via 198.19.255.254 / fe80::1 dev eth0
//
// The host-side veth is named HostVethName(pod netns name), "stdrp" plus 8 hex digits, so a sweep
// can find it. The node netns gets IPv4 and IPv6 forwarding enabled.
package pod

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/nsutil"
)

// NSPrefix starts the name of every network namespace this project creates.
const NSPrefix = "stdr-"

// LinkPrefix starts the name of every link this project creates in a node namespace.
const LinkPrefix = "stdr"

// PodLink is the name of the pod's interface inside its namespace.
const PodLink = "eth0"

// Gateway addresses of the host side of every pod veth (the pod's default routes).
var (
	Gateway4 = netip.MustParseAddr("198.19.255.254")
	Gateway6 = netip.MustParseAddr("fe80::1")
)

// DefaultMTU is the pod veth MTU when Spec.MTU is 0 (bytes, IP packet size).
const DefaultMTU = 1500

// ErrBadSpec is returned for an invalid Spec.
var ErrBadSpec = errors.New("invalid pod spec")

// Spec describes a pod network namespace.
type Spec struct {
	// NetNS is the pod namespace name; it must start with NSPrefix.
	NetNS string
	// NodeNS is the node's namespace name ("" = the caller's, the root namespace on a real node).
	NodeNS string
	// IPv4 and IPv6 are the stable pod addresses; at least one must be valid.
	IPv4, IPv6 netip.Addr
	// MTU of the veth pair in bytes; 0 means DefaultMTU.
	MTU int
}

// Pod is a created pod namespace.
type Pod struct {
	Spec
	// HostVeth is the host-side veth name in NodeNS, HostIndex its ifindex, HostMAC its address.
	HostVeth  string
	HostIndex int
	HostMAC   net.HardwareAddr
	// PodIndex and PodMAC describe eth0 inside the pod namespace.
	PodIndex int
	PodMAC   net.HardwareAddr
}

// Path returns the bind-mount path of the pod namespace (for a runc config's network namespace).
func (p *Pod) Path() string { return nsutil.Path(p.NetNS) }

// HostVethName returns the host-side veth name for a pod namespace: "stdrp" + 8 hex digits of an
// FNV-1a hash of the name (15 bytes at most, the kernel's IFNAMSIZ-1).
func HostVethName(netnsName string) string {
	h := fnv.New32a()
	h.Write([]byte(netnsName))
	return fmt.Sprintf("%sp%08x", LinkPrefix, h.Sum32())
}

func (s *Spec) validate() error {
	if !strings.HasPrefix(s.NetNS, NSPrefix) {
		return fmt.Errorf("%w: namespace %q must start with %q", ErrBadSpec, s.NetNS, NSPrefix)
	}
	if !s.IPv4.IsValid() && !s.IPv6.IsValid() {
		return fmt.Errorf("%w: pod %s has no address", ErrBadSpec, s.NetNS)
	}
	if s.IPv4.IsValid() && !s.IPv4.Is4() {
		return fmt.Errorf("%w: IPv4 %s is not an IPv4 address", ErrBadSpec, s.IPv4)
	}
	if s.IPv6.IsValid() && (!s.IPv6.Is6() || s.IPv6.Is4In6()) {
		return fmt.Errorf("%w: IPv6 %s is not an IPv6 address", ErrBadSpec, s.IPv6)
	}
	if s.MTU == 0 {
		s.MTU = DefaultMTU
	}
	if s.MTU < 1280 || s.MTU > 65535 {
		return fmt.Errorf("%w: MTU %d out of range 1280..65535", ErrBadSpec, s.MTU)
	}
	return nil
}

// Create makes the pod namespace, its veth pair, addresses and routes. On any error it removes
// what it made and returns an error naming the step.
func Create(spec Spec) (_ *Pod, err error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	p := &Pod{Spec: spec, HostVeth: HostVethName(spec.NetNS)}
	if err := nsutil.Create(spec.NetNS); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
	}
	defer func() {
		if err != nil {
			_ = p.Delete()
		}
	}()
	node, err := nsutil.Handle(spec.NodeNS)
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
	}
	defer node.Close()
	podNS, err := nsutil.Open(spec.NetNS)
	if err != nil {
		return nil, err
	}
	defer podNS.Close()
	podH, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", spec.NetNS, err)
	}
	defer podH.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, MTU: spec.MTU},
		PeerName:      PodLink,
		PeerNamespace: netlink.NsFd(int(podNS)),
	}
	if err := node.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create pod %s: add veth %s: %w", spec.NetNS, p.HostVeth, err)
	}
	host, err := node.LinkByName(p.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("create pod %s: find %s: %w", spec.NetNS, p.HostVeth, err)
	}
	peer, err := podH.LinkByName(PodLink)
	if err != nil {
		return nil, fmt.Errorf("create pod %s: find %s: %w", spec.NetNS, PodLink, err)
	}
	if err := podH.LinkSetMTU(peer, spec.MTU); err != nil {
		return nil, fmt.Errorf("create pod %s: set MTU: %w", spec.NetNS, err)
	}
	p.HostIndex, p.HostMAC = host.Attrs().Index, host.Attrs().HardwareAddr
	p.PodIndex, p.PodMAC = peer.Attrs().Index, peer.Attrs().HardwareAddr

	// Host side.
	if err := addAddr(node, host, netip.PrefixFrom(Gateway4, 32), 0); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
	}
	if err := addAddr(node, host, netip.PrefixFrom(Gateway6, 64), unix.IFA_F_NODAD); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
	}
	if err := node.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("create pod %s: set %s up: %w", spec.NetNS, p.HostVeth, err)
	}
	// Pod side.
	lo, err := podH.LinkByName("lo")
	if err == nil {
		err = podH.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("create pod %s: set lo up: %w", spec.NetNS, err)
	}
	if err := podH.LinkSetUp(peer); err != nil {
		return nil, fmt.Errorf("create pod %s: set eth0 up: %w", spec.NetNS, err)
	}
	if spec.IPv4.IsValid() {
		if err := addAddr(podH, peer, netip.PrefixFrom(spec.IPv4, 32), 0); err != nil {
			return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
		}
		if err := addRoute(podH, &netlink.Route{LinkIndex: p.PodIndex, Dst: prefixNet(netip.PrefixFrom(Gateway4, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("create pod %s: gateway route: %w", spec.NetNS, err)
		}
		if err := addRoute(podH, &netlink.Route{LinkIndex: p.PodIndex, Gw: Gateway4.AsSlice(), Src: spec.IPv4.AsSlice()}); err != nil {
			return nil, fmt.Errorf("create pod %s: default route: %w", spec.NetNS, err)
		}
		if err := addRoute(node, &netlink.Route{LinkIndex: p.HostIndex, Dst: prefixNet(netip.PrefixFrom(spec.IPv4, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("create pod %s: node route: %w", spec.NetNS, err)
		}
	}
	if spec.IPv6.IsValid() {
		if err := addAddr(podH, peer, netip.PrefixFrom(spec.IPv6, 128), unix.IFA_F_NODAD); err != nil {
			return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
		}
		if err := addRoute(podH, &netlink.Route{LinkIndex: p.PodIndex, Gw: Gateway6.AsSlice(), Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
			return nil, fmt.Errorf("create pod %s: default IPv6 route: %w", spec.NetNS, err)
		}
		if err := addRoute(node, &netlink.Route{LinkIndex: p.HostIndex, Dst: prefixNet(netip.PrefixFrom(spec.IPv6, 128))}); err != nil {
			return nil, fmt.Errorf("create pod %s: node IPv6 route: %w", spec.NetNS, err)
		}
	}
	if err := seedNeighbors(p, spec, podH, node); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
	}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := nsutil.Sysctl(spec.NodeNS, kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("create pod %s: %w", spec.NetNS, err)
		}
	}
	return p, nil
}

// seedNeighbors installs permanent neighbor entries on both ends of the veth: in the pod, the
// gateways (Gateway4, Gateway6) -> HostMAC; in the node, the pod addresses -> PodMAC. Without
// them the first packet a restored service sends waits for ARP / neighbor discovery, and a
// fenced pod's ARP request is dropped, so the kernel retries only after retrans_time_ms (1 s):
// a Synchronized Symmetric client, which holds its sends during the migration, then waited
// freeze + 1 s for SERVER_MIGRATED (measured, docs/quicext-wire.md).
func seedNeighbors(p *Pod, spec Spec, podH, node *netlink.Handle) error {
	type nb struct {
		h      *netlink.Handle
		link   int
		family int
		ip     netip.Addr
		mac    net.HardwareAddr
		where  string
	}
	var nbs []nb
	if spec.IPv4.IsValid() {
		nbs = append(nbs, nb{podH, p.PodIndex, netlink.FAMILY_V4, Gateway4, p.HostMAC, "pod gateway"},
			nb{node, p.HostIndex, netlink.FAMILY_V4, spec.IPv4, p.PodMAC, "node"})
	}
	if spec.IPv6.IsValid() {
		nbs = append(nbs, nb{podH, p.PodIndex, netlink.FAMILY_V6, Gateway6, p.HostMAC, "pod gateway"},
			nb{node, p.HostIndex, netlink.FAMILY_V6, spec.IPv6, p.PodMAC, "node"})
	}
	for _, n := range nbs {
		if err := n.h.NeighSet(&netlink.Neigh{LinkIndex: n.link, Family: n.family, State: netlink.NUD_PERMANENT, IP: n.ip.AsSlice(), HardwareAddr: n.mac}); err != nil {
			return fmt.Errorf("%s neighbor %s -> %s: %w", n.where, n.ip, n.mac, err)
		}
	}
	return nil
}

// Delete removes the pod namespace; its veth pair goes with it. Deleting twice is not an error.
func (p *Pod) Delete() error {
	var errs []error
	if h, err := nsutil.Handle(p.NodeNS); err == nil {
		if l, err := h.LinkByName(p.HostVeth); err == nil {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", p.HostVeth, err))
			}
		}
		h.Close()
	}
	if err := nsutil.Delete(p.NetNS); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix, flags int) error {
	a := &netlink.Addr{IPNet: prefixNet(p), Flags: flags}
	if err := h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

func addRoute(h *netlink.Handle, r *netlink.Route) error {
	if err := h.RouteReplace(r); err != nil {
		return err
	}
	return nil
}
