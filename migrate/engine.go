// Package migrate moves a runc container between nodes with CRIU: checkpoint on the source node,
// send the image over a Transport, restore on the destination node into a fresh pod network
// namespace with the same stable addresses (package pod).
//
// An Engine is one node's half: it runs containers from generated OCI bundles, checkpoints them
// (runc checkpoint, CRIU dump) and restores images (runc restore). Migrate is the coordinator for
// two engines in one process (tests, benchmarks); a daemon calls the same per-node halves over its
// peer channel. See docs/migration.md for the techniques, phases, measured times and rollback rules.
//
// Sources: runc checkpoint/restore (runc 1.1 man pages), CRIU "Live migration", "Iterative
// migration", "Lazy migration" and "Userfaultfd" pages (criu.org).
package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/pod"
)

// Sentinel errors.
var (
	// ErrBadSpec is returned for an invalid ContainerSpec or Config.
	ErrBadSpec = errors.New("invalid container spec")
	// ErrNotFound is returned when a container is not known to the engine.
	ErrNotFound = errors.New("container not found")
	// ErrExists is returned when a container ID is already in use on the node.
	ErrExists = errors.New("container exists")
)

// Config configures the engine of one node.
type Config struct {
	// Node names the node (in errors, logs and cgroup paths).
	Node string
	// NodeNS is the node's network namespace name ("" = the caller's). runc and CRIU run inside it,
	// so page servers and transports bind the node's addresses.
	NodeNS string
	// StateDir holds the engine's runc root (<StateDir>/runc), bundles (<StateDir>/bundles/<id>),
	// image directories (<StateDir>/images/<id>) and runc logs. One per node.
	StateDir string
	// PodPrefix starts the name of the pod network namespace of every container of this node:
	// PodPrefix + container ID. It must start with pod.NSPrefix and differ between nodes that share
	// one machine (tests); "" = pod.NSPrefix + Node + "-".
	PodPrefix string
	// Runc and Criu are the binaries ("" = "runc" and "criu" from PATH).
	Runc, Criu string
	// Log receives the engine's progress messages (nil = discard).
	Log *slog.Logger
	// KeepLeftovers, when true, makes NewEngine leave the paused, stopped and created containers a
	// previous run left in the runc root (it does not run RecoverFrozen): the caller lists them
	// (List), adopts them (Adopt) and then resumes or deletes each one itself. A daemon that knows
	// which migrations had committed sets it; false suits a process that cannot tell.
	KeepLeftovers bool
}

// ContainerSpec describes a service container.
type ContainerSpec struct {
	// ID is the container ID (runc naming: letters, digits, '-', '_', '.'), the same on every node.
	ID string `json:"id"`
	// Binary is the host path of the static service binary (CGO_ENABLED=0). It is copied to
	// /<base name> in the container's root; a destination node needs the same file at the same path
	// (as a pre-pulled container image would be): CRIU checks the restored executable's size.
	Binary string `json:"binary"`
	// Args are the service's arguments (without the program name); Env its environment (KEY=VALUE).
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"`
	// BallastMB, when > 0, appends "-ballast-mb N" to Args (examples/udpcounter allocates and
	// touches N MiB), to size the memory a migration has to move.
	BallastMB int `json:"ballast_mb,omitempty"`
	// IPv4 and IPv6 are the stable pod addresses (at least one); the service binds them.
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (s *ContainerSpec) validate() error {
	if !idRE.MatchString(s.ID) {
		return fmt.Errorf("%w: container ID %q", ErrBadSpec, s.ID)
	}
	if !filepath.IsAbs(s.Binary) {
		return fmt.Errorf("%w: binary %q is not an absolute path", ErrBadSpec, s.Binary)
	}
	if s.BallastMB < 0 {
		return fmt.Errorf("%w: ballast %d MiB", ErrBadSpec, s.BallastMB)
	}
	if !s.IPv4.IsValid() && !s.IPv6.IsValid() {
		return fmt.Errorf("%w: container %s has no pod address", ErrBadSpec, s.ID)
	}
	return nil
}

// Container is a container that runs on this engine's node.
type Container struct {
	Spec ContainerSpec
	// Bundle is the OCI bundle directory; Pod the pod namespace it joins.
	Bundle string
	Pod    *pod.Pod
	// PID is the container's init process in the node's PID namespace (from runc state).
	PID int
}

// Engine runs, checkpoints and restores containers on one node. Its methods are safe for
// concurrent use; operations on one container must not overlap.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	ctrs map[string]*Container

	capsOnce sync.Once
	caps     Capabilities
	capsErr  error

	// prepared holds pods created by PreparePod for a restore that has not run yet.
	prepared map[string]*pod.Pod
	lazy     lazyState
}

