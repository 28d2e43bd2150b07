package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
)

// Datapath modes of Config.Datapath.
const (
	// DatapathXDP is the XDP datapath (package datapath): QUIC packets are steered by the
	// QUIC-LB server ID in their DCID, and packets for an instance that moved are forwarded to
	// the node that hosts it now.
	DatapathXDP = "xdp"
	// DatapathNFT is the kernel datapath ("XDP off", type NFT): nftables DNAT/SNAT with conntrack
	// deliver a service's public UDP port to the local pod. No DCID steering, no forwarding.
	DatapathNFT = "nftables"
)

// NFTTable is the name of the nftables table (family inet: IPv4 and IPv6) the NFT datapath owns
// in the node network namespace.
const NFTTable = "steerd"

// Names of the NFT datapath's global named counters (packets; Counters returns them).
const (
	// NFTDelivered counts packets forwarded to a local pod after DNAT (every instance).
	NFTDelivered = "delivered"
	// NFTDroppedStale counts packets that reached this node's public address and port of a service
	// that moved away (SetRemote): dropped, not forwarded (the QUIC client recovers by loss
	// recovery, or by moving to the address the server announced, quicext).
	NFTDroppedStale = "dropped_stale"
	// NFTDroppedFenced counts packets from or to a fenced pod (SetFenced), dropped.
	NFTDroppedFenced = "dropped_fenced"
)

// nftCounterNames are the global counters, in the order Counters reports them.
var nftCounterNames = []string{NFTDelivered, NFTDroppedStale, NFTDroppedFenced}

// nftInstanceCounter is the named counter of an instance's packets: delivered to its local pod
// while it runs here, dropped at the public port after it moved away.
func nftInstanceCounter(instance uint64) string { return "inst_" + strconv.FormatUint(instance, 10) }

// NFT is the kernel datapath of steerd ("XDP off", Config.Datapath "nftables"): the Linux
// kernel's NAT delivers each service's public UDP port to the pod that runs it on this node, as an
// operator would without steerd's XDP program. It implements Datapath and the fencing interface.
// It talks nf_tables netlink (github.com/google/nftables): no nft binary is needed, and a rule
// change is one atomic transaction of about a millisecond.
//
// All state is one nftables table NFTTable (family inet) in the node network namespace; `nft list
// table inet steerd` shows it:
//
//	chain pre_filter  (filter, prerouting, priority mangle -150): remote instances:
//	                  <public addr> udp dport <service port> -> count, drop (no ICMP port
//	                  unreachable for stale packets; nothing is forwarded)
//	chain pre_nat     (nat, prerouting, priority dstnat -100): local instances:
//	                  <public addr> udp dport <service port> -> dnat <pod addr>:<pod port>
//	chain post_nat    (nat, postrouting, priority srcnat 100): local instances:
//	                  oifname <uplink> <pod addr> udp sport <pod port> -> snat <public addr>:<port>
//	                  (packets the pod starts, e.g. SERVER_MIGRATED or PATH_CHALLENGE of a restored
//	                  service before its client sent anything here: conntrack has no entry yet)
//	chain fwd_filter  (filter, forward, priority filter 0): iif/oif @fenced -> drop; packets to
//	                  a local pod -> count
//	set fenced        (iface_index): host-side veths of fenced pods
//	counters          delivered, dropped_stale, dropped_fenced, inst_<instance>
//
// What it gives up against the XDP datapath: no steering by DCID (conntrack steers by the
// client's address and port and keeps one entry per client flow; a client that changes its own
// address, RFC 9000 section 9, makes a new entry); no forwarding of the packets that still reach
// this node after the service moved (they are dropped: the QUIC strategies rely on loss recovery
// and on the server's announcement of the new address); LastSeen is never set (InstanceStats),
// so a migration's drain ends when the instance's packet counter stopped moving for the drain
// period.
//
// net.ipv4.ip_forward and net.ipv6.conf.all.forwarding are set to 1 in the node namespace at
// open and stay set. Close deletes the table only with Config.DetachOnExit; otherwise the rules
// keep delivering while steerd restarts, and the next steerd rewrites them (Recover calls
// SetLocal / SetRemote for every service).
type NFT struct {
	cfg *Config
	// netns is the named network namespace the table lives in ("": this process's own).
	netns string
	nl    *netlink.Handle

	mu     sync.Mutex // serializes nf_tables transactions (c batches messages until Flush)
	c      *nftables.Conn
	local  map[uint64]LocalTarget
	remote map[uint64]string
}

