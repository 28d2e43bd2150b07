package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pod"
)

// incoming is the destination node's record of a migration it receives.
type incoming struct {
	id, source string
	def        ServiceDef
	technique  api.Technique
	dir        string
	pod        *pod.Pod
	tl         *timeline
	prepared   bool // the engine (PodPreparer) created pod at prepare-restore
	// prevState and prevPeer are the service's state here before the migration (stopped, or
	// remote on the node it moved to): an aborted migration leaves it as it was.
	prevState, prevPeer string
	restored            bool // engine.Restore called (a container may exist)
	local               bool // the datapath delivers the instance here
	// fenced: the pod is fenced (datapath SetFenced) from its attach until the source commits
	// (opCommit); committed: the source committed, the pod is unfenced and abort refuses.
	fenced, committed bool
	bytes             int64
	// fileSizes holds the length (bytes) each image file received in parts was announced with
	// (peerRequest.FileSize): every part of a file must announce the same, or a later part
	// would cut an earlier one's bytes (Truncate) or leave a hole past them.
	fileSizes map[string]int64
}

// servePeer runs one peer operation from the authenticated node from (destination side).
func (d *Daemon) servePeer(ctx context.Context, from, op string, body json.RawMessage) *PeerReply {
	var (
		r   PeerReply
		err error
	)
	dec := func(v any) bool {
		if e := json.Unmarshal(body, v); e != nil {
			err = fmt.Errorf("decode %s request: %w: %w", op, ErrBadRequest, e)
			return false
		}
		return true
	}
	phase := api.PhasePeer
	// The operations of an incoming migration come from its source only (opCommit checks this
	// itself; opOutcome answers any peer): another configured node must not restore, tell the
	// service it was restored, or abort a migration it does not run.
	bySource := func(migration string) bool {
		if e := d.checkSource(from, migration); e != nil {
			err = fmt.Errorf("%s: %w", op, e)
			return false
		}
		return true
	}
	switch op {
	case opPrepareRestore:
		phase = api.PhaseDest
		var q prepareRestoreReq
		if dec(&q) {
			err = d.prepareRestore(from, q, &r)
		}
	case opRestore:
		phase = api.PhaseRestore
		var q restoreReq
		if dec(&q) && bySource(q.Migration) {
			err = d.restore(ctx, q, &r)
		}
	case opRestored:
		phase = api.PhaseRestored
		var q restoredReq
		if dec(&q) && bySource(q.Migration) {
			err = d.restored(ctx, q, &r)
		}
	case opRoute:
		phase = api.PhaseRoute
		var q routeReq
		if dec(&q) {
			err = d.route(from, q)
		}
	case opAbort:
		phase = api.PhaseRollback
		var q abortReq
		if dec(&q) && bySource(q.Migration) {
			err = d.abortIncoming(ctx, q, &r)
		}
	case opCommit:
		phase = api.PhaseRestore
		var q commitReq
		if dec(&q) {
			err = d.commitIncoming(from, q, &r)
		}
	case opOutcome:
		var q outcomeReq
		if dec(&q) {
			r.Outcome = d.outcome(from, q)
		}
	default:
		err = fmt.Errorf("peer operation %q: %w", op, ErrBadRequest)
	}
	if err != nil {
		d.log.Warn("peer operation failed", "peer", from, "op", op, "error", err)
		r.Error = d.apiErr(phase, err)
	}
	return &r
}

// checkSource returns an error wrapping ErrBadRequest when the incoming migration id exists
// and its source is not the authenticated peer from (nil for an unknown migration: the operation
// itself reports that, or, for an abort, has nothing to do).
func (d *Daemon) checkSource(from, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if in, ok := d.incoming[id]; ok && in.source != from {
		return fmt.Errorf("migration %s: %w: source is %q, not %q", id, ErrBadRequest, in.source, from)
	}
	return nil
}

func (d *Daemon) getIncoming(id string) (*incoming, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.incoming[id]
	if !ok {
		return nil, fmt.Errorf("migration %q: %w", id, ErrUnknownMig)
	}
	return in, nil
}