// NewEngine makes the engine of one node and creates its state directory. It removes the
// containers a previous run left frozen or stopped (see RecoverFrozen) unless cfg.KeepLeftovers.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.Node == "" || cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("new engine: %w: Node and an absolute StateDir are required", ErrBadSpec)
	}
	if cfg.PodPrefix == "" {
		cfg.PodPrefix = pod.NSPrefix + cfg.Node + "-"
	}
	if !strings.HasPrefix(cfg.PodPrefix, pod.NSPrefix) {
		return nil, fmt.Errorf("new engine: %w: pod prefix %q must start with %q", ErrBadSpec, cfg.PodPrefix, pod.NSPrefix)
	}
	if cfg.Runc == "" {
		cfg.Runc = "runc"
	}
	if cfg.Criu == "" {
		cfg.Criu = "criu"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{"runc", "bundles", "images", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("new engine: %w", err)
		}
	}
	e := &Engine{cfg: cfg, log: log.With("node", cfg.Node), ctrs: map[string]*Container{},
		prepared: map[string]*pod.Pod{}, lazy: lazyState{m: map[string]*lazyDaemon{}}}
	if _, err := exec.LookPath(cfg.Runc); err == nil && !cfg.KeepLeftovers {
		if _, err := e.RecoverFrozen(context.Background()); err != nil {
			e.log.Warn("recover frozen containers", "err", err)
		}
	}
	return e, nil
}

// Node returns the node name.
func (e *Engine) Node() string { return e.cfg.Node }

// NodeNS returns the node's network namespace name.
func (e *Engine) NodeNS() string { return e.cfg.NodeNS }

// Capabilities returns what CRIU supports on this node (detected once, see DetectCapabilities).
func (e *Engine) Capabilities(ctx context.Context) (Capabilities, error) {
	e.capsOnce.Do(func() { e.caps, e.capsErr = DetectCapabilities(ctx, e.cfg.Criu) })
	return e.caps, e.capsErr
}

// Container returns the running container id.
func (e *Engine) Container(id string) (*Container, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.ctrs[id]
	if !ok {
		return nil, fmt.Errorf("container %s on %s: %w", id, e.cfg.Node, ErrNotFound)
	}
	return c, nil
}

// PodNS returns the name of the pod network namespace of container id on this node.
func (e *Engine) PodNS(id string) string { return e.cfg.PodPrefix + id }

func (e *Engine) bundleDir(id string) string { return filepath.Join(e.cfg.StateDir, "bundles", id) }

// ImageDir returns the directory where this engine keeps (or receives) the image of container id.
func (e *Engine) ImageDir(id string) string { return filepath.Join(e.cfg.StateDir, "images", id) }

// cgroupsPath is "/steerd-<node>-<8 hex digits of FNV-1a(StateDir)>-<id>": per node, and per
// state directory so that two engines that share a node name on one machine (two test clusters
// running at once) never restore into each other's cgroup.
func (e *Engine) cgroupsPath(id string) string {
	h := fnv.New32a()
	h.Write([]byte(e.cfg.StateDir))
	node := regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(e.cfg.Node, "_")
	return fmt.Sprintf("/steerd-%s-%08x-%s", node, h.Sum32(), id)
}

// Run creates the pod namespace, writes the bundle and starts the container (runc run --detach).
// On error nothing is left behind.
func (e *Engine) Run(ctx context.Context, spec ContainerSpec) (_ *Container, err error) {
	c, err := e.prepare(spec)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			e.discard(context.WithoutCancel(ctx), c)
		}
	}()
	if err := e.runcDetached(ctx, spec.ID, "run", "--detach", "--bundle", c.Bundle, spec.ID); err != nil {
		return nil, fmt.Errorf("run %s: %w", spec.ID, err)
	}
	if c.PID, err = e.statePID(ctx, spec.ID); err != nil {
		return nil, fmt.Errorf("run %s: %w", spec.ID, err)
	}
	e.mu.Lock()
	e.ctrs[spec.ID] = c
	e.mu.Unlock()
	e.log.Info("container running", "id", spec.ID, "pid", c.PID)
	return c, nil
}

