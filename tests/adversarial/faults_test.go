package adversarial

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
	"github.com/steerd/steerd/pod"
	"github.com/steerd/steerd/quicext"
)

// startMigration starts kv from -> to (symmetric, cold) without waiting.
func startMigration(t *testing.T, c *demo.Cluster, from, to int) string {
	t.Helper()
	m, err := c.API[from].Migrate(context.Background(), api.MigrateRequest{Service: demo.Service, To: c.Names[to],
		Strategy: "symmetric", Technique: api.Cold, DrainPeriod: 300 * time.Millisecond, DrainTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("start migration: %v", err)
	}
	return m.ID
}

// waitFor polls cond every 2 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// waitResult polls a migration on node i until it ended.
func waitResult(t *testing.T, c *demo.Cluster, i int, id string, d time.Duration) *api.Migration {
	t.Helper()
	var m *api.Migration
	ok := waitFor(d, func() bool {
		var err error
		m, err = c.API[i].Migration(context.Background(), id)
		return err == nil && m.Result != api.Running
	})
	if !ok {
		t.Fatalf("migration %s on %s did not end within %v (last %+v)", id, c.Names[i], d, m)
	}
	return m
}

// leftovers lists what node i holds of kv besides a running service: runc containers, pod
// namespaces, incoming/outgoing image directories.
func leftovers(c *demo.Cluster, i int) []string {
	var l []string
	if st := runcState(c, i, demo.Service); st != "" {
		l = append(l, "runc container kv "+st)
	}
	pods, _ := nsutil.List(c.Configs[i].PodNSPrefix)
	for _, p := range pods {
		l = append(l, "pod netns "+p)
	}
	for _, d := range []string{"incoming", "images", "engine/images"} {
		es, _ := os.ReadDir(filepath.Join(c.Configs[i].StateDir, d))
		for _, e := range es {
			l = append(l, d+"/"+e.Name())
		}
	}
	return l
}

// probeKV opens 2 fresh connections to node i and runs them for d: nil when every request was
// answered.
func probeKV(c *demo.Cluster, i int, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ld, err := c.StartLoad(ctx, c.Public(i), 2, 0)
	if err != nil {
		return err
	}
	time.Sleep(d)
	rep, err := ld.Stop()
	if err != nil {
		return err
	}
	if rep.Received == 0 || !rep.OK() {
		return fmt.Errorf("sent %d received %d lost %d failed %d", rep.Sent, rep.Received, rep.Lost, rep.Failed)
	}
	return nil
}

// TestSourceSteerdKilledWhileFrozen kills -9 the source's steerd while its container is paused
// for the dump (cgroup freezer), then starts steerd again. docs/operations.md: a failure before
// `restored` rolls back and "the service keeps running on the source"; a restarted steerd must at
// least thaw what it froze. Expected within 10 s of the restart: kv runs (not paused) on n0,
// answers new connections, steerd reports it running, and n1 holds nothing of the migration.
func TestSourceSteerdKilledWhileFrozen(t *testing.T) {
	c := cluster(t)
	defer resetKV(t, c)
	id := startMigration(t, c, 0, 1)
	if !waitFor(10*time.Second, func() bool { return runcState(c, 0, demo.Service) == "paused" }) {
		t.Fatalf("migration %s never paused kv on n0", id)
	}
	c.StopSteerd(0, true)
	t.Logf("steerd n0 killed with kv paused")
	time.Sleep(time.Second)
	frozen := runcState(c, 0, demo.Service)
	if err := c.StartSteerd(context.Background(), 0); err != nil {
		t.Fatalf("restart steerd n0: %v", err)
	}
	waitFor(10*time.Second, func() bool { return runcState(c, 0, demo.Service) == "running" })
	time.Sleep(6 * time.Second) // n1 notices the dead peer (PeerIdleTimeout 5 s)
	var problems []string
	st0, rs0 := serviceState(c, 0, demo.Service), runcState(c, 0, demo.Service)
	if rs0 != "running" {
		problems = append(problems, fmt.Sprintf("kv on n0 is %q in runc (1 s after the kill: %q)", rs0, frozen))
	}
	if st0 != "running" {
		problems = append(problems, fmt.Sprintf("restarted steerd n0 reports kv %q", st0))
	}
	if err := probeKV(c, 0, 500*time.Millisecond); err != nil {
		problems = append(problems, "new connections to n0: "+err.Error())
	}
	// n1 asks the source for the outcome of its prepared-but-never-restored migration after
	// resolveAfter (15 s) and removes the prepared pod once the restarted source says "aborted".
	waitFor(25*time.Second, func() bool { return len(leftovers(c, 1)) == 0 })
	if l := leftovers(c, 1); len(l) > 0 {
		problems = append(problems, fmt.Sprintf("n1 holds %v (kv state %q)", l, serviceState(c, 1, demo.Service)))
	}
	if qs, err := quicextStatus(c, 0); err != nil || qs.Prepared {
		problems = append(problems, fmt.Sprintf("kv's quicext status: prepared %v (err %v): new handshakes are refused", qs.Prepared, err))
	}
	if len(problems) > 0 {
		t.Fatalf("steerd killed mid-checkpoint leaves the service frozen/unowned: %s", strings.Join(problems, "; "))
	}
}

// quicextStatus asks kv's quicext control endpoint on node i for its status.
func quicextStatus(c *demo.Cluster, i int) (quicext.Status, error) {
	var st quicext.Status
	err := nsutil.Do(c.Configs[i].PodNSPrefix+demo.Service, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		st, err = quicext.NewControlClient(quicext.DefaultControlAddr).Status(ctx)
		return err
	})
	return st, err
}

