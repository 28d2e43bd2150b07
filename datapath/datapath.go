// Package datapath is the Go side of steerd's XDP datapath: typed map
// wrappers and the API the daemon calls to route QUIC instances (see
// docs/datapath.md and docs/architecture.md "Path of a packet").
//
// A node runs xdp_steer on its uplink and xdp_pod on the host-side veth of
// every pod. Instances are named by the QUIC-LB server ID in the DCID
// (draft-ietf-quic-load-balancers-21 section 3, connid package).
package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/loader"
)

// Sentinel errors.
var (
	// ErrConfig reports an invalid Config or argument.
	ErrConfig = errors.New("invalid datapath config")
	// ErrMTU reports an uplink MTU too small for encapsulated service traffic.
	ErrMTU = errors.New("uplink MTU too small for encapsulation")
	// ErrUnknownPeer reports a peer ID that AddPeer never added.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrClosed reports a call on a Datapath after Close or Detach.
	ErrClosed = errors.New("datapath closed")
)

// Encapsulation overheads in bytes: outer IPv4 (20) or IPv6 (40) plus UDP (8).
const (
	Encap4Overhead = 28
	Encap6Overhead = 48
)

// DefaultMaxUDPPayload is the largest UDP payload assumed for services
// (bytes; quic-go's maximum packet size on a 1500-byte IPv4 path).
const DefaultMaxUDPPayload = 1452

// PeerID names a peer node in the peers map.
type PeerID uint32

// Config configures Open.
type Config struct {
	// Uplink is the node's uplink interface name. Empty loads the programs
	// without attaching them (tests, dry runs).
	Uplink string
	// NodeAddrs are this node's addresses on the uplink, at most one per
	// family: the outer source address of encapsulated packets.
	NodeAddrs []netip.Addr
	// CID is the deployment's CID layout. It must be plaintext (Key nil)
	// with LengthSelfEncoding on: the XDP program decodes only that.
	CID connid.Config
	// TunnelPort is the UDP port of the node-to-node tunnel; 0 disables
	// forwarding and decapsulation.
	TunnelPort uint16
	// PinDir, when set, is where the maps are pinned (reused when present),
	// usually loader.PinDirFor(loader.DefaultPinRoot). Its parent must be on
	// a bpf filesystem (loader.EnsureBPFFS).
	PinDir string
	// UplinkMTU in bytes; 0 reads it from Uplink (1500 without Uplink).
	UplinkMTU int
	// MaxUDPPayload is the largest UDP payload of service traffic in bytes;
	// 0 means DefaultMaxUDPPayload. CheckMTU uses it.
	MaxUDPPayload int
}

// Service is a public QUIC service address on this node.
type Service struct {
	// Public is the address and UDP port clients send to.
	Public netip.AddrPort
	// DefaultInstance receives Initial/0-RTT packets whose DCID names no
	// known instance, when HasDefault is set.
	DefaultInstance connid.InstanceID
	HasDefault      bool
	// FallbackPeer receives them (encapsulated) when HasFallback is set and
	// HasDefault is not: the service has no instance on this node.
	FallbackPeer PeerID
	HasFallback  bool
}

// LocalTarget is where a local instance's packets go.
type LocalTarget struct {
	// HostIfindex is the ifindex of the pod's host-side veth.
	HostIfindex int
	// Pod4 and Pod6 are the pod's addresses (either may be unset).
	Pod4, Pod6 netip.Addr
	// PodPort is the UDP port the service listens on inside the pod.
	PodPort uint16
	// Public are this node's public addresses of the service, at most one
	// per family: replies to clients with no clients-map entry are sent
	// from them (SNAT default).
	Public []netip.AddrPort
}

// Peer is another node reachable through the tunnel.
type Peer struct {
	// Addr is the peer's uplink address (outer destination).
	Addr netip.Addr
}

// Datapath is the loaded and attached XDP datapath of one node.
type Datapath struct {
	cfg  Config
	objs *loader.Objects
	maps Maps
	mtu  int

	mu       sync.Mutex
	uplink   link.Link
	uplinkIx int
	pods     map[int]*podLinks // host ifindex -> links
	closed   bool
}