// prepare reserves the ID, creates the pod and writes the bundle.
func (e *Engine) prepare(spec ContainerSpec) (_ *Container, err error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	_, exists := e.ctrs[spec.ID]
	e.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("container %s on %s: %w", spec.ID, e.cfg.Node, ErrExists)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.StateDir, "runc", spec.ID)); err == nil {
		return nil, fmt.Errorf("container %s on %s: %w (runc state)", spec.ID, e.cfg.Node, ErrExists)
	}
	p, err := e.takePrepared(spec)
	if err != nil {
		return nil, err
	}
	if p == nil {
		if p, err = pod.Create(pod.Spec{NetNS: e.PodNS(spec.ID), NodeNS: e.cfg.NodeNS, IPv4: spec.IPv4, IPv6: spec.IPv6}); err != nil {
			return nil, err
		}
	}
	c := &Container{Spec: spec, Pod: p, Bundle: e.bundleDir(spec.ID)}
	if err := e.writeBundle(c); err != nil {
		e.discard(context.Background(), c)
		return nil, err
	}
	return c, nil
}

// writeBundle writes <bundle>/rootfs (the binary and empty /proc /dev /sys /tmp) and config.json.
func (e *Engine) writeBundle(c *Container) error {
	root := filepath.Join(c.Bundle, "rootfs")
	_ = os.RemoveAll(c.Bundle)
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
	}
	exe := "/" + filepath.Base(c.Spec.Binary)
	if err := linkOrCopy(c.Spec.Binary, filepath.Join(root, exe), 0o755); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	args := append([]string{exe}, c.Spec.Args...)
	if c.Spec.BallastMB > 0 {
		args = append(args, "-ballast-mb", strconv.Itoa(c.Spec.BallastMB))
	}
	b, err := json.MarshalIndent(ociConfig(args, c.Spec.Env, c.Pod.Path(), e.cgroupsPath(c.Spec.ID)), "", "\t")
	if err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.Bundle, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	// The spec next to the bundle lets a later process adopt the container (Adopt).
	if b, err = jsonSpec(c.Spec); err == nil {
		err = os.WriteFile(filepath.Join(c.Bundle, SpecFile), b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	return nil
}

// discard removes a container's runc state, pod and bundle; errors are logged only.
//
// A paused container (the frozen source after a migration) is killed while still frozen and only
// then thawed, so it never runs again: a thawed source would send packets from the pod address
// that now lives on another node. runc 1.1 `delete --force` alone leaves a frozen process behind.
func (e *Engine) discard(ctx context.Context, c *Container) {
	if st, err := e.state(ctx, c.Spec.ID); err == nil && st.Status == "paused" {
		if _, err := e.runc(ctx, "kill", c.Spec.ID, "KILL"); err != nil {
			e.log.Warn("runc kill", "id", c.Spec.ID, "err", err)
		}
		// On cgroup v2 SIGKILL reaches frozen tasks: the container is "stopped" now and runc
		// resume would fail with "container not paused". Thaw only what is still frozen (cgroup
		// v1 freezer) so that the pending SIGKILL is delivered.
		if st, err := e.state(ctx, c.Spec.ID); err == nil && st.Status == "paused" {
			if _, err := e.runc(ctx, "resume", c.Spec.ID); err != nil {
				e.log.Warn("runc resume", "id", c.Spec.ID, "err", err)
			}
		}
	}
	if out, err := e.runc(ctx, "delete", "--force", c.Spec.ID); err != nil && !strings.Contains(out, "not exist") {
		e.log.Warn("runc delete", "id", c.Spec.ID, "err", err)
	}
	if _, err := e.state(ctx, c.Spec.ID); !errors.Is(err, ErrNotFound) {
		e.log.Warn("container still present after delete", "id", c.Spec.ID, "err", err)
	}
	if c.Pod != nil {
		if err := c.Pod.Delete(); err != nil {
			e.log.Warn("delete pod", "id", c.Spec.ID, "err", err)
		}
	}
	if err := os.RemoveAll(c.Bundle); err != nil {
		e.log.Warn("remove bundle", "id", c.Spec.ID, "err", err)
	}
}

// Delete stops and removes container id with its pod, bundle and image directory.
func (e *Engine) Delete(ctx context.Context, id string) error {
	e.mu.Lock()
	c, ok := e.ctrs[id]
	delete(e.ctrs, id)
	e.mu.Unlock()
	if !ok {
		if _, prepared := e.PreparedPod(id); prepared {
			return e.DiscardPrepared(id)
		}
		return fmt.Errorf("delete %s on %s: %w", id, e.cfg.Node, ErrNotFound)
	}
	e.stopLazy(id)
	e.discard(ctx, c)
	return os.RemoveAll(e.ImageDir(id))
}

// Pause freezes container id (runc pause, cgroup freezer).
func (e *Engine) Pause(ctx context.Context, id string) error {
	if _, err := e.runc(ctx, "pause", id); err != nil {
		return fmt.Errorf("pause %s: %w", id, err)
	}
	return nil
}

// Resume thaws container id (runc resume).
func (e *Engine) Resume(ctx context.Context, id string) error {
	if _, err := e.runc(ctx, "resume", id); err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	return nil
}

// Status returns runc's status of container id ("running", "paused", "stopped", ...).
func (e *Engine) Status(ctx context.Context, id string) (string, error) {
	st, err := e.state(ctx, id)
	return st.Status, err
}

// CheckpointOptions tune Checkpoint.
type CheckpointOptions struct {
	// LeaveRunning keeps the container after the dump (runc checkpoint --leave-running); with a
	// paused container it stays paused, ready for Resume if the migration fails.
	LeaveRunning bool
}

// Checkpoint dumps container id into ImageDir(id) (runc checkpoint, CRIU dump) and writes the
// container spec there as spec.json, so the directory is everything a destination needs. It
// returns the image size in bytes.
func (e *Engine) Checkpoint(ctx context.Context, id string, opts CheckpointOptions) (int64, error) {
	c, err := e.Container(id)
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	dir := e.ImageDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	args := []string{"checkpoint", "--image-path", dir, "--work-path", dir}
	if opts.LeaveRunning {
		args = append(args, "--leave-running")
	}
	if out, err := e.runc(ctx, append(args, id)...); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w%s", id, err, criuLogTail(filepath.Join(dir, "dump.log"), out))
	}
	if !opts.LeaveRunning {
		e.mu.Lock()
		delete(e.ctrs, id)
		e.mu.Unlock()
		e.discard(ctx, c)
	}
	b, err := jsonSpec(c.Spec)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, SpecFile), b, 0o600); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	return dirSize(dir)
}

