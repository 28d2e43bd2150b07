package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// RecoveredContainer is a container a previous run of steerd left on this node, as the engine
// finds it under its runtime root at start.
type RecoveredContainer struct {
	// Service is the container ID (the service name).
	Service string
	// Status is the runtime's status (runc state): "running"; "paused" (frozen by a migration the
	// previous run did not finish); "stopped" or "created".
	Status string
}

// Recoverer is an Engine (a PodEngine) that can take back, after steerd restarts, the containers
// its previous run left under the engine's runtime root.
type Recoverer interface {
	PodEngine
	// Recover lists the containers of this node's runtime root and adopts the running and paused
	// ones, so that Pod, Checkpoint, Resume and Remove work on them as on containers this run
	// started.
	Recover(ctx context.Context) ([]RecoveredContainer, error)
}

// stateFile is the file under Config.StateDir where the daemon keeps each service's state
// (JSON, savedState by service name), rewritten on every state change, read by Recover.
const stateFile = "services.json"

// savedState is one service's state as persisted in stateFile.
type savedState struct {
	State     string `json:"state"`
	Peer      string `json:"peer,omitempty"`
	Migration string `json:"migration,omitempty"`
	// Source and Fenced (destination of a migration before its commit): the source node and the
	// host-side veth ifindex of the fenced pod.
	Source string `json:"source,omitempty"`
	Fenced int    `json:"fenced,omitempty"`
}