// podLinks are the XDP links of one pod: xdp_pod on the host-side veth, xdp_pass on the
// pod-side veth (nil when not known, e.g. a defunct pin found by Open).
type podLinks struct {
	pod, pass link.Link
}

// Open loads the XDP objects (reusing pinned maps in cfg.PinDir) and, when
// cfg.Uplink is set, attaches xdp_steer to it (native mode, generic
// fallback with a warning).
//
// With cfg.PinDir the XDP links are pinned there too (loader.UplinkLinkPin,
// loader.PodLinkPin, loader.PassLinkPin), so the programs stay attached and
// steering when the process exits, cleanly or not. Open then takes over what
// a previous process left: the pinned uplink link is updated to the newly
// loaded xdp_steer (BPF_LINK_UPDATE, no gap), every pinned pod link whose
// veth still exists is updated to the new xdp_pod/xdp_pass and adopted (so
// DetachPod and Detach reach it), and pins whose device is gone (deleted pod
// veth or namespace) are removed together with that veth's egress and fenced
// entries.
func Open(cfg Config) (*Datapath, error) {
	if err := cfg.CID.Validate(); err != nil {
		return nil, fmt.Errorf("open datapath: %w: %w", ErrConfig, err)
	}
	if cfg.CID.Key != nil || !cfg.CID.LengthSelfEncoding {
		return nil, fmt.Errorf("open datapath: %w: XDP needs plaintext CIDs with length self-encoding", ErrConfig)
	}
	if cfg.MaxUDPPayload == 0 {
		cfg.MaxUDPPayload = DefaultMaxUDPPayload
	}
	opts := loader.Options{
		ServerIDLen:    cfg.CID.ServerIDLen,
		CIDLen:         cfg.CID.CIDLen(),
		ConfigRotation: cfg.CID.ConfigRotation,
		TunnelPort:     cfg.TunnelPort,
		PinDir:         cfg.PinDir,
	}
	for _, a := range cfg.NodeAddrs {
		a = a.Unmap()
		switch {
		case a.Is4() && !opts.Node4.IsValid():
			opts.Node4 = a
		case a.Is6() && !opts.Node6.IsValid():
			opts.Node6 = a
		default:
			return nil, fmt.Errorf("open datapath: %w: node address %s duplicates a family", ErrConfig, a)
		}
	}
	mtu := cfg.UplinkMTU
	ifindex := 0
	if cfg.Uplink != "" {
		l, err := netlink.LinkByName(cfg.Uplink)
		if err != nil {
			return nil, fmt.Errorf("open datapath: find uplink %s: %w", cfg.Uplink, err)
		}
		ifindex = l.Attrs().Index
		if mtu == 0 {
			mtu = l.Attrs().MTU
		}
	}
	if mtu == 0 {
		mtu = 1500
	}
	opts.UplinkMTU = mtu
	if cfg.PinDir != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.PinDir), 0o700); err != nil {
			return nil, fmt.Errorf("open datapath: %w", err)
		}
	}
	objs, err := loader.Load(opts)
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	d := &Datapath{cfg: cfg, objs: objs, mtu: mtu, pods: map[int]*podLinks{}}
	d.maps = Maps{
		Services:  NewMap[ServiceKey, ServiceValue](objs.Maps.Services, "services"),
		Instances: NewMap[uint64, InstanceValue](objs.Maps.Instances, "instances"),
		Clients:   NewMap[ClientKey, ClientValue](objs.Maps.Clients, "clients"),
		Peers:     NewMap[uint32, PeerValue](objs.Maps.Peers, "peers"),
		PeerAddrs: NewMap[AddrKey, uint32](objs.Maps.PeerAddrs, "peer_addrs"),
		Egress:    NewMap[EgressKey, EgressValue](objs.Maps.Egress, "egress"),
		Fenced:    NewMap[uint32, uint32](objs.Maps.Fenced, "fenced"),
		Counters:  Counters{objs.Maps.Counters},
	}
	if ifindex != 0 {
		l, err := d.attach(objs.Steer, "", ifindex, loader.UplinkLinkPin, nil)
		if err != nil {
			objs.Close()
			return nil, fmt.Errorf("open datapath: %w", err)
		}
		d.uplink, d.uplinkIx = l, ifindex
	}
	if cfg.PinDir != "" {
		if err := d.adoptPods(); err != nil {
			d.Close()
			return nil, fmt.Errorf("open datapath: %w", err)
		}
	}
	return d, nil
}

