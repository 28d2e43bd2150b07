package daemon

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
)

func migrate(t *testing.T, a *node, req api.MigrateRequest) api.Migration {
	t.Helper()
	if req.Service == "" {
		req.Service = testSvc
	}
	if req.To == "" {
		req.To = "b"
	}
	if req.Strategy == "" {
		req.Strategy = "symmetric"
	}
	if req.Technique == "" {
		req.Technique = api.Cold
	}
	if req.DrainPeriod == 0 {
		req.DrainPeriod = 50 * time.Millisecond
	}
	req.Wait = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := a.d.Migrate(ctx, req)
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return m
}

func TestMigrationSuccessOrder(t *testing.T) {
	for _, tech := range []api.Technique{api.Cold, api.PreCopy} {
		t.Run(string(tech), func(t *testing.T) {
			a, b, c, _ := pair(t)
			m := migrate(t, a, api.MigrateRequest{Technique: tech})
			if m.Result != api.Succeeded || m.Error != nil {
				t.Fatalf("result %s, error %v", m.Result, m.Error)
			}
			want := []string{
				"a:engine.supports(" + string(tech) + ")", // validate
				"b:pods.create(stdr-test-b-kv)",
				"b:dp.fence(101)", // before anything can run in the pod
				"a:engine.checkpoint(kv," + string(tech) + ")",
			}
			if tech == api.PreCopy {
				want = append(want, "a:engine.pre-dump")
			}
			want = append(want,
				"a:ctl.prepare(stdr-test-a-kv,symmetric,198.18.21.2:4433)",
				"a:engine.freeze",
				"a:dp.remote(7,b)", // the source forwards in-flight packets before the restore
				"b:engine.restore(kv)",
				"b:dp.local(7)",
				"b:dp.unfence(101)", // opCommit, after the source's commit point
				"b:ctl.restored(stdr-test-b-kv,198.18.21.2:4433)",
				"a:engine.complete(kv)",
				"a:pods.delete(stdr-test-a-kv)",
				"a:dp.delete(7)",
			)
			if got := c.list(); !reflect.DeepEqual(got, want) {
				t.Fatalf("calls:\n got  %q\n want %q", got, want)
			}
			wantFiles := map[string]string{"final/core.img": "image of kv"}
			if tech == api.PreCopy {
				wantFiles["1/pages-1.img"] = "predump"
			}
			if !reflect.DeepEqual(b.eng.restoredFiles, wantFiles) {
				t.Fatalf("destination image %v, want %v", b.eng.restoredFiles, wantFiles)
			}
			if m.Bytes != int64(len("image of kv"))+map[bool]int64{true: 7}[tech == api.PreCopy] {
				t.Fatalf("bytes %d", m.Bytes)
			}
			if m.Ready != 3 || m.Unsupported != 1 || m.Downtime <= 0 {
				t.Fatalf("readiness %d/%d, downtime %v", m.Ready, m.Unsupported, m.Downtime)
			}
			if a.dp.entry(7) != "none" || b.dp.entry(7) != "local" {
				t.Fatalf("entries a=%s b=%s", a.dp.entry(7), b.dp.entry(7))
			}
			sa, sb := a.d.Status().Services[0], b.d.Status().Services[0]
			if sa.State != StateRemote || sa.Peer != "b" || sb.State != StateRunning {
				t.Fatalf("states a=%+v b=%+v", sa, sb)
			}
			// The timeline holds both nodes' phases in order, each start before its end.
			var phases []string
			for _, e := range m.Events {
				if e.Kind == api.Start {
					phases = append(phases, e.Node+":"+string(e.Phase))
				}
			}
			wantPhases := []string{"a:prepare-dest", "b:prepare-dest", "a:checkpoint", "a:prepare", "a:route", "a:restore", "b:restore", "a:restored", "b:restored", "a:complete", "a:drain"}
			got := strings.Join(phases, " ")
			// transfer starts are interleaved; drop them for the order check
			if !reflect.DeepEqual(filter(phases, "transfer"), wantPhases) {
				t.Fatalf("phase starts %s\nwant %v", got, wantPhases)
			}
			// And back: b -> a with explicit-reactive.
			c.mu.Lock()
			c.log = nil
			c.mu.Unlock()
			m2 := migrate(t, b, api.MigrateRequest{To: "a", Strategy: "explicit-reactive", Technique: tech})
			if m2.Result != api.Succeeded {
				t.Fatalf("back: %s %v", m2.Result, m2.Error)
			}
			if a.dp.entry(7) != "local" || b.dp.entry(7) != "none" || a.eng.get("kv") != "running" {
				t.Fatalf("after return: a=%s b=%s engine a=%s", a.dp.entry(7), b.dp.entry(7), a.eng.get("kv"))
			}
		})
	}
}

