package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/steerd/steerd/api"
)

// Defaults of a MigrateRequest.
const (
	DefaultPrepareTimeout = 2 * time.Second
	DefaultDrainPeriod    = 2 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	// migrationTimeout bounds a whole migration before the drain.
	migrationTimeout = 5 * time.Minute
	// rollbackTimeout bounds the rollback of a failed migration.
	rollbackTimeout = 30 * time.Second
	// abortTimeout bounds the destination's abort during a rollback.
	abortTimeout = 2 * time.Second
)

// commitTimeout bounds the source's attempts to deliver the commit (opCommit) to the
// destination; commitRetry is the pause between attempts (variables for tests).
var (
	commitTimeout = 10 * time.Second
	commitRetry   = 200 * time.Millisecond
)

// migration is the source node's record of one migration.
type migration struct {
	mu   sync.Mutex
	m    api.Migration
	tl   *timeline
	done chan struct{}
	// committed is set at the commit point (the service's state here is remote): the migration
	// never rolls back after it, and the destination's copy is the service (opOutcome).
	committed bool
}

func (mg *migration) isCommitted() bool {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	return mg.committed
}

func (mg *migration) snapshot(events bool) api.Migration {
	mg.mu.Lock()
	m := mg.m
	mg.mu.Unlock()
	if events {
		m.Events = mg.tl.snapshot()
	}
	return m
}

func (mg *migration) update(f func(m *api.Migration)) {
	mg.mu.Lock()
	f(&mg.m)
	mg.mu.Unlock()
}

// phaseError attributes an error to a phase (and to a node other than this one, if set).
type phaseError struct {
	phase api.Phase
	err   error
}

func (e *phaseError) Error() string { return fmt.Sprintf("%s: %v", e.phase, e.err) }
func (e *phaseError) Unwrap() error { return e.err }

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// rollbackState records what a migration changed, so that a rollback undoes exactly that.
type rollbackState struct {
	destTouched bool // prepare-restore sent: the destination may hold a pod, image
	restoreSent bool // restore sent: the destination may run a container
	checkpoint  bool // engine.Checkpoint called: the container may be frozen or stopped
	prepared    bool // quicext prepare sent to the service on the source
	routed      bool // the source forwards the instance to the destination
}

// Migrate validates req and starts a migration of a service running on this node. With req.Wait
// it returns when the migration ended; a migration that ran and failed is returned with its
// Error set and a nil error. Validation errors are *api.Error with phase "validate".
func (d *Daemon) Migrate(ctx context.Context, req api.MigrateRequest) (api.Migration, error) {
	verr := func(err error) (api.Migration, error) {
		return api.Migration{}, d.apiErr(api.PhaseValidate, fmt.Errorf("migrate %s to %s: %w", req.Service, req.To, err))
	}
	if _, err := api.ParseTechnique(string(req.Technique)); err != nil {
		return verr(fmt.Errorf("%w: %w", ErrBadRequest, err))
	}
	strategy, err := api.ParseStrategy(req.Strategy)
	if err != nil {
		return verr(fmt.Errorf("%w: %w", ErrBadRequest, err))
	}
	if req.To == d.cfg.Node {
		return verr(fmt.Errorf("%w: %s is this node (the service would stay here; peers: %v)", ErrBadRequest, req.To, d.peerNames()))
	}
	pdef, ok := d.cfg.Peer(req.To)
	if !ok {
		return verr(fmt.Errorf("%w: %q (configured: %v)", ErrUnknownPeer, req.To, d.peerNames()))
	}
	if req.PrepareTimeout <= 0 {
		req.PrepareTimeout = DefaultPrepareTimeout
	}
	if req.DrainPeriod <= 0 {
		req.DrainPeriod = DefaultDrainPeriod
	}
	if req.DrainTimeout <= 0 {
		req.DrainTimeout = DefaultDrainTimeout
	}
	id := newID()
	d.mu.Lock()
	s, ok := d.services[req.Service]
	switch {
	case !ok:
		d.mu.Unlock()
		return verr(fmt.Errorf("%w (configured: %s)", ErrUnknownService, d.serviceNames()))
	case s.state != StateRunning:
		st := s.state
		d.mu.Unlock()
		if st == StateMigrating || st == StateRestoring {
			return verr(fmt.Errorf("%w: state %s (migration %s)", ErrBusy, st, s.migration))
		}
		return verr(fmt.Errorf("%w: state %s", ErrNotRunning, st))
	}
	s.state, s.migration = StateMigrating, id
	d.saveStateLocked()
	def := s.def
	d.mu.Unlock()
	if err := d.checkTechnique(ctx, req.Technique); err != nil {
		d.mu.Lock()
		s.state, s.migration = StateRunning, ""
		d.saveStateLocked()
		d.mu.Unlock()
		return verr(err)
	}
	peer, err := d.dial(req.To)
	d.mu.Lock()
	if err != nil {
		s.state, s.migration = StateRunning, ""
		d.saveStateLocked()
		d.mu.Unlock()
		return verr(fmt.Errorf("dial peer %s: %w", req.To, err))
	}
	mg := &migration{
		m: api.Migration{ID: id, Service: def.Name, Instance: def.Instance, From: d.cfg.Node, To: req.To,
			Strategy: strategy, Technique: req.Technique, Result: api.Running, Phase: api.PhaseValidate, Started: time.Now()},
		done: make(chan struct{}),
	}
	mg.tl = newTimeline(id, d.cfg.Node, func(p api.Phase, dur time.Duration) {
		d.met.phase.WithLabelValues(string(p), string(req.Technique)).Observe(dur.Seconds())
	})
	d.migs[id] = mg
	d.order = append(d.order, id)
	for len(d.order) > maxMigrations {
		delete(d.migs, d.order[0])
		d.order = d.order[1:]
	}
	d.mu.Unlock()
	req.Strategy = strategy
	d.log.Info("migration start", "migration", id, "service", def.Name, "to", req.To, "strategy", strategy, "technique", req.Technique)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(mg.done)
		d.runMigration(mg, s, def, pdef, peer, req)
	}()
	if !req.Wait {
		return mg.snapshot(false), nil
	}
	select {
	case <-mg.done:
		return mg.snapshot(true), nil
	case <-ctx.Done():
		return mg.snapshot(true), ctx.Err()
	}
}

