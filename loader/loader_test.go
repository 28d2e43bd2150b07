package loader

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// requireBPF skips when the process cannot load BPF programs.
func requireBPF(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root (CAP_BPF, CAP_NET_ADMIN) needed to load XDP programs")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Skipf("skip: missing capability: remove memlock rlimit: %v", err)
	}
}

func testOptions() Options {
	return Options{
		ServerIDLen: 2, CIDLen: 8, TunnelPort: 6081, UplinkMTU: 1600,
		Node4: netip.MustParseAddr("198.18.20.2"), Node6: netip.MustParseAddr("2001:2:0:20::2"),
	}
}

func TestLoad(t *testing.T) {
	requireBPF(t)
	o, err := Load(testOptions())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer o.Close()
	for name, p := range map[string]*ebpf.Program{"steer": o.Steer, "pod": o.Pod, "pass": o.Pass, "parse": o.Parse} {
		if p == nil || p.Type() != ebpf.XDP {
			t.Errorf("program %s: got %v", name, p)
		}
	}
	// The pod program must share the steer program's maps.
	info, err := o.Pod.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	want := map[ebpf.MapID]bool{}
	for _, m := range []*ebpf.Map{o.Maps.Clients, o.Maps.Egress, o.Maps.Counters} {
		mi, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := mi.ID()
		want[id] = true
	}
	found := 0
	for _, id := range ids {
		if want[id] {
			found++
		}
	}
	if found != len(want) {
		t.Errorf("pod program uses %d of the %d shared maps (ids %v)", found, len(want), ids)
	}
}

func TestLoadRejectsOptions(t *testing.T) {
	for _, o := range []Options{
		{ServerIDLen: 0, CIDLen: 8}, {ServerIDLen: 7, CIDLen: 20},
		{ServerIDLen: 2, CIDLen: 6}, {ServerIDLen: 6, CIDLen: 10}, {ServerIDLen: 2, CIDLen: 21},
		{ServerIDLen: 2, CIDLen: 8, ConfigRotation: 7},
		{ServerIDLen: 2, CIDLen: 8, Node4: netip.MustParseAddr("2001:2::1")},
		{ServerIDLen: 2, CIDLen: 8, Node6: netip.MustParseAddr("198.18.0.1")},
		{ServerIDLen: 2, CIDLen: 8, UplinkMTU: 70000},
	} {
		if _, err := Load(o); !errors.Is(err, ErrOptions) {
			t.Errorf("Load(%+v) = %v, want ErrOptions", o, err)
		}
	}
}

// bpffsDir mounts a private bpffs and returns the pin directory of the test's network namespace in it.
func bpffsDir(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
		t.Skipf("skip: missing capability: mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	dir, err := PinDirFor(root)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPinReuse(t *testing.T) {
	requireBPF(t)
	dir := bpffsDir(t)
	root := filepath.Dir(dir)
	opts := testOptions()
	opts.PinDir = dir
	o1, err := Load(opts)
	if err != nil {
		t.Fatalf("first load: %v", err)
	}
	key := uint64(0x1234)
	val := make([]byte, o1.Maps.Instances.ValueSize())
	val[0] = 1
	if err := o1.Maps.Instances.Put(key, val); err != nil {
		t.Fatal(err)
	}
	o1.Close()
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "tmp-") {
			t.Errorf("temp pin dir left behind: %s", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "instances")); err != nil {
		t.Fatalf("instances not pinned: %v", err)
	}
	o2, err := Load(opts)
	if err != nil {
		t.Fatalf("second load: %v", err)
	}
	defer o2.Close()
	got := make([]byte, len(val))
	if err := o2.Maps.Instances.Lookup(key, &got); err != nil {
		t.Fatalf("state not kept across loads: %v", err)
	}
	if got[0] != 1 {
		t.Errorf("instance kind = %d, want 1", got[0])
	}
	if err := Unpin(dir); err != nil {
		t.Fatal(err)
	}
}

// replacePin pins a hash/array map of the given shape at dir/name instead of the loader's.
func replacePin(t *testing.T, dir, name string, spec *ebpf.MapSpec) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestPinUpgrade checks what Load does with a pin directory of another version: a counters
// map of another size (a new steer_reason) is recreated, routing state kept; a missing map is
// created and pinned; an incompatible routing map fails with ErrPinIncompatible.
func TestPinUpgrade(t *testing.T) {
	requireBPF(t)
	dir := bpffsDir(t)
	opts := testOptions()
	opts.PinDir = dir
	o1, err := Load(opts)
	if err != nil {
		t.Fatalf("first load: %v", err)
	}
	want := o1.Maps.Counters.MaxEntries()
	val := make([]byte, o1.Maps.Instances.ValueSize())
	val[0] = 2
	if err := o1.Maps.Instances.Put(uint64(7), val); err != nil {
		t.Fatal(err)
	}
	o1.Close()

	replacePin(t, dir, "counters", &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: want - 2})
	if err := os.Remove(filepath.Join(dir, "egress")); err != nil {
		t.Fatal(err)
	}
	o2, err := Load(opts)
	if err != nil {
		t.Fatalf("load over an older pin dir: %v", err)
	}
	if got := o2.Maps.Counters.MaxEntries(); got != want {
		t.Errorf("counters max entries = %d, want %d", got, want)
	}
	got := make([]byte, len(val))
	if err := o2.Maps.Instances.Lookup(uint64(7), &got); err != nil || got[0] != 2 {
		t.Errorf("instances entry not kept: %v %v", got[0], err)
	}
	o2.Close()
	for _, n := range []string{"counters", "egress"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, n), nil)
		if err != nil {
			t.Fatalf("%s not re-pinned: %v", n, err)
		}
		if n == "counters" && m.MaxEntries() != want {
			t.Errorf("pinned counters max entries = %d, want %d", m.MaxEntries(), want)
		}
		m.Close()
	}

	replacePin(t, dir, "instances", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 16})
	if _, err := Load(opts); !errors.Is(err, ErrPinIncompatible) {
		t.Errorf("load with an incompatible instances map: %v, want ErrPinIncompatible", err)
	}
	if err := Unpin(dir); err != nil {
		t.Fatal(err)
	}
}
