package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/steerd/steerd/api"
	mig "github.com/steerd/steerd/migrate"
	"github.com/steerd/steerd/pod"
)

// PodEngine is an Engine that creates and deletes the pod network namespace of each container
// itself (package migrate creates it in Run and Restore, with the stable pod addresses of the
// ContainerSpec, and deletes it with the container). The daemon then creates no pod: it asks the
// engine for the pod after Run and Restore, attaches the datapath to it, and only detaches the
// datapath when the container goes.
type PodEngine interface {
	Engine
	// Pod returns the pod of a container that runs on this node; the error wraps ErrNotRunning
	// when there is none.
	Pod(service string) (*pod.Pod, error)
}

// ErrNoRuntime is returned by NewRuncEngine when runc or CRIU is missing.
var ErrNoRuntime = errors.New("container runtime not installed")

// RuncEngine implements Engine (and PodEngine) with package migrate: runc runs the containers,
// CRIU checkpoints and restores them (runc checkpoint / runc restore, CRIU "Live migration").
// The image goes to the destination through the daemon's mTLS peer channel (ImageTransport), one
// file per stream.
//
// Techniques: Cold (pause, full dump with --leave-running so that a failed migration resumes the
// paused source, transfer, restore). Pre-copy and hybrid need soft-dirty tracking and post-copy
// needs CRIU lazy pages, which package migrate does not drive yet: Checkpoint refuses them at once,
// before the service is told anything, with an error wrapping migrate.ErrTechniqueUnsupported.
type RuncEngine struct {
	eng *mig.Engine
	log *slog.Logger

	mu sync.Mutex
	// lazy holds the post-copy dumps whose page server still runs (source side).
	lazy map[string]*mig.LazyDump
}

// NewRuncEngine returns the runc + CRIU engine of a node. Its state (runc root, generated bundles,
// checkpoint images, runc logs) lives in <cfg.StateDir>/engine; pod namespaces are named
// cfg.PodNS(service), the same names the daemon uses. runc and criu are looked up in PATH; the
// error wraps ErrNoRuntime when either is missing. Containers a previous run left in the runc root
// stay as they are (running, paused or stopped) until Recover adopts them and the daemon resumes
// or removes each one (Daemon.Recover).
func NewRuncEngine(cfg *Config, log *slog.Logger) (*RuncEngine, error) {
	for _, b := range []string{"runc", "criu"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("new runc engine: %w: %s: %w", ErrNoRuntime, b, err)
		}
	}
	if log == nil {
		log = slog.Default()
	}
	state, err := filepath.Abs(filepath.Join(cfg.StateDir, "engine"))
	if err != nil {
		return nil, fmt.Errorf("new runc engine: %w", err)
	}
	e, err := mig.NewEngine(mig.Config{Node: cfg.Node, StateDir: state, PodPrefix: cfg.PodNSPrefix, Log: log,
		KeepLeftovers: true})
	if err != nil {
		return nil, fmt.Errorf("new runc engine: %w", err)
	}
	// Detect the CRIU features now (criu check, ~150 ms) rather than inside the first migration.
	go e.Capabilities(context.Background())
	r := &RuncEngine{eng: e, log: log, lazy: map[string]*mig.LazyDump{}}
	return r, nil
}

// RuntimeAvailable reports whether runc and criu are in PATH (the default runtime is "runc" then).
func RuntimeAvailable() bool {
	for _, b := range []string{"runc", "criu"} {
		if _, err := exec.LookPath(b); err != nil {
			return false
		}
	}
	return true
}

// Migrate returns the underlying engine.
func (r *RuncEngine) Migrate() *mig.Engine { return r.eng }

// techniques maps the API's names to package migrate's.
var techniques = map[api.Technique]mig.Technique{
	api.Cold: mig.Cold, api.PreCopy: mig.PreCopy, api.PostCopy: mig.PostCopy, api.Hybrid: mig.Hybrid,
}

// Supports returns nil when this node can migrate with technique t, else an error wrapping
// migrate.ErrTechniqueUnsupported that says why (missing kernel feature, or not implemented).
func (r *RuncEngine) Supports(ctx context.Context, t api.Technique) error {
	mt, ok := techniques[t]
	if !ok {
		return fmt.Errorf("%w: %q", mig.ErrTechniqueUnsupported, t)
	}
	caps, err := r.eng.Capabilities(ctx)
	if err != nil {
		return fmt.Errorf("check technique %s: %w", t, err)
	}
	if err := caps.Supports(mt); err != nil {
		return err
	}
	if mt != mig.Cold && mt != mig.PostCopy {
		return fmt.Errorf("%w: %s: package migrate implements cold and post-copy only (no pre-dump driver)", mig.ErrTechniqueUnsupported, t)
	}
	return nil
}

