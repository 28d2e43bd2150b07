package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/internal/nsutil"
)

var (
	nftPub4 = netip.MustParseAddr("198.18.200.2")
	nftPub6 = netip.MustParseAddr("2001:2:0:c8::2")
	nftPod4 = netip.MustParseAddr("198.19.0.1")
	nftPod6 = netip.MustParseAddr("2001:2:0:ff::1")
)

// TestNFTPlan: the rules of a local instance (IPv4 + IPv6), a remote one (IPv4-only node), an
// unconfigured one (none); the same state gives the same plan whatever the map order. That
// nf_tables holds these very rules (exprs) is TestNFTDatapath's check against `nft list`.
func TestNFTPlan(t *testing.T) {
	svcs := map[uint64]nftService{
		7: {Port: 4433, Pub4: nftPub4, Pub6: nftPub6},
		8: {Port: 4434, Pub4: nftPub4},
	}
	local := map[uint64]LocalTarget{7: {HostIfindex: 5, Pod4: nftPod4, Pod6: nftPod6, PodPort: 4433}}
	remote := map[uint64]string{8: "n1", 9: "n1"} // 9: not configured, no rule
	rules, counters := nftPlan("up0", svcs, local, remote)
	want := `fwd_filter: iif @fenced counter name "dropped_fenced" drop
fwd_filter: oif @fenced counter name "dropped_fenced" drop
pre_nat: ip daddr 198.18.200.2 udp dport 4433 dnat ip to 198.19.0.1:4433
post_nat: oifname "up0" ip saddr 198.19.0.1 udp sport 4433 snat ip to 198.18.200.2:4433
fwd_filter: ip daddr 198.19.0.1 udp dport 4433 counter name "inst_7" counter name "delivered"
pre_nat: ip6 daddr 2001:2:0:c8::2 udp dport 4433 dnat ip6 to [2001:2:0:ff::1]:4433
post_nat: oifname "up0" ip6 saddr 2001:2:0:ff::1 udp sport 4433 snat ip6 to [2001:2:0:c8::2]:4433
fwd_filter: ip6 daddr 2001:2:0:ff::1 udp dport 4433 counter name "inst_7" counter name "delivered"
pre_filter: ip daddr 198.18.200.2 udp dport 4434 counter name "inst_8" counter name "dropped_stale" drop
`
	if got := planText(rules); got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
	if !slices.Equal(counters, []string{"inst_7", "inst_8"}) {
		t.Errorf("instance counters %v, want [inst_7 inst_8]", counters)
	}
	for range 20 {
		if again, _ := nftPlan("up0", svcs, local, remote); planText(again) != planText(rules) {
			t.Fatalf("same state, other plan:\n%s", planText(again))
		}
	}
	// A local instance whose pod has only IPv4 gets no IPv6 rule.
	v4only, _ := nftPlan("up0", svcs, map[uint64]LocalTarget{7: {Pod4: nftPod4, PodPort: 4433}}, nil)
	if txt := planText(v4only); strings.Contains(txt, "ip6") || !strings.Contains(txt, "dnat ip to 198.19.0.1:4433") {
		t.Errorf("IPv4-only pod:\n%s", txt)
	}
}

func planText(rules []nftRule) string {
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "%s: %s\n", r.Chain, r)
	}
	return b.String()
}

func TestConfigDatapath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{{"", DatapathXDP}, {"xdp", DatapathXDP}, {"nftables", DatapathNFT}, {"ebpf", ""}} {
		c := Config{Node: "n0", Uplink: "eth0", IPv4: nftPub4, PKIDir: "/x", Runtime: "none", Datapath: tc.in}
		err := c.Normalize()
		if tc.want == "" {
			if !errors.Is(err, ErrBadRequest) || !strings.Contains(fmt.Sprint(err), `datapath "ebpf"`) {
				t.Errorf("datapath %q: error %v, want a bad request naming it", tc.in, err)
			}
			continue
		}
		if err != nil || c.Datapath != tc.want {
			t.Errorf("datapath %q: %q, %v; want %q", tc.in, c.Datapath, err, tc.want)
		}
	}
	// A bad datapath is named even when other fields are missing too (it is checked first), and
	// --no-datapath with the nftables datapath is refused.
	c := Config{Node: "n0", Datapath: "ebpf"}
	if err := c.Normalize(); err == nil || !strings.Contains(err.Error(), `datapath "ebpf"`) {
		t.Errorf("datapath ebpf without an uplink: %v, want the datapath named", err)
	}
	c = Config{Node: "n0", NoDatapath: true, Datapath: DatapathNFT, PKIDir: "/x", Runtime: "none"}
	if err := c.Normalize(); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("no_datapath with nftables: %v, want a bad request", err)
	}
}

