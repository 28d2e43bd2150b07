package migrate

// Post-copy (lazy pages) halves: CRIU "Lazy migration" and "Userfaultfd" pages (criu.org), runc
// 1.1 checkpoint/restore --lazy-pages, --page-server and --status-fd.
//
// Source: `runc checkpoint --lazy-pages --page-server ADDR:PORT --status-fd 3` freezes the
// container, writes every image but the lazy (private anonymous) pages, writes one byte to the
// status fd, then serves the pages from its page pipes on PORT until the destination has pulled
// them all; only then does CRIU kill the source tasks (no --leave-running). When the transfer
// fails, CRIU thaws the source instead ("Lazy pages transfer FAILED", "Unfreezing tasks").
//
// Destination: `criu lazy-pages --page-server --address SRC --port PORT -D <images> -W <work>`
// (the lazy-pages daemon: it listens on <work>/lazy-pages.socket for the restoring CRIU, receives
// its userfaultfds, serves page faults from the source's page server and pulls the remaining pages
// in the background), then `runc restore --lazy-pages --work-path <work>`.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// PipeMaxSizePath is the sysctl that bounds F_SETPIPE_SZ for a process without CAP_SYS_RESOURCE
// (pipe(7), "/proc/sys/fs/pipe-max-size"; fs/pipe.c pipe_set_size returns EPERM above it).
const PipeMaxSizePath = "/proc/sys/fs/pipe-max-size"

// LazyPipeMaxSize is the pipe size, in bytes, CRIU's lazy page server asks for: criu/include/
// page-pipe.h PIPE_MAX_SIZE = 8 pages / sizeof(struct pipe_buffer) (40 B) = 819 pages, which the
// kernel rounds up to a power of two pages (1024 x 4 KiB = 4 MiB). pipe_read_dest_init (the tee
// pipe that every page request goes through) and the page pipes of the dump grow to it with
// F_SETPIPE_SZ. Without CAP_SYS_RESOURCE that fails above fs.pipe-max-size (default 1 MiB), the
// tee pipe stays at 64 KiB and the first page request fails with "page-pipe: tee: 65536" (or
// "splice: -1"). Raising fs.pipe-max-size to this value is enough; see EnsurePipeMaxSize.
const LazyPipeMaxSize = 4 << 20

// ErrLazyPages is returned (wrapped) when a post-copy page transfer fails after the dump.
var ErrLazyPages = errors.New("lazy page transfer failed")

// ErrLazyStopped is returned by WaitLazy when the lazy-pages daemon was stopped on purpose (the
// container was deleted, e.g. by a rollback) before it had every page.
var ErrLazyStopped = errors.New("lazy-pages daemon stopped")

// EnsurePipeMaxSize raises fs.pipe-max-size to at least LazyPipeMaxSize (it never lowers it). The
// sysctl is global (not per namespace) and needs root; it does not survive a reboot (persist it
// with "fs.pipe-max-size = 4194304" in /etc/sysctl.d). It is not needed with CAP_SYS_RESOURCE.
func EnsurePipeMaxSize() error {
	cur, err := readPipeMaxSize()
	if err != nil {
		return fmt.Errorf("ensure pipe-max-size: %w", err)
	}
	if cur >= LazyPipeMaxSize {
		return nil
	}
	if err := os.WriteFile(PipeMaxSizePath, []byte(strconv.Itoa(LazyPipeMaxSize)), 0o644); err != nil {
		return fmt.Errorf("ensure pipe-max-size: raise %s from %d to %d: %w", PipeMaxSizePath, cur, LazyPipeMaxSize, err)
	}
	return nil
}

func readPipeMaxSize() (int64, error) {
	b, err := os.ReadFile(PipeMaxSizePath)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// LazyDump is a post-copy dump on the source node: the container is frozen and dumped without
// its lazy pages, and CRIU serves those pages on the page server until the destination has them.
type LazyDump struct {
	id   string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	log  string
	done chan struct{}
	err  error
}

// CheckpointLazy freezes container id and dumps it for post-copy into ImageDir(id) (runc
// checkpoint --lazy-pages --page-server pageServer --status-fd), writes spec.json, and returns
// once CRIU reports the page server ready, with the image size (without the lazy pages). The
// page server listens on pageServer.Port() in the node namespace. Call Wait to learn when every
// page was served (the source tasks are then dead and runc removed the container) or Abort to
// stop the page server and leave the container frozen for Resume.
func (e *Engine) CheckpointLazy(ctx context.Context, id string, pageServer netip.AddrPort) (*LazyDump, int64, error) {
	c, err := e.Container(id)
	if err != nil {
		return nil, 0, fmt.Errorf("lazy checkpoint: %w", err)
	}
	if err := EnsurePipeMaxSize(); err != nil {
		return nil, 0, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	dir := e.ImageDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return nil, 0, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, 0, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	defer sr.Close()
	// The dump outlives ctx (it serves pages after CheckpointLazy returns): it gets its own
	// lifetime and a process group that Abort kills.
	cmd := e.command(context.Background(), "checkpoint", "--image-path", dir, "--work-path", dir,
		"--lazy-pages", "--page-server", pageServer.String(), "--status-fd", "3", id)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{sw} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.start(cmd); err != nil {
		sw.Close()
		return nil, 0, fmt.Errorf("lazy checkpoint %s: runc checkpoint: %w", id, err)
	}
	sw.Close()
	l := &LazyDump{id: id, cmd: cmd, out: out, log: filepath.Join(dir, "dump.log"), done: make(chan struct{})}
	go func() {
		l.err = cmd.Wait()
		close(l.done)
	}()
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := io.ReadFull(sr, b)
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		l.Abort()
		return nil, 0, fmt.Errorf("lazy checkpoint %s: page server not ready: %w: %s%s", id, err,
			lastLines(out.String(), 3), criuLogTail(l.log, ""))
	}
	b, err := jsonSpec(c.Spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, SpecFile), b, 0o600)
	}
	if err != nil {
		l.Abort()
		return nil, 0, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	n, err := dirSize(dir)
	return l, n, err
}