func jsonSpec(s ContainerSpec) ([]byte, error) { return json.Marshal(s) }

// SpecFile is the file in an image directory that holds the ContainerSpec (JSON).
const SpecFile = "spec.json"

// ReadSpec reads the ContainerSpec stored in an image directory.
func ReadSpec(dir string) (ContainerSpec, error) {
	var s ContainerSpec
	b, err := os.ReadFile(filepath.Join(dir, SpecFile))
	if err != nil {
		return s, fmt.Errorf("read spec: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("read spec: %w", err)
	}
	return s, s.validate()
}

// Restore restores the image in dir (which holds spec.json, see Checkpoint) on this node: it
// takes the pod namespace PreparePod made for it (or creates one with the spec's addresses),
// writes a bundle whose network namespace is that pod, and runs runc restore --detach. On error
// nothing of the container is left behind (runc state, pod namespace and veth, bundle); the image
// directory stays for the caller.
func (e *Engine) Restore(ctx context.Context, dir string) (*Container, error) {
	return e.restore(ctx, dir, netip.AddrPort{})
}

// RestoreLazy is Restore for a post-copy image (CheckpointLazy): it starts `criu lazy-pages`,
// which pulls the lazy pages from pageServer (the source node's page server), then runs runc
// restore --lazy-pages. It returns once the container runs; its memory arrives on demand and in
// the background: WaitLazy tells when every page is there. dir must stay until then.
func (e *Engine) RestoreLazy(ctx context.Context, dir string, pageServer netip.AddrPort) (*Container, error) {
	if !pageServer.IsValid() {
		return nil, fmt.Errorf("lazy restore: %w: no page server address", ErrBadSpec)
	}
	if err := EnsurePipeMaxSize(); err != nil {
		return nil, fmt.Errorf("lazy restore: %w", err)
	}
	return e.restore(ctx, dir, pageServer)
}

func (e *Engine) restore(ctx context.Context, dir string, pageServer netip.AddrPort) (_ *Container, err error) {
	spec, err := ReadSpec(dir)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	c, err := e.prepare(spec)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			e.stopLazy(spec.ID)
			e.discard(context.WithoutCancel(ctx), c)
		}
	}()
	work := filepath.Join(e.cfg.StateDir, "logs", spec.ID+"-restore")
	_ = os.RemoveAll(work)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	args := []string{"restore", "--detach", "--image-path", dir, "--work-path", work, "--bundle", c.Bundle}
	if pageServer.IsValid() {
		d, err := e.startLazyDaemon(ctx, dir, work, pageServer)
		if err != nil {
			return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
		}
		e.lazy.mu.Lock()
		e.lazy.m[spec.ID] = d
		e.lazy.mu.Unlock()
		args = append(args, "--lazy-pages")
	}
	if err := e.runcDetached(ctx, spec.ID, append(args, spec.ID)...); err != nil {
		return nil, fmt.Errorf("restore %s: %w%s", spec.ID, err, criuLogTail(filepath.Join(work, "restore.log"), ""))
	}
	if c.PID, err = e.statePID(ctx, spec.ID); err != nil {
		return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	e.mu.Lock()
	e.ctrs[spec.ID] = c
	e.mu.Unlock()
	e.log.Info("container restored", "id", spec.ID, "pid", c.PID, "lazy", pageServer.IsValid())
	return c, nil
}

