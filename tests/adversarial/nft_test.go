package adversarial

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/pod"
)

// setDatapath rewrites node i's config file (what StartSteerd runs steerd with) to datapath dp
// and returns a func that puts the previous file back.
func setDatapath(t *testing.T, c *demo.Cluster, i int, dp string) (restore func()) {
	t.Helper()
	p := filepath.Join(c.WorkDir, c.Names[i]+".json")
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(orig, &m); err != nil {
		t.Fatal(err)
	}
	m["datapath"] = dp
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() { os.WriteFile(p, orig, 0o600) }
}

// inNode runs a command in node i's network namespace (nsenter --net, like StartSteerd).
func inNode(c *demo.Cluster, i int, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + nsutil.Path(c.TB.Nodes[i].NS), "--"}, args...)...).CombinedOutput()
	return string(out), err
}

// xdpAttached reports whether an XDP program is attached to node i's uplink.
func xdpAttached(t *testing.T, c *demo.Cluster, i int) bool {
	t.Helper()
	out, err := inNode(c, i, "ip", "-d", "link", "show", "dev", c.TB.Nodes[i].Link)
	if err != nil {
		t.Fatalf("ip link: %v %s", err, out)
	}
	return strings.Contains(out, "prog/xdp")
}

// nftTable returns `nft list table inet steerd` in node i ("" when there is no such table).
func nftTable(c *demo.Cluster, i int) string {
	out, err := inNode(c, i, "nft", "list", "table", "inet", daemon.NFTTable)
	if err != nil {
		return ""
	}
	return out
}

// TestDatapathSwitchAfterKill: steerd with the XDP datapath is killed (SIGKILL: its XDP program
// stays attached to the uplink, its maps pinned) and started again with --datapath nftables,
// then killed again and started with XDP over the nftables table left behind. Each start must
// either fail with an error or take over cleanly: never an XDP program on the uplink and the
// nftables table both steering packets, and kv must stay reachable at n0's public address.
func TestDatapathSwitchAfterKill(t *testing.T) {
	c := cluster(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skip: missing capability: nft is not installed")
	}
	defer resetKV(t, c)
	if !xdpAttached(t, c, 0) {
		t.Fatal("shared cluster: no XDP program on n0's uplink")
	}
	c.StopSteerd(0, true)
	restore := setDatapath(t, c, 0, daemon.DatapathNFT)
	defer restore()
	err := c.StartSteerd(context.Background(), 0)
	xdp, table := xdpAttached(t, c, 0), nftTable(c, 0)
	t.Logf("xdp -> nftables: start err %v, XDP attached %v, nft table %v", err, xdp, table != "")
	if err == nil {
		if xdp && table != "" {
			t.Errorf("steerd --datapath nftables runs with the previous run's XDP program still on the uplink: both datapaths active")
		}
		if perr := probeKV(c, 0, 500*time.Millisecond); perr != nil {
			t.Errorf("kv at n0 after the switch to nftables: %v", perr)
		}
	} else if table != "" && xdp {
		t.Errorf("failed start left both datapaths: %v", err)
	}

	// And back: nftables killed, XDP started over its table.
	c.StopSteerd(0, true)
	restore()
	err = c.StartSteerd(context.Background(), 0)
	xdp, table = xdpAttached(t, c, 0), nftTable(c, 0)
	t.Logf("nftables -> xdp: start err %v, XDP attached %v, nft table:\n%s", err, xdp, table)
	if err == nil {
		if perr := probeKV(c, 0, 500*time.Millisecond); perr != nil {
			t.Errorf("kv at n0 after the switch back to XDP: %v", perr)
		}
		if xdp && table != "" {
			t.Errorf("steerd (XDP) runs with the previous run's nftables table inet %s still there (both datapaths active):\n%s", daemon.NFTTable, table)
		}
	} else if table != "" && xdp {
		t.Errorf("failed start left both datapaths: %v", err)
	}
}