// prepareRestore reserves the service on this node and creates its pod namespace and image
// directory.
func (d *Daemon) prepareRestore(from string, q prepareRestoreReq, r *PeerReply) (err error) {
	if q.Source != from {
		return fmt.Errorf("prepare restore: %w: source %q is not the authenticated peer %q", ErrBadRequest, q.Source, from)
	}
	def := q.Service
	if local, ok := d.cfg.Service(def.Name); ok {
		if local.Instance != def.Instance || local.PodIPv4 != def.PodIPv4 || local.PodIPv6 != def.PodIPv6 || local.Port != def.Port {
			return fmt.Errorf("prepare restore of %s: %w: definition differs from this node's (instance %d/%d)", def.Name, ErrBadRequest, local.Instance, def.Instance)
		}
		def.Bundle, def.Args = local.Bundle, local.Args
	}
	tl := newTimeline(q.Migration, d.cfg.Node, nil)
	tl.start(api.PhaseDest, "from "+from)
	defer func() { tl.end(api.PhaseDest, err); r.Events = tl.snapshot() }()
	d.mu.Lock()
	if _, dup := d.incoming[q.Migration]; dup {
		d.mu.Unlock()
		return fmt.Errorf("prepare restore: %w: migration %s exists", ErrBusy, q.Migration)
	}
	s, ok := d.services[def.Name]
	if ok && (s.state == StateRunning || s.state == StateMigrating || s.state == StateRestoring) {
		st := s.state
		d.mu.Unlock()
		return fmt.Errorf("prepare restore of %s: %w: state %s here", def.Name, ErrBusy, st)
	}
	if !ok {
		s = &service{def: def}
		d.services[def.Name] = s
	}
	prevState, prevPeer := s.state, s.peer
	if prevState == "" {
		prevState = StateStopped
	}
	s.def, s.state, s.migration, s.peer, s.source, s.fenced = def, StateRestoring, q.Migration, "", from, 0
	d.saveStateLocked()
	in := &incoming{id: q.Migration, source: from, def: def, technique: q.Technique, dir: d.imageDir("incoming", q.Migration), tl: tl,
		prevState: prevState, prevPeer: prevPeer}
	d.incoming[q.Migration] = in
	d.mu.Unlock()
	// From here on the source may vanish before it sends restore or abort (its steerd killed
	// while the service was frozen): the watcher asks it for the outcome after resolveAfter, and
	// a restarted source that resumed its copy answers "aborted", so this node cleans up.
	defer func() {
		if err == nil {
			d.watchPreRestore(q.Migration)
		}
	}()
	fail := func(e error) error {
		d.mu.Lock()
		delete(d.incoming, q.Migration)
		s.state, s.migration, s.peer, s.source, s.fenced = prevState, "", prevPeer, "", 0
		d.saveStateLocked()
		d.mu.Unlock()
		os.RemoveAll(in.dir)
		return e
	}
	if err := os.MkdirAll(in.dir, 0o700); err != nil {
		return fail(fmt.Errorf("create image directory: %w", err))
	}
	if pp, ok := d.engine.(PodPreparer); ok {
		// The pod exists before the source freezes: its creation and the datapath attach are not
		// part of the freeze.
		p, err := pp.PreparePod(def.Name, def.PodIPv4, def.PodIPv6)
		if err != nil {
			return fail(fmt.Errorf("prepare pod for %s: %w", def.Name, err))
		}
		if pa, ok := d.dp.(podAttacher); ok {
			if err := pa.AttachPod(p.HostIndex, p.Path(), p.PodIndex); err != nil {
				_ = d.engine.Remove(context.Background(), def.Name)
				return fail(fmt.Errorf("attach datapath to pod %s: %w", p.NetNS, err))
			}
		}
		// Fenced before anything can run in it: the restored copy stays silent until the source
		// commits (opCommit), even if this steerd dies (the fence is pinned).
		if err := d.fencePod(in, s, p); err != nil {
			_ = d.engine.Remove(context.Background(), def.Name)
			if pa, ok := d.dp.(podAttacher); ok {
				_ = pa.DetachPod(p.HostIndex)
			}
			return fail(fmt.Errorf("prepare pod for %s: %w", def.Name, err))
		}
		d.mu.Lock()
		in.pod, s.pod, in.prepared = p, p, true
		d.mu.Unlock()
		return nil
	}
	if d.ownsPods() {
		return nil // the engine creates the pod when it restores
	}
	p, err := d.createPod(def)
	if err != nil {
		return fail(fmt.Errorf("create pod for %s: %w", def.Name, err))
	}
	if err := d.fencePod(in, s, p); err != nil {
		_ = d.deletePod(p)
		return fail(fmt.Errorf("create pod for %s: %w", def.Name, err))
	}
	d.mu.Lock()
	in.pod, s.pod = p, p
	d.mu.Unlock()
	return nil
}

