package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/steerd/steerd/internal/nsutil"
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
//
// All state is one nftables table NFTTable (family inet) in the node network namespace:
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
// client's address and port, and keeps one entry per client flow, RFC 9000 section 9 migrations
// of the client make new entries); no forwarding of the packets that still reach this node after
// the service moved (they are dropped: the QUIC strategies rely on loss recovery and on the
// server's announcement of the new address); LastSeen is never set (InstanceStats), so a
// migration's drain ends when the instance's packet counter stopped moving for the drain period.
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

	mu     sync.Mutex
	local  map[uint64]LocalTarget
	remote map[uint64]string
}

// OpenNFT creates the NFT datapath's table, chains, set and counters in this process's network
// namespace (steerd runs inside the node netns) and enables IP forwarding there. An existing
// table (left by a previous steerd) is kept until the first SetLocal/SetRemote rewrites its rules.
// It needs the nft command (nftables, make deps) and CAP_NET_ADMIN.
func OpenNFT(cfg *Config) (*NFT, error) { return openNFT(cfg, "") }

// openNFT opens the NFT datapath in the named network namespace ("": the current one).
func openNFT(cfg *Config, netnsName string) (*NFT, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("open nftables datapath: %w (install nftables: make deps)", err)
	}
	var h *netlink.Handle
	var err error
	if netnsName == "" {
		h, err = netlink.NewHandle()
	} else {
		h, err = nsutil.Handle(netnsName)
	}
	if err != nil {
		return nil, fmt.Errorf("open nftables datapath: netlink: %w", err)
	}
	n := &NFT{cfg: cfg, netns: netnsName, nl: h, local: map[uint64]LocalTarget{}, remote: map[uint64]string{}}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := n.sysctl(kv[0], kv[1]); err != nil {
			h.Close()
			return nil, fmt.Errorf("open nftables datapath: %w", err)
		}
	}
	if err := n.nft(nftBase(), "-f", "-"); err != nil {
		h.Close()
		return nil, fmt.Errorf("open nftables datapath: create table %s: %w", NFTTable, err)
	}
	return n, nil
}

// nftBase is the script that creates the table, its chains, set and global counters; every
// statement is "add", which leaves existing objects (and their counters) as they are.
func nftBase() string {
	var b strings.Builder
	fmt.Fprintf(&b, "add table inet %s\n", NFTTable)
	for _, c := range []string{
		"pre_filter { type filter hook prerouting priority -150; policy accept; }",
		"pre_nat { type nat hook prerouting priority -100; policy accept; }",
		"post_nat { type nat hook postrouting priority 100; policy accept; }",
		"fwd_filter { type filter hook forward priority 0; policy accept; }",
	} {
		fmt.Fprintf(&b, "add chain inet %s %s\n", NFTTable, c)
	}
	fmt.Fprintf(&b, "add set inet %s fenced { type iface_index; }\n", NFTTable)
	for _, c := range nftCounterNames {
		fmt.Fprintf(&b, "add counter inet %s %s\n", NFTTable, c)
	}
	return b.String()
}

// nftService is what the rules of one instance need: its public port and this node's public
// addresses (IPv4, IPv6; either may be invalid).
type nftService struct {
	Port       uint16
	Pub4, Pub6 netip.Addr
}