// incomingPages returns the size of the largest pages-*.img under node i's incoming image
// directories (0: none yet).
func incomingPages(c *demo.Cluster, i int) int64 {
	ms, _ := filepath.Glob(filepath.Join(c.Configs[i].StateDir, "incoming", "*", "pages-*.img"))
	var max int64
	for _, m := range ms {
		if fi, err := os.Stat(m); err == nil && fi.Size() > max {
			max = fi.Size()
		}
	}
	return max
}

// nftRules returns the rule lines of `nft list table inet steerd` on node i.
func nftRules(c *demo.Cluster, i int) []string {
	var rules []string
	for _, l := range strings.Split(nftTable(c, i), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") ||
			strings.HasPrefix(l, "type ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "counter ") ||
			strings.HasPrefix(l, "packets ") || strings.HasPrefix(l, "elements ") || strings.HasPrefix(l, "flags ") {
			continue
		}
		rules = append(rules, l)
	}
	return rules
}

// checkRules fails when node i's table holds a rule twice, or rules for kv that do not match
// where it runs (local: on node i; otherwise moved away), or lacks the two fence rules.
func checkRules(t *testing.T, c *demo.Cluster, i int, local bool) {
	t.Helper()
	rules := nftRules(c, i)
	seen, dnat, stale, fence := map[string]bool{}, 0, 0, 0
	for _, r := range rules {
		if seen[r] {
			t.Errorf("%s: rule twice in table inet %s: %s", c.Names[i], daemon.NFTTable, r)
		}
		seen[r] = true
		switch {
		case strings.Contains(r, " dnat "):
			dnat++
		case strings.Contains(r, `"`+daemon.NFTDroppedStale+`" drop`):
			stale++
		case strings.Contains(r, "@fenced"):
			fence++
		}
	}
	// Local: DNAT for IPv4 and IPv6; remote: the stale packets of both families dropped.
	wantDNAT, wantStale := map[bool]int{true: 2, false: 0}[local], map[bool]int{true: 0, false: 2}[local]
	if dnat != wantDNAT || stale != wantStale || fence != 2 {
		t.Errorf("%s: %d DNAT, %d stale-drop, %d fence rules; want %d, %d, 2:\n%s", c.Names[i], dnat, stale, fence,
			wantDNAT, wantStale, strings.Join(rules, "\n"))
	}
}

// TestNFTClusterFaults runs a two-node cluster with the nftables datapath and a kv with 40 MiB of
// memory (its pages image goes in parts over the bulk peer connections) and:
//
//   - SourceKilledInDrain: kills n0's steerd during the drain of a committed migration n0 -> n1
//     and starts it again. kv must run and answer on n1; after Recover, n0's table must hold no
//     DNAT for kv and no rule twice, n1's exactly its DNAT rules.
//   - DestKilledMidParts: migrates kv back n1 -> n0 and kills n0's steerd while the pages image
//     arrives in parts. The migration must roll back with kv running and answering on n1, and
//     n1's table must still DNAT kv.
//   - DestKilledAfterRestore: kills n1's steerd once the restored kv runs there (before the
//     commit). At most one copy may talk: n1's copy stays in the fenced set, also after n1's
//     steerd restarted, and n0's table DNATs kv again after a rollback.
func TestNFTClusterFaults(t *testing.T) {
	requireTools(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skip: missing capability: nft is not installed")
	}
	dir := t.TempDir()
	c, err := demo.StartCluster(context.Background(), demo.ClusterOptions{
		Steerd: filepath.Join(bin, "steerd"), Steerctl: filepath.Join(bin, "steerctl"),
		KVService: filepath.Join(bin, "kvservice"), WorkDir: dir,
		KVArgs: []string{"-ballast-mb", "40"}, Datapath: daemon.DatapathNFT,
	})
	if err != nil {
		t.Fatalf("start nftables cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("tear down nftables cluster: %v", err)
		}
	})
	// kv touches its 40 MiB ballast before its quicext control socket listens.
	kvReady := func(t *testing.T, i int) {
		t.Helper()
		if !waitFor(15*time.Second, func() bool { _, err := quicextStatus(c, i); return err == nil }) {
			t.Fatalf("kv on %s: quicext control never answered", c.Names[i])
		}
	}
	resetKV(t, c)

	t.Run("SourceKilledInDrain", func(t *testing.T) {
		if serviceState(c, 0, demo.Service) != "running" || serviceState(c, 1, demo.Service) == "running" {
			resetKV(t, c)
		}
		kvReady(t, 0)
		ld := startLoad(t, c, 0, 2)
		m, err := c.API[0].Migrate(context.Background(), api.MigrateRequest{Service: demo.Service, To: c.Names[1],
			Strategy: "symmetric", Technique: api.Cold, DrainPeriod: 2 * time.Second, DrainTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("start migration: %v", err)
		}
		inDrain := waitFor(20*time.Second, func() bool {
			mm, err := c.API[0].Migration(context.Background(), m.ID)
			return err == nil && (mm.Phase == api.PhaseDrain || mm.Result != api.Running)
		})
		mm, _ := c.API[0].Migration(context.Background(), m.ID)
		if !inDrain || mm == nil || mm.Phase != api.PhaseDrain {
			ld.Stop()
			t.Fatalf("migration %s never reached the drain: %+v", m.ID, mm)
		}
		c.StopSteerd(0, true)
		t.Log("steerd n0 killed during the drain")
		ld.Stop()
		if err := c.StartSteerd(context.Background(), 0); err != nil {
			t.Fatalf("restart steerd n0: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
		if st := serviceState(c, 1, demo.Service); st != "running" {
			t.Errorf("kv on n1: %q, want running", st)
		}
		if st := serviceState(c, 0, demo.Service); st == "running" {
			t.Errorf("restarted n0 claims kv running")
		}
		if err := probeKV(c, 1, 500*time.Millisecond); err != nil {
			t.Errorf("kv at n1 after n0's restart: %v", err)
		}
		checkRules(t, c, 0, false)
		checkRules(t, c, 1, true)
		out, err := inNode(c, 0, "nft", "list", "table", "inet", daemon.NFTTable)
		t.Logf("n0 table after Recover (%v):\n%s", err, out)
	})
	t.Run("DestKilledMidParts", func(t *testing.T) {
		if st := serviceState(c, 1, demo.Service); st != "running" {
			t.Fatalf("kv on n1: %q; this case migrates it back from where SourceKilledInDrain left it", st)
		}
		kvReady(t, 1)
		id := startMigration(t, c, 1, 0)
		var ended *api.Migration
		waitFor(20*time.Second, func() bool {
			if incomingPages(c, 0) > 0 {
				return true
			}
			mm, err := c.API[0].Migration(context.Background(), id)
			if err == nil && mm.Result != api.Running {
				ended = mm
				return true
			}
			return false
		})
		if incomingPages(c, 0) == 0 {
			out, _ := exec.Command("find", filepath.Join(c.Configs[0].StateDir, "incoming")).CombinedOutput()
			t.Fatalf("migration %s: no pages image ever arrived on n0 (migration %+v); n0 incoming:\n%s", id, ended, out)
		}
		got := incomingPages(c, 0)
		c.StopSteerd(0, true)
		t.Logf("steerd n0 killed with %d bytes of the pages image received", got)
		m := waitResult(t, c, 1, id, 20*time.Second)
		t.Logf("migration: %s after %v: %v", m.Result, m.Ended.Sub(m.Started), m.Error)
		if m.Result != api.RolledBack {
			t.Errorf("migration to a destination killed mid-transfer: %s, want rolled-back", m.Result)
		}
		if st, rs := serviceState(c, 1, demo.Service), runcState(c, 1, demo.Service); st != "running" || rs != "running" {
			t.Errorf("kv on n1: steerd %q, runc %q; want running", st, rs)
		}
		if err := probeKV(c, 1, 500*time.Millisecond); err != nil {
			t.Errorf("kv at n1 after the rollback: %v", err)
		}
		checkRules(t, c, 1, true)
		if err := c.StartSteerd(context.Background(), 0); err != nil {
			t.Fatalf("restart steerd n0: %v", err)
		}
	})

	t.Run("DestKilledAfterRestore", func(t *testing.T) {
		resetKV(t, c)
		kvReady(t, 0)
		id := startMigration(t, c, 0, 1)
		if !waitFor(30*time.Second, func() bool { return runcState(c, 1, demo.Service) == "running" }) {
			t.Fatalf("kv never ran on n1")
		}
		c.StopSteerd(1, true)
		m := waitResult(t, c, 0, id, 20*time.Second)
		rs0, rs1, fenced := runcState(c, 0, demo.Service), runcState(c, 1, demo.Service), nftKVFenced(t, c, 1)
		t.Logf("migration %s: %s: %v; runc n0 %q n1 %q (n1 pod fenced %v)", id, m.Result, m.Error, rs0, rs1, fenced)
		if rs0 == "running" && rs1 == "running" && !fenced {
			t.Errorf("kv runs unfenced on both n0 and n1 after the destination's steerd died post-restore (result %s)", m.Result)
		}
		if m.Result == api.RolledBack {
			if err := probeKV(c, 0, 500*time.Millisecond); err != nil {
				t.Errorf("kv at n0 after the rollback: %v", err)
			}
			checkRules(t, c, 0, true)
		}
		if err := c.StartSteerd(context.Background(), 1); err != nil {
			t.Fatalf("restart steerd n1: %v", err)
		}
		rs1, fenced = runcState(c, 1, demo.Service), nftKVFenced(t, c, 1)
		if !waitFor(20*time.Second, func() bool { return len(staleFences(t, c, 1)) == 0 }) {
			t.Errorf("n1: fenced set holds interfaces that no longer exist: %v", staleFences(t, c, 1))
		}
		t.Logf("after restarting steerd n1: runc n1 %q fenced %v, steerd n1 reports kv %q", rs1, fenced, serviceState(c, 1, demo.Service))
		if m.Result == api.RolledBack && rs1 == "running" && !fenced {
			t.Errorf("restarted steerd n1 unfenced the copy of a migration n0 rolled back")
		}
	})
}

// podNeighbors checks node i's neighbor entries for kv's pod: on the host-side veth, the pod
// addresses must be PERMANENT at the MAC the pod's veth has now; in the pod, the gateways at the
// host-side veth's MAC.
func podNeighbors(t *testing.T, c *demo.Cluster, i int) {
	t.Helper()
	ns := c.Configs[i].PodNSPrefix + demo.Service
	hostVeth := pod.HostVethName(ns)
	mac := func(out string) string {
		f := strings.Fields(out[strings.Index(out, "link/ether")+len("link/ether"):])
		return f[0]
	}
	podLink, err := exec.Command("ip", "-n", ns, "link", "show", "dev", pod.PodLink).CombinedOutput()
	if err != nil || !strings.Contains(string(podLink), "link/ether") {
		t.Errorf("%s: pod link: %v %s", c.Names[i], err, podLink)
		return
	}
	hostLink, err := inNode(c, i, "ip", "link", "show", "dev", hostVeth)
	if err != nil || !strings.Contains(hostLink, "link/ether") {
		t.Errorf("%s: host veth %s: %v %s", c.Names[i], hostVeth, err, hostLink)
		return
	}
	podMAC, hostMAC := mac(string(podLink)), mac(hostLink)
	for _, chk := range []struct {
		where string
		out   func() (string, error)
		addrs []string
		mac   string
	}{
		{"node " + hostVeth, func() (string, error) { return inNode(c, i, "ip", "neigh", "show", "dev", hostVeth) },
			[]string{demo.Pod4.String(), demo.Pod6.String()}, podMAC},
		{"pod " + pod.PodLink, func() (string, error) {
			b, err := exec.Command("ip", "-n", ns, "neigh", "show", "dev", pod.PodLink).CombinedOutput()
			return string(b), err
		}, []string{pod.Gateway4.String(), pod.Gateway6.String()}, hostMAC},
	} {
		out, err := chk.out()
		if err != nil {
			t.Errorf("%s: ip neigh on %s: %v %s", c.Names[i], chk.where, err, out)
			continue
		}
		for _, a := range chk.addrs {
			found := false
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) > 0 && f[0] == a {
					found = true
					if !strings.Contains(l, chk.mac) || !strings.Contains(l, "PERMANENT") {
						t.Errorf("%s: %s: neighbor %q, want %s PERMANENT at %s", c.Names[i], chk.where, l, a, chk.mac)
					}
				}
			}
			if !found {
				t.Errorf("%s: %s: no neighbor entry for %s:\n%s", c.Names[i], chk.where, a, out)
			}
		}
	}
}

// nftKVFenced reports whether kv's pod on node i is in the fenced set of node i's table (read
// with nft: the node's steerd may be dead); false when there is no pod.
func nftKVFenced(t *testing.T, c *demo.Cluster, i int) bool {
	t.Helper()
	veth := pod.HostVethName(c.Configs[i].PodNSPrefix + demo.Service)
	link, err := inNode(c, i, "ip", "-o", "link", "show", "dev", veth)
	if err != nil {
		return false
	}
	index := strings.TrimSuffix(strings.Fields(link)[0], ":")
	set, err := inNode(c, i, "nft", "list", "set", "inet", daemon.NFTTable, "fenced")
	if err != nil {
		t.Fatalf("%s: nft list set fenced: %v %s", c.Names[i], err, set)
	}
	_, elems, _ := strings.Cut(set, "elements = {")
	elems, _, _ = strings.Cut(elems, "}")
	for _, e := range strings.FieldsFunc(elems, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' || r == '"' }) {
		if e == index || e == veth {
			return true
		}
	}
	return false
}

// staleFences returns the elements of node i's fenced set that name no existing interface (a
// pod deleted without unfencing: the set only grows, and an ifindex the kernel hands out again
// would start fenced).
func staleFences(t *testing.T, c *demo.Cluster, i int) []string {
	t.Helper()
	set, err := inNode(c, i, "nft", "--numeric", "list", "set", "inet", daemon.NFTTable, "fenced")
	if err != nil {
		t.Fatalf("%s: nft list set fenced: %v %s", c.Names[i], err, set)
	}
	_, elems, ok := strings.Cut(set, "elements = {")
	if !ok {
		return nil
	}
	elems, _, _ = strings.Cut(elems, "}")
	links, err := inNode(c, i, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatalf("%s: ip link: %v", c.Names[i], err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			have[strings.TrimSuffix(f[0], ":")] = true
			have[strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]] = true
		}
	}
	var stale []string
	for _, e := range strings.FieldsFunc(elems, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' || r == '"' }) {
		if !have[e] {
			stale = append(stale, e)
		}
	}
	return stale
}

// TestMoveBackNeighbors moves kv n0 -> n1 -> n0: each restore makes a new pod (new veth pair,
// new MACs) on the destination. The permanent neighbor entries of both ends of the new pod's
// veth must name the new MACs (not the ones of the pod kv had there before), and kv must answer
// at the node it moved to, each time.
func TestMoveBackNeighbors(t *testing.T) {
	c := cluster(t)
	defer resetKV(t, c)
	podNeighbors(t, c, 0)
	for _, mv := range [][2]int{{0, 1}, {1, 0}} {
		m := waitResult(t, c, mv[0], startMigration(t, c, mv[0], mv[1]), 30*time.Second)
		if m.Result != api.Succeeded {
			t.Fatalf("migration %s -> %s: %s %v", c.Names[mv[0]], c.Names[mv[1]], m.Result, m.Error)
		}
		podNeighbors(t, c, mv[1])
		if err := probeKV(c, mv[1], 500*time.Millisecond); err != nil {
			t.Errorf("kv at %s after the move: %v", c.Names[mv[1]], err)
		}
	}
}
