package dpbench

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/steerd/steerd/datapath"
	"github.com/steerd/steerd/loader"
	"github.com/steerd/steerd/tests/netns"
)

// TunnelPort is the node-to-node UDP tunnel port of the XDP case.
const TunnelPort = 4790

// XDP is steerd's XDP datapath as the forwarder (HOOK: the datapath package's public API, as
// its own netns test uses it): node A runs xdp_steer with the instance set remote (peer node B),
// so it encapsulates every packet and sends it back out (XDP_TX); node B's xdp_steer decapsulates,
// DNATs to the pod and redirects into the pod veth. The router's links toward the nodes get
// xdp_pass, because XDP_TX/XDP_REDIRECT into a veth needs an XDP program on its peer.
type XDP struct{}

// Name implements Forwarder.
func (XDP) Name() string { return "xdp" }

// Ready implements Forwarder.
func (XDP) Ready() error { return nil }

// Start implements Forwarder.
func (XDP) Start(s *Setup) (_ func(), err error) {
	a, b := s.TB.Nodes[0], s.TB.Nodes[1]
	p := b.Pods[0]
	var closers []func()
	stop := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	open := func(n *netns.Node) (*datapath.Datapath, error) {
		var dp *datapath.Datapath
		err := n.Do(func() (err error) {
			dp, err = datapath.Open(datapath.Config{Uplink: n.Link, NodeAddrs: []netip.Addr{n.IPv4, n.IPv6}, CID: s.CID, TunnelPort: TunnelPort})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("open datapath on %s: %w", n.Name, err)
		}
		closers = append(closers, func() { dp.Close() })
		err = s.TB.Router.Do(func() error {
			rl, err := netlink.LinkByName(n.RouterLink)
			if err != nil {
				return err
			}
			l, _, err := loader.AttachXDP(dp.Objects().Pass, rl.Attrs().Index)
			if err != nil {
				return err
			}
			closers = append(closers, func() { _ = l.Close() })
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("attach xdp_pass on router link %s: %w", n.RouterLink, err)
		}
		return dp, nil
	}
	dpA, err := open(a)
	if err != nil {
		return nil, err
	}
	dpB, err := open(b)
	if err != nil {
		return nil, err
	}
	const peerA, peerB datapath.PeerID = 1, 2
	errs := []error{
		a.Do(func() error { return dpA.AddPeer(peerB, datapath.Peer{Addr: b.IPv4}) }),
		b.Do(func() error { return dpB.AddPeer(peerA, datapath.Peer{Addr: a.IPv4}) }),
		dpA.SetRemote(s.SinkInstance, peerB),
		dpA.AddService(datapath.Service{Public: s.Public, FallbackPeer: peerB, HasFallback: true}),
		dpB.AddService(datapath.Service{Public: netip.AddrPortFrom(b.IPv4, s.Public.Port()), DefaultInstance: s.SinkInstance, HasDefault: true}),
		// Node B delivers a decapsulated packet only when its inner destination is a service
		// address it knows (drop_decap_not_service): node A's public address, as the daemon
		// adds its peers' public addresses (daemon/wire.go).
		dpB.AddService(datapath.Service{Public: s.Public, DefaultInstance: s.SinkInstance, HasDefault: true}),
		dpB.SetLocal(s.SinkInstance, datapath.LocalTarget{HostIfindex: p.HostIndex, Pod4: p.IPv4, PodPort: s.Sink.Port(),
			Public: []netip.AddrPort{s.Public}}),
		b.Do(func() error { return dpB.AttachPod(p.HostIndex, p.Path(), p.PodIndex) }),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("program xdp datapath: %w", err)
	}
	return stop, nil
}