// Wait waits until CRIU has served every lazy page and exited (or ctx ends). A nil error means
// the destination has all the memory and the source tasks are gone; an error wraps ErrLazyPages
// (CRIU then thawed the source tasks: see docs/migration.md, "Post-copy").
func (l *LazyDump) Wait(ctx context.Context) error {
	select {
	case <-l.done:
	case <-ctx.Done():
		return fmt.Errorf("wait for lazy pages of %s: %w", l.id, ctx.Err())
	}
	if l.err != nil {
		return fmt.Errorf("lazy page server of %s: %w: %v: %s%s", l.id, ErrLazyPages, l.err,
			lastLines(l.out.String(), 3), criuLogTail(l.log, ""))
	}
	return nil
}

// Done is closed when the page server (runc checkpoint) has exited.
func (l *LazyDump) Done() <-chan struct{} { return l.done }

// Abort kills the dump (runc and its CRIU, one process group) and waits for it. Tasks CRIU froze
// stay frozen in their cgroup (runc reports the container "paused"): Engine.Resume thaws them.
func (l *LazyDump) Abort() {
	select {
	case <-l.done:
		return
	default:
	}
	_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
	<-l.done
}

// lazyDaemon is the destination's `criu lazy-pages` of one restored container.
type lazyDaemon struct {
	killed atomic.Bool
	cmd    *exec.Cmd
	log    string
	done   chan struct{}
	err    error
}

func (d *lazyDaemon) kill() {
	select {
	case <-d.done:
		return
	default:
	}
	d.killed.Store(true)
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

// lazySocket is the unix socket the lazy-pages daemon creates in its work directory and the
// restoring CRIU connects to (criu/uffd.c LAZY_PAGES_SOCK_NAME).
const lazySocket = "lazy-pages.socket"

// startLazyDaemon starts `criu lazy-pages` for the image in dir with work directory work, pulling
// pages from pageServer, and waits until its socket exists.
func (e *Engine) startLazyDaemon(ctx context.Context, dir, work string, pageServer netip.AddrPort) (*lazyDaemon, error) {
	cmd := exec.Command(e.cfg.Criu, "lazy-pages", "--page-server", "--address", pageServer.Addr().String(),
		"--port", strconv.Itoa(int(pageServer.Port())), "-D", dir, "-W", work, "-o", "lazy-pages.log")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d := &lazyDaemon{cmd: cmd, log: filepath.Join(work, "lazy-pages.log"), done: make(chan struct{})}
	if err := e.start(cmd); err != nil {
		return nil, fmt.Errorf("start criu lazy-pages: %w", err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	sock := filepath.Join(work, lazySocket)
	for {
		if _, err := os.Stat(sock); err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("criu lazy-pages exited: %v%s", d.err, criuLogTail(d.log, ""))
		case <-ctx.Done():
			d.kill()
			return nil, fmt.Errorf("criu lazy-pages: %w", ctx.Err())
		case <-deadline.C:
			d.kill()
			return nil, fmt.Errorf("criu lazy-pages: no %s after 10 s%s", lazySocket, criuLogTail(d.log, ""))
		case <-tick.C:
		}
	}
}

// lazyState tracks the lazy-pages daemons of restored containers.
type lazyState struct {
	mu sync.Mutex
	m  map[string]*lazyDaemon
}

// WaitLazy waits until the lazy-pages daemon of container id (restored with RestoreLazy) has
// pulled every page and exited. It returns nil at once for a container restored without lazy
// pages. An error wraps ErrLazyPages: the restored copy misses memory and must not run on.
func (e *Engine) WaitLazy(ctx context.Context, id string) error {
	e.lazy.mu.Lock()
	d := e.lazy.m[id]
	e.lazy.mu.Unlock()
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
	case <-ctx.Done():
		return fmt.Errorf("wait for lazy pages of %s: %w", id, ctx.Err())
	}
	e.lazy.mu.Lock()
	delete(e.lazy.m, id)
	e.lazy.mu.Unlock()
	if d.killed.Load() {
		return fmt.Errorf("criu lazy-pages of %s: %w", id, ErrLazyStopped)
	}
	if d.err != nil {
		return fmt.Errorf("criu lazy-pages of %s: %w: %v%s", id, ErrLazyPages, d.err, criuLogTail(d.log, ""))
	}
	return nil
}

// stopLazy kills the lazy-pages daemon of container id, if any.
func (e *Engine) stopLazy(id string) {
	e.lazy.mu.Lock()
	d := e.lazy.m[id]
	delete(e.lazy.m, id)
	e.lazy.mu.Unlock()
	if d != nil {
		d.kill()
	}
}
