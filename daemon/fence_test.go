package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
)

// podIx is the host veth ifindex fakePods gives the destination's first pod.
const podIx = 101

// TestRestoredFailsAfterCommit: quicext "restored" fails after the commit: no rollback (the
// destination is unfenced and owns the service), the migration fails late.
func TestRestoredFailsAfterCommit(t *testing.T) {
	a, b, c, f := pair(t)
	f.set("restored", errors.New("boom"))
	m := migrate(t, a, api.MigrateRequest{})
	if m.Result != api.Failed || m.Error == nil || m.Error.Phase != api.PhaseRestored || m.Error.Node != "b" {
		t.Fatalf("result %s, error %+v", m.Result, m.Error)
	}
	for _, g := range c.list() {
		if g == "a:engine.resume(kv)" || g == "b:engine.remove(kv)" {
			t.Fatalf("rolled back after the commit: %q", c.list())
		}
	}
	if st := b.d.Status().Services[0]; st.State != StateRunning || b.dp.isFenced(podIx) {
		t.Fatalf("destination %+v fenced %v", st, b.dp.isFenced(podIx))
	}
	if st := a.d.Status().Services[0]; st.State != StateRemote || st.Peer != "b" {
		t.Fatalf("source %+v", st)
	}
}

// TestDestinationLostAfterRestore: the destination restored, then cannot be reached (its reply
// and the abort are lost). The source rolls back and resumes; the destination's copy stays
// fenced. A restarted destination asks the source (aborted) and removes its copy.
func TestDestinationLostAfterRestore(t *testing.T) {
	a, b, c, f := pair(t)
	lost := errors.New("peer channel closed")
	f.set("peer.restore.after", lost)
	f.set("peer.abort", lost)
	m := migrate(t, a, api.MigrateRequest{})
	if m.Result != api.RolledBack || m.Error == nil || m.Error.Phase != api.PhaseRestore {
		t.Fatalf("result %s, error %+v", m.Result, m.Error)
	}
	if a.eng.get(testSvc) != "running" || a.dp.entry(7) != "local" {
		t.Fatalf("source container %s entry %s", a.eng.get(testSvc), a.dp.entry(7))
	}
	// The split brain the fence prevents: both copies exist, the destination's cannot talk.
	if b.eng.get(testSvc) != "running" || !b.dp.isFenced(podIx) {
		t.Fatalf("destination container %s fenced %v (calls %q)", b.eng.get(testSvc), b.dp.isFenced(podIx), c.list())
	}
	// The destination's steerd restarts: its engine finds the restored copy, its datapath the fence.
	f.set("peer.abort", nil)
	d, dp, eng, rc := restartFenced(t, b.d.Config(), &loopPeer{from: "b", to: a.d, f: &fail{}}, podIx,
		RecoveredContainer{Service: testSvc, Status: "running"})
	if eng.get(testSvc) != "removed" || dp.isFenced(podIx) || dp.entry(7) != "none" {
		t.Fatalf("after recover: container %s fenced %v entry %s (calls %q)", eng.get(testSvc), dp.isFenced(podIx), dp.entry(7), rc.list())
	}
	if st := d.Status().Services[0]; st.State != StateRemote || st.Peer != "a" {
		t.Fatalf("after recover: %+v", st)
	}
}

// outcomePeer answers opOutcome with outcome (err: unreachable).
type outcomePeer struct {
	outcome string
	err     error
}

func (p outcomePeer) Call(ctx context.Context, op string, req any) (*PeerReply, error) {
	if p.err != nil {
		return nil, p.err
	}
	if op != opOutcome {
		return nil, errors.New("unexpected op " + op)
	}
	return &PeerReply{Outcome: p.outcome}, nil
}

func (p outcomePeer) SendImage(context.Context, string, string, io.Reader, int64, func(int64)) error {
	return errors.New("no images")
}