func (d *Daemon) peerNames() []string {
	var n []string
	for _, p := range d.cfg.Peers {
		n = append(n, p.Name)
	}
	return n
}

// Migration returns one migration this node ran as the source, with its events.
func (d *Daemon) Migration(id string) (api.Migration, error) {
	d.mu.Lock()
	mg, ok := d.migs[id]
	d.mu.Unlock()
	if !ok {
		return api.Migration{}, d.apiErr(api.PhaseControl, fmt.Errorf("get migration %q: %w", id, ErrUnknownMig))
	}
	return mg.snapshot(true), nil
}

// Migrations lists the migrations this node ran as the source, oldest first, without events.
func (d *Daemon) Migrations() []api.Migration {
	d.mu.Lock()
	mgs := make([]*migration, 0, len(d.order))
	for _, id := range d.order {
		mgs = append(mgs, d.migs[id])
	}
	d.mu.Unlock()
	out := make([]api.Migration, len(mgs))
	for i, mg := range mgs {
		out[i] = mg.snapshot(false)
	}
	return out
}

// Events returns the events of one migration (source and received-destination timelines), or of
// every migration this node knows when id is "".
func (d *Daemon) Events(id string) ([]api.Event, error) {
	d.mu.Lock()
	var tls []*timeline
	if id != "" {
		if mg, ok := d.migs[id]; ok {
			tls = append(tls, mg.tl)
		} else if in, ok := d.incoming[id]; ok {
			tls = append(tls, in.tl)
		} else if tl, ok := d.finishedIn[id]; ok {
			tls = append(tls, tl)
		}
	} else {
		for _, i := range d.order {
			tls = append(tls, d.migs[i].tl)
		}
		for _, tl := range d.finishedIn {
			tls = append(tls, tl)
		}
		for _, in := range d.incoming {
			tls = append(tls, in.tl)
		}
	}
	d.mu.Unlock()
	if id != "" && len(tls) == 0 {
		return nil, d.apiErr(api.PhaseControl, fmt.Errorf("get events of %q: %w", id, ErrUnknownMig))
	}
	var out []api.Event
	for _, tl := range tls {
		out = append(out, tl.snapshot()...)
	}
	return out, nil
}

