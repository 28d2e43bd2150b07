package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/steerd/steerd/internal/nsutil"
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
	list, err := e.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover frozen containers: %w", err)
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

// Listed is one container of this node's runc root (runc list).
type Listed struct {
	// ID is the container ID.
	ID string `json:"id"`
	// Status is runc's status: "created", "running", "paused" or "stopped".
	Status string `json:"status"`
}

// List returns every container of this engine's runc root, whether this engine started it or a
// previous process did (runc list --format json), sorted by ID.
func (e *Engine) List(ctx context.Context) ([]Listed, error) {
	out, err := e.runc(ctx, "list", "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var list []Listed
	if t := strings.TrimSpace(out); t != "" && t != "null" {
		if err := json.Unmarshal([]byte(t), &list); err != nil {
			return nil, fmt.Errorf("list containers: runc list: %w", err)
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	return list, nil
}

// ErrPodMissing is returned by Adopt when the pod network namespace of a container, or one of its
// veth ends, is gone.
var ErrPodMissing = errors.New("pod network namespace missing")

// Adopt takes back container id that a previous process left in this engine's runc root, so that
// Container, Pause, Resume, Checkpoint and Delete work on it as on a container this engine
// started. It rebuilds the Container from what is on disk and in the kernel:
//
//   - the ContainerSpec from <StateDir>/bundles/<id>/spec.json (written with the bundle);
//   - PID and status from runc state (any status: Delete then removes a stopped or paused one);
//   - the pod from the network namespace named PodNS(id): the host veth (pod.HostVethName) in
//     the node namespace and eth0 inside the pod give HostIndex, HostMAC, PodIndex, PodMAC and
//     the MTU (netlink).
//
// Errors: ErrNotFound when runc has no such container; ErrExists when this engine already knows
// it; ErrPodMissing (the container is registered anyway, with Pod naming the namespace and veth
// so that Delete removes what remains); a spec that cannot be read (ErrBadSpec or a file error;
// the container is registered with an ID-only spec for the same reason).
func (e *Engine) Adopt(ctx context.Context, id string) (*Container, error) {
	if _, err := e.Container(id); err == nil {
		return nil, fmt.Errorf("adopt %s on %s: %w", id, e.cfg.Node, ErrExists)
	}
	st, err := e.state(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", id, err)
	}
	c := &Container{Spec: ContainerSpec{ID: id}, Bundle: e.bundleDir(id), PID: st.PID}
	ns := e.PodNS(id)
	c.Pod = &pod.Pod{Spec: pod.Spec{NetNS: ns, NodeNS: e.cfg.NodeNS}, HostVeth: pod.HostVethName(ns)}
	var errs []error
	if spec, err := ReadSpec(c.Bundle); err != nil {
		errs = append(errs, err)
	} else {
		c.Spec = spec
		c.Pod.IPv4, c.Pod.IPv6 = spec.IPv4, spec.IPv6
	}
	if err := e.openPod(c.Pod); err != nil {
		errs = append(errs, err)
	}
	e.mu.Lock()
	_, dup := e.ctrs[id]
	if !dup {
		e.ctrs[id] = c
	}
	e.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("adopt %s on %s: %w", id, e.cfg.Node, ErrExists)
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("adopt %s: %w", id, err)
	}
	e.log.Info("container adopted", "id", id, "pid", c.PID, "status", st.Status, "pod", ns)
	return c, nil
}

// openPod fills p's link indices, MAC addresses and MTU from the existing namespace p.NetNS.
func (e *Engine) openPod(p *pod.Pod) error {
	if _, err := os.Stat(p.Path()); err != nil {
		return fmt.Errorf("open pod %s: %w: %w", p.NetNS, ErrPodMissing, err)
	}
	node, err := nsutil.Handle(e.cfg.NodeNS)
	if err != nil {
		return fmt.Errorf("open pod %s: %w", p.NetNS, err)
	}
	defer node.Close()
	host, err := node.LinkByName(p.HostVeth)
	if err != nil {
		return fmt.Errorf("open pod %s: host veth %s: %w: %w", p.NetNS, p.HostVeth, ErrPodMissing, err)
	}
	h, err := nsutil.Handle(p.NetNS)
	if err != nil {
		return fmt.Errorf("open pod %s: %w: %w", p.NetNS, ErrPodMissing, err)
	}
	defer h.Close()
	peer, err := h.LinkByName(pod.PodLink)
	if err != nil {
		return fmt.Errorf("open pod %s: %s: %w: %w", p.NetNS, pod.PodLink, ErrPodMissing, err)
	}
	p.HostIndex, p.HostMAC = host.Attrs().Index, host.Attrs().HardwareAddr
	p.PodIndex, p.PodMAC = peer.Attrs().Index, peer.Attrs().HardwareAddr
	p.MTU = host.Attrs().MTU
	return nil
}
