package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/datapath"
	"github.com/steerd/steerd/loader"
)

// XDP adapts package datapath to the daemon's Datapath interface: peers are named (datapath
// PeerID = 1 + index in Config.Peers), and each service's public addresses (the node's IPv4/IPv6
// with the service port) are kept in the datapath's services map: default instance while the
// service runs here, fallback to the peer it moved to otherwise.
type XDP struct {
	DP  *datapath.Datapath
	cfg *Config

	mu    sync.Mutex
	peers map[string]datapath.PeerID
}

// OpenXDP removes a table an earlier steerd's nftables datapath left (RemoveNFTTable), loads and
// attaches the XDP datapath on cfg.Uplink and adds the configured peers.
func OpenXDP(cfg *Config) (*XDP, error) {
	var addrs []netip.Addr
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	var pinDir string
	if cfg.PinRoot != "none" {
		root := cfg.PinRoot
		if root == "" {
			root = loader.DefaultPinRoot
		}
		if err := loader.EnsureBPFFS(root); err != nil {
			return nil, fmt.Errorf("open datapath: pin root %s: %w", root, err)
		}
		var err error
		if pinDir, err = loader.PinDirFor(root); err != nil {
			return nil, fmt.Errorf("open datapath: %w", err)
		}
	}
	// A steerd that ran here with --datapath nftables (killed, or without detach_on_exit) left its
	// table: its DNAT/drop rules would act on the packets XDP passes to the stack. One datapath.
	if _, err := RemoveNFTTable(); err != nil {
		return nil, fmt.Errorf("open datapath: take over from the nftables datapath: %w", err)
	}
	dp, err := datapath.Open(datapath.Config{
		Uplink: cfg.Uplink, NodeAddrs: addrs, TunnelPort: cfg.TunnelPort,
		CID: connid.DefaultConfig(cfg.ServerIDLen, cfg.NonceLen), MaxUDPPayload: cfg.MaxUDPPayload,
		PinDir: pinDir,
	})
	if err != nil {
		return nil, fmt.Errorf("open datapath on %s: %w", cfg.Uplink, err)
	}
	x := &XDP{DP: dp, cfg: cfg, peers: map[string]datapath.PeerID{}}
	for i, p := range cfg.Peers {
		id := datapath.PeerID(i + 1)
		if err := dp.AddPeer(id, datapath.Peer{Addr: p.Address}); err != nil {
			dp.Close()
			if errors.Is(err, datapath.ErrMTU) {
				return nil, mtuError(cfg, p, dp.UplinkMTU())
			}
			return nil, fmt.Errorf("add peer %s (%s): %w", p.Name, p.Address, err)
		}
		x.peers[p.Name] = id
	}
	return x, nil
}

// mtuError explains an uplink MTU too small for forwarding full-size service packets to peer p:
// the MTU the path needs, and the largest service UDP payload that fits the current MTU (QUIC
// needs at least 1200 bytes, RFC 9000 section 14). The error wraps datapath.ErrMTU.
func mtuError(cfg *Config, p PeerDef, mtu int) error {
	payload := cfg.MaxUDPPayload
	if payload == 0 {
		payload = datapath.DefaultMaxUDPPayload
	}
	overhead, family := datapath.Encap4Overhead, "IPv4"
	if !p.Address.Unmap().Is4() {
		overhead, family = datapath.Encap6Overhead, "IPv6"
	}
	const inner = 40 + 8 // inner IPv6 + UDP header
	need := payload + inner + overhead
	fits := mtu - inner - overhead
	fix := fmt.Sprintf("or cap the services' QUIC packets at %d bytes of UDP payload (quic-go Config.InitialPacketSize = %d with DisablePathMTUDiscovery = true in the service) and set max_udp_payload %d (steerd --max-udp-payload %d)",
		fits, fits, fits, fits)
	if fits < 1200 {
		fix = fmt.Sprintf("(capping the services' packets is no option: %d bytes of UDP payload would fit, QUIC needs 1200)", fits)
	}
	return fmt.Errorf("add peer %s (%s): uplink %s has MTU %d, but forwarding a %d-byte service UDP payload to it needs %d (%d inner IPv6+UDP + %d %s encapsulation): raise the MTU of the path between the nodes (uplink and every hop to %s) to %d, %s: %w",
		p.Name, p.Address, cfg.Uplink, mtu, payload, need, inner, overhead, family, p.Name, need, fix, datapath.ErrMTU)
}

func (x *XDP) service(instance uint64) (ServiceDef, []netip.AddrPort, bool) {
	for _, s := range x.cfg.Services {
		if s.Instance == instance {
			var pub []netip.AddrPort
			for _, a := range []netip.Addr{x.cfg.IPv4, x.cfg.IPv6} {
				if a.IsValid() {
					pub = append(pub, netip.AddrPortFrom(a, s.Port))
				}
			}
			return s, pub, true
		}
	}
	return ServiceDef{}, nil, false
}