// restartFenced builds a new daemon over cfg's state directory whose datapath still holds the
// fence of host veth fenced, with peer as every peer, and runs Recover.
func restartFenced(t *testing.T, cfg *Config, peer Peer, fenced int, found ...RecoveredContainer) (*Daemon, *fakeDP, *recEngine, *calls) {
	t.Helper()
	c, f := &calls{}, &fail{}
	dp := newFakeDP(cfg.Node, c, f)
	dp.fenced[fenced] = true
	eng := &recEngine{fakeEngine: newFakeEngine(cfg.Node, c, f), found: found}
	d, err := New(cfg, Deps{Datapath: dp, Engine: eng, Control: &fakeCtl{node: cfg.Node, c: c, f: f},
		Pods: &fakePods{node: cfg.Node, c: c, live: map[string]bool{}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial: func(string) (Peer, error) { return peer, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Recover(context.Background()); err != nil {
		t.Fatalf("recover: %v", err)
	}
	return d, dp, eng, c
}

// TestRecoverFencedPod: a restarted destination with a fenced pod of an uncommitted migration.
func TestRecoverFencedPod(t *testing.T) {
	for _, tc := range []struct {
		name      string
		peer      outcomePeer
		container string // engine state after Recover
		fenced    bool
		state     string
		entry     string
	}{
		{"committed", outcomePeer{outcome: outcomeCommitted}, "running", false, StateRunning, "local"},
		{"aborted", outcomePeer{outcome: outcomeAborted}, "removed", false, StateRemote, "none"},
		{"pending", outcomePeer{outcome: outcomePending}, "running", true, StateRestoring, "none"},
		{"unreachable", outcomePeer{err: errors.New("no route to peer")}, "running", true, StateRestoring, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b, _, f := pair(t)
			lost := errors.New("peer channel closed")
			f.set("peer.restore.after", lost)
			f.set("peer.abort", lost)
			if m := migrate(t, a, api.MigrateRequest{}); m.Result != api.RolledBack {
				t.Fatalf("result %s %v", m.Result, m.Error)
			}
			d, dp, eng, rc := restartFenced(t, b.d.Config(), tc.peer, podIx, RecoveredContainer{Service: testSvc, Status: "running"})
			st := d.Status().Services[0]
			if eng.get(testSvc) != tc.container || dp.isFenced(podIx) != tc.fenced || st.State != tc.state || dp.entry(7) != tc.entry {
				t.Fatalf("container %s fenced %v state %s entry %s; want %s %v %s %s (calls %q)",
					eng.get(testSvc), dp.isFenced(podIx), st.State, dp.entry(7), tc.container, tc.fenced, tc.state, tc.entry, rc.list())
			}
			if tc.fenced {
				// Kept fenced, and still recorded: the next restart asks again.
				saved, err := d.loadState()
				if err != nil || saved[testSvc].Fenced != podIx || saved[testSvc].Source != "a" {
					t.Fatalf("saved state %+v %v", saved[testSvc], err)
				}
			}
		})
	}
}

// TestOutcome: what a source answers a destination about a migration (opOutcome).
func TestOutcome(t *testing.T) {
	a, b, _, f := pair(t)
	lost := errors.New("peer channel closed")
	f.set("peer.restore.after", lost)
	f.set("peer.abort", lost)
	m := migrate(t, a, api.MigrateRequest{})
	if got := a.d.outcome("b", outcomeReq{Migration: m.ID, Service: testSvc}); got != outcomeAborted {
		t.Fatalf("rolled-back migration: %s", got)
	}
	if b.d.Status().Services[0].State != StateRestoring {
		t.Fatalf("destination %+v", b.d.Status().Services[0])
	}
	a, _, _, _ = pair(t)
	m2 := migrate(t, a, api.MigrateRequest{})
	if m2.Result != api.Succeeded {
		t.Fatalf("second migration %s %v", m2.Result, m2.Error)
	}
	if got := a.d.outcome("b", outcomeReq{Migration: m2.ID, Service: testSvc}); got != outcomeCommitted {
		t.Fatalf("committed migration: %s", got)
	}
	if got := a.d.outcome("c", outcomeReq{Migration: m2.ID, Service: testSvc}); got != outcomePending {
		t.Fatalf("asked by another node: %s", got)
	}
	// Unknown to this run (a restarted source): the saved service state decides.
	if got := a.d.outcome("b", outcomeReq{Migration: "gone", Service: testSvc}); got != outcomeCommitted {
		t.Fatalf("unknown migration, service remote on b: %s", got)
	}
}

// TestLostCommitResolved: the source committed but its opCommit never reached the destination
// (broken channel): the source ends failed without rolling back; the destination, still fenced,
// asks the source after resolveAfter and unfences.
func TestLostCommitResolved(t *testing.T) {
	defer func(a, r time.Duration) { resolveAfter, resolveRetry = a, r }(resolveAfter, resolveRetry)
	defer func(c time.Duration) { commitTimeout = c }(commitTimeout)
	resolveAfter, resolveRetry, commitTimeout = 300*time.Millisecond, 100*time.Millisecond, 500*time.Millisecond
	a, b, c, f := pair(t)
	f.set("peer.commit", errors.New("peer channel closed"))
	start := time.Now()
	m := migrate(t, a, api.MigrateRequest{})
	if m.Result != api.Failed || m.Error == nil || m.Error.Phase != api.PhaseRestore {
		t.Fatalf("result %s, error %+v", m.Result, m.Error)
	}
	if el := time.Since(start); el < commitTimeout {
		t.Fatalf("source gave up on the commit after %v, want >= %v", el, commitTimeout)
	}
	if st := a.d.Status().Services[0]; st.State != StateRemote || a.eng.get(testSvc) != "removed" {
		t.Fatalf("source %+v container %s", st, a.eng.get(testSvc))
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.dp.isFenced(podIx) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := b.d.Status().Services[0]; b.dp.isFenced(podIx) || st.State != StateRunning || b.eng.get(testSvc) != "running" {
		t.Fatalf("destination fenced %v %+v container %s (calls %q)", b.dp.isFenced(podIx), st, b.eng.get(testSvc), c.list())
	}
}

// TestLostAbortResolved: the source rolled back but the abort never reached the live
// destination: it asks the source after resolveAfter and removes its fenced copy.
func TestLostAbortResolved(t *testing.T) {
	defer func(a, r time.Duration) { resolveAfter, resolveRetry = a, r }(resolveAfter, resolveRetry)
	resolveAfter, resolveRetry = 300*time.Millisecond, 100*time.Millisecond
	a, b, _, f := pair(t)
	lost := errors.New("peer channel closed")
	f.set("peer.restore.after", lost)
	f.set("peer.abort", lost)
	if m := migrate(t, a, api.MigrateRequest{}); m.Result != api.RolledBack {
		t.Fatalf("result %s %v", m.Result, m.Error)
	}
	deadline := time.Now().Add(5 * time.Second)
	cleaned := func() bool { // the container goes first, the service state last (abortIncoming)
		return b.eng.get(testSvc) == "removed" && !b.dp.isFenced(podIx) && !b.pods.has("stdr-test-b-kv") &&
			b.d.Status().Services[0].State == StateStopped
	}
	for !cleaned() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := b.d.Status().Services[0]; b.eng.get(testSvc) != "removed" || b.dp.isFenced(podIx) || st.State != StateStopped || b.pods.has("stdr-test-b-kv") {
		t.Fatalf("destination container %s fenced %v %+v", b.eng.get(testSvc), b.dp.isFenced(podIx), st)
	}
	if a.eng.get(testSvc) != "running" || a.d.Status().Services[0].State != StateRunning {
		t.Fatalf("source %s", a.eng.get(testSvc))
	}
}