// attach attaches prog to ifindex (in the namespace at nsPath, "" for the calling thread's).
// An old link of this Datapath on the same device is updated in place; with PinDir the link
// is pinned as pin (a link pinned there by an earlier process is updated, see
// loader.AttachPinnedXDPAt).
func (d *Datapath) attach(prog *ebpf.Program, nsPath string, ifindex int, pin string, old link.Link) (link.Link, error) {
	if old != nil {
		if ix, err := loader.LinkIfindex(old); err == nil && ix == ifindex && old.Update(prog) == nil {
			return old, nil
		}
		d.dropLink(old)
	}
	if d.cfg.PinDir != "" {
		return loader.AttachPinnedXDPAt(prog, nsPath, ifindex, filepath.Join(d.cfg.PinDir, pin))
	}
	var (
		l   link.Link
		err error
	)
	if nsPath == "" {
		l, _, err = loader.AttachXDP(prog, ifindex)
	} else {
		l, _, err = loader.AttachXDPAt(prog, nsPath, ifindex)
	}
	return l, err
}

// dropLink detaches l: unpins it (PinDir) and closes it.
func (d *Datapath) dropLink(l link.Link) {
	if l == nil {
		return
	}
	if d.cfg.PinDir != "" {
		_ = l.Unpin()
	}
	l.Close()
}

// adoptPods takes over the pod links pinned in PinDir by an earlier process (see Open).
func (d *Datapath) adoptPods() error {
	ixs, err := loader.PinnedPods(d.cfg.PinDir)
	if err != nil {
		return err
	}
	for _, hix := range ixs {
		pl := &podLinks{}
		podPin := filepath.Join(d.cfg.PinDir, loader.PodLinkPin(hix))
		passPin := filepath.Join(d.cfg.PinDir, loader.PassLinkPin(hix))
		l, ix, err := loader.LoadPinnedXDP(podPin)
		if err != nil {
			_ = os.Remove(podPin)
		} else if ix != hix {
			// The veth is gone (pod deleted, namespace deleted): its pins and entries are stale.
			_ = loader.RemoveLink(l)
		} else if err := l.Update(d.objs.Pod); err != nil {
			l.Close()
			return fmt.Errorf("update pinned xdp_pod link on ifindex %d: %w", hix, err)
		} else {
			pl.pod = l
		}
		if pl.pod == nil {
			if pass, _, err := loader.LoadPinnedXDP(passPin); err == nil {
				_ = loader.RemoveLink(pass)
			} else {
				_ = os.Remove(passPin)
			}
			d.clearPodEntries(hix)
			continue
		}
		if pass, pix, err := loader.LoadPinnedXDP(passPin); err == nil {
			if pix == 0 {
				_ = loader.RemoveLink(pass) // AttachPod attaches it again
			} else if err := pass.Update(d.objs.Pass); err != nil {
				pass.Close()
				pl.pod.Close()
				return fmt.Errorf("update pinned xdp_pass link of ifindex %d: %w", hix, err)
			} else {
				pl.pass = pass
			}
		}
		d.pods[hix] = pl
	}
	return nil
}

// clearPodEntries removes the egress and fenced entries of host veth hostIfindex.
func (d *Datapath) clearPodEntries(hostIfindex int) {
	_ = d.maps.Fenced.Delete(uint32(hostIfindex))
	if ents, err := d.maps.Egress.Entries(); err == nil {
		for k := range ents {
			if k.Ifindex == uint32(hostIfindex) {
				_ = d.maps.Egress.Delete(k)
			}
		}
	}
}

// Maps returns the typed maps (for inspection and tests).
func (d *Datapath) Maps() Maps { return d.maps }

// Objects returns the loaded programs and maps.
func (d *Datapath) Objects() *loader.Objects { return d.objs }

// UplinkMTU returns the MTU the datapath checks encapsulated packets against.
func (d *Datapath) UplinkMTU() int { return d.mtu }

