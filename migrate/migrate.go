package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Phase names a step of a migration (PhaseError.Phase, Report).
type Phase string

// Phases of a migration, in order.
const (
	PhaseCheck        Phase = "check"         // technique and container checks, nothing touched yet
	PhaseBeforeFreeze Phase = "before-freeze" // Options.BeforeFreeze hook
	PhasePause        Phase = "pause"         // runc pause (cgroup freezer)
	PhaseDump         Phase = "dump"          // runc checkpoint (CRIU dump)
	PhaseTransfer     Phase = "transfer"      // image over the Transport
	PhaseRestore      Phase = "restore"       // runc restore on the destination
	PhaseAfterRestore Phase = "after-restore" // Options.AfterRestore hook
	PhaseLazyPages    Phase = "lazy-pages"    // post-copy: pulling the remaining pages
	PhaseCleanup      Phase = "cleanup"       // removing the source container
)

// PhaseError is a failed migration: the phase, the node it failed on, and the cause. RolledBack
// tells whether the service runs on the source node again.
type PhaseError struct {
	Phase      Phase
	Node       string
	Err        error
	RolledBack bool
}

func (e *PhaseError) Error() string {
	s := fmt.Sprintf("migrate: %s on %s: %v", e.Phase, e.Node, e.Err)
	if e.RolledBack {
		s += " (rolled back: service runs on the source)"
	}
	return s
}

func (e *PhaseError) Unwrap() error { return e.Err }

// Options configure Migrate.
type Options struct {
	// Technique to use; Migrate fails at once with ErrTechniqueUnsupported when the source or
	// destination cannot do it (see Capabilities.Supports).
	Technique Technique
	// PreDumps is the number of pre-dump iterations (PreCopy, Hybrid; 0 = 2).
	PreDumps int
	// Transport moves the image; required.
	Transport Transport
	// Progress, when set, receives transfer progress (bytes of image file content).
	Progress ProgressFunc
	// BeforeFreeze runs before the container is paused (steerd: the QUIC extension's prepare).
	// An error aborts the migration with nothing touched.
	BeforeFreeze func(ctx context.Context) error
	// PageServer is where the source node's CRIU serves lazy pages (PostCopy; required there): an
	// address of the source node that the destination node reaches, and a free TCP port.
	PageServer netip.AddrPort
	// AfterRestore runs once the container runs on the destination, before the source copy is
	// removed (steerd: the extension's restored, the datapath route switch). An error rolls back.
	AfterRestore func(ctx context.Context) error
}

// Report is the phase breakdown of a migration. Durations are wall-clock times.
type Report struct {
	ID        string
	From, To  string
	Technique Technique
	// Pause is runc pause; PreDumps the pre-dump iterations (empty for Cold); Dump the final
	// runc checkpoint; Transfer sending the image; Restore runc restore on the destination.
	Pause    time.Duration
	PreDumps []time.Duration
	Dump     time.Duration
	Transfer time.Duration
	Restore  time.Duration
	// ImageBytes is the size of the image files; TransferBytes the bytes on the wire.
	ImageBytes    int64
	TransferBytes int64
	// Freeze is the service's downtime: from the pause (post-copy: the start of the lazy dump,
	// whose CRIU freezes the container itself) to the restored container running.
	Freeze time.Duration
	// LazyPages (post-copy) is from the restored container running to the last page pulled: the
	// time the service runs on the destination with part of its memory still on the source.
	LazyPages time.Duration
	// Total is the whole migration, hooks and source cleanup included.
	Total time.Duration
}

