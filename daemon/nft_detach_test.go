package daemon

import (
	"net/netip"
	"slices"
	"testing"
)

// TestNFTDetachPodUnfences: a pod that goes (abort, recover of an aborted copy) leaves the set
// "fenced": the nftables datapath is a podAttacher whose DetachPod unfences, so the set does not
// keep ifindexes of veths that no longer exist (a later interface given the same ifindex would
// start fenced).
func TestNFTDetachPodUnfences(t *testing.T) {
	tb := newNFTTestbed(t)
	cfg := &Config{Node: "n0", Uplink: "up0", IPv4: nftPub4, IPv6: nftPub6, DetachOnExit: true,
		Services: []ServiceDef{{Name: "kv", Port: 4433, PodPort: 4433, PodIPv4: nftPod4, PodIPv6: nftPod6, Instance: 7}},
		Peers:    []PeerDef{{Name: "n1", Address: netip.MustParseAddr("198.18.200.3")}}}
	n, err := openNFT(cfg, tb.node)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	var dp Datapath = n
	pa, ok := dp.(podAttacher)
	if !ok {
		t.Fatal("the nftables datapath is no podAttacher: deletePod never unfences its pods")
	}
	if err := pa.AttachPod(tb.hostIfindex, "", 2); err != nil {
		t.Fatalf("attach pod: %v", err)
	}
	if err := n.SetFenced(tb.hostIfindex, true); err != nil {
		t.Fatal(err)
	}
	if idx, err := n.FencedPods(); err != nil || !slices.Equal(idx, []int{tb.hostIfindex}) {
		t.Fatalf("fenced %v, %v; want [%d]", idx, err, tb.hostIfindex)
	}
	for range 2 { // detaching twice (recover after an abort) is no error
		if err := pa.DetachPod(tb.hostIfindex); err != nil {
			t.Fatalf("detach pod: %v", err)
		}
	}
	if idx, err := n.FencedPods(); err != nil || len(idx) != 0 {
		t.Fatalf("fenced after DetachPod: %v, %v; want none", idx, err)
	}
}
