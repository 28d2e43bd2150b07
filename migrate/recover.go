package migrate

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/steerd/steerd/pod"
)

// Leftover is a container a previous run of this node's engine left frozen or stopped (a process
// that died in the middle of a migration), and what RecoverFrozen did with it.
type Leftover struct {
	ID string
	// Status is runc's status when found ("paused", "stopped", "created").
	Status string
	// Err is set when the clean-up failed.
	Err error
}

// RecoverFrozen finds the containers of this node's runc root that a previous run left paused
// (the frozen source of a migration whose process died: runc pause, or CRIU's own freezer during a
// dump or while it served lazy pages), stopped or created, and removes them with their pod
// namespace, bundle and image directory. Running containers are left alone (a daemon that stops
// leaves its services running). NewEngine calls it and logs each one.
//
// A frozen copy is killed, not resumed: this engine no longer knows whether the destination
// restored the service, and a thawed duplicate would send from the pod address that may now live
// on another node. The migration's source daemon reports it rolled back or failed; an operator
// runs the service again where it belongs.
func (e *Engine) RecoverFrozen(ctx context.Context) ([]Leftover, error) {
	out, err := e.runc(ctx, "list", "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("recover frozen containers: %w", err)
	}
	var list []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil && out != "null\n" {
		return nil, fmt.Errorf("recover frozen containers: runc list: %w", err)
	}
	var found []Leftover
	for _, c := range list {
		if c.Status == "running" {
			continue
		}
		if _, err := e.Container(c.ID); err == nil {
			continue // this engine's own (never the case right after NewEngine)
		}
		ns := e.PodNS(c.ID)
		e.discard(ctx, &Container{
			Spec:   ContainerSpec{ID: c.ID},
			Bundle: e.bundleDir(c.ID),
			Pod:    &pod.Pod{Spec: pod.Spec{NetNS: ns, NodeNS: e.cfg.NodeNS}, HostVeth: pod.HostVethName(ns)},
		})
		l := Leftover{ID: c.ID, Status: c.Status}
		if _, err := e.state(ctx, c.ID); err == nil {
			l.Err = fmt.Errorf("container %s still present after clean-up", c.ID)
		}
		if err := os.RemoveAll(e.ImageDir(c.ID)); err != nil && l.Err == nil {
			l.Err = err
		}
		if l.Err != nil {
			e.log.Error("leftover container of a previous run not removed", "id", c.ID, "status", c.Status, "err", l.Err)
		} else {
			e.log.Warn("removed leftover container of a previous run (frozen or stopped mid-migration)", "id", c.ID, "status", c.Status)
		}
		found = append(found, l)
	}
	return found, nil
}