// receiveImage stores one image file of an incoming migration and returns its SHA-256. verify (if
// not nil) gets the digest of the received bytes before the file is kept; its error discards it.
func (d *Daemon) receiveImage(migration, name string, r io.Reader, size int64, verify func([32]byte) error) ([32]byte, error) {
	return d.receiveImagePart(migration, name, r, 0, size, size, verify)
}

// partFailed in incoming.fileSizes marks an image file one of whose parts failed (and was
// removed): its other parts are refused.
const partFailed = -1

// receiveImagePart stores the bytes [off, off+size) of the image file name (fileSize bytes in
// all) of an incoming migration and returns their SHA-256. A whole file (off 0, size fileSize)
// replaces any file of that name; a part is written in place, next to the other parts, which
// arrive on their own streams (possibly at the same time). verify (if not nil) gets the digest
// of the received bytes before they are kept; its error, like any other, removes the file (the
// source then aborts the migration, which removes the whole image directory).
func (d *Daemon) receiveImagePart(migration, name string, r io.Reader, off, size, fileSize int64, verify func([32]byte) error) ([32]byte, error) {
	var sum [32]byte
	in, err := d.getIncoming(migration)
	if err != nil {
		return sum, err
	}
	clean := path.Clean(name)
	if name == "" || path.IsAbs(name) || clean == "." || strings.HasPrefix(clean, "../") || clean == ".." {
		return sum, fmt.Errorf("receive image file %q: %w: name must be relative", name, ErrBadRequest)
	}
	// off > fileSize-size, not off+size > fileSize: a hostile offset near 2^63 must not wrap.
	if off < 0 || size < 0 || fileSize < 0 || size > fileSize || off > fileSize-size {
		return sum, fmt.Errorf("receive image file %s: %w: part [%d, +%d) outside %d bytes", name, ErrBadRequest, off, size, fileSize)
	}
	whole := off == 0 && size == fileSize
	// The announced length is allocated (Truncate) before any byte arrives: refuse one the image
	// directory's filesystem cannot hold, instead of failing late or filling the disk.
	var fs unix.Statfs_t
	if off == 0 && unix.Statfs(in.dir, &fs) == nil && fileSize > int64(fs.Bavail)*int64(fs.Bsize) {
		return sum, fmt.Errorf("receive image file %s: %w: %d bytes announced, %d free in %s", name, ErrNoSpace, fileSize, int64(fs.Bavail)*int64(fs.Bsize), in.dir)
	}
	d.mu.Lock()
	if whole {
		delete(in.fileSizes, clean)
	} else {
		if in.fileSizes == nil {
			in.fileSizes = map[string]int64{}
		}
		if was, ok := in.fileSizes[clean]; ok && was == partFailed {
			d.mu.Unlock()
			return sum, fmt.Errorf("receive image file %s: %w: part [%d, +%d) of a file whose other part failed", name, ErrBadRequest, off, size)
		} else if ok && was != fileSize {
			d.mu.Unlock()
			return sum, fmt.Errorf("receive image file %s: %w: part [%d, +%d) of %d bytes, an earlier part said %d", name, ErrBadRequest, off, size, fileSize, was)
		}
		in.fileSizes[clean] = fileSize
	}
	d.mu.Unlock()
	// Everything goes through the image directory opened as an os.Root: an abort that removes
	// the directory while a part is on its way makes the part fail (ENOENT) instead of
	// recreating the directory, which nothing would remove again.
	root, err := os.OpenRoot(in.dir)
	if err != nil {
		return sum, fmt.Errorf("receive image file %s: %w", name, err)
	}
	defer root.Close()
	dst := filepath.FromSlash(clean)
	if sub := filepath.Dir(dst); sub != "." {
		if err := root.MkdirAll(sub, 0o700); err != nil {
			return sum, fmt.Errorf("receive image file %s: %w", name, err)
		}
	}
	flags := os.O_CREATE | os.O_WRONLY
	if whole {
		flags |= os.O_TRUNC
	}
	f, err := root.OpenFile(dst, flags, 0o600)
	if err != nil {
		return sum, fmt.Errorf("receive image file %s: %w", name, err)
	}
	if !whole {
		// Every part sets the same length: a part never cuts another's bytes, and nothing of an
		// older, longer file of that name survives past fileSize.
		if err := f.Truncate(fileSize); err != nil {
			f.Close()
			root.Remove(dst)
			return sum, fmt.Errorf("receive image file %s: %w", name, err)
		}
	}
	h := sha256.New()
	bp := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(io.NewOffsetWriter(f, off), h), io.LimitReader(r, size), *bp)
	copyBufs.Put(bp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("short image file: %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	copy(sum[:], h.Sum(nil))
	if err == nil && verify != nil {
		err = verify(sum)
	}
	if err != nil {
		root.Remove(dst)
		if !whole {
			// The file is gone: a later part of it would make a file with a hole of zeros
			// where this part was. Only a whole resend of the file clears this.
			d.mu.Lock()
			in.fileSizes[clean] = partFailed
			d.mu.Unlock()
			return sum, fmt.Errorf("receive image file %s bytes [%d, +%d): %w", name, off, size, err)
		}
		return sum, fmt.Errorf("receive image file %s: %w", name, err)
	}
	d.mu.Lock()
	in.bytes += n
	d.mu.Unlock()
	d.met.bytes.WithLabelValues("received").Add(float64(n))
	return sum, nil
}

// restore restores the container from the received image and delivers the instance locally.
func (d *Daemon) restore(ctx context.Context, q restoreReq, r *PeerReply) (err error) {
	in, err := d.getIncoming(q.Migration)
	if err != nil {
		return err
	}
	mark := len(in.tl.snapshot())
	in.tl.start(api.PhaseRestore, fmt.Sprintf("%d image bytes", in.bytes))
	defer func() {
		in.tl.end(api.PhaseRestore, err)
		r.Events, _ = in.tl.since(mark)
	}()
	d.mu.Lock()
	in.restored = true
	d.mu.Unlock()
	netnsPath := ""
	if in.pod != nil {
		netnsPath = in.pod.Path()
	}
	if in.prepared {
		// Deliver here and SNAT (the egress entries of the pod veth) before the restored service
		// runs: CRIU resumes it before runc restore returns, and its first packets must leave
		// with the public address, not the pod address.
		d.mu.Lock()
		lt := d.services[in.def.Name].local()
		in.local = true
		d.mu.Unlock()
		if err := d.setLocal(in.def.Instance, in.def.Name, lt); err != nil {
			return fmt.Errorf("restore %s: %w", in.def.Name, err)
		}
	}
	var pageServer netip.AddrPort
	if q.PageServerPort != 0 {
		pdef, ok := d.cfg.Peer(in.source)
		if !ok {
			return fmt.Errorf("restore %s: page server: %w: %q", in.def.Name, ErrUnknownPeer, in.source)
		}
		pageServer = netip.AddrPortFrom(pdef.Address, q.PageServerPort)
	}
	rep, err := d.engine.Restore(ctx, RestoreRequest{
		Migration: q.Migration, Service: in.def.Name, Technique: in.technique, ImageDir: in.dir,
		NetNSPath: netnsPath, Bundle: in.def.Bundle, Source: in.source, PageServer: pageServer,
	})
	for _, p := range rep.Phases {
		in.tl.add(api.Event{Phase: api.Phase(p.Name), Kind: api.End, Time: p.End, Duration: p.End.Sub(p.Start), Bytes: p.Bytes, Detail: "engine"})
	}
	if err != nil {
		return fmt.Errorf("restore %s (%s): %w", in.def.Name, in.technique, err)
	}
	if in.prepared {
		d.watchIncoming(q.Migration)
		return nil
	}
	if pe, ok := d.engine.(PodEngine); ok {
		p, err := d.adoptPod(pe, in.def.Name)
		if err != nil {
			return fmt.Errorf("restore %s: %w", in.def.Name, err)
		}
		d.mu.Lock()
		in.pod, d.services[in.def.Name].pod = p, p
		d.mu.Unlock()
		// The engine created the pod with the container: fenced as soon as it is known (the
		// copy may have run since runc restore resumed it, without a route to clients yet).
		if err := d.fencePod(in, d.services[in.def.Name], p); err != nil {
			return fmt.Errorf("restore %s: %w", in.def.Name, err)
		}
	}
	d.mu.Lock()
	s := d.services[in.def.Name]
	lt := s.local()
	in.local = true
	d.mu.Unlock()
	if err := d.setLocal(in.def.Instance, in.def.Name, lt); err != nil {
		return err
	}
	d.watchIncoming(q.Migration)
	return nil
}

// resolveAfter is how long a restored, fenced copy waits for the source's commit or abort before
// it asks the source for the outcome (opOutcome); resolveRetry the pause between questions. It is
// longer than the source's commitTimeout, so it only settles migrations whose commit or abort
// was lost (broken peer channel, a source that restarted).
var (
	resolveAfter = 15 * time.Second
	resolveRetry = 5 * time.Second
)

// watchIncoming settles an incoming migration that is still fenced resolveAfter after its restore:
// committed at the source -> unfence and run (quicext "restored" is not sent: the source did not
// reach this node); aborted -> abortIncoming; undecided or unreachable -> stay fenced, ask again.
func (d *Daemon) watchIncoming(id string) {
	wait, retry := resolveAfter, resolveRetry
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = retry
			d.mu.Lock()
			in, ok := d.incoming[id]
			open := ok && !in.committed
			d.mu.Unlock()
			if !open {
				return
			}
			out, err := d.askOutcome(d.ctx, in.source, id, in.def.Name)
			log := d.log.With("migration", id, "service", in.def.Name, "source", in.source, "outcome", out)
			switch out {
			case outcomeCommitted:
				if err := d.commitIncoming(in.source, commitReq{Migration: id, Service: in.def.Name}, &PeerReply{}); err != nil {
					log.Warn("incoming migration committed at the source, unfencing failed", "error", err)
					continue
				}
				d.mu.Lock()
				delete(d.incoming, id)
				d.finishedIn[id] = in.tl
				d.mu.Unlock()
				os.RemoveAll(in.dir)
				log.Warn("incoming migration: commit was lost, the source says committed: unfenced and running (quicext restored not sent)")
				return
			case outcomeAborted:
				if err := d.abortIncoming(d.ctx, abortReq{Migration: id, Service: in.def.Name}, &PeerReply{}); err != nil {
					log.Warn("incoming migration aborted at the source, cleanup failed", "error", err)
				} else {
					log.Warn("incoming migration: abort was lost, the source says aborted: restored copy removed")
				}
				return
			}
			log.Warn("incoming migration still fenced: no commit or abort from the source", "error", err)
		}
	}()
}

