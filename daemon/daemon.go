package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pod"
)

// Service states (api.ServiceStatus.State).
const (
	StateStopped   = "stopped"
	StateRunning   = "running"
	StateMigrating = "migrating" // source side of a migration in progress
	StateRestoring = "restoring" // destination side of a migration in progress
	StateRemote    = "remote"    // migrated to another node
)

// ErrAlreadyRunning is returned by Run for a service that already runs on this node.
var ErrAlreadyRunning = errors.New("service is already running")

// maxMigrations is how many finished migrations a node keeps in memory.
const maxMigrations = 256

// Deps are the daemon's collaborators. Nil Pods means RealPods; nil Logger means slog.Default.
type Deps struct {
	Datapath Datapath
	Engine   Engine
	Control  ServiceControl
	Pods     Pods
	Dial     PeerDialer
	Logger   *slog.Logger
}

type service struct {
	def       ServiceDef
	state     string
	pod       *pod.Pod
	peer      string // StateRemote: where it went
	migration string // current migration (source or destination)
	// source and fenced are set on the destination of a migration (StateRestoring) from the fence
	// to the commit: the source node, and the fenced pod's host-side veth ifindex (persisted so
	// that a restarted steerd can ask the source for the outcome, see Recover).
	source string
	fenced int
}

func (s *service) status() api.ServiceStatus {
	st := api.ServiceStatus{Name: s.def.Name, Instance: s.def.Instance, Port: s.def.Port, State: s.state, Peer: s.peer}
	if s.def.PodIPv4.IsValid() {
		st.PodIPv4 = s.def.PodIPv4.String()
	}
	if s.def.PodIPv6.IsValid() {
		st.PodIPv6 = s.def.PodIPv6.String()
	}
	if s.pod != nil {
		st.PodNS = s.pod.NetNS
	}
	return st
}

func (s *service) local() LocalTarget {
	t := LocalTarget{Pod4: s.def.PodIPv4, Pod6: s.def.PodIPv6, PodPort: s.def.PodPort}
	if s.pod != nil {
		t.HostIfindex = s.pod.HostIndex
	}
	return t
}

// Daemon is one node's steerd.
type Daemon struct {
	cfg     *Config
	log     *slog.Logger
	dp      Datapath
	engine  Engine
	ctl     ServiceControl
	pods    Pods
	dial    PeerDialer
	met     *metrics
	started time.Time

	ctx    context.Context // daemon lifetime: migrations run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	services map[string]*service
	routes   map[uint64]api.Route
	migs     map[string]*migration
	order    []string // migration IDs, oldest first
	incoming map[string]*incoming
	// finishedIn keeps the timelines of migrations this node received (destination side).
	finishedIn map[string]*timeline
	peerErr    map[string]string
}

// New returns a daemon for a normalized config. It does not open sockets: see Serve.
func New(cfg *Config, deps Deps) (*Daemon, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if deps.Engine == nil || deps.Control == nil || deps.Dial == nil {
		return nil, fmt.Errorf("new daemon: %w: engine, service control and peer dialer are required", ErrBadRequest)
	}
	if deps.Pods == nil {
		deps.Pods = RealPods{}
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Daemon{
		cfg: cfg, log: deps.Logger.With("node", cfg.Node), dp: deps.Datapath, engine: deps.Engine,
		ctl: deps.Control, pods: deps.Pods, dial: deps.Dial, started: time.Now(),
		ctx: ctx, cancel: cancel,
		services: map[string]*service{}, routes: map[uint64]api.Route{}, migs: map[string]*migration{},
		incoming: map[string]*incoming{}, finishedIn: map[string]*timeline{}, peerErr: map[string]string{},
	}
	d.met = newMetrics(cfg.Node, func() Datapath { return d.dp })
	for _, s := range cfg.Services {
		d.services[s.Name] = &service{def: s, state: StateStopped}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("new daemon: %w%s", err, permissionHint(err))
	}
	return d, nil
}

// Config returns the daemon's normalized configuration.
func (d *Daemon) Config() *Config { return d.cfg }

// MetricsHandler serves the daemon's Prometheus registry.
func (d *Daemon) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(d.met.reg, promhttp.HandlerOpts{Registry: d.met.reg})
}

// Close stops running migrations (they roll back) and waits for them. It does not stop the
// service containers: they keep running without the daemon.
func (d *Daemon) Close() error {
	d.cancel()
	d.wg.Wait()
	return nil
}

// apiErr builds an *api.Error of this node.
func (d *Daemon) apiErr(phase api.Phase, err error) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return &api.Error{Node: d.cfg.Node, Phase: phase, Cause: err.Error()}
}