// nftTestbed is client -- node -- pod, three namespaces joined by veths:
//
//	client  c0 198.18.200.1/24                 route default via node
//	node    up0 198.18.200.2/24 (the uplink)   hv0 198.19.255.254/32, route 198.19.0.1/32 dev hv0
//	pod     eth0 198.19.0.1/32                 default via 198.19.255.254 onlink
//
// and the same in IPv6: client 2001:2:0:c8::1/64, node 2001:2:0:c8::2/64 and fe80::1 on hv0,
// pod 2001:2:0:ff::1/128 default via fe80::1.
type nftTestbed struct {
	client, node, pod string
	hostIfindex       int
}

func newNFTTestbed(t *testing.T) *nftTestbed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root is needed for network namespaces and nftables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skip: missing capability: nft is not installed (make deps)")
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	tb := &nftTestbed{client: "stdr-nftc-" + id, node: "stdr-nftn-" + id, pod: "stdr-nftp-" + id}
	for _, ns := range []string{tb.client, tb.node, tb.pod} {
		if err := nsutil.Create(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nsutil.Delete(ns) })
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("-n", tb.node, "link", "add", "up0", "type", "veth", "peer", "name", "c0", "netns", tb.client)
	run("-n", tb.node, "link", "add", "hv0", "type", "veth", "peer", "name", "eth0", "netns", tb.pod)
	run("-n", tb.client, "addr", "add", "198.18.200.1/24", "dev", "c0")
	run("-n", tb.client, "link", "set", "c0", "up")
	run("-n", tb.client, "link", "set", "lo", "up")
	run("-n", tb.node, "addr", "add", "198.18.200.2/24", "dev", "up0")
	run("-n", tb.node, "addr", "add", "198.19.255.254/32", "dev", "hv0")
	run("-n", tb.node, "link", "set", "up0", "up")
	run("-n", tb.node, "link", "set", "hv0", "up")
	run("-n", tb.node, "route", "add", "198.19.0.1/32", "dev", "hv0")
	run("-n", tb.pod, "addr", "add", "198.19.0.1/32", "dev", "eth0")
	run("-n", tb.pod, "link", "set", "eth0", "up")
	run("-n", tb.pod, "link", "set", "lo", "up")
	run("-n", tb.pod, "route", "add", "198.19.255.254/32", "dev", "eth0")
	run("-n", tb.pod, "route", "add", "default", "via", "198.19.255.254", "dev", "eth0")
	run("-n", tb.client, "addr", "add", "2001:2:0:c8::1/64", "dev", "c0", "nodad")
	run("-n", tb.node, "addr", "add", "2001:2:0:c8::2/64", "dev", "up0", "nodad")
	run("-n", tb.node, "addr", "add", "fe80::1/64", "dev", "hv0", "nodad")
	run("-n", tb.node, "route", "add", "2001:2:0:ff::1/128", "dev", "hv0")
	run("-n", tb.pod, "addr", "add", "2001:2:0:ff::1/128", "dev", "eth0", "nodad")
	run("-n", tb.pod, "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	h, err := nsutil.Handle(tb.node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("hv0")
	if err != nil {
		t.Fatal(err)
	}
	tb.hostIfindex = l.Attrs().Index
	return tb
}