// watchPreRestore settles an incoming migration whose source vanished before it sent restore
// (its steerd killed while the service was frozen): resolveAfter after prepare-restore, while no
// restore has started, it asks the source; "aborted" (a restarted source that resumed its own
// copy) removes the prepared pod here. Once restore starts, watchIncoming takes over.
func (d *Daemon) watchPreRestore(id string) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		wait := resolveAfter
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = resolveRetry
			d.mu.Lock()
			in, ok := d.incoming[id]
			open := ok && !in.restored
			d.mu.Unlock()
			if !open {
				return
			}
			if out, _ := d.askOutcome(d.ctx, in.source, id, in.def.Name); out != outcomeAborted {
				continue
			}
			d.mu.Lock()
			still := d.incoming[id] == in && !in.restored
			d.mu.Unlock()
			if !still {
				return
			}
			log := d.log.With("migration", id, "service", in.def.Name, "source", in.source)
			if err := d.abortIncoming(d.ctx, abortReq{Migration: id, Service: in.def.Name}, &PeerReply{}); err != nil {
				log.Warn("incoming migration aborted at the source before restore, cleanup failed", "error", err)
			} else {
				log.Warn("incoming migration: the source gave it up before restore (no abort reached this node): prepared pod removed")
			}
			return
		}
	}()
}