// Run starts a configured service container on this node: pod namespace, datapath entry
// (local), container.
func (d *Daemon) Run(ctx context.Context, req api.RunRequest) (_ api.ServiceStatus, err error) {
	d.mu.Lock()
	s, ok := d.services[req.Service]
	if !ok {
		d.mu.Unlock()
		return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %q: %w (configured: %s)", req.Service, ErrUnknownService, d.serviceNames()))
	}
	switch s.state {
	case StateRunning:
		d.mu.Unlock()
		return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: %w on %s", req.Service, ErrAlreadyRunning, d.cfg.Node))
	case StateMigrating, StateRestoring:
		st, id := s.state, s.migration
		d.mu.Unlock()
		return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: %w: %s (migration %s)", req.Service, ErrBusy, st, id))
	}
	s.state = StateRestoring // reserve
	def := s.def
	d.mu.Unlock()
	defer func() {
		if err != nil {
			d.mu.Lock()
			s.state, s.pod = StateStopped, nil
			d.mu.Unlock()
		}
	}()
	pe, owns := d.engine.(PodEngine)
	var p *pod.Pod
	netnsPath := ""
	if !owns {
		if p, err = d.createPod(def); err != nil {
			return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: %w", def.Name, err))
		}
		netnsPath = p.Path()
		d.mu.Lock()
		s.pod = p
		d.mu.Unlock()
	}
	undo := func() {
		if p != nil {
			_ = d.deletePod(p)
		}
	}
	bundle, args := def.Bundle, def.Args
	if req.Bundle != "" {
		bundle = req.Bundle
	}
	if len(req.Args) > 0 {
		args = req.Args
	}
	if err := d.engine.Run(ctx, ContainerSpec{Name: def.Name, Bundle: bundle, Args: args, NetNSPath: netnsPath,
		IPv4: def.PodIPv4, IPv6: def.PodIPv6}); err != nil {
		undo()
		hint := ""
		if _, serr := os.Stat(d.runcStateDir(def.Name)); serr == nil && strings.Contains(err.Error(), "exists") {
			hint = fmt.Sprintf(" (a container of a previous steerd run is still there: runc --root %s delete --force %s)", filepath.Dir(d.runcStateDir(def.Name)), def.Name)
		}
		return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: start container: %w%s", def.Name, err, hint))
	}
	if owns {
		if p, err = d.adoptPod(pe, def.Name); err != nil {
			_ = d.engine.Remove(context.Background(), def.Name)
			return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: %w", def.Name, err))
		}
		d.mu.Lock()
		s.pod = p
		d.mu.Unlock()
	}
	if err := d.setLocal(def.Instance, def.Name, s.local()); err != nil {
		_ = d.engine.Remove(context.Background(), def.Name)
		undo()
		return api.ServiceStatus{}, d.apiErr(api.PhaseRun, fmt.Errorf("run %s: %w", def.Name, err))
	}
	d.mu.Lock()
	s.state, s.peer = StateRunning, ""
	d.saveStateLocked()
	st := s.status()
	d.mu.Unlock()
	d.log.Info("service running", "service", def.Name, "pod", p.NetNS, "instance", def.Instance)
	return st, nil
}

// serviceNames lists the configured services for error messages ("none" without any).
func (d *Daemon) serviceNames() string {
	var n []string
	for _, s := range d.cfg.Services {
		n = append(n, s.Name)
	}
	if len(n) == 0 {
		return "none"
	}
	return strings.Join(n, ", ")
}

func (d *Daemon) setLocal(instance uint64, svc string, t LocalTarget) error {
	if d.dp != nil {
		if err := d.dp.SetLocal(instance, t); err != nil {
			return fmt.Errorf("set instance %d local: %w", instance, err)
		}
	}
	d.mu.Lock()
	d.routes[instance] = api.Route{Instance: instance, Service: svc, Kind: api.Local}
	d.mu.Unlock()
	return nil
}

func (d *Daemon) setRemote(instance uint64, svc, peer string) error {
	if d.dp != nil {
		if err := d.dp.SetRemote(instance, peer); err != nil {
			return fmt.Errorf("set instance %d remote to %s: %w", instance, peer, err)
		}
	}
	d.mu.Lock()
	d.routes[instance] = api.Route{Instance: instance, Service: svc, Kind: api.Remote, Peer: peer}
	d.mu.Unlock()
	return nil
}

func (d *Daemon) deleteRoute(instance uint64) error {
	if d.dp != nil {
		if err := d.dp.Delete(instance); err != nil {
			return fmt.Errorf("delete instance %d: %w", instance, err)
		}
	}
	d.mu.Lock()
	delete(d.routes, instance)
	d.mu.Unlock()
	return nil
}