// runMigration is the source-side state machine:
//
//	prepare-dest (destination pod created and fenced) -> checkpoint [pre-dumps, prepare (quicext,
//	BeforeFreeze), freeze, dump, send] -> route (source forwards in-flight packets) -> restore
//	(destination, copy still fenced) -> COMMIT (state remote here, then opCommit: the destination
//	unfences) -> restored (quicext on destination) -> complete (source container removed) -> drain
//	-> source entry removed.
//
// Any failure before the commit rolls back: the service keeps running on the source. This is safe
// even when the destination cannot be reached for the abort after its restore (its steerd died,
// the peer channel broke): its copy is fenced in the datapath (pinned, enforced without steerd)
// until it is told of the commit, so it cannot talk to clients while the source resumes. A
// restarted destination asks the source for the outcome (opOutcome, Recover). After the commit
// nothing rolls back: a failure is a late error of the migration.
func (d *Daemon) runMigration(mg *migration, s *service, def ServiceDef, pdef PeerDef, peer Peer, req api.MigrateRequest) {
	ctx, cancel := context.WithTimeout(d.ctx, migrationTimeout)
	defer cancel()
	tl := mg.tl
	id := mg.m.ID
	v4, v6 := pdef.Public()
	tgt := target(v4, v6, def.Port)
	podNS := d.cfg.PodNS(def.Name)
	d.mu.Lock()
	if s.pod != nil {
		podNS = s.pod.NetNS
	}
	d.mu.Unlock()
	var rb rollbackState
	var freezeAt, restoredAt time.Time
	var routedPackets uint64 // the instance's datapath counter when the source started forwarding

	step := func(p api.Phase, f func() error) error {
		mg.update(func(m *api.Migration) { m.Phase = p })
		tl.start(p, "")
		err := f()
		tl.end(p, err)
		if err != nil {
			var pe *phaseError
			if !errors.As(err, &pe) {
				err = &phaseError{phase: p, err: err}
			}
		}
		return err
	}
	call := func(op string, body any) error {
		r, err := peer.Call(ctx, op, body)
		if r != nil {
			tl.merge(r.Events)
		}
		if err != nil {
			d.notePeer(pdef.Name, err)
		}
		return err
	}

	err := step(api.PhaseDest, func() error {
		rb.destTouched = true
		return call(opPrepareRestore, prepareRestoreReq{Migration: id, Source: d.cfg.Node, Service: def, Technique: req.Technique})
	})
	var pageServer netip.AddrPort
	if err == nil && req.Technique == api.PostCopy {
		pageServer, err = d.pageServerAddr()
		if err != nil {
			err = &phaseError{phase: api.PhaseCheckpt, err: err}
		}
	}
	if err == nil {
		err = step(api.PhaseCheckpt, func() error {
			dir := d.imageDir("images", id)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("create image directory: %w", err)
			}
			defer os.RemoveAll(dir)
			rb.checkpoint = true
			holding := 0 // connections holding their sends since the prepare
			rep, err := d.engine.Checkpoint(ctx, CheckpointRequest{
				Migration: id, Service: def.Name, Technique: req.Technique, ImageDir: dir, PageServer: pageServer,
				Transport: &peerTransport{d: d, peer: peer, migration: id, tl: tl, mg: mg},
				BeforeFreeze: func(ctx context.Context) error {
					tl.start(api.PhasePrepare, req.Strategy)
					rb.prepared = true
					r, err := d.ctl.Prepare(ctx, podNS, tgt, req.Strategy, req.PrepareTimeout)
					mg.update(func(m *api.Migration) {
						m.Ready, m.NotReady, m.Unsupported = r.Ready, r.NotReady, r.Unsupported
					})
					tl.end(api.PhasePrepare, err)
					if err != nil {
						return &phaseError{phase: api.PhasePrepare, err: fmt.Errorf("prepare service %s in %s: %w", def.Name, podNS, err)}
					}
					tl.add(api.Event{Phase: api.PhasePrepare, Kind: api.Info,
						Detail: fmt.Sprintf("ready %d, not ready %d, unsupported %d", r.Ready, r.NotReady, r.Unsupported)})
					if r.Holding > 0 {
						holding = r.Holding
						tl.add(api.Event{Phase: api.PhasePrepare, Kind: api.Info,
							Detail: fmt.Sprintf("%d connections hold their sends from now on (sync-symmetric): freeze at once", r.Holding)})
					}
					freezeAt = time.Now()
					return nil
				},
				FreezeAtOnce: func() bool { return holding > 0 },
			})
			for _, p := range rep.Phases {
				tl.add(api.Event{Phase: api.Phase(p.Name), Kind: api.End, Time: p.End, Duration: p.End.Sub(p.Start), Bytes: p.Bytes, Detail: "engine"})
			}
			if err != nil {
				return fmt.Errorf("checkpoint %s (%s): %w", def.Name, req.Technique, err)
			}
			if freezeAt.IsZero() {
				return fmt.Errorf("checkpoint %s: engine did not call BeforeFreeze", def.Name)
			}
			return nil
		})
	}
	// The source forwards before the destination restores: the source copy is frozen (or dead),
	// so a packet it receives now is lost, while a forwarded one reaches the destination pod,
	// whose route is set before runc restore and whose socket CRIU restores before the process
	// runs. A failed restore reverts the route (rollback, rb.routed).
	if err == nil {
		err = step(api.PhaseRoute, func() error {
			rb.routed = true
			if err := d.setRemote(def.Instance, def.Name, pdef.Name); err != nil {
				return err
			}
			if d.dp != nil {
				if st, err := d.dp.InstanceStats(def.Instance); err == nil {
					routedPackets = st.Packets
				}
			}
			return nil
		})
	}
	if err == nil {
		err = step(api.PhaseRestore, func() error {
			rb.restoreSent = true
			err := call(opRestore, restoreReq{Migration: id, Service: def.Name, Technique: req.Technique, PageServerPort: pageServer.Port()})
			restoredAt = time.Now()
			return err
		})
	}
	if err == nil {
		down := restoredAt.Sub(freezeAt)
		mg.update(func(m *api.Migration) { m.Downtime = down })
		d.met.downtime.WithLabelValues(string(req.Technique), req.Strategy).Observe(down.Seconds())
	}
	if err != nil {
		d.failMigration(mg, s, def, peer, rb, podNS, err)
		return
	}

	// Commit point: the service is the destination's. Saved before the destination hears of it:
	// once it unfences, this node must never resume its copy (also not after a restart).
	d.mu.Lock()
	oldPod := s.pod
	s.state, s.peer, s.pod, s.migration = StateRemote, pdef.Name, nil, ""
	d.saveStateLocked()
	d.mu.Unlock()
	mg.update(func(*api.Migration) { mg.committed = true })
	tl.add(api.Event{Phase: api.PhaseRestore, Kind: api.Info, Detail: "committed: the service is " + pdef.Name + "'s"})
	var late []error
	commitErr := d.sendCommit(ctx, tl, call, commitReq{Migration: id, Service: def.Name})
	if commitErr != nil {
		late = append(late, &phaseError{phase: api.PhaseRestore, err: commitErr})
	} else if err := step(api.PhaseRestored, func() error {
		return call(opRestored, restoredReq{Migration: id, Service: def.Name, Target: tgt})
	}); err != nil {
		late = append(late, err)
	}
	if err := step(api.PhaseComplete, func() error {
		var errs []error
		if err := d.engine.Complete(ctx, def.Name); err != nil {
			errs = append(errs, fmt.Errorf("complete checkpoint of %s: %w", def.Name, err))
		}
		if oldPod != nil {
			if err := d.deletePod(oldPod); err != nil {
				errs = append(errs, fmt.Errorf("delete source pod: %w", err))
			}
		}
		return errors.Join(errs...)
	}); err != nil {
		late = append(late, err)
	}
	if err := step(api.PhaseDrain, func() error {
		quiet, n, err := d.drain(d.ctx, def.Instance, req.DrainPeriod, req.DrainTimeout)
		if err != nil {
			return err
		}
		var fwd uint64
		if d.dp != nil {
			if st, err := d.dp.InstanceStats(def.Instance); err == nil && st.Packets >= routedPackets {
				fwd = st.Packets - routedPackets
			}
		}
		// The XDP datapath forwards what still reaches the source; the nftables one drops it.
		verb := "forwarded"
		if d.cfg.Datapath == DatapathNFT {
			verb = "dropped (nftables datapath, no forwarding)"
		}
		detail := fmt.Sprintf("quiet for %v; %s %d packets since the route switch, %d of them during the drain", req.DrainPeriod, verb, fwd, n)
		if !quiet {
			detail = fmt.Sprintf("drain timeout %v reached; %s %d packets since the route switch, %d of them during the drain", req.DrainTimeout, verb, fwd, n)
		}
		tl.add(api.Event{Phase: api.PhaseDrain, Kind: api.Info, Detail: detail})
		return d.deleteRoute(def.Instance)
	}); err != nil {
		late = append(late, err)
	}
	result := api.Succeeded
	var aerr *api.Error
	if len(late) > 0 {
		result = api.Failed
		var pe *phaseError
		errors.As(late[0], &pe)
		aerr = d.apiErr(pe.phase, errors.Join(late...))
	}
	mg.update(func(m *api.Migration) { m.Result, m.Ended, m.Error = result, time.Now(), aerr })
	d.met.migrations.WithLabelValues(string(result), string(req.Technique), req.Strategy).Inc()
	d.log.Info("migration end", "migration", id, "result", result, "downtime", mg.m.Downtime)
}