// restored tells the restored service its new public address and ends the incoming migration.
func (d *Daemon) restored(ctx context.Context, q restoredReq, r *PeerReply) (err error) {
	in, err := d.getIncoming(q.Migration)
	if err != nil {
		return err
	}
	mark := len(in.tl.snapshot())
	in.tl.start(api.PhaseRestored, "")
	defer func() {
		in.tl.end(api.PhaseRestored, err)
		r.Events, _ = in.tl.since(mark)
	}()
	if in.pod == nil {
		return fmt.Errorf("tell %s it was restored: %w: no pod (restore did not run)", in.def.Name, ErrNotRunning)
	}
	d.mu.Lock()
	committed := in.committed
	d.mu.Unlock()
	if !committed {
		// quicext "restored" makes the service send SERVER_MIGRATED: never from a fenced copy.
		return fmt.Errorf("tell %s it was restored: %w: migration %s not committed (the pod is fenced)", in.def.Name, ErrBadRequest, q.Migration)
	}
	// The service is this node's since the commit: the migration ends here whether or not the
	// service takes the quicext call.
	d.mu.Lock()
	delete(d.incoming, q.Migration)
	d.finishedIn[q.Migration] = in.tl
	d.mu.Unlock()
	os.RemoveAll(in.dir)
	if err := d.ctl.Restored(ctx, in.pod.NetNS, q.Target); err != nil {
		return fmt.Errorf("tell %s it was restored: %w", in.def.Name, err)
	}
	d.log.Info("service restored", "migration", q.Migration, "service", in.def.Name, "from", in.source)
	return nil
}