// bundleProcess reads the process of an OCI bundle: the host path of its executable (rootfs +
// process.args[0]), its arguments and environment (OCI runtime spec, config.md "process"). A
// Bundle that is a regular file is taken as the static service binary itself.
func bundleProcess(bundle string) (binary string, args, env []string, err error) {
	fi, err := os.Stat(bundle)
	if err != nil {
		return "", nil, nil, fmt.Errorf("read bundle: %w", err)
	}
	if fi.Mode().IsRegular() {
		abs, err := filepath.Abs(bundle)
		return abs, nil, nil, err
	}
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return "", nil, nil, fmt.Errorf("read bundle: %w", err)
	}
	var spec struct {
		Root struct {
			Path string `json:"path"`
		} `json:"root"`
		Process struct {
			Args []string `json:"args"`
			Env  []string `json:"env"`
		} `json:"process"`
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return "", nil, nil, fmt.Errorf("read bundle %s: %w", bundle, err)
	}
	if len(spec.Process.Args) == 0 {
		return "", nil, nil, fmt.Errorf("read bundle %s: %w: process.args is empty", bundle, ErrBadRequest)
	}
	root := spec.Root.Path
	if root == "" {
		root = "rootfs"
	}
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	binary, err = filepath.Abs(filepath.Join(root, spec.Process.Args[0]))
	if err != nil {
		return "", nil, nil, err
	}
	var envOut []string
	for _, e := range spec.Process.Env {
		if !strings.HasPrefix(e, "PATH=") {
			envOut = append(envOut, e)
		}
	}
	return binary, spec.Process.Args[1:], envOut, nil
}

// Run implements Engine: it generates a bundle for the service's binary with the pod addresses
// and starts it (migrate.Engine.Run creates the pod namespace). s.Args, when set, replace the
// bundle's arguments; a leading program name ("/kvservice") is dropped.
func (r *RuncEngine) Run(ctx context.Context, s ContainerSpec) error {
	if s.Bundle == "" {
		return fmt.Errorf("run %s: %w: no bundle", s.Name, ErrBadRequest)
	}
	bin, args, env, err := bundleProcess(s.Bundle)
	if err != nil {
		return fmt.Errorf("run %s: %w", s.Name, err)
	}
	if len(s.Args) > 0 {
		args = s.Args
		// An argument vector that starts with the program itself (steerctl run kv -- /kvservice
		// ...) names the bundle's executable: keep only its arguments.
		if a0 := args[0]; a0 == "/"+filepath.Base(bin) || a0 == filepath.Base(bin) {
			args = args[1:]
		}
	}
	_, err = r.eng.Run(ctx, mig.ContainerSpec{ID: s.Name, Binary: bin, Args: args, Env: env, IPv4: s.IPv4, IPv6: s.IPv6})
	return err
}

// Pod implements PodEngine. An adopted container whose pod namespace or veth was gone
// (migrate.ErrPodMissing) has no pod: the error wraps ErrNotRunning.
func (r *RuncEngine) Pod(service string) (*pod.Pod, error) {
	c, err := r.eng.Container(service)
	if err != nil {
		return nil, fmt.Errorf("pod of %s: %w: %w", service, ErrNotRunning, err)
	}
	if c.Pod == nil || c.Pod.HostIndex == 0 || c.Pod.PodIndex == 0 {
		return nil, fmt.Errorf("pod of %s: %w: %w", service, ErrNotRunning, mig.ErrPodMissing)
	}
	return c.Pod, nil
}

var _ Recoverer = (*RuncEngine)(nil)

// Recover implements Recoverer: it lists the containers of the engine's runc root
// (<state_dir>/engine/runc, runc list) and adopts each one it does not know yet
// (migrate.Engine.Adopt: spec from the bundle, PID from runc state, pod from the namespace
// cfg.PodNS(service) and its veth pair). Every container is returned with runc's status, so that
// the daemon resumes a paused one or removes a stopped one through Resume and Remove. A container
// that could be adopted only in part (its pod namespace is gone: migrate.ErrPodMissing) is still
// returned, and Remove works on it; its Pod is an error. The error joins the failures of the
// runc list and of each adoption.
func (r *RuncEngine) Recover(ctx context.Context) ([]RecoveredContainer, error) {
	list, err := r.eng.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover containers: %w", err)
	}
	var out []RecoveredContainer
	var errs []error
	for _, l := range list {
		if _, err := r.eng.Container(l.ID); err != nil {
			c, err := r.eng.Adopt(ctx, l.ID)
			if err != nil {
				errs = append(errs, err)
				if c == nil {
					continue
				}
			}
		}
		out = append(out, RecoveredContainer{Service: l.ID, Status: l.Status})
	}
	return out, errors.Join(errs...)
}