// sendCommit delivers the commit to the destination (opCommit), retrying for commitTimeout: until
// it arrives the destination's copy stays fenced and the service answers nobody. If it never
// arrives the destination learns the outcome when its steerd restarts (Recover asks this node).
func (d *Daemon) sendCommit(ctx context.Context, tl *timeline, call func(string, any) error, q commitReq) error {
	ctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	for {
		err := call(opCommit, q)
		var ae *api.Error
		if err == nil || errors.As(err, &ae) {
			if err != nil {
				return fmt.Errorf("commit on destination: %w", err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("commit on destination not delivered within %v (its copy stays fenced until its steerd restarts and asks this node): %w", commitTimeout, err)
			tl.add(api.Event{Phase: api.PhaseRestore, Kind: api.Fail, Detail: err.Error()})
			return err
		case <-time.After(commitRetry):
		}
	}
}

// pageServerAddr returns where this node's CRIU serves lazy pages (post-copy): the address of the
// peer channel (what peers know this node by) with a TCP port that is free now.
func (d *Daemon) pageServerAddr() (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(d.cfg.PeerListen)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("page server address from peer_listen %q: %w", d.cfg.PeerListen, err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ap.Addr(), 0).String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("pick a page server port on %s: %w", ap.Addr(), err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return netip.AddrPortFrom(ap.Addr(), uint16(port)), nil
}

// failMigration rolls a failed migration back and records the error (node, phase, cause).
func (d *Daemon) failMigration(mg *migration, s *service, def ServiceDef, peer Peer, rb rollbackState, podNS string, err error) {
	var pe *phaseError
	phase := api.PhaseControl
	if errors.As(err, &pe) {
		phase = pe.phase
	}
	aerr := d.apiErr(phase, err)
	d.log.Warn("migration failed, rolling back", "migration", mg.m.ID, "phase", aerr.Phase, "error_node", aerr.Node, "cause", aerr.Cause)
	rerr := d.rollback(mg, s, def, peer, rb, podNS)
	result := api.RolledBack
	if rerr != nil {
		result = api.Failed
		aerr.Cause += "; rollback: " + rerr.Error()
	}
	mg.update(func(m *api.Migration) { m.Result, m.Ended, m.Error, m.Phase = result, time.Now(), aerr, aerr.Phase })
	d.met.migrations.WithLabelValues(string(result), string(mg.m.Technique), mg.m.Strategy).Inc()
}

// rollback undoes a failed migration in reverse order: route back to local, abort the
// destination, resume the container on the source, abort the service's prepared migration.
func (d *Daemon) rollback(mg *migration, s *service, def ServiceDef, peer Peer, rb rollbackState, podNS string) error {
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	mg.tl.start(api.PhaseRollback, "")
	var errs []error
	if rb.routed {
		d.mu.Lock()
		lt := s.local()
		d.mu.Unlock()
		if err := d.setLocal(def.Instance, def.Name, lt); err != nil {
			errs = append(errs, err)
		}
	}
	if rb.destTouched {
		// An unreachable destination must not keep the source frozen: the abort gets
		// abortTimeout. Before restore the destination holds at most a pod and image files;
		// after restore it may run a second copy of the service. Either way resuming here is
		// safe ONLY because that copy is fenced (prepare-restore fences the pod before any
		// restore, and only opCommit, sent after the commit point, unfences it): it cannot talk
		// to clients, and a restarted destination asks this node (opOutcome) and removes it. So
		// a failed abort is noted, not a rollback failure.
		actx, acancel := context.WithTimeout(ctx, abortTimeout)
		r, err := peer.Call(actx, opAbort, abortReq{Migration: mg.m.ID, Service: def.Name})
		acancel()
		if r != nil {
			mg.tl.merge(r.Events)
		}
		if err != nil {
			err = fmt.Errorf("abort on destination %s: %w", mg.m.To, err)
			detail := "destination not cleaned up (no container there yet): " + err.Error()
			if rb.restoreSent {
				detail = "destination not cleaned up; its restored copy stays fenced until its steerd asks this node for the outcome: " + err.Error()
			}
			mg.tl.add(api.Event{Phase: api.PhaseRollback, Kind: api.Info, Detail: detail})
		}
	}
	if rb.checkpoint {
		if err := d.engine.Resume(ctx, def.Name); err != nil {
			errs = append(errs, fmt.Errorf("resume %s on source: %w", def.Name, err))
		}
	}
	if rb.prepared {
		// The container runs and the route is local again: a service that cannot take the
		// abort (no control endpoint, or it never answered prepare) keeps serving; its clients
		// forget the announced address at their own timeouts. Noted, not a rollback failure.
		if err := d.ctl.Abort(ctx, podNS); err != nil {
			mg.tl.add(api.Event{Phase: api.PhaseRollback, Kind: api.Info,
				Detail: fmt.Sprintf("quicext abort of %s not delivered: %v", def.Name, err)})
		}
	}
	err := errors.Join(errs...)
	mg.tl.end(api.PhaseRollback, err)
	d.mu.Lock()
	s.state, s.migration = StateRunning, ""
	d.saveStateLocked()
	d.mu.Unlock()
	return err
}

// drain polls the datapath until no packet for instance arrived on this node for period
// (quiet=true) or timeout passed (quiet=false). It returns the packets counted during the drain.
func (d *Daemon) drain(ctx context.Context, instance uint64, period, timeout time.Duration) (quiet bool, packets uint64, err error) {
	if d.dp == nil {
		return true, 0, nil
	}
	tick := min(max(period/10, 10*time.Millisecond), 250*time.Millisecond)
	start := time.Now()
	quietSince := start
	first, err := d.dp.InstanceStats(instance)
	if err != nil {
		return false, 0, fmt.Errorf("read instance %d stats: %w", instance, err)
	}
	last := first.Packets
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		st, err := d.dp.InstanceStats(instance)
		if err != nil {
			return false, last - first.Packets, fmt.Errorf("read instance %d stats: %w", instance, err)
		}
		now := time.Now()
		if st.Packets != last {
			last, quietSince = st.Packets, now
		}
		if st.LastSeen.After(quietSince) && !st.LastSeen.After(now) {
			quietSince = st.LastSeen
		}
		if now.Sub(quietSince) >= period {
			return true, last - first.Packets, nil
		}
		if now.Sub(start) >= timeout {
			return false, last - first.Packets, nil
		}
		select {
		case <-ctx.Done():
			return false, last - first.Packets, ctx.Err()
		case <-t.C:
		}
	}
}

func (d *Daemon) notePeer(name string, err error) {
	var ae *api.Error
	if errors.As(err, &ae) {
		return // the peer answered: the channel works
	}
	d.mu.Lock()
	d.peerErr[name] = err.Error()
	d.mu.Unlock()
}

// peerTransport implements ImageTransport over the peer channel with progress events. It is safe
// for concurrent use: sendDir sends several files at once (the timeline and the migration record
// lock themselves; each call keeps its own progress step).
type peerTransport struct {
	d         *Daemon
	peer      Peer
	migration string
	tl        *timeline
	mg        *migration
}

// progressStep is how often (in bytes) a transfer adds a progress event.
const progressStep = 4 << 20

// SendFile implements ImageTransport: it sends the file to the destination over the peer channel
// with start, progress (every progressStep bytes) and end events, and counts the bytes.
func (t *peerTransport) SendFile(ctx context.Context, name string, r io.Reader, size int64) error {
	t.tl.add(api.Event{Phase: api.PhaseTransfer, Kind: api.Start, Detail: name, Total: size})
	start := time.Now()
	var next int64 = progressStep
	err := t.peer.SendImage(ctx, t.migration, name, r, size, func(sent int64) {
		if sent >= next {
			t.tl.add(api.Event{Phase: api.PhaseTransfer, Kind: api.Progress, Detail: name, Bytes: sent, Total: size})
			next = sent + progressStep
		}
	})
	e := api.Event{Phase: api.PhaseTransfer, Kind: api.End, Detail: name, Bytes: size, Total: size, Duration: time.Since(start)}
	if err != nil {
		e.Kind, e.Detail = api.Fail, fmt.Sprintf("%s: %v", name, err)
		t.tl.add(e)
		return fmt.Errorf("send image file %s: %w", name, err)
	}
	t.tl.add(e)
	t.d.met.bytes.WithLabelValues("sent").Add(float64(size))
	t.mg.update(func(m *api.Migration) { m.Bytes += size })
	return nil
}