// fencePod fences p, the pod of incoming migration in (service s), and records the fence in the
// persisted service state (Recover reads it after a restart).
func (d *Daemon) fencePod(in *incoming, s *service, p *pod.Pod) error {
	if err := d.setFenced(p.HostIndex, true); err != nil {
		return err
	}
	d.mu.Lock()
	in.fenced = true
	s.fenced = p.HostIndex
	d.saveStateLocked()
	d.mu.Unlock()
	in.tl.add(api.Event{Phase: api.PhaseDest, Kind: api.Info, Detail: fmt.Sprintf("pod %s fenced (veth ifindex %d)", p.NetNS, p.HostIndex)})
	return nil
}

// commitIncoming takes the source's commit (opCommit): the service is this node's now. It
// unfences the restored copy and marks the service running; quicext "restored" follows
// (opRestored). A second commit of the same migration is a no-op.
func (d *Daemon) commitIncoming(from string, q commitReq, r *PeerReply) error {
	in, err := d.getIncoming(q.Migration)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if in.source != from {
		return fmt.Errorf("commit %s: %w: source is %q, not %q", q.Migration, ErrBadRequest, in.source, from)
	}
	mark := len(in.tl.snapshot())
	defer func() { r.Events, _ = in.tl.since(mark) }()
	d.mu.Lock()
	restored, done, fenced, p := in.restored, in.committed, in.fenced, in.pod
	d.mu.Unlock()
	if done {
		return nil
	}
	if !restored || p == nil {
		return fmt.Errorf("commit %s: %w: restore did not run here", q.Migration, ErrNotRunning)
	}
	if fenced {
		if err := d.setFenced(p.HostIndex, false); err != nil {
			return fmt.Errorf("commit %s: %w", q.Migration, err)
		}
	}
	d.mu.Lock()
	in.committed, in.fenced = true, false
	s := d.services[in.def.Name]
	s.state, s.migration, s.peer, s.source, s.fenced = StateRunning, "", "", "", 0
	d.saveStateLocked()
	d.mu.Unlock()
	in.tl.add(api.Event{Phase: api.PhaseRestore, Kind: api.Info, Detail: "committed by " + from + ": pod unfenced, service runs here"})
	d.log.Info("migration committed: service unfenced", "migration", q.Migration, "service", in.def.Name, "from", from)
	return nil
}