// nftRules returns the script that replaces every rule of the table (one atomic nft transaction:
// flush the chains, then add the rules of each instance, sorted by instance): local instances are
// DNATed to their pod and SNATed back, remote ones dropped at the public port. Instances missing
// from svcs get no rule. The same state always gives the same script, so applying it twice leaves
// one rule set.
func nftRules(uplink string, svcs map[uint64]nftService, local map[uint64]LocalTarget, remote map[uint64]string) string {
	var b strings.Builder
	t := "inet " + NFTTable
	for _, c := range []string{"pre_filter", "pre_nat", "post_nat", "fwd_filter"} {
		fmt.Fprintf(&b, "flush chain %s %s\n", t, c)
	}
	fmt.Fprintf(&b, "add rule %s fwd_filter iif @fenced counter name %q drop\n", t, NFTDroppedFenced)
	fmt.Fprintf(&b, "add rule %s fwd_filter oif @fenced counter name %q drop\n", t, NFTDroppedFenced)
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
		fmt.Fprintf(&b, "add counter %s %s\n", t, ctr)
		type fam struct {
			name       string // nft family keyword: ip, ip6
			pub, pod   netip.Addr
			fmtAddrPrt func(netip.Addr, uint16) string
		}
		lt, isLocal := local[id]
		fams := []fam{
			{"ip", s.Pub4, lt.Pod4, func(a netip.Addr, p uint16) string { return fmt.Sprintf("%s:%d", a, p) }},
			{"ip6", s.Pub6, lt.Pod6, func(a netip.Addr, p uint16) string { return fmt.Sprintf("[%s]:%d", a, p) }},
		}
		for _, f := range fams {
			if !f.pub.IsValid() {
				continue
			}
			if !isLocal {
				fmt.Fprintf(&b, "add rule %s pre_filter %s daddr %s udp dport %d counter name %q counter name %q drop\n",
					t, f.name, f.pub, s.Port, ctr, NFTDroppedStale)
				continue
			}
			if !f.pod.IsValid() {
				continue
			}
			fmt.Fprintf(&b, "add rule %s pre_nat %s daddr %s udp dport %d dnat %s to %s\n",
				t, f.name, f.pub, s.Port, f.name, f.fmtAddrPrt(f.pod, lt.PodPort))
			fmt.Fprintf(&b, "add rule %s post_nat oifname %q %s saddr %s udp sport %d snat %s to %s\n",
				t, uplink, f.name, f.pod, lt.PodPort, f.name, f.fmtAddrPrt(f.pub, s.Port))
			fmt.Fprintf(&b, "add rule %s fwd_filter %s daddr %s udp dport %d counter name %q counter name %q\n",
				t, f.name, f.pod, lt.PodPort, ctr, NFTDelivered)
		}
	}
	return b.String()
}

// services returns the public port and addresses of every configured instance on this node.
func (n *NFT) services() map[uint64]nftService {
	m := make(map[uint64]nftService, len(n.cfg.Services))
	for _, s := range n.cfg.Services {
		m[s.Instance] = nftService{Port: s.Port, Pub4: n.cfg.IPv4, Pub6: n.cfg.IPv6}
	}
	return m
}

