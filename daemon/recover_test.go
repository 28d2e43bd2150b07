package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pod"
)

// recEngine is a fakeEngine that survived a daemon restart: Recover reports found, Pod returns
// a pod for every service it adopted.
type recEngine struct {
	*fakeEngine
	found []RecoveredContainer
}

func (e *recEngine) Recover(ctx context.Context) ([]RecoveredContainer, error) {
	e.c.add(e.node, "engine.recover")
	for _, c := range e.found {
		st := map[string]string{"running": "running", "paused": "frozen"}[c.Status]
		if st == "" {
			st = c.Status
		}
		e.set(c.Service, st)
	}
	return e.found, nil
}

func (e *recEngine) Pod(svc string) (*pod.Pod, error) {
	if st := e.get(svc); st != "running" {
		return nil, ErrNotRunning
	}
	ns := "stdr-test-" + e.node + "-" + svc
	return &pod.Pod{Spec: pod.Spec{NetNS: ns}, HostVeth: pod.HostVethName(ns), HostIndex: 42}, nil
}

// restart builds a new daemon over the state directory of cfg (the previous daemon is gone)
// with an engine that finds found, and runs Recover.
func restart(t *testing.T, cfg *Config, found ...RecoveredContainer) (*Daemon, *fakeDP, *recEngine, *calls) {
	t.Helper()
	c, f := &calls{}, &fail{}
	dp := newFakeDP(cfg.Node, c, f)
	eng := &recEngine{fakeEngine: newFakeEngine(cfg.Node, c, f), found: found}
	d, err := New(cfg, Deps{Datapath: dp, Engine: eng, Control: &fakeCtl{node: cfg.Node, c: c, f: f},
		Pods: &fakePods{node: cfg.Node, c: c, live: map[string]bool{}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial: func(string) (Peer, error) { return nil, ErrUnknownPeer }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Recover(context.Background()); err != nil {
		t.Fatalf("recover: %v", err)
	}
	return d, dp, eng, c
}

func TestRecover(t *testing.T) {
	a, b, _, _ := pair(t) // kv runs on a
	acfg, bcfg := a.d.Config(), b.d.Config()
	state := func(d *Daemon) api.ServiceStatus { t.Helper(); return d.Status().Services[0] }

	// a restarts while kv runs: running again, routed locally on the adopted pod.
	d, dp, _, _ := restart(t, acfg, RecoveredContainer{Service: testSvc, Status: "running"})
	if st := state(d); st.State != StateRunning || st.PodNS != "stdr-test-a-kv" {
		t.Fatalf("after restart: %+v", st)
	}
	if rs := d.Routes(); len(rs) != 1 || rs[0].Kind != api.Local || rs[0].Instance != 7 || dp.entry(7) != "local" {
		t.Fatalf("routes after restart: %+v, datapath %s", rs, dp.entry(7))
	}
	if _, err := d.Run(context.Background(), api.RunRequest{Service: testSvc}); err == nil || !strings.Contains(err.Error(), "already running on a") {
		t.Fatalf("run after restart: %v", err)
	}

	// a dies frozen in the middle of an outgoing migration: resumed and running.
	markMigrating(t, a.d)
	d, _, eng, c := restart(t, acfg, RecoveredContainer{Service: testSvc, Status: "paused"})
	if got := c.list(); !contains(got, "a:engine.resume(kv)") || eng.get(testSvc) != "running" || state(d).State != StateRunning {
		t.Fatalf("frozen source: calls %v, engine state %s", got, eng.get(testSvc))
	}

	// b dies with a half-restored copy (state restoring): removed, kv stopped there.
	markRestoring(t, b.d)
	d, _, _, c = restart(t, bcfg, RecoveredContainer{Service: testSvc, Status: "paused"})
	if got := c.list(); !contains(got, "b:engine.remove(kv)") || contains(got, "b:engine.resume(kv)") || state(d).State != StateStopped {
		t.Fatalf("destination leftover: calls %v, state %+v", got, state(d))
	}

	// after a migration a -> b, a restarts without a container: kv is remote on b.
	a2, _, _, _ := pair(t)
	if m := migrate(t, a2, api.MigrateRequest{}); m.Result != api.Succeeded {
		t.Fatalf("migrate: %s %v", m.Result, m.Error)
	}
	d, _, _, _ = restart(t, a2.d.Config())
	if st := state(d); st.State != StateRemote || st.Peer != "b" {
		t.Fatalf("after restart of the source: %+v, want remote on b", st)
	}
}

// markMigrating / markRestoring record the state a daemon that died mid-migration left behind.
func markMigrating(t *testing.T, d *Daemon) {
	d.mu.Lock()
	s := d.services[testSvc]
	s.state, s.migration = StateMigrating, "m1"
	d.saveStateLocked()
	d.mu.Unlock()
}

func markRestoring(t *testing.T, d *Daemon) {
	d.mu.Lock()
	s := d.services[testSvc]
	s.state, s.migration = StateRestoring, "m1"
	d.saveStateLocked()
	d.mu.Unlock()
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// TestRunLeftoverHint: a run that fails because a previous run's container is still under the
// runc root tells how to remove it.
func TestRunLeftoverHint(t *testing.T) {
	c, f := &calls{}, &fail{}
	cfg := testConfig(t, "a", 20, "b", 21)
	d, err := New(cfg, Deps{Datapath: newFakeDP("a", c, f), Engine: newFakeEngine("a", c, f), Control: &fakeCtl{node: "a", c: c, f: f},
		Pods: &fakePods{node: "a", c: c, live: map[string]bool{}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial: func(string) (Peer, error) { return nil, ErrUnknownPeer }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.MkdirAll(d.runcStateDir(testSvc), 0o700); err != nil {
		t.Fatal(err)
	}
	f.set("run", errors.New("run kv: container kv on a: container exists (runc state)"))
	_, err = d.Run(context.Background(), api.RunRequest{Service: testSvc})
	if err == nil || !strings.Contains(err.Error(), "delete --force kv") || !strings.Contains(err.Error(), cfg.StateDir) {
		t.Fatalf("run over a leftover: %v", err)
	}
}