// outcome answers a destination's question (opOutcome) about a migration this node was the
// source of: committed once the source passed its commit point (the service's state here is
// remote on the asking node), aborted when the migration ended without a commit or the service
// runs here, pending otherwise (still running, or unknown: the asker stays fenced).
func (d *Daemon) outcome(from string, q outcomeReq) string {
	d.mu.Lock()
	mg, known := d.migs[q.Migration]
	s, ok := d.services[q.Service]
	var state, peer, mig string
	if ok {
		state, peer, mig = s.state, s.peer, s.migration
	}
	d.mu.Unlock()
	if known {
		m := mg.snapshot(false)
		switch {
		case m.To != from:
			return outcomePending
		case mg.isCommitted():
			return outcomeCommitted
		case m.Result != api.Running:
			return outcomeAborted
		}
		return outcomePending
	}
	switch {
	case !ok:
		return outcomePending
	case state == StateRemote && peer == from:
		return outcomeCommitted
	case state == StateRunning || state == StateStopped || state == StateMigrating && mig != q.Migration:
		// The service runs here (or nowhere) and no migration to from is in progress: whatever
		// the asker holds was never committed.
		return outcomeAborted
	}
	return outcomePending
}

// abortIncoming undoes an incoming migration: datapath entry, container, pod, image. Unknown
// migrations are not an error (abort is idempotent).
func (d *Daemon) abortIncoming(ctx context.Context, q abortReq, r *PeerReply) error {
	d.mu.Lock()
	in, ok := d.incoming[q.Migration]
	if ok && in.committed {
		d.mu.Unlock()
		return fmt.Errorf("abort %s: %w: the source committed, the service runs here", q.Migration, ErrBusy)
	}
	if ok {
		delete(d.incoming, q.Migration)
		d.finishedIn[q.Migration] = in.tl
	}
	d.mu.Unlock()
	if !ok {
		return nil
	}
	in.tl.start(api.PhaseRollback, "abort from "+in.source)
	var errs []error
	if in.local {
		if err := d.deleteRoute(in.def.Instance); err != nil {
			errs = append(errs, err)
		}
	}
	if in.restored || in.prepared {
		if err := d.engine.Remove(ctx, in.def.Name); err != nil {
			errs = append(errs, fmt.Errorf("remove container %s: %w", in.def.Name, err))
		}
	}
	if in.pod != nil {
		// DetachPod (in deletePod) also removes the fence: the container is gone by now.
		if err := d.deletePod(in.pod); err != nil {
			errs = append(errs, fmt.Errorf("delete pod: %w", err))
		}
	}
	if err := os.RemoveAll(in.dir); err != nil {
		errs = append(errs, err)
	}
	d.mu.Lock()
	if s, ok := d.services[in.def.Name]; ok && s.migration == q.Migration {
		s.state, s.migration, s.pod, s.peer, s.source, s.fenced = in.prevState, "", nil, in.prevPeer, "", 0
		d.saveStateLocked()
	}
	d.mu.Unlock()
	err := errors.Join(errs...)
	in.tl.end(api.PhaseRollback, err)
	r.Events = in.tl.snapshot()
	return err
}

// route sets an instance's entry on request of a peer (a third node learning where an instance
// moved, or an operator's repair).
func (d *Daemon) route(from string, q routeReq) error {
	switch q.Kind {
	case api.Local:
		d.mu.Lock()
		s, ok := d.services[q.Service]
		var lt LocalTarget
		if ok {
			lt = s.local()
		}
		d.mu.Unlock()
		if !ok || s.def.Instance != q.Instance || lt.HostIfindex == 0 {
			return fmt.Errorf("route instance %d local: %w: service %q has no pod here", q.Instance, ErrNotRunning, q.Service)
		}
		return d.setLocal(q.Instance, q.Service, lt)
	case api.Remote:
		if _, ok := d.cfg.Peer(q.Peer); !ok {
			return fmt.Errorf("route instance %d: %w: %q", q.Instance, ErrUnknownPeer, q.Peer)
		}
		return d.setRemote(q.Instance, q.Service, q.Peer)
	case "":
		return d.deleteRoute(q.Instance)
	}
	return fmt.Errorf("route instance %d: %w: kind %q", q.Instance, ErrBadRequest, q.Kind)
}

// sha256Hex formats a digest.
func sha256Hex(b [32]byte) string { return hex.EncodeToString(b[:]) }
