package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/migrate"
	"github.com/steerd/steerd/pod"
)

// TestStrategyGaps is the regression test of two anomalies of the steerd migration benchmark
// (bench/results/summary.md, "steerd migration matrix"), on a cluster set up as the benchmark's
// (bench/internal/matrix.Steerd: no ClusterOptions.Pool, so kvservice announces no address pool;
// one load connection offering only the cell's strategy, 1.5 s warm-up, drain 0.3 s, 0.3 s of
// load after the migration, cold technique by default). Each strategy moves the service
// STEERD_STRATEGY_RUNS times (default 3; STEERD_STRATEGY=<name>[,<name>...] runs those strategies
// only; STEERD_STRATEGY_TECHNIQUE=<technique> replaces cold, e.g. post-copy).
//
//   - pool: no request lost and the connection ends on the destination. Before quicext announced
//     the migration target to Pool clients (serverConn.prepare), a client without a configured
//     pool had no candidate, never left the source address, and lost the ~30 requests sent there
//     after the drain removed the forwarding.
//   - sync-symmetric: the client's largest gap between responses stays within syncGapSlack of
//     the freeze (api.Migration.Downtime) of the same migration. Measured before: freeze + 0.9 to
//     1.0 s, every run. Cause (not in quicext): the restored kvservice transmits at once (quic-go
//     PTO of the responses the holding client could not acknowledge) while the destination still
//     fences the pod; bpf/pod.c drops every frame of a fenced pod, the ARP request for the pod's
//     gateway included, and the pod's kernel retries only after retrans_time_ms (1 s), with
//     SERVER_MIGRATED queued behind it. A Symmetric client is rescued by its own packets, which
//     make the node ARP for the pod; a holding client sends none. This subtest passes once
//     pod.Create installs permanent neighbor entries for pod.Gateway4 and pod.Gateway6 (lladdr:
//     the host-side veth's MAC); STEERD_E2E_SEED_GATEWAY_NEIGH=1 installs the IPv4 one from
//     here, as soon as the destination's pod namespace appears, to check that change.
func TestStrategyGaps(t *testing.T) {
	requireTools(t)
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("STEERD_STRATEGY_RUNS")); err == nil && v > 0 {
		runs = v
	}
	c := startCluster(t, demo.ClusterOptions{})
	e := &env{c: c}
	strategies := []string{"sync-symmetric", "pool"}
	if v := os.Getenv("STEERD_STRATEGY"); v != "" {
		strategies = strings.Split(v, ",")
	}
	tech := api.Cold
	if v := os.Getenv("STEERD_STRATEGY_TECHNIQUE"); v != "" {
		tech = api.Technique(v)
	}
	for _, st := range strategies {
		t.Run(st, func(t *testing.T) {
			for i := range runs {
				e.strategyRun(t, st, tech, i)
			}
		})
	}
}

// syncGapSlack bounds how much longer than the freeze a Synchronized Symmetric client may wait:
// the drain of the held packets, one PATH_CHALLENGE round trip and the retransmission of the
// requests held during the freeze, on a loaded 2-core machine.
const syncGapSlack = 300 * time.Millisecond