// CheckMTU reports whether an uplink with MTU mtu (bytes) carries a UDP
// payload of maxPayload bytes inside an inner IPv6 header (the larger one),
// encapsulated with an outer header of outer's family. The error wraps ErrMTU.
func CheckMTU(mtu, maxPayload int, outer netip.Addr) error {
	overhead := Encap4Overhead
	if !outer.Unmap().Is4() {
		overhead = Encap6Overhead
	}
	need := maxPayload + 8 + 40 + overhead
	if need > mtu {
		return fmt.Errorf("check MTU: %d-byte UDP payload in IPv6 needs %d bytes with %d bytes of encapsulation, uplink MTU is %d: %w",
			maxPayload, need, overhead, mtu, ErrMTU)
	}
	return nil
}

// AddService adds or replaces a service.
func (d *Datapath) AddService(s Service) error {
	if !s.Public.IsValid() {
		return fmt.Errorf("add service: %w: invalid public address", ErrConfig)
	}
	if err := d.checkInstance(s.DefaultInstance); s.HasDefault && err != nil {
		return fmt.Errorf("add service: %w", err)
	}
	if s.HasFallback {
		if _, err := d.maps.Peers.Lookup(uint32(s.FallbackPeer)); err != nil {
			return fmt.Errorf("add service: fallback peer %d: %w", s.FallbackPeer, ErrUnknownPeer)
		}
	}
	var v ServiceValue
	if s.HasDefault {
		v.DefaultInstance, v.Flags = uint64(s.DefaultInstance), v.Flags|ServiceHasDefault
	}
	if s.HasFallback {
		v.FallbackPeer, v.Flags = uint32(s.FallbackPeer), v.Flags|ServiceHasFallback
	}
	if err := d.maps.Services.Put(serviceKey(s.Public), v); err != nil {
		return fmt.Errorf("add service %s: %w", s.Public, err)
	}
	return nil
}

// DeleteService removes a service; the error wraps ErrNotFound if absent.
func (d *Datapath) DeleteService(public netip.AddrPort) error {
	if err := d.maps.Services.Delete(serviceKey(public)); err != nil {
		return fmt.Errorf("delete service %s: %w", public, err)
	}
	return nil
}

func serviceKey(ap netip.AddrPort) ServiceKey {
	a, f := addr16(ap.Addr())
	return ServiceKey{Addr: a, Port: ap.Port(), Family: f}
}

func (d *Datapath) checkInstance(id connid.InstanceID) error {
	if n := d.cfg.CID.ServerIDLen; n < 8 && uint64(id) >= 1<<(8*n) {
		return fmt.Errorf("%w: instance %#x does not fit a %d-byte server ID", ErrConfig, uint64(id), n)
	}
	return nil
}

// keepStats copies the packet counter and last-seen time of an existing entry.
func (d *Datapath) keepStats(id connid.InstanceID, v *InstanceValue) {
	if old, err := d.maps.Instances.Lookup(uint64(id)); err == nil {
		v.Packets, v.LastSeenNs = old.Packets, old.LastSeenNs
	}
}

// SetLocal routes instance id to a pod on this node and records the pod's
// egress (SNAT default) entries.
func (d *Datapath) SetLocal(id connid.InstanceID, t LocalTarget) error {
	if err := d.checkInstance(id); err != nil {
		return fmt.Errorf("set local instance: %w", err)
	}
	if t.HostIfindex <= 0 || t.PodPort == 0 || (!t.Pod4.IsValid() && !t.Pod6.IsValid()) {
		return fmt.Errorf("set local instance %#x: %w: need host ifindex, pod port and a pod address", uint64(id), ErrConfig)
	}
	v := InstanceValue{Kind: InstanceLocal, HostIfindex: uint32(t.HostIfindex), PodPort: t.PodPort}
	if t.Pod4.IsValid() {
		if !t.Pod4.Unmap().Is4() {
			return fmt.Errorf("set local instance %#x: %w: Pod4 %s", uint64(id), ErrConfig, t.Pod4)
		}
		v.Pod4, v.Flags = t.Pod4.Unmap().As4(), v.Flags|InstanceHasPod4
	}
	if t.Pod6.IsValid() {
		if !t.Pod6.Is6() || t.Pod6.Is4In6() {
			return fmt.Errorf("set local instance %#x: %w: Pod6 %s", uint64(id), ErrConfig, t.Pod6)
		}
		v.Pod6, v.Flags = t.Pod6.As16(), v.Flags|InstanceHasPod6
	}
	for _, p := range t.Public {
		a, f := addr16(p.Addr())
		k := EgressKey{Ifindex: uint32(t.HostIfindex), PodPort: t.PodPort, Family: f}
		if err := d.maps.Egress.Put(k, EgressValue{Addr: a, Port: p.Port(), Family: f}); err != nil {
			return fmt.Errorf("set local instance %#x: %w", uint64(id), err)
		}
	}
	d.keepStats(id, &v)
	if err := d.maps.Instances.Put(uint64(id), v); err != nil {
		return fmt.Errorf("set local instance %#x: %w", uint64(id), err)
	}
	return nil
}

