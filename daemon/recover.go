package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
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
}

// saveStateLocked writes every service's state to stateFile (write to a temporary file, then
// rename). d.mu must be held. Errors are logged: the state file only serves a restart.
func (d *Daemon) saveStateLocked() {
	m := make(map[string]savedState, len(d.services))
	for name, s := range d.services {
		m[name] = savedState{State: s.state, Peer: s.peer, Migration: s.migration}
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