// Checkpoint implements Engine (cold): technique check, BeforeFreeze (the quicext prepare), runc
// pause (cgroup freezer: the freeze starts), runc checkpoint --leave-running (CRIU dump; the
// container stays paused for a rollback), then every image file through req.Transport. Phases
// reported: "pause", "dump", "transfer" (bytes = image size). Post-copy: runc checkpoint
// --lazy-pages (CRIU freezes the container), preceded by runc pause when req.FreezeAtOnce says
// so; phases "pause" (then), "lazy-dump", "transfer".
func (r *RuncEngine) Checkpoint(ctx context.Context, req CheckpointRequest) (EngineReport, error) {
	var rep EngineReport
	if err := r.Supports(ctx, req.Technique); err != nil {
		return rep, err
	}
	if _, err := r.eng.Container(req.Service); err != nil {
		return rep, err
	}
	if req.BeforeFreeze != nil {
		if err := req.BeforeFreeze(ctx); err != nil {
			return rep, err
		}
	}
	phase := func(name string, start time.Time, bytes int64) {
		rep.Phases = append(rep.Phases, PhaseTime{Name: name, Start: start, End: time.Now(), Bytes: bytes})
	}
	if req.Technique == api.PostCopy {
		// CRIU freezes the container itself and serves its private memory from the page server
		// after the dump; the image holds everything else. Clients that hold their sends since
		// the prepare (FreezeAtOnce) should not also wait for CRIU's start-up: pause first.
		if req.FreezeAtOnce != nil && req.FreezeAtOnce() {
			t := time.Now()
			if err := r.eng.Pause(ctx, req.Service); err != nil {
				return rep, err
			}
			phase("pause", t, 0)
		}
		t := time.Now()
		l, n, err := r.eng.CheckpointLazy(ctx, req.Service, req.PageServer)
		if err != nil {
			return rep, err
		}
		r.mu.Lock()
		r.lazy[req.Service] = l
		r.mu.Unlock()
		phase("lazy-dump", t, n)
		rep.Bytes = n
		t = time.Now()
		if err := sendDir(ctx, r.eng.ImageDir(req.Service), req.Transport); err != nil {
			return rep, err
		}
		phase("transfer", t, n)
		return rep, nil
	}
	t := time.Now()
	if err := r.eng.Pause(ctx, req.Service); err != nil {
		return rep, err
	}
	phase("pause", t, 0)
	t = time.Now()
	n, err := r.eng.Checkpoint(ctx, req.Service, mig.CheckpointOptions{LeaveRunning: true})
	if err != nil {
		return rep, err
	}
	phase("dump", t, n)
	rep.Bytes = n
	t = time.Now()
	if err := sendDir(ctx, r.eng.ImageDir(req.Service), req.Transport); err != nil {
		return rep, err
	}
	phase("transfer", t, n)
	return rep, nil
}

// sendWorkers is how many image files sendDir sends at once.
const sendWorkers = 4