// nftTable is the table object of NFTTable.
var nftTable = &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyINet}

// nftChains are the table's base chains (policy accept: they only act on steerd's packets).
func nftChains() []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: "pre_filter", Table: nftTable, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept},
		{Name: "pre_nat", Table: nftTable, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		{Name: "post_nat", Table: nftTable, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept},
		{Name: "fwd_filter", Table: nftTable, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept},
	}
}

// nftFencedSet is the set of fenced host-side veth ifindexes (host byte order, as meta iif
// loads them).
func nftFencedSet() *nftables.Set {
	return &nftables.Set{Table: nftTable, Name: "fenced", KeyType: nftables.TypeIFIndex, KeyByteOrder: binaryutil.NativeEndian}
}

// OpenNFT creates the NFT datapath's table, chains, set and counters in this process's network
// namespace (steerd runs inside the node netns) and enables IP forwarding there. An existing
// table (left by a previous steerd) and its counters are kept; the first SetLocal/SetRemote
// rewrites its rules. It needs CAP_NET_ADMIN.
func OpenNFT(cfg *Config) (*NFT, error) { return openNFT(cfg, "") }

// openNFT opens the NFT datapath in the named network namespace ("": the current one).
func openNFT(cfg *Config, netnsName string) (_ *NFT, err error) {
	n := &NFT{cfg: cfg, netns: netnsName, local: map[uint64]LocalTarget{}, remote: map[uint64]string{}}
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netnsName == "" {
		n.nl, err = netlink.NewHandle()
	} else {
		n.nl, err = nsutil.Handle(netnsName)
		if err == nil {
			ns, oerr := nsutil.Open(netnsName)
			if oerr != nil {
				n.nl.Close()
				return nil, fmt.Errorf("open nftables datapath: %w", oerr)
			}
			defer ns.Close() // the netlink socket keeps the namespace
			opts = append(opts, nftables.WithNetNSFd(int(ns)))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open nftables datapath: netlink: %w", err)
	}
	defer func() {
		if err != nil {
			n.nl.Close()
			if n.c != nil {
				n.c.CloseLasting()
			}
		}
	}()
	if n.c, err = nftables.New(opts...); err != nil {
		return nil, fmt.Errorf("open nftables datapath: nf_tables netlink: %w", err)
	}
	if netnsName == "" {
		if err := n.takeOverXDP(); err != nil {
			return nil, fmt.Errorf("open nftables datapath: %w", err)
		}
	}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := n.sysctl(kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("open nftables datapath: %w", err)
		}
	}
	n.c.AddTable(nftTable)
	for _, ch := range nftChains() {
		n.c.AddChain(ch)
	}
	if err := n.c.AddSet(nftFencedSet(), nil); err != nil {
		return nil, fmt.Errorf("open nftables datapath: set fenced: %w", err)
	}
	for _, name := range nftCounterNames {
		n.c.AddObj(&nftables.CounterObj{Table: nftTable, Name: name})
	}
	if err := n.c.Flush(); err != nil {
		return nil, fmt.Errorf("open nftables datapath: create table inet %s: %w", NFTTable, err)
	}
	return n, nil
}

// ErrXDPAttached: the uplink carries an XDP program that is not steerd's pinned XDP datapath, so
// the nftables datapath would see only what that program passes.
var ErrXDPAttached = errors.New("an XDP program is attached to the uplink")

// xdpDetachWait bounds the wait for the kernel to detach the XDP programs whose pinned links
// takeOverXDP removed (the last reference of a bpf_link is put from a work queue).
const xdpDetachWait = 2 * time.Second