// SetRemote routes instance id to peer (encapsulated).
func (d *Datapath) SetRemote(id connid.InstanceID, peer PeerID) error {
	if err := d.checkInstance(id); err != nil {
		return fmt.Errorf("set remote instance: %w", err)
	}
	if _, err := d.maps.Peers.Lookup(uint32(peer)); err != nil {
		return fmt.Errorf("set remote instance %#x: peer %d: %w", uint64(id), peer, ErrUnknownPeer)
	}
	v := InstanceValue{Kind: InstanceRemote, PeerID: uint32(peer)}
	d.keepStats(id, &v)
	if err := d.maps.Instances.Put(uint64(id), v); err != nil {
		return fmt.Errorf("set remote instance %#x: %w", uint64(id), err)
	}
	return nil
}

// Delete removes instance id; the error wraps ErrNotFound if absent.
// Egress entries stay until the pod is detached (DetachPod).
func (d *Datapath) Delete(id connid.InstanceID) error {
	if err := d.maps.Instances.Delete(uint64(id)); err != nil {
		return fmt.Errorf("delete instance %#x: %w", uint64(id), err)
	}
	return nil
}

// InstanceStats returns how many packets were steered with instance id and
// when the last one arrived (zero Time if never). The daemon drains a
// forwarding entry once lastSeen is older than its drain period.
func (d *Datapath) InstanceStats(id connid.InstanceID) (packets uint64, lastSeen time.Time, err error) {
	v, err := d.maps.Instances.Lookup(uint64(id))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("instance stats %#x: %w", uint64(id), err)
	}
	return v.Packets, monoToTime(v.LastSeenNs), nil
}

// monoToTime converts a CLOCK_MONOTONIC timestamp (bpf_ktime_get_ns) to wall time.
func monoToTime(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}
	}
	age := time.Duration(ts.Nano() - int64(ns))
	return time.Now().Add(-age)
}

// AddPeer adds or replaces a peer node. It refuses a peer the uplink MTU
// cannot reach with full-size service packets (error wraps ErrMTU), and
// asks the kernel to resolve the neighbour towards it, since xdp_steer drops
// (and counts) encapsulated packets that have no neighbour yet.
func (d *Datapath) AddPeer(id PeerID, p Peer) error {
	if !p.Addr.IsValid() {
		return fmt.Errorf("add peer %d: %w: invalid address", id, ErrConfig)
	}
	if err := CheckMTU(d.mtu, d.cfg.MaxUDPPayload, p.Addr); err != nil {
		return fmt.Errorf("add peer %d: %w", id, err)
	}
	a, f := addr16(p.Addr)
	if old, err := d.maps.Peers.Lookup(uint32(id)); err == nil && (old.Addr != a || old.Family != f) {
		_ = d.maps.PeerAddrs.Delete(AddrKey{Addr: old.Addr, Family: old.Family})
	}
	if err := d.maps.Peers.Put(uint32(id), PeerValue{Addr: a, Family: f}); err != nil {
		return fmt.Errorf("add peer %d: %w", id, err)
	}
	if err := d.maps.PeerAddrs.Put(AddrKey{Addr: a, Family: f}, uint32(id)); err != nil {
		return fmt.Errorf("add peer %d: %w", id, err)
	}
	resolveNeighbour(p.Addr.Unmap())
	return nil
}