// strategyRun moves kv once with strategy, as the benchmark does, and checks the gap and losses.
func (e *env) strategyRun(t *testing.T, strategy string, tech api.Technique, i int) {
	from, to := e.cur, 1-e.cur
	ld := e.startLoad(t, from, demo.Port, 1, strategy)
	time.Sleep(warmup)
	stopSeed, seeded := make(chan struct{}), make(chan string, 1)
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { close(stopSeed) }) }
	defer stop() // also when migrate fails the test
	if os.Getenv("STEERD_E2E_SEED_GATEWAY_NEIGH") != "" {
		go func() { seeded <- e.seedGatewayNeigh(to, stopSeed) }()
	} else {
		seeded <- ""
	}
	m := e.migrate(t, demo.Service, from, to, strategy, tech)
	stop()
	if s := <-seeded; s != "" {
		t.Log(s)
	}
	time.Sleep(settle)
	rep, err := ld.Stop()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if m.Result != api.Succeeded {
		t.Fatalf("migration %s: %s: %v", m.ID, m.Result, m.Error)
	}
	e.cur = to
	cr := rep.Conns[0]
	gap := time.Duration(cr.MaxGap.MS * float64(time.Millisecond))
	t.Logf("%s run %d %s->%s: freeze %v, gap %v (%s .. %s), gap-freeze %v, sent %d lost %d wrong %d ooo %d, switches %d, server %s",
		strategy, i, e.c.Names[from], e.c.Names[to], m.Downtime.Round(time.Millisecond), gap.Round(time.Millisecond),
		cr.MaxGap.Start.Format("15:04:05.000"), cr.MaxGap.End.Format("15:04:05.000"), (gap - m.Downtime).Round(time.Millisecond),
		cr.Sent, cr.Lost, cr.Wrong, cr.OutOfOrder, len(cr.Switches), cr.ServerAddr)
	bad := false
	defer func() {
		if !bad && !testing.Verbose() {
			return
		}
		for _, ev := range m.Events {
			if ev.Phase != api.PhaseTransfer {
				t.Logf("  migration %s %s %s %s %s", ev.Time.Format("15:04:05.000"), ev.Node, ev.Phase, ev.Kind, ev.Detail)
			}
		}
		for _, ev := range ld.Events() {
			if ev.Ev != "connected" {
				t.Logf("  load %s %s %s %s gap %.0f %s", ev.Time.Format("15:04:05.000"), ev.Ev, ev.Addr, ev.Strategy, ev.GapMS, ev.Err)
			}
		}
	}()
	if cr.Err != "" || cr.Wrong != 0 || cr.OutOfOrder != 0 || cr.Received == 0 {
		bad = true
		t.Errorf("%s run %d: connection error %q, wrong %d, out of order %d, received %d", strategy, i, cr.Err, cr.Wrong, cr.OutOfOrder, cr.Received)
	}
	if cr.Lost != 0 {
		bad = true
		t.Errorf("%s run %d: %d of %d requests lost", strategy, i, cr.Lost, cr.Sent)
	}
	if strategy == "sync-symmetric" && gap > m.Downtime+syncGapSlack {
		bad = true
		t.Errorf("%s run %d: client gap %v exceeds the freeze %v by %v (bound %v)", strategy, i, gap.Round(time.Millisecond),
			m.Downtime.Round(time.Millisecond), (gap - m.Downtime).Round(time.Millisecond), syncGapSlack)
	}
	if want := e.c.Public(to).String(); cr.ServerAddr != want {
		bad = true
		t.Errorf("%s run %d: connection ended on %s, want the destination %s", strategy, i, cr.ServerAddr, want)
	}
}

// seedGatewayNeigh applies, from outside, the pod.Create change this test motivates: as soon as
// the service's pod namespace appears on node i (the destination's prepare-dest, before the
// restore), it gets a permanent neighbor entry for its IPv4 gateway (pod.Gateway4, lladdr the
// host-side veth's MAC), so that no ARP request is needed after the restore. It returns what it
// did, or "" when stop came first.
func (e *env) seedGatewayNeigh(i int, stop <-chan struct{}) string {
	suffix := "-" + e.c.Names[i] + "-kv"
	for {
		select {
		case <-stop:
			return ""
		case <-time.After(2 * time.Millisecond):
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 || !strings.HasSuffix(f[0], suffix) {
				continue
			}
			link, err := exec.Command("ip", "-n", e.c.TB.Nodes[i].NS, "-br", "link", "show", pod.HostVethName(f[0])).Output()
			if err != nil || len(strings.Fields(string(link))) < 3 {
				continue // the veth is not there yet
			}
			lladdr := strings.Fields(string(link))[2]
			if err := exec.Command("ip", "-n", f[0], "neigh", "replace", pod.Gateway4.String(), "lladdr", lladdr,
				"dev", "eth0", "nud", "permanent").Run(); err != nil {
				continue // eth0 not moved in yet
			}
			return fmt.Sprintf("seeded %s: neighbor %s lladdr %s permanent", f[0], pod.Gateway4, lladdr)
		}
	}
}

// syncPostCopySlack bounds how much longer than the Symmetric client of the same migration a
// Synchronized Symmetric client may wait under post-copy (TestSyncSymmetricPostCopy).
const syncPostCopySlack = 100 * time.Millisecond