// takeOverXDP removes what a steerd with the XDP datapath left in this network namespace when it
// was killed or ran without Config.DetachOnExit: its bpffs pin directory (Config.PinRoot, one
// directory per network namespace, loader.PinDirFor) holds the bpf_links that keep its XDP
// programs attached to the uplink and the pod veths, so removing the pins detaches them. Both
// datapaths at once would split a service's packets between XDP steering (stale maps) and the
// nftables DNAT. An XDP program on the uplink that is still there afterwards is someone else's:
// ErrXDPAttached.
func (n *NFT) takeOverXDP() error {
	if n.cfg.PinRoot != "none" {
		root := n.cfg.PinRoot
		if root == "" {
			root = loader.DefaultPinRoot
		}
		var fs unix.Statfs_t
		if unix.Statfs(root, &fs) == nil && fs.Type == unix.BPF_FS_MAGIC {
			dir, err := loader.PinDirFor(root)
			if err != nil {
				return fmt.Errorf("take over from the XDP datapath: %w", err)
			}
			if _, err := os.Stat(dir); err == nil {
				if err := loader.Unpin(dir); err != nil {
					return fmt.Errorf("take over from the XDP datapath: %w", err)
				}
			}
		}
	}
	if n.cfg.Uplink == "" {
		return nil
	}
	deadline := time.Now().Add(xdpDetachWait)
	for {
		l, err := n.nl.LinkByName(n.cfg.Uplink)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", n.cfg.Uplink, err)
		}
		x := l.Attrs().Xdp
		if x == nil || !x.Attached {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: program id %d on %s (detach it: ip link set dev %s xdp off; or run steerd --datapath xdp)",
				ErrXDPAttached, x.ProgId, n.cfg.Uplink, n.cfg.Uplink)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RemoveNFTTable deletes the NFT datapath's table (NFTTable) from this process's network
// namespace, if there is one: a steerd that starts with the XDP datapath calls it, so that the
// DNAT/SNAT rules of an earlier steerd with --datapath nftables (killed, or without
// Config.DetachOnExit) do not act on the packets XDP passes to the stack. It reports whether a
// table was removed; it needs CAP_NET_ADMIN.
func RemoveNFTTable() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("remove table inet %s: nf_tables netlink: %w", NFTTable, err)
	}
	c.DelTable(nftTable)
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("remove table inet %s: %w", NFTTable, err)
	}
	return true, nil
}

// nftRule is one rule of the table, in the terms of its nft syntax (String) and built as
// nf_tables expressions (exprs).
type nftRule struct {
	Chain string
	// Family is "ip" or "ip6" for a rule that matches an address ("": none).
	Family       string
	Daddr, Saddr netip.Addr
	// DPort, SPort match UDP ports (0: no match).
	DPort, SPort uint16
	// OifName matches the output interface name.
	OifName string
	// Fenced is "iif" or "oif": the input or output interface is in the set fenced.
	Fenced string
	// Counters are named counters the rule increments.
	Counters []string
	// NAT is "dnat" or "snat" to To.
	NAT string
	To  netip.AddrPort
	// Drop ends with the verdict drop.
	Drop bool
}

// String returns the rule as `nft list` prints it.
func (r nftRule) String() string {
	var f []string
	if r.OifName != "" {
		f = append(f, fmt.Sprintf("oifname %q", r.OifName))
	}
	if r.Saddr.IsValid() {
		f = append(f, r.Family+" saddr "+r.Saddr.String())
	}
	if r.Daddr.IsValid() {
		f = append(f, r.Family+" daddr "+r.Daddr.String())
	}
	if r.SPort != 0 {
		f = append(f, fmt.Sprintf("udp sport %d", r.SPort))
	}
	if r.DPort != 0 {
		f = append(f, fmt.Sprintf("udp dport %d", r.DPort))
	}
	if r.Fenced != "" {
		f = append(f, r.Fenced+" @fenced")
	}
	for _, c := range r.Counters {
		f = append(f, fmt.Sprintf("counter name %q", c))
	}
	if r.NAT != "" {
		f = append(f, fmt.Sprintf("%s %s to %s", r.NAT, r.Family, r.To))
	}
	if r.Drop {
		f = append(f, "drop")
	}
	return strings.Join(f, " ")
}

