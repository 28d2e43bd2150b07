package datapath

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/ethtool"
)

// retryDump retries a netlink dump interrupted by a concurrent change
// (netlink.ErrDumpInterrupted), as cilium's safenetlink does.
func retryDump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 30 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// nudValid is the kernel's NUD_VALID: states with a usable link-layer address.
const nudValid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
	netlink.NUD_PROBE | netlink.NUD_STALE | netlink.NUD_DELAY

// resolveNeighbour asks the kernel to resolve the next hop towards dst
// (NTF_USE on a new neighbour entry triggers ARP/ND like a transmit would);
// an entry in a valid state is left alone.
// Failures are logged: the datapath still works once traffic resolves it.
func resolveNeighbour(dst netip.Addr) {
	routes, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteGet(net.IP(dst.AsSlice())) })
	if err != nil || len(routes) == 0 {
		slog.Debug("datapath: no route to peer", "peer", dst, "err", err)
		return
	}
	r := routes[0]
	nh := dst
	if r.Gw != nil {
		if a, ok := netip.AddrFromSlice(r.Gw); ok {
			nh = a.Unmap()
		}
	}
	fam := netlink.FAMILY_V4
	if nh.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(r.LinkIndex, fam) })
	if err == nil {
		for _, n := range neighs {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == nh && n.State&nudValid != 0 {
				return // resolved (or static): never touch a valid entry
			}
		}
	}
	n := &netlink.Neigh{LinkIndex: r.LinkIndex, Family: fam, IP: net.IP(nh.AsSlice()), Flags: unix.NTF_USE, State: netlink.NUD_NONE}
	if err := netlink.NeighSet(n); err != nil {
		slog.Debug("datapath: neighbour resolution request failed", "nexthop", nh, "err", err)
	}
}

// SetTxChecksum turns TX checksum offload of interface name (in the calling
// thread's network namespace) on or off (ETHTOOL_STXCSUM); see
// internal/ethtool for why steerd turns it off on pod-side veths.
func SetTxChecksum(name string, on bool) error { return ethtool.SetTxChecksum(name, on) }