// saveStateLocked writes every service's state to stateFile (write to a temporary file, then
// rename). d.mu must be held. Errors are logged: the state file only serves a restart.
func (d *Daemon) saveStateLocked() {
	m := make(map[string]savedState, len(d.services))
	for name, s := range d.services {
		m[name] = savedState{State: s.state, Peer: s.peer, Migration: s.migration, Source: s.source, Fenced: s.fenced}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err == nil {
		p := filepath.Join(d.cfg.StateDir, stateFile)
		if err = os.WriteFile(p+".tmp", append(b, '\n'), 0o600); err == nil {
			err = os.Rename(p+".tmp", p)
		}
	}
	if err != nil {
		d.log.Warn("save service state", "error", err)
	}
}

// runcStateDir is where the runc engine's runc root keeps a container's state
// (<state_dir>/engine/runc/<service>, see NewRuncEngine).
func (d *Daemon) runcStateDir(service string) string {
	return filepath.Join(d.cfg.StateDir, "engine", "runc", service)
}

// loadState reads stateFile (an empty map when there is none).
func (d *Daemon) loadState() (map[string]savedState, error) {
	m := map[string]savedState{}
	b, err := os.ReadFile(filepath.Join(d.cfg.StateDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("read service state: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return map[string]savedState{}, fmt.Errorf("read service state %s: %w", stateFile, err)
	}
	return m, nil
}

// Recover takes back this node's state after a restart (Serve calls it before it listens):
//
//   - a configured service whose container still runs becomes a running service again: its pod
//     gets the datapath's pod programs again (AttachPod) and the instance is delivered locally
//     (SetLocal);
//   - a container left paused by a migration this node was the source of, and that had not
//     reached its commit point (state "migrating"), is resumed (the migration rolled back: the
//     destination aborts it when the peer channel drops) and runs here again;
//   - any other paused, stopped or created container (a destination's half-restored copy, or the
//     frozen source of a migration that had committed) is removed;
//   - a fenced pod (datapath FencedPods) is the destination of a migration that was not committed
//     when steerd stopped (resolveFenced): the source is asked for the outcome; committed: the pod
//     is unfenced and its container runs here; aborted: the container and pod are removed (when
//     the engine can adopt them; otherwise they stay fenced and the operator is told); source
//     unreachable or undecided: the pod stays fenced (never unfenced blindly) and it is logged;
//   - a service that had moved to another node (state "remote") shows that node again;
//   - image directories of migrations the previous run did not finish are removed.
//
// Every action is logged. Without a Recoverer engine only the saved remote states come back.
func (d *Daemon) Recover(ctx context.Context) error {
	saved, err := d.loadState()
	if err != nil {
		d.log.Warn("recover: service state not restored", "error", err)
	}
	var errs []error
	found := map[string]RecoveredContainer{}
	re, ok := d.engine.(Recoverer)
	if !ok {
		for _, s := range d.cfg.Services {
			if _, err := os.Stat(d.runcStateDir(s.Name)); err == nil {
				d.log.Warn("recover: a container of the previous run is still there, but this engine cannot adopt it; "+
					"remove it (runc --root <state_dir>/engine/runc delete --force <service>) and run the service again",
					"service", s.Name, "runc_state", d.runcStateDir(s.Name))
			}
		}
	}
	if ok {
		cs, err := re.Recover(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover containers: %w", err))
		}
		for _, c := range cs {
			found[c.Service] = c
		}
	}
	errs = append(errs, d.resolveFenced(ctx, saved, found)...)
	names := make([]string, 0, len(found))
	for n := range found {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		c := found[name]
		d.mu.Lock()
		s, ok := d.services[name]
		d.mu.Unlock()
		prev := saved[name]
		if !ok {
			d.log.Warn("recover: removing container of a service this node does not define", "service", name, "status", c.Status)
			if err := d.engine.Remove(ctx, name); err != nil {
				errs = append(errs, fmt.Errorf("remove container %s: %w", name, err))
			}
			continue
		}
		switch {
		case c.Status == "running":
		case c.Status == "paused" && prev.State == StateMigrating:
			d.log.Warn("recover: resuming service left frozen by an interrupted outgoing migration", "service", name, "migration", prev.Migration)
			if err := d.engine.Resume(ctx, name); err != nil {
				errs = append(errs, fmt.Errorf("resume %s: %w", name, err))
				continue
			}
		default:
			d.log.Warn("recover: removing container left by an interrupted migration", "service", name, "status", c.Status,
				"previous_state", prev.State, "migration", prev.Migration)
			if err := d.engine.Remove(ctx, name); err != nil {
				errs = append(errs, fmt.Errorf("remove container %s: %w", name, err))
			}
			continue
		}
		p, err := d.adoptPod(d.engine.(PodEngine), name)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", name, err))
			continue
		}
		d.mu.Lock()
		s.state, s.peer, s.migration, s.pod = StateRunning, "", "", p
		lt := s.local()
		d.mu.Unlock()
		if err := d.setLocal(s.def.Instance, name, lt); err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", name, err))
			continue
		}
		d.log.Info("recover: service running again", "service", name, "pod", p.NetNS, "instance", s.def.Instance, "status_found", c.Status)
		if prev.State == StateMigrating && d.ctl != nil {
			// The interrupted migration may have prepared the service (quicext refuses new
			// handshakes until restored or abort): abort it, as the rollback would have.
			if err := d.ctl.Abort(ctx, p.NetNS); err != nil {
				d.log.Warn("recover: quicext abort not delivered; the service may refuse new connections until it is aborted", "service", name, "error", err)
			} else {
				d.log.Info("recover: quicext preparation of the interrupted migration aborted", "service", name)
			}
		}
	}
	d.mu.Lock()
	for name, s := range d.services {
		if prev, ok := saved[name]; ok && prev.State == StateRemote && s.state == StateStopped {
			s.state, s.peer = StateRemote, prev.Peer
			d.log.Info("recover: service runs on another node", "service", name, "peer", prev.Peer)
		} else if ok && s.state == StateStopped && (prev.State == StateRunning || prev.State == StateMigrating) {
			d.log.Warn("recover: service was running here but its container is gone", "service", name, "previous_state", prev.State)
		}
	}
	d.saveStateLocked()
	d.mu.Unlock()
	for _, kind := range []string{"images", "incoming"} {
		if err := os.RemoveAll(d.imageDir(kind, "")); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// outcomeTimeout bounds a restarted destination's question to the source (opOutcome).
const outcomeTimeout = 3 * time.Second

// resolveFenced settles the incoming migrations whose pod is still fenced after a restart (see
// Recover). Containers it removes or keeps fenced are deleted from found, so Recover does not
// adopt them.
func (d *Daemon) resolveFenced(ctx context.Context, saved map[string]savedState, found map[string]RecoveredContainer) []error {
	f, ok := d.dp.(fencer)
	if !ok {
		return nil
	}
	idx, err := f.FencedPods()
	if err != nil {
		return []error{fmt.Errorf("recover fenced pods: %w", err)}
	}
	fenced := map[int]bool{}
	for _, i := range idx {
		fenced[i] = true
	}
	names := make([]string, 0, len(saved))
	for n := range saved {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		prev := saved[name]
		if prev.State != StateRestoring || prev.Fenced == 0 || !fenced[prev.Fenced] {
			continue
		}
		delete(fenced, prev.Fenced)
		d.mu.Lock()
		s, ok := d.services[name]
		d.mu.Unlock()
		if !ok {
			d.log.Warn("recover: fenced pod of a service this node does not define: kept fenced", "service", name, "veth_ifindex", prev.Fenced)
			continue
		}
		c, adoptable := found[name]
		out, oerr := d.askOutcome(ctx, prev.Source, prev.Migration, name)
		log := d.log.With("service", name, "migration", prev.Migration, "source", prev.Source, "veth_ifindex", prev.Fenced, "outcome", out)
		keep := func(msg string) {
			delete(found, name)
			d.mu.Lock()
			s.state, s.migration, s.source, s.fenced = StateRestoring, prev.Migration, prev.Source, prev.Fenced
			d.mu.Unlock()
			if oerr != nil {
				log.Warn(msg, "error", oerr)
			} else {
				log.Warn(msg)
			}
		}
		switch out {
		case outcomeCommitted:
			if err := d.setFenced(prev.Fenced, false); err != nil {
				errs = append(errs, fmt.Errorf("recover %s: %w", name, err))
				keep("recover: migration committed but the pod could not be unfenced: kept fenced")
				continue
			}
			if !adoptable {
				log.Warn("recover: migration committed: pod unfenced, but this engine cannot adopt the container; it runs on its pinned route")
				continue
			}
			log.Info("recover: migration committed while steerd was down: pod unfenced", "status", c.Status)
		case outcomeAborted:
			if !adoptable {
				keep("recover: migration was aborted, but this engine cannot remove the container: kept fenced; " +
					"remove it (runc --root <state_dir>/engine/runc delete --force <service>) and the pod namespace")
				continue
			}
			delete(found, name)
			if err := d.engine.Remove(ctx, name); err != nil {
				errs = append(errs, fmt.Errorf("recover %s: remove aborted copy: %w", name, err))
				keep("recover: migration was aborted, removing the copy failed: kept fenced")
				continue
			}
			if pa, ok := d.dp.(podAttacher); ok {
				// The container (and with a PodEngine its pod) is gone: DetachPod removes the fence.
				if err := pa.DetachPod(prev.Fenced); err != nil {
					errs = append(errs, fmt.Errorf("recover %s: detach aborted pod: %w", name, err))
				}
			}
			d.mu.Lock()
			s.state, s.peer, s.migration, s.source, s.fenced = StateRemote, prev.Source, "", "", 0
			d.mu.Unlock()
			log.Warn("recover: migration was aborted by its source: restored copy removed")
		default:
			keep("recover: incoming migration not committed and its source cannot tell the outcome: pod kept fenced")
		}
	}
	for i := range fenced {
		d.log.Warn("recover: fenced pod of no known migration: kept fenced", "veth_ifindex", i)
	}
	return errs
}

// askOutcome asks the source of an incoming migration whether it committed (opOutcome);
// outcomePending with an error when the source cannot be reached.
func (d *Daemon) askOutcome(ctx context.Context, source, migration, service string) (string, error) {
	if source == "" {
		return outcomePending, fmt.Errorf("ask outcome of %s: %w: source not recorded", migration, ErrUnknownPeer)
	}
	p, err := d.dial(source)
	if err != nil {
		return outcomePending, fmt.Errorf("ask %s for the outcome of %s: %w", source, migration, err)
	}
	ctx, cancel := context.WithTimeout(ctx, outcomeTimeout)
	defer cancel()
	r, err := p.Call(ctx, opOutcome, outcomeReq{Migration: migration, Service: service})
	if err != nil {
		return outcomePending, fmt.Errorf("ask %s for the outcome of %s: %w", source, migration, err)
	}
	switch r.Outcome {
	case outcomeCommitted, outcomeAborted:
		return r.Outcome, nil
	}
	return outcomePending, nil
}