// PreparePod creates the pod network namespace (veth, addresses, routes) of container id with the
// stable addresses v4 and v6 ahead of its restore, so that the freeze does not include it and the
// caller can attach its datapath to the pod before the restored service sends its first packet.
// Restore of id takes the pod; DiscardPrepared (or Delete) removes it if no restore comes.
func (e *Engine) PreparePod(id string, v4, v6 netip.Addr) (*pod.Pod, error) {
	spec := ContainerSpec{ID: id, Binary: "/prepared", IPv4: v4, IPv6: v6}
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("prepare pod: %w", err)
	}
	e.mu.Lock()
	_, running := e.ctrs[id]
	_, dup := e.prepared[id]
	e.mu.Unlock()
	if running || dup {
		return nil, fmt.Errorf("prepare pod of %s on %s: %w", id, e.cfg.Node, ErrExists)
	}
	p, err := pod.Create(pod.Spec{NetNS: e.PodNS(id), NodeNS: e.cfg.NodeNS, IPv4: v4, IPv6: v6})
	if err != nil {
		return nil, fmt.Errorf("prepare pod of %s: %w", id, err)
	}
	e.mu.Lock()
	e.prepared[id] = p
	e.mu.Unlock()
	return p, nil
}

// PreparedPod returns the pod PreparePod made for id, if it is still waiting for its restore.
func (e *Engine) PreparedPod(id string) (*pod.Pod, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.prepared[id]
	return p, ok
}

// DiscardPrepared deletes the pod PreparePod made for id if no restore took it (no-op otherwise).
func (e *Engine) DiscardPrepared(id string) error {
	e.mu.Lock()
	p, ok := e.prepared[id]
	delete(e.prepared, id)
	e.mu.Unlock()
	if !ok {
		return nil
	}
	if err := p.Delete(); err != nil {
		return fmt.Errorf("discard prepared pod of %s: %w", id, err)
	}
	return nil
}