// TestSteerdRestartKeepsService restarts (SIGTERM) n0's steerd while kv runs. docs/operations.md:
// stopping steerd "leaves the service containers running"; the restarted daemon must adopt the
// container (same PID), report the service running with a local route for its instance, accept
// new QUIC connections (the pod's XDP programs attached again), and migrate it to n1 and back
// (the adopted container checkpoints and is deleted like one this run started) without the
// "container not paused" warning of a discarded frozen source.
func TestSteerdRestartKeepsService(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	pid := func() string {
		out, _ := exec.Command("runc", "--root", runcRoot(c, 0), "list", "-f", "table").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == demo.Service {
				return f[1]
			}
		}
		return ""
	}
	before := pid()
	c.StopSteerd(0, false)
	logStart := int64(0)
	if fi, err := os.Stat(c.LogPath(0)); err == nil {
		logStart = fi.Size()
	}
	if err := c.StartSteerd(ctx, 0); err != nil {
		t.Fatalf("restart steerd n0: %v", err)
	}
	if rs, p := runcState(c, 0, demo.Service), pid(); rs != "running" || p != before {
		t.Fatalf("kv container after a steerd restart: %q pid %s, want running pid %s", rs, p, before)
	}
	if st := serviceState(c, 0, demo.Service); st != "running" {
		defer resetKV(t, c)
		t.Fatalf("restarted steerd n0 reports kv %q, want running", st)
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	rs, err := c.API[0].Routes(rctx)
	cancel()
	local := 0
	for _, r := range rs {
		if r.Service == demo.Service && r.Kind == api.Local {
			local++
		}
	}
	if err != nil || local != 1 {
		defer resetKV(t, c)
		t.Fatalf("routes of n0 after the restart: %+v (err %v), want one local route for kv", rs, err)
	}
	if err := probeKV(c, 0, 300*time.Millisecond); err != nil {
		defer resetKV(t, c)
		t.Fatalf("new connections to n0 after the restart: %v", err)
	}
	for _, hop := range [][2]int{{0, 1}, {1, 0}} {
		m, err := c.API[hop[0]].Migrate(ctx, api.MigrateRequest{Service: demo.Service, To: c.Names[hop[1]],
			Strategy: "symmetric", Technique: api.Cold, Wait: true})
		if err != nil || m.Result != api.Succeeded {
			defer resetKV(t, c)
			t.Fatalf("migrate %s -> %s after the restart: %+v %v", c.Names[hop[0]], c.Names[hop[1]], m, err)
		}
		if err := probeKV(c, hop[1], 300*time.Millisecond); err != nil {
			defer resetKV(t, c)
			t.Fatalf("new connections to %s after the migration: %v", c.Names[hop[1]], err)
		}
	}
	b, err := os.ReadFile(c.LogPath(0))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) >= logStart {
		b = b[logStart:]
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "container not paused") || strings.Contains(l, `"level":"ERROR"`) {
			t.Errorf("n0 log since the restart: %s", l)
		}
	}
}