// TestSyncSymmetricPostCopy is the regression test of the post-copy Synchronized Symmetric
// anomaly of the steerd migration benchmark (bench/results/summary.md: 0 MB, XDP on, post-copy:
// Sync-Symmetric gap 809 ms, the other strategies 566-576 ms, in the same migrations). One
// migration per run, post-copy, with two load connections: one offering only sync-symmetric, one
// only symmetric. The Synchronized Symmetric client's largest gap between responses must stay
// within syncPostCopySlack of the Symmetric client's.
//
// Measured cause (not in quicext, not the restored/commit order: SERVER_MIGRATED reaches the
// holding client 1-3 ms after the destination's quicext "restored" call, at the moment the
// Symmetric client switches too): the source announces the migration (quicext Prepare, in
// CheckpointRequest.BeforeFreeze) and only then starts runc checkpoint --lazy-pages, and CRIU
// freezes the container itself, 250-450 ms later (runc and CRIU start-up). The service keeps
// answering in between: the Symmetric client gets its responses until the real freeze, the
// holding client sends nothing from the announcement on. With cold, runc pause follows the
// announcement at once, so every strategy's gap starts there. The gap difference closes when the
// freeze follows the announcement directly: daemon/engine_runc.go, post-copy Checkpoint, runc
// pause after BeforeFreeze and before CheckpointLazy (measured with that change: 17-42 ms over 5
// migrations), best only when quicext.Readiness.Holding() > 0, since the pause also moves the
// other strategies' gap start to the announcement. STEERD_STRATEGY_RUNS sets the number of
// migrations (default 3).
func TestSyncSymmetricPostCopy(t *testing.T) {
	requireTools(t)
	caps, err := migrate.DetectCapabilities(context.Background(), "")
	if err != nil {
		t.Fatalf("detect CRIU capabilities: %v", err)
	}
	if err := caps.Supports(migrate.PostCopy); err != nil {
		t.Skipf("skip: missing capability: post-copy: %v", err)
	}
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("STEERD_STRATEGY_RUNS")); err == nil && v > 0 {
		runs = v
	}
	c := startCluster(t, demo.ClusterOptions{})
	e := &env{c: c}
	var diffs []time.Duration
	for i := range runs {
		from, to := e.cur, 1-e.cur
		lsync := e.startLoad(t, from, demo.Port, 1, "sync-symmetric")
		lsym := e.startLoad(t, from, demo.Port, 1, "symmetric")
		time.Sleep(warmup)
		m := e.migrate(t, demo.Service, from, to, "sync-symmetric", api.PostCopy)
		time.Sleep(settle)
		rs, errS := lsync.Stop()
		ry, errY := lsym.Stop()
		if errS != nil || errY != nil {
			t.Fatalf("load: sync-symmetric %v, symmetric %v", errS, errY)
		}
		if m.Result != api.Succeeded {
			t.Fatalf("migration %s: %s: %v", m.ID, m.Result, m.Error)
		}
		e.cur = to
		cs, cy := rs.Conns[0], ry.Conns[0]
		gs := time.Duration(cs.MaxGap.MS * float64(time.Millisecond))
		gy := time.Duration(cy.MaxGap.MS * float64(time.Millisecond))
		diffs = append(diffs, gs-gy)
		t.Logf("run %d %s->%s: freeze %v, sync-symmetric gap %v (%s .. %s), symmetric gap %v (%s .. %s), difference %v",
			i, e.c.Names[from], e.c.Names[to], m.Downtime.Round(time.Millisecond),
			gs.Round(time.Millisecond), cs.MaxGap.Start.Format("15:04:05.000"), cs.MaxGap.End.Format("15:04:05.000"),
			gy.Round(time.Millisecond), cy.MaxGap.Start.Format("15:04:05.000"), cy.MaxGap.End.Format("15:04:05.000"),
			(gs - gy).Round(time.Millisecond))
		for _, cr := range []load.ConnReport{cs, cy} {
			if cr.Err != "" || cr.Lost != 0 || cr.Wrong != 0 || cr.Received == 0 {
				t.Errorf("run %d: connection error %q, lost %d of %d, wrong %d, received %d", i, cr.Err, cr.Lost, cr.Sent, cr.Wrong, cr.Received)
			}
			if want := e.c.Public(to).String(); cr.ServerAddr != want {
				t.Errorf("run %d: connection ended on %s, want the destination %s", i, cr.ServerAddr, want)
			}
		}
		if gs > gy+syncPostCopySlack || testing.Verbose() {
			if gs > gy+syncPostCopySlack {
				t.Errorf("run %d: sync-symmetric gap %v exceeds the symmetric gap %v of the same migration by %v (bound %v)",
					i, gs.Round(time.Millisecond), gy.Round(time.Millisecond), (gs - gy).Round(time.Millisecond), syncPostCopySlack)
			}
			for _, ev := range m.Events {
				if ev.Phase != api.PhaseTransfer {
					t.Logf("  migration %s %s %s %s %s", ev.Time.Format("15:04:05.000"), ev.Node, ev.Phase, ev.Kind, ev.Detail)
				}
			}
			for name, ld := range map[string]*demo.Load{"sync-symmetric": lsync, "symmetric": lsym} {
				for _, ev := range ld.Events() {
					if ev.Ev != "connected" {
						t.Logf("  load %s %s %s %s %s gap %.0f %s", name, ev.Time.Format("15:04:05.000"), ev.Ev, ev.Addr, ev.Strategy, ev.GapMS, ev.Err)
					}
				}
			}
		}
	}
	t.Logf("sync-symmetric minus symmetric gap per migration: %v", diffs)
}