// SetLocal implements Datapath.
func (x *XDP) SetLocal(instance uint64, t LocalTarget) error {
	_, pub, ok := x.service(instance)
	if err := x.DP.SetLocal(connid.InstanceID(instance), datapath.LocalTarget{
		HostIfindex: t.HostIfindex, Pod4: t.Pod4, Pod6: t.Pod6, PodPort: t.PodPort, Public: pub,
	}); err != nil {
		return err
	}
	if !ok {
		return nil
	}
	// Initial packets of new connections that still reach a peer's address are forwarded here
	// through that peer's fallback; after decapsulation they are delivered to the default
	// instance of the service of their inner destination, so the peers' public addresses of the
	// service need an entry too (docs/datapath.md, last paragraph of "Go API").
	svc, _, _ := x.service(instance)
	for _, pd := range x.cfg.Peers {
		v4, v6 := pd.Public()
		for _, a := range []netip.Addr{v4, v6} {
			if a.IsValid() {
				pub = append(pub, netip.AddrPortFrom(a, svc.Port))
			}
		}
	}
	for _, p := range pub {
		if err := x.DP.AddService(datapath.Service{Public: p, DefaultInstance: connid.InstanceID(instance), HasDefault: true}); err != nil {
			return err
		}
	}
	return nil
}

// SetRemote implements Datapath.
func (x *XDP) SetRemote(instance uint64, peer string) error {
	x.mu.Lock()
	id, ok := x.peers[peer]
	x.mu.Unlock()
	if !ok {
		return fmt.Errorf("set remote: %w: %q", ErrUnknownPeer, peer)
	}
	if err := x.DP.SetRemote(connid.InstanceID(instance), id); err != nil {
		return err
	}
	if _, pub, ok := x.service(instance); ok {
		for _, p := range pub {
			if err := x.DP.AddService(datapath.Service{Public: p, FallbackPeer: id, HasFallback: true}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements Datapath; a missing entry is not an error.
func (x *XDP) Delete(instance uint64) error {
	if err := x.DP.Delete(connid.InstanceID(instance)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// InstanceStats implements Datapath; a missing entry has zero stats.
func (x *XDP) InstanceStats(instance uint64) (InstanceStats, error) {
	n, last, err := x.DP.InstanceStats(connid.InstanceID(instance))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return InstanceStats{}, nil
	}
	return InstanceStats{Packets: n, LastSeen: last}, err
}

// Counters implements Datapath.
func (x *XDP) Counters() (map[string]uint64, error) {
	cs, err := x.DP.Counters()
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(cs))
	for r, v := range cs {
		out[r.String()] = v
	}
	return out, nil
}

// AttachPod attaches the pod programs to a pod's veth pair (see datapath.AttachPod).
func (x *XDP) AttachPod(hostIfindex int, podNetNSPath string, podIfindex int) error {
	return x.DP.AttachPod(hostIfindex, podNetNSPath, podIfindex)
}

// DetachPod detaches them; it also removes the pod's fence.
func (x *XDP) DetachPod(hostIfindex int) error { return x.DP.DetachPod(hostIfindex) }

// SetFenced implements fencer (datapath.SetFenced, docs/datapath.md "Fencing").
func (x *XDP) SetFenced(hostIfindex int, fenced bool) error {
	return x.DP.SetFenced(hostIfindex, fenced)
}

// FencedPods implements fencer (datapath.FencedPods): host-side veth ifindexes, sorted.
func (x *XDP) FencedPods() ([]int, error) { return x.DP.FencedPods() }

// Close implements Datapath.
func (x *XDP) Close() error {
	if x.cfg.DetachOnExit {
		return x.DP.Detach()
	}
	return x.DP.Close()
}

// podAttacher is implemented by datapaths that need the pod veths (XDP).
type podAttacher interface {
	AttachPod(hostIfindex int, podNetNSPath string, podIfindex int) error
	DetachPod(hostIfindex int) error
}

// fencer is implemented by datapaths that can fence a pod (XDP, docs/datapath.md "Fencing"): a
// fenced pod's host-side veth drops every frame the pod sends and the uplink drops the packets
// for its instance. The fence is pinned: it outlives steerd, so a migration's restored copy cannot
// talk to clients until the source committed, even if the destination's steerd dies.
type fencer interface {
	// SetFenced fences (true) or unfences the pod with host-side veth hostIfindex.
	SetFenced(hostIfindex int, fenced bool) error
	// FencedPods lists the host-side veth ifindexes of the fenced pods.
	FencedPods() ([]int, error)
}