func (r *Report) String() string {
	var pd []string
	for _, d := range r.PreDumps {
		pd = append(pd, ms(d))
	}
	mbps := 0.0
	if r.Transfer > 0 {
		mbps = float64(r.TransferBytes) / (1 << 20) / r.Transfer.Seconds()
	}
	return fmt.Sprintf("%s %s %s->%s: pause %s, pre-dumps [%s], dump %s, transfer %d B in %s (%.0f MiB/s), restore %s, freeze %s, lazy pages %s, total %s",
		r.Technique, r.ID, r.From, r.To, ms(r.Pause), strings.Join(pd, " "), ms(r.Dump), r.TransferBytes,
		ms(r.Transfer), mbps, ms(r.Restore), ms(r.Freeze), ms(r.LazyPages), ms(r.Total))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// Migrate moves container id from src to dst with opts.Technique and returns the phase
// breakdown. Cold and PostCopy run here; PreCopy and Hybrid fail at once with
// ErrTechniqueUnsupported on a kernel without soft-dirty tracking.
//
// Both create the destination pod before the freeze (PreparePod). Cold: BeforeFreeze, pause,
// CRIU dump with --leave-running (the paused source stays for rollback), transfer, restore on dst,
// AfterRestore, then the source container is deleted. PostCopy: BeforeFreeze, lazy dump
// (CheckpointLazy, CRIU freezes), transfer of the small image, RestoreLazy, AfterRestore, then it
// waits for every lazy page (Report.LazyPages) before the source is deleted. When a phase fails,
// dst is cleaned first (no runc state, pod namespace, veth, bundle, image or lazy-pages daemon
// left), then the source is resumed; the error is a *PhaseError naming the phase and node.
func Migrate(ctx context.Context, src, dst *Engine, id string, opts Options) (*Report, error) {
	start := time.Now()
	rep := &Report{ID: id, From: src.Node(), To: dst.Node(), Technique: opts.Technique}
	fail := func(p Phase, e *Engine, err error) (*Report, error) {
		return rep, &PhaseError{Phase: p, Node: e.Node(), Err: err}
	}
	for _, e := range []*Engine{src, dst} {
		caps, err := e.Capabilities(ctx)
		if err != nil {
			return fail(PhaseCheck, e, err)
		}
		if err := caps.Supports(opts.Technique); err != nil {
			return fail(PhaseCheck, e, err)
		}
	}
	if opts.Transport == nil {
		return fail(PhaseCheck, src, fmt.Errorf("%w: no transport", ErrBadSpec))
	}
	postCopy := opts.Technique == PostCopy
	if postCopy && !opts.PageServer.IsValid() {
		return fail(PhaseCheck, src, fmt.Errorf("%w: post-copy needs a page server address", ErrBadSpec))
	}
	sc, err := src.Container(id)
	if err != nil {
		return fail(PhaseCheck, src, err)
	}
	if _, err := dst.Container(id); err == nil {
		return fail(PhaseCheck, dst, fmt.Errorf("container %s: %w", id, ErrExists))
	}
	// The destination pod exists before the freeze (its creation is not downtime).
	if _, ok := dst.PreparedPod(id); !ok {
		if _, err := dst.PreparePod(id, sc.Spec.IPv4, sc.Spec.IPv6); err != nil {
			return fail(PhaseCheck, dst, err)
		}
	}
	if opts.BeforeFreeze != nil {
		if err := opts.BeforeFreeze(ctx); err != nil {
			_ = dst.DiscardPrepared(id)
			return fail(PhaseBeforeFreeze, src, err)
		}
	}

	// Destination: receive in the background while the source pauses and dumps.
	recvDir := dst.ImageDir(id)
	if err := os.RemoveAll(recvDir); err != nil {
		_ = dst.DiscardPrepared(id)
		return fail(PhaseCheck, dst, err)
	}
	type recvResult struct {
		n   int64
		err error
	}
	rctx, cancelRecv := context.WithCancel(ctx)
	defer cancelRecv()
	recvc := make(chan recvResult, 1)
	received := false // recvc has been read
	go func() {
		n, err := opts.Transport.Receive(rctx, recvDir, nil)
		recvc <- recvResult{n, err}
	}()

	// Rollback after the pause: clean the destination (post-copy: kill the restored copy before
	// the source's page server), resume (or keep) the source.
	bg := context.WithoutCancel(ctx)
	var lazy *LazyDump
	rollback := func(p Phase, e *Engine, err error) (*Report, error) {
		cancelRecv()
		if !received {
			<-recvc
		}
		if _, cerr := dst.Container(id); cerr == nil {
			_ = dst.Delete(bg, id)
		}
		_ = dst.DiscardPrepared(id)
		if lazy != nil {
			// A page server that failed (the destination's faults could not be served) says
			// why in its log: give it a moment to exit, and report that cause too.
			select {
			case <-lazy.Done():
			case <-time.After(500 * time.Millisecond):
			}
			select {
			case <-lazy.Done():
				if lerr := lazy.Wait(bg); lerr != nil && !errors.Is(err, ErrLazyPages) {
					err = errors.Join(err, lerr)
				}
			default:
				lazy.Abort()
			}
		}
		_ = os.RemoveAll(recvDir)
		_ = os.RemoveAll(src.ImageDir(id))
		perr := &PhaseError{Phase: p, Node: e.Node(), Err: err}
		st, serr := src.Status(bg, id)
		if serr == nil && st == "paused" {
			serr = src.Resume(bg, id)
			st = "running"
		}
		if serr == nil && st == "running" {
			perr.RolledBack = true
		} else {
			perr.Err = errors.Join(err, fmt.Errorf("rollback on %s: status %q: %v", src.Node(), st, serr))
		}
		rep.Total = time.Since(start)
		return rep, perr
	}

	var freezeStart time.Time
	if postCopy {
		// CRIU freezes the container itself (cgroup freezer) and keeps it frozen while it
		// serves the lazy pages; on a failed page transfer it thaws it.
		freezeStart = time.Now()
		l, n, err := src.CheckpointLazy(ctx, id, opts.PageServer)
		rep.Dump, rep.ImageBytes = time.Since(freezeStart), n
		if err != nil {
			return rollback(PhaseDump, src, err)
		}
		lazy = l
	} else {
		t := time.Now()
		if err := src.Pause(ctx, id); err != nil {
			return rollback(PhasePause, src, err)
		}
		freezeStart = time.Now()
		rep.Pause = freezeStart.Sub(t)

		t = time.Now()
		n, err := src.Checkpoint(ctx, id, CheckpointOptions{LeaveRunning: true})
		rep.Dump, rep.ImageBytes = time.Since(t), n
		if err != nil {
			return rollback(PhaseDump, src, err)
		}
	}

	t := time.Now()
	sent, serr := opts.Transport.Send(ctx, src.ImageDir(id), opts.Progress)
	var rr recvResult
	if serr != nil {
		cancelRecv()
	}
	rr, received = <-recvc, true
	rep.Transfer, rep.TransferBytes = time.Since(t), sent
	if rr.err != nil {
		return rollback(PhaseTransfer, dst, rr.err)
	}
	if serr != nil {
		return rollback(PhaseTransfer, src, serr)
	}

	t = time.Now()
	if postCopy {
		_, err = dst.RestoreLazy(ctx, recvDir, opts.PageServer)
	} else {
		_, err = dst.Restore(ctx, recvDir)
	}
	if err != nil {
		return rollback(PhaseRestore, dst, err)
	}
	rep.Restore = time.Since(t)
	rep.Freeze = time.Since(freezeStart)

	if opts.AfterRestore != nil {
		if err := opts.AfterRestore(ctx); err != nil {
			return rollback(PhaseAfterRestore, dst, err)
		}
	}
	if lazy != nil {
		// The source must live until the destination has every page: CRIU kills the source
		// tasks only after its page server served the last one.
		t = time.Now()
		derr := dst.WaitLazy(ctx, id)
		if derr != nil {
			lazy.Abort()
		}
		serr := lazy.Wait(ctx)
		rep.LazyPages = time.Since(t)
		if err := errors.Join(derr, serr); err != nil {
			return rollback(PhaseLazyPages, dst, err)
		}
	}
	_ = os.RemoveAll(recvDir)
	if err := src.Delete(bg, id); err != nil {
		rep.Total = time.Since(start)
		return rep, &PhaseError{Phase: PhaseCleanup, Node: src.Node(), Err: err}
	}
	rep.Total = time.Since(start)
	return rep, nil
}