// Status returns the node overview.
func (d *Daemon) Status() api.Status {
	d.mu.Lock()
	st := api.Status{Node: d.cfg.Node, Uplink: d.cfg.Uplink, PeerListen: d.cfg.PeerListen, Started: d.started, Migrations: len(d.migs)}
	for _, s := range d.services {
		st.Services = append(st.Services, s.status())
	}
	for _, p := range d.cfg.Peers {
		st.Peers = append(st.Peers, api.PeerStatus{Name: p.Name, Address: p.AddrPort().String(), LastError: d.peerErr[p.Name]})
	}
	d.mu.Unlock()
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Name < st.Services[j].Name })
	if d.cfg.IPv4.IsValid() {
		st.IPv4 = d.cfg.IPv4.String()
	}
	if d.cfg.IPv6.IsValid() {
		st.IPv6 = d.cfg.IPv6.String()
	}
	st.Datapath = "off"
	if d.dp != nil {
		st.Datapath = "xdp on " + d.cfg.Uplink
		if cs, err := d.dp.Counters(); err == nil {
			st.Counters = cs
		}
	}
	return st
}

// Routes returns the instances this node steers, with the datapath's counters.
func (d *Daemon) Routes() []api.Route {
	d.mu.Lock()
	out := make([]api.Route, 0, len(d.routes))
	for _, r := range d.routes {
		out = append(out, r)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	if d.dp != nil {
		for i := range out {
			if s, err := d.dp.InstanceStats(out[i].Instance); err == nil {
				out[i].Packets, out[i].LastSeen = s.Packets, s.LastSeen
			}
		}
	}
	return out
}

// imageDir returns the directory of a migration's image on this node.
func (d *Daemon) imageDir(kind, id string) string {
	return filepath.Join(d.cfg.StateDir, kind, id)
}

// ownsPods reports whether the engine creates and deletes pod namespaces itself (PodEngine).
func (d *Daemon) ownsPods() bool {
	_, ok := d.engine.(PodEngine)
	return ok
}

// adoptPod takes the pod a PodEngine created for service and attaches the datapath's pod
// programs to it (the pod's veth is new: AttachPod again).
func (d *Daemon) adoptPod(pe PodEngine, service string) (*pod.Pod, error) {
	p, err := pe.Pod(service)
	if err != nil {
		return nil, err
	}
	if pa, ok := d.dp.(podAttacher); ok {
		if err := pa.AttachPod(p.HostIndex, p.Path(), p.PodIndex); err != nil {
			return nil, fmt.Errorf("attach datapath to pod %s: %w", p.NetNS, err)
		}
	}
	return p, nil
}

// setFenced fences or unfences the pod with host-side veth hostIfindex (no-op without a datapath
// that fences: then nothing keeps a destination's restored copy quiet before the commit).
func (d *Daemon) setFenced(hostIfindex int, fenced bool) error {
	f, ok := d.dp.(fencer)
	if !ok {
		return nil
	}
	if err := f.SetFenced(hostIfindex, fenced); err != nil {
		if fenced {
			return fmt.Errorf("fence pod veth %d: %w", hostIfindex, err)
		}
		return fmt.Errorf("unfence pod veth %d: %w", hostIfindex, err)
	}
	return nil
}

// createPod creates a service's pod namespace and attaches the datapath's pod programs.
func (d *Daemon) createPod(def ServiceDef) (*pod.Pod, error) {
	p, err := d.pods.Create(pod.Spec{NetNS: d.cfg.PodNS(def.Name), IPv4: def.PodIPv4, IPv6: def.PodIPv6})
	if err != nil {
		return nil, err
	}
	if pa, ok := d.dp.(podAttacher); ok {
		if err := pa.AttachPod(p.HostIndex, p.Path(), p.PodIndex); err != nil {
			_ = d.pods.Delete(p)
			return nil, fmt.Errorf("attach datapath to pod %s: %w", p.NetNS, err)
		}
	}
	return p, nil
}

// deletePod detaches the datapath from a pod and deletes its namespace (unless the engine owns
// pods: it deleted the pod with the container).
func (d *Daemon) deletePod(p *pod.Pod) error {
	var errs []error
	if pa, ok := d.dp.(podAttacher); ok {
		if err := pa.DetachPod(p.HostIndex); err != nil {
			errs = append(errs, fmt.Errorf("detach datapath from pod %s: %w", p.NetNS, err))
		}
	}
	if d.ownsPods() {
		return errors.Join(errs...)
	}
	if err := d.pods.Delete(p); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