// DeletePeer removes a peer; the error wraps ErrNotFound if absent.
func (d *Datapath) DeletePeer(id PeerID) error {
	old, err := d.maps.Peers.Lookup(uint32(id))
	if err != nil {
		return fmt.Errorf("delete peer %d: %w", id, err)
	}
	_ = d.maps.PeerAddrs.Delete(AddrKey{Addr: old.Addr, Family: old.Family})
	if err := d.maps.Peers.Delete(uint32(id)); err != nil {
		return fmt.Errorf("delete peer %d: %w", id, err)
	}
	return nil
}

// AttachPod attaches xdp_pod to the pod's host-side veth (this netns) and
// xdp_pass to the pod-side veth inside podNetNSPath: frames that xdp_steer
// XDP_REDIRECTs into a veth are dropped unless the veth's peer runs an XDP
// program. It also sets accept_local on the host veth, so that replies the
// kernel routes (no neighbour yet) with the node's own address as source are
// not dropped as martians, and turns off TX checksum offload on the pod-side
// veth (see SetTxChecksum). Call it again after a pod veth is recreated.
// On a pod that is attached already (by this Datapath, or pinned by an
// earlier process) the links are updated in place (BPF_LINK_UPDATE); with
// PinDir they are pinned, so they outlive the process (see Open, Detach).
func (d *Datapath) AttachPod(hostIfindex int, podNetNSPath string, podIfindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	host, err := netlink.LinkByIndex(hostIfindex)
	if err != nil {
		return fmt.Errorf("attach pod: find host veth %d: %w", hostIfindex, err)
	}
	if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", host.Attrs().Name, "accept_local"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("attach pod: set accept_local on %s: %w", host.Attrs().Name, err)
	}
	if err := loader.Do(podNetNSPath, func() error {
		ifc, err := net.InterfaceByIndex(podIfindex)
		if err != nil {
			return err
		}
		return SetTxChecksum(ifc.Name, false)
	}); err != nil {
		return fmt.Errorf("attach pod: pod-side veth checksum offload: %w", err)
	}
	pl := d.pods[hostIfindex]
	if pl == nil {
		pl = &podLinks{}
		d.pods[hostIfindex] = pl
	}
	lp, err := d.attach(d.objs.Pod, "", hostIfindex, loader.PodLinkPin(hostIfindex), pl.pod)
	pl.pod = lp
	if err != nil {
		return fmt.Errorf("attach pod: %w", err)
	}
	// The pass link's ifindex is in the pod's namespace; attach compares it with podIfindex.
	lpass, err := d.attach(d.objs.Pass, podNetNSPath, podIfindex, loader.PassLinkPin(hostIfindex), pl.pass)
	pl.pass = lpass
	if err != nil {
		return fmt.Errorf("attach pod: pod-side veth: %w", err)
	}
	return nil
}

// DetachPod detaches the programs AttachPod attached for hostIfindex,
// removes their pins (also pins an earlier process left) and the egress and
// fenced entries of that veth.
func (d *Datapath) DetachPod(hostIfindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.detachPodLocked(hostIfindex)
	d.clearPodEntries(hostIfindex)
	return nil
}

func (d *Datapath) detachPodLocked(hostIfindex int) {
	if pl, ok := d.pods[hostIfindex]; ok {
		d.dropLink(pl.pod)
		d.dropLink(pl.pass)
		delete(d.pods, hostIfindex)
	}
	if d.cfg.PinDir != "" {
		for _, n := range []string{loader.PodLinkPin(hostIfindex), loader.PassLinkPin(hostIfindex)} {
			p := filepath.Join(d.cfg.PinDir, n)
			if l, _, err := loader.LoadPinnedXDP(p); err == nil {
				_ = loader.RemoveLink(l)
			} else {
				_ = os.Remove(p)
			}
		}
	}
}