// exprs builds the rule's nf_tables expressions (register 1 for matches, 1 and 2 for NAT).
func (r nftRule) exprs() []expr.Any {
	var e []expr.Any
	cmp := func(b []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	if r.OifName != "" {
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, r.OifName)
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, cmp(name))
	}
	if r.Family != "" {
		proto, saddrOff, daddrOff, alen := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16), uint32(4)
		if r.Family == "ip6" {
			proto, saddrOff, daddrOff, alen = unix.NFPROTO_IPV6, 8, 24, 16
		}
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmp([]byte{proto}))
		for _, m := range []struct {
			a   netip.Addr
			off uint32
		}{{r.Saddr, saddrOff}, {r.Daddr, daddrOff}} {
			if m.a.IsValid() {
				e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.off, Len: alen}, cmp(m.a.AsSlice()))
			}
		}
	}
	if r.SPort != 0 || r.DPort != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmp([]byte{unix.IPPROTO_UDP}))
		for _, m := range []struct {
			p   uint16
			off uint32
		}{{r.SPort, 0}, {r.DPort, 2}} {
			if m.p != 0 {
				e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: m.off, Len: 2}, cmp(binaryutil.BigEndian.PutUint16(m.p)))
			}
		}
	}
	if r.Fenced != "" {
		key := expr.MetaKeyIIF
		if r.Fenced == "oif" {
			key = expr.MetaKeyOIF
		}
		e = append(e, &expr.Meta{Key: key, Register: 1}, &expr.Lookup{SourceRegister: 1, SetName: "fenced"})
	}
	for _, c := range r.Counters {
		e = append(e, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: c})
	}
	if r.NAT != "" {
		typ, fam := expr.NATTypeDestNAT, uint32(unix.NFPROTO_IPV4)
		if r.NAT == "snat" {
			typ = expr.NATTypeSourceNAT
		}
		if r.Family == "ip6" {
			fam = unix.NFPROTO_IPV6
		}
		e = append(e,
			&expr.Immediate{Register: 1, Data: r.To.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(r.To.Port())},
			&expr.NAT{Type: typ, Family: fam, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
	}
	if r.Drop {
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	return e
}

// nftService is what the rules of one instance need: its public port and this node's public
// addresses (IPv4, IPv6; either may be invalid).
type nftService struct {
	Port       uint16
	Pub4, Pub6 netip.Addr
}

// nftPlan returns every rule of the table for a state, in chain order (the fence rules first,
// then each instance's, sorted by instance): local instances are DNATed to their pod and SNATed
// back (IPv4 and IPv6 where the node and the pod have the address), remote ones dropped at the
// public port. Instances missing from svcs get no rule. It also returns the instance counters
// the rules use. The same state always gives the same plan: applying it twice leaves one rule
// set.
func nftPlan(uplink string, svcs map[uint64]nftService, local map[uint64]LocalTarget, remote map[uint64]string) (rules []nftRule, counters []string) {
	rules = []nftRule{
		{Chain: "fwd_filter", Fenced: "iif", Counters: []string{NFTDroppedFenced}, Drop: true},
		{Chain: "fwd_filter", Fenced: "oif", Counters: []string{NFTDroppedFenced}, Drop: true},
	}
	ids := make([]uint64, 0, len(local)+len(remote))
	for id := range local {
		ids = append(ids, id)
	}
	for id := range remote {
		if _, ok := local[id]; !ok {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s, ok := svcs[id]
		if !ok {
			continue
		}
		ctr := nftInstanceCounter(id)
		counters = append(counters, ctr)
		lt, isLocal := local[id]
		for _, f := range []struct {
			name     string
			pub, pod netip.Addr
		}{{"ip", s.Pub4, lt.Pod4}, {"ip6", s.Pub6, lt.Pod6}} {
			if !f.pub.IsValid() {
				continue
			}
			if !isLocal {
				rules = append(rules, nftRule{Chain: "pre_filter", Family: f.name, Daddr: f.pub, DPort: s.Port,
					Counters: []string{ctr, NFTDroppedStale}, Drop: true})
				continue
			}
			if !f.pod.IsValid() {
				continue
			}
			rules = append(rules,
				nftRule{Chain: "pre_nat", Family: f.name, Daddr: f.pub, DPort: s.Port, NAT: "dnat", To: netip.AddrPortFrom(f.pod, lt.PodPort)},
				nftRule{Chain: "post_nat", OifName: uplink, Family: f.name, Saddr: f.pod, SPort: lt.PodPort, NAT: "snat", To: netip.AddrPortFrom(f.pub, s.Port)},
				nftRule{Chain: "fwd_filter", Family: f.name, Daddr: f.pod, DPort: lt.PodPort, Counters: []string{ctr, NFTDelivered}})
		}
	}
	return rules, counters
}

// services returns the public port and addresses of every configured instance on this node.
func (n *NFT) services() map[uint64]nftService {
	m := make(map[uint64]nftService, len(n.cfg.Services))
	for _, s := range n.cfg.Services {
		m[s.Instance] = nftService{Port: s.Port, Pub4: n.cfg.IPv4, Pub6: n.cfg.IPv6}
	}
	return m
}

// applyLocked replaces every rule of the table by the plan of the current state, in one
// transaction (the chains are flushed and refilled atomically). n.mu must be held.
func (n *NFT) applyLocked() error {
	rules, counters := nftPlan(n.cfg.Uplink, n.services(), n.local, n.remote)
	chains := map[string]*nftables.Chain{}
	for _, ch := range nftChains() {
		chains[ch.Name] = ch
		n.c.FlushChain(ch)
	}
	for _, c := range counters {
		n.c.AddObj(&nftables.CounterObj{Table: nftTable, Name: c})
	}
	for _, r := range rules {
		n.c.AddRule(&nftables.Rule{Table: nftTable, Chain: chains[r.Chain], Exprs: r.exprs()})
	}
	if err := n.c.Flush(); err != nil {
		return fmt.Errorf("nf_tables transaction: %w", err)
	}
	return nil
}

// flushConntrack deletes the conntrack entries of clients' flows to the instance's public
// addresses and port, so that the next packet of each flow meets the rules of the new state (an
// entry made while the port had no rule would bypass the DNAT until it times out).
func (n *NFT) flushConntrack(s nftService) error {
	for _, a := range []netip.Addr{s.Pub4, s.Pub6} {
		if !a.IsValid() {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if err := f.AddIP(netlink.ConntrackOrigDstIP, a.AsSlice()); err != nil {
			return err
		}
		if err := f.AddPort(netlink.ConntrackOrigDstPort, s.Port); err != nil {
			return err
		}
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		if _, err := n.nl.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(fam), f); err != nil {
			return fmt.Errorf("delete conntrack entries to %s port %d: %w", a, s.Port, err)
		}
	}
	return nil
}

// change applies a state change of instance: mutate edits the maps; on a netlink error the
// previous state is restored. Conntrack entries to the instance's public port are flushed when
// its state changed.
func (n *NFT) change(instance uint64, what string, mutate func()) error {
	s, ok := n.services()[instance]
	if !ok {
		return fmt.Errorf("%s for instance %d: %w: no configured service has this instance", what, instance, ErrUnknownService)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	oldL, hadL := n.local[instance]
	oldR, hadR := n.remote[instance]
	mutate()
	newL, hasL := n.local[instance]
	_, hasR := n.remote[instance]
	if err := n.applyLocked(); err != nil {
		delete(n.local, instance)
		delete(n.remote, instance)
		if hadL {
			n.local[instance] = oldL
		}
		if hadR {
			n.remote[instance] = oldR
		}
		return fmt.Errorf("%s for instance %d: %w", what, instance, err)
	}
	if hadL != hasL || hadR != hasR || oldL != newL {
		if err := n.flushConntrack(s); err != nil {
			return fmt.Errorf("%s for instance %d: %w", what, instance, err)
		}
	}
	return nil
}

// SetLocal implements Datapath: DNAT of the service's public port on this node's public
// addresses to t's pod address and port, SNAT of the pod's packets leaving the uplink. The
// instance must belong to a configured service (its public port); otherwise the error wraps
// ErrUnknownService.
func (n *NFT) SetLocal(instance uint64, t LocalTarget) error {
	return n.change(instance, "set local route", func() {
		delete(n.remote, instance)
		n.local[instance] = t
	})
}

// SetRemote implements Datapath: the local rules go, and packets that still reach this node's
// public port of the service are counted (instance counter, dropped_stale) and dropped. Nothing is
// forwarded to peer; an unknown peer is an error wrapping ErrUnknownPeer.
func (n *NFT) SetRemote(instance uint64, peer string) error {
	if _, ok := n.cfg.Peer(peer); !ok {
		return fmt.Errorf("set remote route for instance %d: %w: %q", instance, ErrUnknownPeer, peer)
	}
	return n.change(instance, "set remote route", func() {
		delete(n.local, instance)
		n.remote[instance] = peer
	})
}

// Delete implements Datapath: every rule of the instance goes (its counter stays); an instance
// without rules is no error.
func (n *NFT) Delete(instance uint64) error {
	n.mu.Lock()
	_, l := n.local[instance]
	_, r := n.remote[instance]
	n.mu.Unlock()
	if !l && !r {
		return nil
	}
	return n.change(instance, "delete route", func() {
		delete(n.local, instance)
		delete(n.remote, instance)
	})
}

// readCounters returns every named counter of the table (packets by name).
func (n *NFT) readCounters() (map[string]uint64, error) {
	n.mu.Lock()
	objs, err := n.c.GetObjects(nftTable)
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m := make(map[string]uint64, len(objs))
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			m[c.Name] = c.Packets
		}
	}
	return m, nil
}

// InstanceStats implements Datapath: Packets counts the instance's packets since the table was
// created (delivered to its pod while local, dropped at the public port while remote); LastSeen
// is always zero (nftables counters carry no time).
func (n *NFT) InstanceStats(instance uint64) (InstanceStats, error) {
	cs, err := n.readCounters()
	if err != nil {
		return InstanceStats{}, fmt.Errorf("read instance %d counter: %w", instance, err)
	}
	return InstanceStats{Packets: cs[nftInstanceCounter(instance)]}, nil
}

// Counters implements Datapath: the global counters NFTDelivered, NFTDroppedStale and
// NFTDroppedFenced (packets since the table was created).
func (n *NFT) Counters() (map[string]uint64, error) {
	cs, err := n.readCounters()
	if err != nil {
		return nil, fmt.Errorf("read nftables counters: %w", err)
	}
	out := make(map[string]uint64, len(nftCounterNames))
	for _, c := range nftCounterNames {
		out[c] = cs[c]
	}
	return out, nil
}

// SetFenced implements fencer: the pod's host-side veth joins (or leaves) the set "fenced", whose
// rules drop every packet forwarded from or to it (counter dropped_fenced). The set lives in the
// table: a fence outlives steerd unless Close deletes the table (DetachOnExit). Unfencing a pod
// that is not fenced is no error.
func (n *NFT) SetFenced(hostIfindex int, fenced bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	el := []nftables.SetElement{{Key: binaryutil.NativeEndian.PutUint32(uint32(hostIfindex))}}
	set := nftFencedSet()
	if fenced {
		if err := n.c.SetAddElements(set, el); err != nil {
			return fmt.Errorf("add veth %d to the fenced set: %w", hostIfindex, err)
		}
	} else {
		// The element is added first so that its deletion never fails on a missing one.
		if err := n.c.SetAddElements(set, el); err != nil {
			return fmt.Errorf("remove veth %d from the fenced set: %w", hostIfindex, err)
		}
		if err := n.c.SetDeleteElements(set, el); err != nil {
			return fmt.Errorf("remove veth %d from the fenced set: %w", hostIfindex, err)
		}
	}
	if err := n.c.Flush(); err != nil {
		return fmt.Errorf("update the fenced set (veth %d): %w", hostIfindex, err)
	}
	return nil
}

// AttachPod implements podAttacher: the nftables datapath needs nothing on a pod's veth (the
// kernel routes to the pod after the DNAT); it does nothing.
func (n *NFT) AttachPod(hostIfindex int, podNetNSPath string, podIfindex int) error { return nil }

// DetachPod implements podAttacher: a pod that goes leaves the set "fenced" (its veth is gone,
// and the kernel may hand its ifindex to a later interface, which must not start fenced).
func (n *NFT) DetachPod(hostIfindex int) error {
	if err := n.SetFenced(hostIfindex, false); err != nil {
		return fmt.Errorf("detach pod veth %d: %w", hostIfindex, err)
	}
	return nil
}

// FencedPods implements fencer: the host-side veth ifindexes in the set "fenced", sorted.
func (n *NFT) FencedPods() ([]int, error) {
	n.mu.Lock()
	els, err := n.c.GetSetElements(nftFencedSet())
	n.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list fenced pods: %w", err)
	}
	idx := make([]int, 0, len(els))
	for _, e := range els {
		if len(e.Key) != 4 {
			return nil, fmt.Errorf("list fenced pods: element of %d bytes, want 4", len(e.Key))
		}
		idx = append(idx, int(binaryutil.NativeEndian.Uint32(e.Key)))
	}
	sort.Ints(idx)
	return idx, nil
}

// Close implements Datapath: with Config.DetachOnExit the table goes (rules, counters, fences);
// otherwise it stays and keeps delivering. IP forwarding stays enabled either way.
func (n *NFT) Close() error {
	defer n.nl.Close()
	defer n.c.CloseLasting()
	if !n.cfg.DetachOnExit {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.c.DelTable(nftTable)
	if err := n.c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("close nftables datapath: delete table inet %s: %w", NFTTable, err)
	}
	return nil
}

// sysctl sets a sysctl in the datapath's network namespace.
func (n *NFT) sysctl(key, value string) error {
	if n.netns != "" {
		return nsutil.Sysctl(n.netns, key, value)
	}
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

var _ podAttacher = (*NFT)(nil)