// applyLocked writes the rules of the current state. n.mu must be held.
func (n *NFT) applyLocked() error {
	return n.nft(nftRules(n.cfg.Uplink, n.services(), n.local, n.remote), "-f", "-")
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
		if err := f.AddProtocol(17); err != nil {
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

// change applies a state change of instance: mutate edits the maps; on an nft error the previous
// state is restored. Conntrack entries to the instance's public port are flushed when its state
// changed.
func (n *NFT) change(instance uint64, what string, mutate func()) error {
	s, ok := n.services()[instance]
	if !ok {
		return fmt.Errorf("%s for instance %d: %w: no configured service has this instance", what, instance, ErrUnknownService)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	oldL, hadL := n.local[instance]
	oldR, hadR := n.remote[instance]
	before := nftRules(n.cfg.Uplink, n.services(), n.local, n.remote)
	mutate()
	after := nftRules(n.cfg.Uplink, n.services(), n.local, n.remote)
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
	if before != after {
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

// nftCounterJSON is one counter object of `nft -j list counters` (libnftables-json(5)).
type nftCounterJSON struct {
	Counter *struct {
		Name    string `json:"name"`
		Table   string `json:"table"`
		Packets uint64 `json:"packets"`
	} `json:"counter"`
}

// readCounters returns every named counter of the table (packets by name).
func (n *NFT) readCounters() (map[string]uint64, error) {
	out, err := n.nftOutput("", "-j", "list", "counters", "table", "inet", NFTTable)
	if err != nil {
		return nil, err
	}
	return parseNFTCounters(out)
}

// parseNFTCounters reads the packets of each named counter of table NFTTable from nft's JSON.
func parseNFTCounters(b []byte) (map[string]uint64, error) {
	var doc struct {
		Nftables []nftCounterJSON `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse nft counters: %w", err)
	}
	m := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Counter != nil && o.Counter.Table == NFTTable {
			m[o.Counter.Name] = o.Counter.Packets
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
// table: a fence outlives steerd unless Close deletes the table (DetachOnExit).
func (n *NFT) SetFenced(hostIfindex int, fenced bool) error {
	op := "add"
	if !fenced {
		op = "delete"
	}
	err := n.nft(fmt.Sprintf("%s element inet %s fenced { %d }\n", op, NFTTable, hostIfindex), "-f", "-")
	if err != nil && !fenced && strings.Contains(err.Error(), "No such file or directory") {
		return nil // not fenced
	}
	if err != nil {
		return fmt.Errorf("%s veth %d to the fenced set: %w", op, hostIfindex, err)
	}
	return nil
}

// FencedPods implements fencer: the host-side veth ifindexes in the set "fenced", sorted. nft
// prints an element whose interface exists by its name, which is looked up here.
func (n *NFT) FencedPods() ([]int, error) {
	out, err := n.nftOutput("", "-j", "list", "set", "inet", NFTTable, "fenced")
	if err != nil {
		return nil, fmt.Errorf("list fenced pods: %w", err)
	}
	elems, err := parseNFTSetElems(out)
	if err != nil {
		return nil, fmt.Errorf("list fenced pods: %w", err)
	}
	var idx []int
	for _, e := range elems {
		if i, err := strconv.Atoi(e); err == nil {
			idx = append(idx, i)
			continue
		}
		l, err := n.nl.LinkByName(e)
		if err != nil {
			return nil, fmt.Errorf("list fenced pods: interface %s: %w", e, err)
		}
		idx = append(idx, l.Attrs().Index)
	}
	sort.Ints(idx)
	return idx, nil
}

// parseNFTSetElems returns the elements of the set in `nft -j list set` output as strings
// (interface names or numbers).
func parseNFTSetElems(b []byte) ([]string, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse nft set: %w", err)
	}
	var out []string
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			var s string
			if err := json.Unmarshal(e, &s); err == nil {
				out = append(out, s)
				continue
			}
			var u uint64
			if err := json.Unmarshal(e, &u); err != nil {
				return nil, fmt.Errorf("parse nft set element %s: %w", e, err)
			}
			out = append(out, strconv.FormatUint(u, 10))
		}
	}
	return out, nil
}

// Close implements Datapath: with Config.DetachOnExit the table goes (rules, counters, fences);
// otherwise it stays and keeps delivering. IP forwarding stays enabled either way.
func (n *NFT) Close() error {
	defer n.nl.Close()
	if !n.cfg.DetachOnExit {
		return nil
	}
	if err := n.nft("", "delete", "table", "inet", NFTTable); err != nil && !strings.Contains(err.Error(), "No such file or directory") {
		return fmt.Errorf("close nftables datapath: delete table %s: %w", NFTTable, err)
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

// nft runs nft with args (stdin: script) in the datapath's namespace; the error carries nft's
// message.
func (n *NFT) nft(script string, args ...string) error {
	_, err := n.nftOutput(script, args...)
	return err
}

func (n *NFT) nftOutput(script string, args ...string) ([]byte, error) {
	name, argv := "nft", args
	if n.netns != "" {
		name, argv = "ip", append([]string{"netns", "exec", n.netns, "nft"}, args...)
	}
	cmd := exec.Command(name, argv...)
	cmd.Stdin = strings.NewReader(script)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("nft %s: %w", strings.Join(args, " "), err)
		}
		return nil, fmt.Errorf("nft %s: %s: %w", strings.Join(args, " "), msg, err)
	}
	return stdout.Bytes(), nil
}