// SetFenced fences (fenced true) or unfences the pod whose host-side veth is
// hostIfindex. While fenced, xdp_pod drops every frame the pod sends and
// xdp_steer drops packets for instances whose local target is that veth,
// both counted drop_fenced; nothing is passed to the kernel, which has no
// socket on the public port. The state is in the pinned fenced map, so with
// PinDir it keeps being enforced while no daemon runs and is still there
// after a restart (FencedPods). Fence a migration's destination pod before
// its container is restored and unfence it once the source has confirmed the
// route switch (the migration is committed). DetachPod and the removal of a
// defunct pod (Open) drop the entry: an ifindex is reused by the next veth.
// Errors wrap ErrConfig for hostIfindex <= 0; unfencing an unfenced pod is
// not an error.
func (d *Datapath) SetFenced(hostIfindex int, fenced bool) error {
	if hostIfindex <= 0 {
		return fmt.Errorf("set fenced: %w: host ifindex %d", ErrConfig, hostIfindex)
	}
	if fenced {
		if err := d.maps.Fenced.Put(uint32(hostIfindex), 1); err != nil {
			return fmt.Errorf("fence pod veth %d: %w", hostIfindex, err)
		}
		return nil
	}
	if err := d.maps.Fenced.Delete(uint32(hostIfindex)); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("unfence pod veth %d: %w", hostIfindex, err)
	}
	return nil
}

// Fenced reports whether the pod with host-side veth hostIfindex is fenced.
func (d *Datapath) Fenced(hostIfindex int) (bool, error) {
	_, err := d.maps.Fenced.Lookup(uint32(hostIfindex))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("fenced %d: %w", hostIfindex, err)
	}
	return true, nil
}

// FencedPods returns the host-side veth ifindexes of all fenced pods, sorted.
// After a daemon restart each one is the destination of a migration that was
// not committed before the daemon stopped.
func (d *Datapath) FencedPods() ([]int, error) {
	ents, err := d.maps.Fenced.Entries()
	if err != nil {
		return nil, fmt.Errorf("fenced pods: %w", err)
	}
	out := make([]int, 0, len(ents))
	for k := range ents {
		out = append(out, int(k))
	}
	sort.Ints(out)
	return out, nil
}

// Counters returns the datapath counters summed over CPUs.
func (d *Datapath) Counters() (map[Reason]uint64, error) { return d.maps.Counters.Read() }

// Close releases the Datapath's file descriptors. With PinDir every program
// stays attached and pinned, maps included, so the node keeps steering while
// no daemon runs and the next Open takes over; without PinDir closing the
// links detaches the programs. Use Detach to take the datapath down.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked(false)
}

// Detach takes the datapath down: detaches every program this Datapath or an
// earlier process attached (uplink, pod veths), removes the pin directory
// (maps, links, fenced state) and closes the Datapath. For an operator's
// teardown (steerd uninstall) and tests, never for a daemon restart.
func (d *Datapath) Detach() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("detach datapath: %w", ErrClosed)
	}
	var errs []error
	if d.cfg.PinDir != "" {
		// Pods pinned by an earlier process that Open could not adopt are in PinDir too.
		if ixs, err := loader.PinnedPods(d.cfg.PinDir); err == nil {
			for _, ix := range ixs {
				if _, ok := d.pods[ix]; !ok {
					d.pods[ix] = &podLinks{}
				}
			}
		}
	}
	errs = append(errs, d.closeLocked(true))
	if d.cfg.PinDir != "" {
		errs = append(errs, loader.Unpin(d.cfg.PinDir))
	}
	return errors.Join(errs...)
}

func (d *Datapath) closeLocked(detach bool) error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for ix, pl := range d.pods {
		if detach || d.cfg.PinDir == "" {
			d.detachPodLocked(ix)
			continue
		}
		for _, l := range []link.Link{pl.pod, pl.pass} {
			if l != nil {
				errs = append(errs, l.Close())
			}
		}
	}
	d.pods = map[int]*podLinks{}
	if d.uplink != nil {
		if detach {
			d.dropLink(d.uplink)
		} else {
			errs = append(errs, d.uplink.Close())
		}
		d.uplink = nil
	}
	if detach && d.cfg.PinDir != "" {
		if l, _, err := loader.LoadPinnedXDP(filepath.Join(d.cfg.PinDir, loader.UplinkLinkPin)); err == nil {
			_ = loader.RemoveLink(l)
		}
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}