// TestDestinationDiskFull gives n1 a 256 KiB tmpfs as its incoming image directory. The
// migration must roll back, name node n1 and the cause (no space), leave kv serving on n0 with
// no request lost, and leave nothing on n1.
func TestDestinationDiskFull(t *testing.T) {
	c := cluster(t)
	dir := filepath.Join(c.Configs[1].StateDir, "incoming")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("skip: missing capability: mount tmpfs: %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	ld := startLoad(t, c, 0, 4)
	time.Sleep(300 * time.Millisecond)
	m := waitResult(t, c, 0, startMigration(t, c, 0, 1), time.Minute)
	time.Sleep(300 * time.Millisecond)
	checkLoad(t, ld)
	t.Logf("migration: %s: %v", m.Result, m.Error)
	if m.Result != api.RolledBack || m.Error == nil {
		t.Fatalf("migration with a full destination disk: %s %v, want rolled-back", m.Result, m.Error)
	}
	// The destination refuses the file up front (daemon.ErrNoSpace) or, for files that fit the
	// free space the check saw, fails on the write (ENOSPC).
	if !strings.Contains(m.Error.Cause, "n1") || !(strings.Contains(m.Error.Cause, "not enough free space") || strings.Contains(m.Error.Cause, "no space left")) {
		t.Errorf("error %q: want the destination n1 and the lack of space named", m.Error)
	}
	if st := serviceState(c, 0, demo.Service); st != "running" {
		t.Errorf("kv on n0: %q, want running", st)
	}
	if l := leftovers(c, 1); len(l) > 0 {
		t.Errorf("n1 holds after the rollback: %v", l)
	}
}

// TestServiceProcessKilled kills kv's process on n0 (SIGKILL to the container's init) and then
// asks for a migration: it must fail before anything is frozen or sent, with an error naming n0
// and the dead service, and n1 must hold nothing.
func TestServiceProcessKilled(t *testing.T) {
	c := cluster(t)
	defer resetKV(t, c)
	out, err := exec.Command("runc", "--root", runcRoot(c, 0), "kill", demo.Service, "KILL").CombinedOutput()
	if err != nil {
		t.Fatalf("runc kill: %v %s", err, out)
	}
	waitFor(5*time.Second, func() bool { return runcState(c, 0, demo.Service) == "stopped" })
	st := serviceState(c, 0, demo.Service)
	mid, err := c.API[0].Migrate(context.Background(), api.MigrateRequest{Service: demo.Service, To: c.Names[1],
		Strategy: "symmetric", Technique: api.Cold, Wait: true})
	var m *api.Migration = mid
	t.Logf("status after the kill: %q; migrate: %+v err %v", st, m, err)
	if err == nil && m.Result == api.Succeeded {
		t.Errorf("migration of a dead service succeeded")
	}
	if err == nil && m.Error != nil && (m.Error.Node != "n0" || m.Error.Phase == api.PhaseRestore) {
		t.Errorf("error %v: want node n0 before restore", m.Error)
	}
	if l := leftovers(c, 1); len(l) > 0 {
		t.Errorf("n1 holds: %v", l)
	}
	if st == "running" {
		t.Logf("note: steerd reports a service whose process is dead as %q", st)
	}
}

// TestDestinationSteerdKilledAfterRestore kills -9 n1's steerd as soon as its restored kv
// container runs. The destination cannot be reached for the abort; the source rolls back and
// resumes, which is safe only because n1's copy is fenced in n1's datapath (pinned, enforced
// without steerd) until the source commits (docs/datapath.md "Fencing"). Whatever the result, at
// most one copy of kv may talk afterwards: a second running copy must be fenced, also after n1's
// steerd restarted (it asks n0 for the outcome and never unfences an aborted migration).
func TestDestinationSteerdKilledAfterRestore(t *testing.T) {
	c := cluster(t)
	defer resetKV(t, c)
	ld := startLoad(t, c, 0, 2)
	id := startMigration(t, c, 0, 1)
	if !waitFor(30*time.Second, func() bool { return runcState(c, 1, demo.Service) == "running" }) {
		m := waitResult(t, c, 0, id, 5*time.Second)
		t.Fatalf("kv never ran on n1; migration %s: %s: %v", id, m.Result, m.Error)
	}
	c.StopSteerd(1, true)
	m := waitResult(t, c, 0, id, time.Minute)
	time.Sleep(time.Second)
	rep, _ := ld.Stop()
	rs0, rs1 := runcState(c, 0, demo.Service), runcState(c, 1, demo.Service)
	fenced := kvFenced(t, c, 1)
	t.Logf("migration %s: %s: %v; runc n0 %q n1 %q (n1 pod fenced %v); load sent %d received %d lost %d failed %d",
		id, m.Result, m.Error, rs0, rs1, fenced, rep.Sent, rep.Received, rep.Lost, rep.Failed)
	if m.Result == api.Running || m.Error == nil && m.Result != api.Succeeded {
		t.Errorf("migration ended %s without an error", m.Result)
	}
	if m.Error != nil && m.Error.Node == "" {
		t.Errorf("error names no node: %v", m.Error)
	}
	if rs0 == "running" && rs1 == "running" && !fenced {
		t.Errorf("after the destination's steerd died post-restore, kv runs unfenced on both n0 and n1 (result %s: %v)", m.Result, m.Error)
	}
	if rs0 != "running" && rs1 != "running" {
		t.Errorf("kv runs nowhere (n0 %q, n1 %q)", rs0, rs1)
	}
	if m.Result == api.RolledBack && rs0 == "running" {
		// The service stayed on n0: the load through n0 lost at most what the freeze cost.
		if rep.Received == 0 || rep.Lost*10 > rep.Sent {
			t.Errorf("load through n0 after the rollback: sent %d received %d lost %d", rep.Sent, rep.Received, rep.Lost)
		}
		if err := probeKV(c, 0, 500*time.Millisecond); err != nil {
			t.Errorf("new connections to n0 after the rollback: %v", err)
		}
	}
	// n1's steerd comes back: n0 says the migration did not commit, so n1 must not unfence its
	// copy (it removes it when its engine can adopt the container, else it keeps it fenced).
	if err := c.StartSteerd(context.Background(), 1); err != nil {
		t.Fatalf("restart steerd n1: %v", err)
	}
	rs1, fenced = runcState(c, 1, demo.Service), kvFenced(t, c, 1)
	t.Logf("after restarting steerd n1: runc n1 %q fenced %v, steerd n1 reports kv %q", rs1, fenced, serviceState(c, 1, demo.Service))
	if m.Result == api.RolledBack && rs1 == "running" && !fenced {
		t.Errorf("restarted steerd n1 unfenced the copy of a migration n0 rolled back")
	}
}

// kvFenced reports whether kv's pod on node i is fenced: its host-side veth is in the pinned
// fenced map of the node's datapath (read directly: the node's steerd may be dead).
func kvFenced(t *testing.T, c *demo.Cluster, i int) bool {
	t.Helper()
	var fenced bool
	err := nsutil.Do(c.TB.Nodes[i].NS, func() error {
		l, err := netlink.LinkByName(pod.HostVethName(c.Configs[i].PodNSPrefix + demo.Service))
		if err != nil {
			return nil // no pod: nothing to fence
		}
		dir, err := loader.PinDirFor(loader.DefaultPinRoot)
		if err != nil {
			return err
		}
		fm, err := ebpf.LoadPinnedMap(filepath.Join(dir, "fenced"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("open pinned fenced map: %w", err)
		}
		defer fm.Close()
		var v uint32
		fenced = fm.Lookup(uint32(l.Attrs().Index), &v) == nil
		return nil
	})
	if err != nil {
		t.Fatalf("read fence on %s: %v", c.Names[i], err)
	}
	return fenced
}