// takePrepared returns (and forgets) the prepared pod of spec.ID, or nil when there is none. A
// prepared pod whose addresses differ from the spec's is deleted and an error returned.
func (e *Engine) takePrepared(spec ContainerSpec) (*pod.Pod, error) {
	e.mu.Lock()
	p, ok := e.prepared[spec.ID]
	delete(e.prepared, spec.ID)
	e.mu.Unlock()
	if !ok {
		return nil, nil
	}
	if p.Spec.IPv4 != spec.IPv4 || p.Spec.IPv6 != spec.IPv6 {
		_ = p.Delete()
		return nil, fmt.Errorf("%w: prepared pod of %s has addresses %s %s, image wants %s %s",
			ErrBadSpec, spec.ID, p.Spec.IPv4, p.Spec.IPv6, spec.IPv4, spec.IPv6)
	}
	return p, nil
}

// Close deletes every container and prepared pod of the engine (tests; a daemon leaves them
// running).
func (e *Engine) Close() error {
	e.mu.Lock()
	ids := make([]string, 0, len(e.ctrs))
	for id := range e.ctrs {
		ids = append(ids, id)
	}
	var prepared []string
	for id := range e.prepared {
		prepared = append(prepared, id)
	}
	e.mu.Unlock()
	var errs []error
	for _, id := range prepared {
		errs = append(errs, e.DiscardPrepared(id))
	}
	for _, id := range ids {
		if err := e.Delete(context.Background(), id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// command builds a runc command with the engine's --root.
func (e *Engine) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, e.cfg.Runc, append([]string{"--root", filepath.Join(e.cfg.StateDir, "runc")}, args...)...)
}

// start starts cmd inside the node namespace (the child inherits the locked thread's namespace).
func (e *Engine) start(cmd *exec.Cmd) error {
	return nsutil.Do(e.cfg.NodeNS, cmd.Start)
}

// runc runs a short runc command inside the node namespace and returns its combined output.
func (e *Engine) runc(ctx context.Context, args ...string) (string, error) {
	cmd := e.command(ctx, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := e.start(cmd); err != nil {
		return "", fmt.Errorf("runc %s: %w", args[0], err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// runcDetached runs `runc run/restore --detach`: the container inherits runc's stdio, so runc
// gets /dev/null (CRIU cannot dump host files as stdio) and logs to a file instead.
func (e *Engine) runcDetached(ctx context.Context, id string, args ...string) error {
	logPath := filepath.Join(e.cfg.StateDir, "logs", id+"-runc.log")
	_ = os.Remove(logPath)
	cmd := e.command(ctx, append([]string{"--log", logPath}, args...)...)
	// Stdin/Stdout/Stderr nil: os/exec connects them to /dev/null.
	if err := e.start(cmd); err != nil {
		return fmt.Errorf("runc %s: %w", args[0], err)
	}
	if err := cmd.Wait(); err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("runc %s: %w: %s", args[0], err, lastLines(string(b), 3))
	}
	return nil
}

type runcState struct {
	PID    int    `json:"pid"`
	Status string `json:"status"`
}

func (e *Engine) state(ctx context.Context, id string) (runcState, error) {
	var st runcState
	cmd := e.command(ctx, "state", id)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := e.start(cmd); err != nil {
		return st, err
	}
	if err := cmd.Wait(); err != nil {
		if strings.Contains(errb.String(), "not exist") {
			return st, fmt.Errorf("runc state %s: %w", id, ErrNotFound)
		}
		return st, fmt.Errorf("runc state %s: %w: %s", id, err, strings.TrimSpace(errb.String()))
	}
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return st, fmt.Errorf("runc state %s: %w", id, err)
	}
	return st, nil
}

func (e *Engine) statePID(ctx context.Context, id string) (int, error) {
	st, err := e.state(ctx, id)
	if err != nil {
		return 0, err
	}
	if st.Status != "running" || st.PID <= 0 {
		return 0, fmt.Errorf("container %s is %s after start", id, st.Status)
	}
	return st.PID, nil
}

// criuLogTail returns the last error lines of a CRIU log (or out) for an error message.
func criuLogTail(path, out string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Error") && !strings.Contains(l, "RLIMIT_NOFILE") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) > 3 {
		errs = errs[len(errs)-3:]
	}
	if len(errs) == 0 {
		return ""
	}
	return " (" + filepath.Base(path) + ": " + strings.Join(errs, "; ") + ")"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// linkOrCopy hard-links src to dst (no copy in the freeze when the state directory and the binary
// share a file system) and copies it otherwise.
func linkOrCopy(src, dst string, mode os.FileMode) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst, mode)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	return n, err
}
