package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
)

// pinEnv is a namespace with an uplink veth (up0 <-> rt0) and one pod veth pair (hv0 <-> pv0,
// both in the same namespace: pv0 stands for the pod side) and a private bpffs.
type pinEnv struct {
	ns         string
	dir        string // pin directory
	upIx, hvIx int
	pvIx       int
}

func newPinEnv(t *testing.T, dir string) *pinEnv {
	t.Helper()
	requireBPF(t)
	nsSeq++
	e := &pinEnv{ns: fmt.Sprintf("stdr-dpp-%d-%d", os.Getpid(), nsSeq), dir: dir}
	if err := nsutil.Create(e.ns); err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { nsutil.Delete(e.ns) })
	h, err := nsutil.Handle(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	for _, pair := range [][2]string{{"up0", "rt0"}, {"hv0", "pv0"}} {
		la := netlink.NewLinkAttrs()
		la.Name = pair[0]
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: pair[1]}); err != nil {
			t.Fatalf("add veth %s: %v", pair[0], err)
		}
		for _, n := range pair {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.upIx, e.hvIx, e.pvIx = e.index(t, "up0"), e.index(t, "hv0"), e.index(t, "pv0")
	return e
}

// bpffs mounts a private bpf filesystem and returns a pin directory path in it.
func bpffs(t *testing.T) string {
	t.Helper()
	requireBPF(t)
	root := t.TempDir()
	if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
		t.Skipf("skip: missing capability: mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	return filepath.Join(root, "steerd", "node")
}

func (e *pinEnv) index(t *testing.T, name string) int {
	t.Helper()
	return e.link(t, name).Attrs().Index
}

func (e *pinEnv) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	h, err := nsutil.Handle(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// xdpProg returns the ID of the XDP program attached to interface name (0: none).
func (e *pinEnv) xdpProg(t *testing.T, name string) uint32 {
	t.Helper()
	x := e.link(t, name).Attrs().Xdp
	if x == nil || !x.Attached {
		return 0
	}
	return x.ProgId
}

func (e *pinEnv) open(t *testing.T) *Datapath {
	t.Helper()
	var dp *Datapath
	err := nsutil.Do(e.ns, func() error {
		var err error
		dp, err = Open(Config{Uplink: "up0", NodeAddrs: []netip.Addr{node4, node6}, CID: connid.DefaultConfig(2, 5),
			TunnelPort: tunnelPort, UplinkMTU: mtu, PinDir: e.dir})
		return err
	})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	return dp
}

func (e *pinEnv) attachPod(t *testing.T, dp *Datapath) {
	t.Helper()
	if err := nsutil.Do(e.ns, func() error { return dp.AttachPod(e.hvIx, nsutil.Path(e.ns), e.pvIx) }); err != nil {
		t.Fatalf("attach pod: %v", err)
	}
}

func progID(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

// pinnedLinkID returns the bpf_link ID pinned as name in dir (0: none).
func pinnedLinkID(t *testing.T, dir, name string) uint32 {
	t.Helper()
	l, _, err := loader.LoadPinnedXDP(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatalf("pinned link %s: %v", name, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(info.ID)
}

// TestPinnedLinksSurviveClose: the programs stay attached after Close (a daemon exit or
// kill -9 closes the same file descriptors), the next Open keeps the maps and updates the
// programs in place through the pinned links, AttachPod on an attached veth updates, and
// Detach leaves nothing attached or pinned.
func TestPinnedLinksSurviveClose(t *testing.T) {
	e := newPinEnv(t, bpffs(t))
	dp1 := e.open(t)
	e.attachPod(t, dp1)
	pub := []netip.AddrPort{netip.AddrPortFrom(node4, svcPort)}
	if err := dp1.SetLocal(instLocal, LocalTarget{HostIfindex: e.hvIx, Pod4: pod4, PodPort: podPort, Public: pub}); err != nil {
		t.Fatal(err)
	}
	if err := dp1.SetFenced(e.hvIx, true); err != nil {
		t.Fatal(err)
	}
	steer1, pod1, pass1 := progID(t, dp1.Objects().Steer), progID(t, dp1.Objects().Pod), progID(t, dp1.Objects().Pass)
	if got := e.xdpProg(t, "up0"); got != steer1 {
		t.Fatalf("up0 runs program %d, want xdp_steer %d", got, steer1)
	}
	upLink := pinnedLinkID(t, e.dir, loader.UplinkLinkPin)
	podLink := pinnedLinkID(t, e.dir, loader.PodLinkPin(e.hvIx))
	passLink := pinnedLinkID(t, e.dir, loader.PassLinkPin(e.hvIx))
	if upLink == 0 || podLink == 0 || passLink == 0 {
		t.Fatalf("links not pinned: uplink %d pod %d pass %d", upLink, podLink, passLink)
	}
	if err := dp1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for name, want := range map[string]uint32{"up0": steer1, "hv0": pod1, "pv0": pass1} {
		if got := e.xdpProg(t, name); got != want {
			t.Errorf("after Close %s runs program %d, want %d (still attached)", name, got, want)
		}
	}
	// No process holds the datapath now: the attached xdp_pod and the pinned fenced map
	// still drop what the fenced pod sends.
	if v := e.runAttached(t, pod1, e.hvIx, eth(macHost, macPod, 0x0800, ipv4(ip4(pod4, client4, 64),
		udp(pod4, client4, podPort, cport, []byte{0x40, 1, 2, 3}, false)))); v != xdpDrop {
		t.Errorf("fenced pod's reply with no daemon: verdict %d, want XDP_DROP", v)
	}

	dp2 := e.open(t)
	if _, err := dp2.Maps().Instances.Lookup(instLocal); err != nil {
		t.Errorf("instance lost across Close/Open: %v", err)
	}
	steer2, pod2, pass2 := progID(t, dp2.Objects().Steer), progID(t, dp2.Objects().Pod), progID(t, dp2.Objects().Pass)
	if steer2 == steer1 {
		t.Fatalf("second Open loaded no new program")
	}
	for name, want := range map[string]uint32{"up0": steer2, "hv0": pod2, "pv0": pass2} {
		if got := e.xdpProg(t, name); got != want {
			t.Errorf("after reopen %s runs program %d, want the new %d", name, got, want)
		}
	}
	if f, err := dp2.Fenced(e.hvIx); err != nil || !f {
		t.Errorf("fence lost across Close/Open: %v %v", f, err)
	}
	if got, _ := dp2.FencedPods(); len(got) != 1 || got[0] != e.hvIx {
		t.Errorf("FencedPods after reopen = %v, want [%d]", got, e.hvIx)
	}
	if got := pinnedLinkID(t, e.dir, loader.UplinkLinkPin); got != upLink {
		t.Errorf("uplink link %d, want %d updated in place", got, upLink)
	}
	if got := pinnedLinkID(t, e.dir, loader.PodLinkPin(e.hvIx)); got != podLink {
		t.Errorf("pod link %d, want %d adopted and updated in place", got, podLink)
	}
	e.attachPod(t, dp2) // again on the attached veth: update, same links
	if got := pinnedLinkID(t, e.dir, loader.PodLinkPin(e.hvIx)); got != podLink {
		t.Errorf("AttachPod again: pod link %d, want %d", got, podLink)
	}
	if got := pinnedLinkID(t, e.dir, loader.PassLinkPin(e.hvIx)); got != passLink {
		t.Errorf("AttachPod again: pass link %d, want %d", got, passLink)
	}

	if err := dp2.DetachPod(e.hvIx); err != nil {
		t.Fatal(err)
	}
	if e.xdpProg(t, "hv0") != 0 || e.xdpProg(t, "pv0") != 0 || pinnedLinkID(t, e.dir, loader.PodLinkPin(e.hvIx)) != 0 {
		t.Errorf("DetachPod left hv0 %d pv0 %d pinned %d", e.xdpProg(t, "hv0"), e.xdpProg(t, "pv0"),
			pinnedLinkID(t, e.dir, loader.PodLinkPin(e.hvIx)))
	}
	if f, _ := dp2.Fenced(e.hvIx); f {
		t.Errorf("DetachPod left the veth fenced (its ifindex is reused by the next veth)")
	}
	e.attachPod(t, dp2)
	if err := dp2.Detach(); err != nil {
		t.Fatalf("detach: %v", err)
	}
	for _, name := range []string{"up0", "hv0", "pv0"} {
		if got := e.xdpProg(t, name); got != 0 {
			t.Errorf("after Detach %s runs program %d", name, got)
		}
	}
	if _, err := os.Stat(e.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir left after Detach: %v", err)
	}
	if err := dp2.Detach(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Detach = %v, want ErrClosed", err)
	}
}

// TestStalePinsAfterTeardown: a pod veth deleted while no daemon ran leaves a defunct pinned
// link; a deleted namespace leaves a whole pin directory (its inode number may be reused by
// the next namespace). Neither may break the next Open, and neither may leak state into it.
func TestStalePinsAfterTeardown(t *testing.T) {
	dir := bpffs(t)
	e := newPinEnv(t, dir)
	dp := e.open(t)
	e.attachPod(t, dp)
	if err := dp.SetLocal(instLocal, LocalTarget{HostIfindex: e.hvIx, Pod4: pod4, PodPort: podPort,
		Public: []netip.AddrPort{netip.AddrPortFrom(node4, svcPort)}}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetFenced(e.hvIx, true); err != nil {
		t.Fatal(err)
	}
	dp.Close()

	// The pod is deleted while no daemon runs.
	h, err := nsutil.Handle(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(e.link(t, "hv0")); err != nil {
		t.Fatal(err)
	}
	h.Delete()
	dp = e.open(t)
	if id := pinnedLinkID(t, dir, loader.PodLinkPin(e.hvIx)); id != 0 {
		t.Errorf("defunct pod link %d still pinned", id)
	}
	if id := pinnedLinkID(t, dir, loader.PassLinkPin(e.hvIx)); id != 0 {
		t.Errorf("defunct pass link %d still pinned", id)
	}
	if ents, _ := dp.Maps().Egress.Entries(); len(ents) != 0 {
		t.Errorf("egress entries of the deleted veth kept: %v", ents)
	}
	if got, _ := dp.FencedPods(); len(got) != 0 {
		t.Errorf("fence of the deleted veth kept: %v", got)
	}
	if err := dp.DetachPod(e.hvIx); err != nil {
		t.Errorf("DetachPod of a removed pod: %v", err)
	}
	dp.Close()

	// The whole namespace is deleted (testbed teardown); a new namespace gets the same
	// pin directory, as it does when the kernel reuses the inode number.
	if err := nsutil.Delete(e.ns); err != nil {
		t.Fatal(err)
	}
	e2 := newPinEnv(t, dir)
	dp2 := e2.open(t)
	defer dp2.Detach()
	if got, want := e2.xdpProg(t, "up0"), progID(t, dp2.Objects().Steer); got != want {
		t.Errorf("up0 in the new namespace runs %d, want %d", got, want)
	}
	if ents, _ := dp2.Maps().Instances.Entries(); len(ents) != 0 {
		t.Errorf("routing state of the deleted namespace leaked into the new one: %v", ents)
	}
	if ixs, _ := loader.PinnedPods(dir); len(ixs) != 0 {
		t.Errorf("pod pins of the deleted namespace kept: %v", ixs)
	}
}

// runAttached runs the kernel's program with ID id (what a device has attached) on pkt as if
// received on ifindex, inside the namespace.
func (e *pinEnv) runAttached(t *testing.T, id uint32, ifindex int, pkt []byte) uint32 {
	t.Helper()
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		t.Fatalf("program %d: %v", id, err)
	}
	defer prog.Close()
	var ret uint32
	err = nsutil.Do(e.ns, func() error {
		out := make([]byte, len(pkt)+256)
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out,
			Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)}})
		return err
	})
	if err != nil {
		t.Fatalf("run program %d: %v", id, err)
	}
	return ret
}