func filter(s []string, drop string) []string {
	var out []string
	for _, x := range s {
		if !strings.HasSuffix(x, ":"+drop) {
			out = append(out, x)
		}
	}
	return out
}

// assertRolledBack checks that the service runs on a again and b holds nothing of it.
func assertRolledBack(t *testing.T, a, b *node, m api.Migration, node string, phase api.Phase, cause string) {
	t.Helper()
	if m.Result != api.RolledBack {
		t.Fatalf("result %s, want rolled-back (error %v)", m.Result, m.Error)
	}
	if m.Error == nil || m.Error.Node != node || m.Error.Phase != phase || !strings.Contains(m.Error.Cause, cause) {
		t.Fatalf("error %+v, want node %s phase %s cause containing %q", m.Error, node, phase, cause)
	}
	if !strings.Contains(m.Error.Error(), "node "+node) || !strings.Contains(m.Error.Error(), "phase "+string(phase)) {
		t.Fatalf("error text %q does not name node and phase", m.Error.Error())
	}
	if got := a.eng.get(testSvc); got != "running" {
		t.Fatalf("source container %s, want running", got)
	}
	if a.dp.entry(7) != "local" {
		t.Fatalf("source entry %s, want local", a.dp.entry(7))
	}
	if st := a.d.Status().Services[0].State; st != StateRunning {
		t.Fatalf("source service state %s", st)
	}
	if b.dp.entry(7) != "none" {
		t.Fatalf("destination entry %s, want none", b.dp.entry(7))
	}
	if b.pods.has("stdr-test-b-kv") {
		t.Fatal("destination pod left behind")
	}
	if st := b.eng.get(testSvc); st != "" && st != "removed" {
		t.Fatalf("destination container %s", st)
	}
	if len(b.d.incoming) != 0 {
		t.Fatal("destination still holds the incoming migration")
	}
}

func TestMigrationRollback(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name, failAt string
		node         string
		phase        api.Phase
		wantCalls    []string // must appear, in this order, after the failure
	}{
		{"dump", "checkpoint", "a", api.PhaseCheckpt, []string{"b:pods.delete(stdr-test-b-kv)", "a:engine.resume(kv)", "a:ctl.abort(stdr-test-a-kv)"}},
		{"transfer", "send", "a", api.PhaseCheckpt, []string{"b:pods.delete(stdr-test-b-kv)", "a:engine.resume(kv)", "a:ctl.abort(stdr-test-a-kv)"}},
		{"restore", "restore", "b", api.PhaseRestore, []string{"a:dp.local(7)", "b:engine.remove(kv)", "b:pods.delete(stdr-test-b-kv)", "a:engine.resume(kv)", "a:ctl.abort(stdr-test-a-kv)"}},
		{"route", "dp.remote", "a", api.PhaseRoute, []string{"a:dp.local(7)", "b:pods.delete(stdr-test-b-kv)", "a:engine.resume(kv)", "a:ctl.abort(stdr-test-a-kv)"}},
		{"dest-route", "dp.local.b", "b", api.PhaseRestore, []string{"b:engine.remove(kv)", "a:engine.resume(kv)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b, c, f := pair(t)
			f.set(tc.failAt, boom)
			m := migrate(t, a, api.MigrateRequest{})
			assertRolledBack(t, a, b, m, tc.node, tc.phase, "boom")
			got := c.list()
			i := 0
			for _, g := range got {
				if i < len(tc.wantCalls) && g == tc.wantCalls[i] {
					i++
				}
			}
			if i != len(tc.wantCalls) {
				t.Fatalf("calls %q\nmissing (in order) %q", got, tc.wantCalls[i:])
			}
			// The service can migrate again once the failure is gone.
			f.set(tc.failAt, nil)
			if m := migrate(t, a, api.MigrateRequest{}); m.Result != api.Succeeded {
				t.Fatalf("retry: %s %v", m.Result, m.Error)
			}
		})
	}
}