// sendDir sends every regular file under dir with its "/"-separated relative name, sendWorkers
// files at once: the largest first (the pages image, which PeerClient.SendImage splits further),
// the small ones next to it, so their checksum round trips overlap instead of adding up. The first
// failure cancels the files in flight and is returned.
func sendDir(ctx context.Context, dir string, tr ImageTransport) error {
	if tr == nil {
		return fmt.Errorf("send image: %w: no transport", ErrBadRequest)
	}
	type file struct {
		path, rel string
		size      int64
	}
	var files []file
	big := 0
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		if len(files) > 0 && fi.Size() > files[big].size {
			big = len(files)
		}
		files = append(files, file{path: p, rel: filepath.ToSlash(rel), size: fi.Size()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("send image: %w", err)
	}
	if len(files) == 0 {
		return nil
	}
	files[0], files[big] = files[big], files[0]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		next  int
		wg    sync.WaitGroup
	)
	send := func(f file) error {
		in, err := os.Open(f.path)
		if err != nil {
			return err
		}
		defer in.Close()
		fi, err := in.Stat()
		if err != nil {
			return err
		}
		return tr.SendFile(ctx, f.rel, in, fi.Size())
	}
	for range min(sendWorkers, len(files)) {
		wg.Go(func() {
			for {
				mu.Lock()
				if first != nil || next == len(files) {
					mu.Unlock()
					return
				}
				f := files[next]
				next++
				mu.Unlock()
				if err := send(f); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// Resume implements Engine: a paused container is thawed (runc resume), a running one is left
// alone; a container the engine no longer has is an error wrapping ErrNotRunning.
func (r *RuncEngine) Resume(ctx context.Context, service string) error {
	if _, err := r.eng.Container(service); err != nil {
		return fmt.Errorf("resume %s: %w: %w", service, ErrNotRunning, err)
	}
	if l := r.takeLazy(service); l != nil {
		// Stop the page server: the destination copy is gone (the daemon aborted it first). Tasks
		// CRIU froze stay frozen and are thawed below.
		l.Abort()
	}
	st, err := r.eng.Status(ctx, service)
	if err != nil {
		return fmt.Errorf("resume %s: %w", service, err)
	}
	switch st {
	case "running":
		return nil
	case "paused":
		return r.eng.Resume(ctx, service)
	}
	return fmt.Errorf("resume %s: %w: runc status %q", service, ErrNotRunning, st)
}

// Complete implements Engine: post-copy waits until the destination has pulled every lazy page
// (CRIU then kills the source tasks); then it deletes the source container with its pod, bundle
// and image. A failed page transfer returns an error wrapping migrate.ErrLazyPages and leaves the
// source container alone: CRIU thawed it, and the destination killed its incomplete copy.
func (r *RuncEngine) Complete(ctx context.Context, service string) error {
	if l := r.takeLazy(service); l != nil {
		if err := l.Wait(ctx); err != nil {
			return fmt.Errorf("complete post-copy of %s: %w", service, err)
		}
	}
	return r.eng.Delete(ctx, service)
}

func (r *RuncEngine) takeLazy(service string) *mig.LazyDump {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lazy[service]
	delete(r.lazy, service)
	return l
}

// PreparePod implements PodPreparer (migrate.Engine.PreparePod).
func (r *RuncEngine) PreparePod(service string, v4, v6 netip.Addr) (*pod.Pod, error) {
	return r.eng.PreparePod(service, v4, v6)
}

// Restore implements Engine: runc restore of req.ImageDir (which holds migrate.SpecFile) into a new
// pod namespace created by the engine. Phase reported: "restore".
func (r *RuncEngine) Restore(ctx context.Context, req RestoreRequest) (EngineReport, error) {
	var rep EngineReport
	if err := r.Supports(ctx, req.Technique); err != nil {
		return rep, err
	}
	t := time.Now()
	if req.Technique != api.PostCopy {
		if _, err := r.eng.Restore(ctx, req.ImageDir); err != nil {
			return rep, err
		}
		rep.Phases = append(rep.Phases, PhaseTime{Name: "runc-restore", Start: t, End: time.Now()})
		return rep, nil
	}
	// The lazy-pages daemon reads the image after the restore returns, but the daemon removes
	// req.ImageDir once the service is told it was restored: move the image out of its way
	// (same file system: a rename).
	dir := r.eng.ImageDir(req.Service) + ".lazy"
	_ = os.RemoveAll(dir)
	if err := os.Rename(req.ImageDir, dir); err != nil {
		return rep, fmt.Errorf("restore %s: move image: %w", req.Service, err)
	}
	if err := os.Mkdir(req.ImageDir, 0o700); err != nil {
		return rep, fmt.Errorf("restore %s: %w", req.Service, err)
	}
	if _, err := r.eng.RestoreLazy(ctx, dir, req.PageServer); err != nil {
		os.RemoveAll(dir)
		return rep, err
	}
	rep.Phases = append(rep.Phases, PhaseTime{Name: "runc-restore-lazy", Start: t, End: time.Now()})
	go r.watchLazy(req.Service, dir)
	return rep, nil
}

// watchLazy waits for the lazy-pages daemon of a restored service. When the page transfer fails,
// the restored copy misses memory (its unfilled pages would read as zeros) and is removed: that
// is post-copy's inherent risk (docs/migration.md, "Post-copy").
func (r *RuncEngine) watchLazy(service, dir string) {
	defer os.RemoveAll(dir)
	err := r.eng.WaitLazy(context.Background(), service)
	if err == nil || errors.Is(err, mig.ErrLazyStopped) {
		r.log.Info("post-copy lazy-pages daemon ended", "service", service, "error", err)
		return
	}
	r.log.Error("post-copy page transfer failed: removing the incomplete restored copy", "service", service, "error", err)
	if err := r.eng.Delete(context.Background(), service); err != nil && !errors.Is(err, mig.ErrNotFound) {
		r.log.Error("remove incomplete copy", "service", service, "error", err)
	}
}

// Remove implements Engine: it deletes the container if the engine has it.
func (r *RuncEngine) Remove(ctx context.Context, service string) error {
	err := r.eng.Delete(ctx, service)
	if errors.Is(err, mig.ErrNotFound) {
		return nil
	}
	return err
}

// Close deletes every container of the engine (tests, `steerd demo`); a daemon that stops leaves
// its containers running.
func (r *RuncEngine) Close() error { return r.eng.Close() }