// nftList returns `nft list table inet steerd` in namespace ns.
func nftList(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", NFTTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}

// listen opens a UDP socket in namespace ns.
func listen(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := nsutil.Do(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recvFrom reads one datagram within d; ok false on timeout.
func recvFrom(c *net.UDPConn, d time.Duration) (string, netip.AddrPort, bool) {
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", netip.AddrPort{}, false
	}
	return string(buf[:n]), from, true
}

// TestNFTDatapath drives the NFT datapath in a real node namespace: SetLocal delivers the public
// port to the pod (DNAT) and the pod's reply comes from the public address (conntrack); a packet
// the pod starts leaves with the public address (SNAT); SetLocal twice gives one rule set;
// SetRemote drops the port (counted, no ICMP port unreachable back); fencing silences the pod;
// Close keeps the table (fence, counters) for the next steerd, and with DetachOnExit removes it.
func TestNFTDatapath(t *testing.T) {
	tb := newNFTTestbed(t)
	cfg := &Config{Node: "n0", Uplink: "up0", IPv4: nftPub4, IPv6: nftPub6, DetachOnExit: true,
		Services: []ServiceDef{{Name: "kv", Port: 4433, PodPort: 4433, PodIPv4: nftPod4, PodIPv6: nftPod6, Instance: 7}},
		Peers:    []PeerDef{{Name: "n1", Address: netip.MustParseAddr("198.18.200.3")}}}
	n, err := openNFT(cfg, tb.node)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			n.Close()
		}
	})
	lt := LocalTarget{HostIfindex: tb.hostIfindex, Pod4: nftPod4, Pod6: nftPod6, PodPort: 4433}
	for range 2 {
		if err := n.SetLocal(7, lt); err != nil {
			t.Fatalf("set local: %v", err)
		}
	}
	// The kernel holds exactly the planned rules, as nft reads them back.
	listed := nftList(t, tb.node)
	plan, _ := nftPlan("up0", n.services(), map[uint64]LocalTarget{7: lt}, nil)
	for _, r := range plan {
		if c := strings.Count(listed, "\t"+r.String()+"\n"); c != 1 {
			t.Errorf("rule %q listed %d times, want 1 (SetLocal twice):\n%s", r, c, listed)
		}
	}
	if err := n.SetLocal(99, lt); !errors.Is(err, ErrUnknownService) || !strings.Contains(err.Error(), "set local route for instance 99") {
		t.Errorf("unknown instance: %v, want ErrUnknownService naming it", err)
	}

	podSock := listen(t, tb.pod, "198.19.0.1:4433")
	cli := listen(t, tb.client, "198.18.200.1:5555")
	pub := netip.AddrPortFrom(nftPub4, 4433)
	if _, err := cli.WriteToUDPAddrPort([]byte("ping"), pub); err != nil {
		t.Fatal(err)
	}
	msg, from, ok := recvFrom(podSock, 2*time.Second)
	if !ok || msg != "ping" || from.String() != "198.18.200.1:5555" {
		t.Fatalf("pod got %q from %v (ok %v), want ping from the client 198.18.200.1:5555", msg, from, ok)
	}
	if _, err := podSock.WriteToUDPAddrPort([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	if msg, from, ok := recvFrom(cli, 2*time.Second); !ok || msg != "pong" || from != pub {
		t.Fatalf("client got %q from %v (ok %v), want pong from %v", msg, from, ok, pub)
	}
	// A packet the pod starts (no conntrack entry yet) leaves with the public address.
	cli2 := listen(t, tb.client, "198.18.200.1:5556")
	if _, err := podSock.WriteToUDPAddrPort([]byte("hello"), netip.MustParseAddrPort("198.18.200.1:5556")); err != nil {
		t.Fatal(err)
	}
	if msg, from, ok := recvFrom(cli2, 2*time.Second); !ok || msg != "hello" || from != pub {
		t.Fatalf("client got %q from %v (ok %v), want hello from %v (SNAT)", msg, from, ok, pub)
	}
	// IPv6: the same through the ip6 rules.
	podSock6 := listen(t, tb.pod, "[2001:2:0:ff::1]:4433")
	cli6 := listen(t, tb.client, "[2001:2:0:c8::1]:5555")
	pub6 := netip.AddrPortFrom(nftPub6, 4433)
	if _, err := cli6.WriteToUDPAddrPort([]byte("ping6"), pub6); err != nil {
		t.Fatal(err)
	}
	msg, from6, ok := recvFrom(podSock6, 3*time.Second)
	if !ok || msg != "ping6" || from6.String() != "[2001:2:0:c8::1]:5555" {
		t.Fatalf("pod got %q from %v (ok %v), want ping6 from the client [2001:2:0:c8::1]:5555", msg, from6, ok)
	}
	if _, err := podSock6.WriteToUDPAddrPort([]byte("pong6"), from6); err != nil {
		t.Fatal(err)
	}
	if msg, from, ok := recvFrom(cli6, 3*time.Second); !ok || msg != "pong6" || from != pub6 {
		t.Fatalf("client got %q from %v (ok %v), want pong6 from %v", msg, from, ok, pub6)
	}
	st, err := n.InstanceStats(7)
	if err != nil || st.Packets != 2 || !st.LastSeen.IsZero() {
		t.Errorf("instance stats %+v, %v; want 2 packets (IPv4 and IPv6), no LastSeen", st, err)
	}

	// Fenced: nothing passes in either direction.
	if err := n.SetFenced(tb.hostIfindex, true); err != nil {
		t.Fatalf("fence: %v", err)
	}
	if fp, err := n.FencedPods(); err != nil || !slices.Equal(fp, []int{tb.hostIfindex}) {
		t.Errorf("fenced pods %v, %v; want [%d]", fp, err, tb.hostIfindex)
	}
	_, _ = cli.WriteToUDPAddrPort([]byte("fenced"), pub)
	if msg, _, ok := recvFrom(podSock, 300*time.Millisecond); ok {
		t.Errorf("fenced pod received %q", msg)
	}
	if err := n.SetFenced(tb.hostIfindex, false); err != nil {
		t.Fatalf("unfence: %v", err)
	}
	if err := n.SetFenced(tb.hostIfindex, false); err != nil {
		t.Errorf("unfence twice: %v", err)
	}
	if fp, err := n.FencedPods(); err != nil || len(fp) != 0 {
		t.Errorf("fenced pods after unfence %v, %v", fp, err)
	}

	// Remote: the port is dropped, counted, and the client gets no ICMP error.
	if err := n.SetRemote(7, "nx"); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("unknown peer: %v", err)
	}
	if err := n.SetRemote(7, "n1"); err != nil {
		t.Fatalf("set remote: %v", err)
	}
	before, _ := n.Counters()
	for range 3 {
		_, _ = cli.WriteToUDPAddrPort([]byte("stale"), pub)
	}
	if msg, _, ok := recvFrom(podSock, 300*time.Millisecond); ok {
		t.Errorf("pod received %q after SetRemote", msg)
	}
	after, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after[NFTDroppedStale] - before[NFTDroppedStale]; d != 3 {
		t.Errorf("dropped_stale +%d, want 3 (counters %v)", d, after)
	}
	if after[NFTDelivered] != 2 || after[NFTDroppedFenced] == 0 {
		t.Errorf("counters %v: want delivered 2 and the fenced packet counted", after)
	}
	icmp, _ := exec.Command("ip", "netns", "exec", tb.node, "nstat", "-az", "IcmpOutDestUnreachs").CombinedOutput()
	if f := strings.Fields(string(icmp)); len(f) >= 3 && f[len(f)-2] != "0" {
		t.Errorf("node sent ICMP destination unreachable for stale packets:\n%s", icmp)
	}
	if st, _ := n.InstanceStats(7); st.Packets != 5 {
		t.Errorf("instance packets %d, want 5 (2 delivered + 3 dropped)", st.Packets)
	}
	if err := n.Delete(7); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if out := nftList(t, tb.node); strings.Contains(out, "4433") {
		t.Errorf("rules of instance 7 left after Delete:\n%s", out)
	}
	// Without DetachOnExit the table outlives Close: a restarted steerd finds the fence and the
	// counters (the XDP datapath's pinned maps do the same).
	if err := n.SetFenced(tb.hostIfindex, true); err != nil {
		t.Fatalf("fence: %v", err)
	}
	cfg.DetachOnExit = false
	closed = true
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if n, err = openNFT(cfg, tb.node); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	closed = false
	if fp, err := n.FencedPods(); err != nil || !slices.Equal(fp, []int{tb.hostIfindex}) {
		t.Errorf("fenced pods after a restart %v, %v; want [%d]", fp, err, tb.hostIfindex)
	}
	if cs, err := n.Counters(); err != nil || cs[NFTDroppedStale] != after[NFTDroppedStale] || cs[NFTDelivered] != 2 {
		t.Errorf("counters after a restart %v, %v; want those before it %v", cs, err, after)
	}
	cfg.DetachOnExit = true
	closed = true
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", tb.node, "nft", "list", "table", "inet", NFTTable).CombinedOutput(); err == nil {
		t.Errorf("table still there after Close with DetachOnExit:\n%s", out)
	}
}