func TestMigrationPrepareTimeout(t *testing.T) {
	a, b, _, _ := pair(t)
	a.ctl.hang = true
	start := time.Now()
	m := migrate(t, a, api.MigrateRequest{PrepareTimeout: 150 * time.Millisecond})
	if el := time.Since(start); el < 150*time.Millisecond || el > 5*time.Second {
		t.Fatalf("migration took %v with a 150ms prepare timeout", el)
	}
	assertRolledBack(t, a, b, m, "a", api.PhasePrepare, "did not become ready")
}

func TestDrainWaitsForQuiet(t *testing.T) {
	a, _, _, _ := pair(t)
	const period = 200 * time.Millisecond
	stop := make(chan struct{})
	sending := make(chan struct{})
	// Packets keep arriving at the source for 400 ms after the route switched.
	go func() {
		for a.dp.entry(7) != "remote:b" {
			time.Sleep(2 * time.Millisecond)
		}
		close(sending)
		end := time.Now().Add(400 * time.Millisecond)
		for time.Now().Before(end) {
			a.dp.packet(7)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer close(stop)
	m := migrate(t, a, api.MigrateRequest{DrainPeriod: period, DrainTimeout: 10 * time.Second})
	<-sending
	if m.Result != api.Succeeded {
		t.Fatalf("%s %v", m.Result, m.Error)
	}
	var drain api.Event
	for _, e := range m.Events {
		if e.Phase == api.PhaseDrain && e.Kind == api.End {
			drain = e
		}
	}
	// 400 ms of packets + 200 ms of quiet; and the entry was removed only at the end.
	if drain.Duration < 550*time.Millisecond || drain.Duration > 3*time.Second {
		t.Fatalf("drain took %v, want about 600ms", drain.Duration)
	}
	if st, _ := a.dp.InstanceStats(7); time.Since(st.LastSeen) < period {
		t.Fatalf("entry removed %v after the last packet, before the drain period", time.Since(st.LastSeen))
	}
	if a.dp.entry(7) != "none" {
		t.Fatalf("entry %s after drain", a.dp.entry(7))
	}

	// A source that never gets quiet stops at the drain timeout.
	a2, b2, _, _ := pair(t)
	_ = b2
	stop2 := make(chan struct{})
	defer close(stop2)
	go func() {
		for {
			a2.dp.packet(7)
			select {
			case <-stop2:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	m = migrate(t, a2, api.MigrateRequest{DrainPeriod: 100 * time.Millisecond, DrainTimeout: 300 * time.Millisecond})
	var info string
	for _, e := range m.Events {
		if e.Phase == api.PhaseDrain && e.Kind == api.Info {
			info = e.Detail
		}
	}
	if m.Result != api.Succeeded || !strings.Contains(info, "timeout") || a2.dp.entry(7) != "none" {
		t.Fatalf("noisy drain: %s %q entry %s", m.Result, info, a2.dp.entry(7))
	}
}

func TestMigrateValidation(t *testing.T) {
	a, _, _, _ := pair(t)
	for _, tc := range []struct {
		req  api.MigrateRequest
		want error
	}{
		{api.MigrateRequest{Service: "nope", To: "b", Strategy: "symmetric", Technique: api.Cold}, ErrUnknownService},
		{api.MigrateRequest{Service: testSvc, To: "zz", Strategy: "symmetric", Technique: api.Cold}, ErrUnknownPeer},
		{api.MigrateRequest{Service: testSvc, To: "a", Strategy: "symmetric", Technique: api.Cold}, errors.New("a is this node")},
		{api.MigrateRequest{Service: testSvc, To: "b", Strategy: "teleport", Technique: api.Cold}, ErrBadRequest},
		{api.MigrateRequest{Service: testSvc, To: "b", Strategy: "symmetric", Technique: "warp"}, ErrBadRequest},
	} {
		_, err := a.d.Migrate(context.Background(), tc.req)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Phase != api.PhaseValidate || ae.Node != "a" || !strings.Contains(ae.Cause, tc.want.Error()) {
			t.Errorf("%+v: error %v, want *api.Error in phase validate naming %q", tc.req, err, tc.want)
		}
	}
	// A technique the engine does not support is refused in validate, before the destination
	// or the service hear of the migration.
	c := a.eng.c
	c.mu.Lock()
	c.log = nil
	c.mu.Unlock()
	a.eng.f.set("supports."+string(api.PostCopy), errors.New("lazy pages need userfaultfd"))
	_, err := a.d.Migrate(context.Background(), api.MigrateRequest{Service: testSvc, To: "b", Strategy: "symmetric", Technique: api.PostCopy, Wait: true})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Phase != api.PhaseValidate || !strings.Contains(ae.Cause, "technique post-copy on a: lazy pages need userfaultfd") {
		t.Fatalf("unsupported technique: %v, want a validate error with the engine's reason", err)
	}
	if got := c.list(); len(got) != 1 || got[0] != "a:engine.supports(post-copy)" {
		t.Fatalf("calls for an unsupported technique: %v, want only the engine's check", got)
	}
	if st := a.d.Status(); st.Services[0].State != StateRunning || len(a.d.Migrations()) != 0 {
		t.Fatalf("after the refusal: %+v, %d migrations", st.Services[0], len(a.d.Migrations()))
	}
	// A second migration while one runs is refused with ErrBusy.
	a.ctl.hang = true
	m, err := a.d.Migrate(context.Background(), api.MigrateRequest{Service: testSvc, To: "b", Strategy: "symmetric", Technique: api.Cold, PrepareTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.d.Migrate(context.Background(), api.MigrateRequest{Service: testSvc, To: "b", Strategy: "symmetric", Technique: api.Cold})
	if err == nil || !strings.Contains(err.Error(), ErrBusy.Error()) {
		t.Fatalf("concurrent migrate: %v, want busy", err)
	}
	for {
		got, _ := a.d.Migration(m.ID)
		if got.Result != api.Running {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunAndStateMessages: run of a running service says where it runs; an unknown service lists
// the configured ones; a node the service left shows it remote on its new node even after a
// migration back to it was rolled back.
func TestRunAndStateMessages(t *testing.T) {
	a, b, _, f := pair(t)
	_, err := a.d.Run(context.Background(), api.RunRequest{Service: testSvc})
	if err == nil || !strings.Contains(err.Error(), "run kv: service is already running on a") {
		t.Fatalf("second run: %v", err)
	}
	_, err = a.d.Run(context.Background(), api.RunRequest{Service: "nope"})
	if err == nil || !strings.Contains(err.Error(), "unknown service (configured: kv)") {
		t.Fatalf("unknown service: %v", err)
	}
	if m := migrate(t, a, api.MigrateRequest{}); m.Result != api.Succeeded {
		t.Fatalf("a -> b: %s %v", m.Result, m.Error)
	}
	remote := func(n *node, peer string) {
		t.Helper()
		st := n.d.Status().Services[0]
		if st.State != StateRemote || st.Peer != peer {
			t.Fatalf("%s: service %s/%q, want remote on %s", n.d.cfg.Node, st.State, st.Peer, peer)
		}
	}
	remote(a, "b")
	f.set("restore", errors.New("boom"))
	m := migrate(t, b, api.MigrateRequest{To: "a"})
	if m.Result != api.RolledBack {
		t.Fatalf("b -> a with a failing restore: %s %v", m.Result, m.Error)
	}
	remote(a, "b") // not "stopped": it still runs on b
	f.set("restore", nil)
	if m := migrate(t, b, api.MigrateRequest{To: "a"}); m.Result != api.Succeeded {
		t.Fatalf("b -> a: %s %v", m.Result, m.Error)
	}
	remote(b, "a")
	if st := a.d.Status().Services[0]; st.State != StateRunning || st.Peer != "" {
		t.Fatalf("a after the way back: %+v", st)
	}
}

// TestFreezeAtOnceFollowsHolding: the engine is asked to freeze at once exactly when the
// service reported connections holding their sends since the prepare (Synchronized Symmetric).
func TestFreezeAtOnceFollowsHolding(t *testing.T) {
	for _, holding := range []int{0, 2} {
		a, _, _, _ := pair(t)
		a.ctl.holding = holding
		m := migrate(t, a, api.MigrateRequest{Technique: api.Cold, Strategy: "sync-symmetric"})
		if m.Result != api.Succeeded {
			t.Fatalf("holding %d: result %s, error %v", holding, m.Result, m.Error)
		}
		if got := a.eng.freezeAtOnce; got != (holding > 0) {
			t.Errorf("holding %d: FreezeAtOnce %v, want %v", holding, got, holding > 0)
		}
	}
}
