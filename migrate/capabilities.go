package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Technique is a live-migration technique (CRIU documentation, "Live migration", "Iterative
// migration" and "Lazy migration").
type Technique int

const (
	// Cold pauses the container, dumps it completely, sends the image and restores it.
	Cold Technique = iota
	// PreCopy runs CRIU pre-dumps while the service keeps running (memory only, tracked with
	// soft-dirty bits), then a final dump that writes only the pages dirtied since.
	PreCopy
	// PostCopy dumps everything but the private anonymous memory, restores at once and pulls the
	// pages on demand with userfaultfd from a page server on the source (lazy pages).
	PostCopy
	// Hybrid is PreCopy followed by a PostCopy final dump.
	Hybrid
)

// Techniques lists every technique in declaration order.
var Techniques = []Technique{Cold, PreCopy, PostCopy, Hybrid}

func (t Technique) String() string {
	switch t {
	case Cold:
		return "cold"
	case PreCopy:
		return "pre-copy"
	case PostCopy:
		return "post-copy"
	case Hybrid:
		return "hybrid"
	}
	return "technique(" + strconv.Itoa(int(t)) + ")"
}

// ErrTechniqueUnsupported is returned (wrapped, with the reason and the kernel option or
// capability it needs) when a technique cannot work on this machine. Migrate returns it before it
// touches the service.
var ErrTechniqueUnsupported = errors.New("migration technique unsupported")

// Capabilities are the checkpoint/restore features of a node, as CRIU reports them.
type Capabilities struct {
	// MemDirtyTrack is `criu check --feature mem_dirty_track`: the kernel has soft-dirty page
	// tracking (CONFIG_MEM_SOFT_DIRTY), which every CRIU pre-dump needs (it sets track_mem and
	// aborts with "BUG at criu/mem.c" without it; runc refuses earlier: "CRIU is missing features").
	MemDirtyTrack bool
	// UffdNonCoop is `criu check --feature uffd-noncoop`: userfaultfd with the non-cooperative
	// events (fork, remap, unmap) that lazy restore needs (CONFIG_USERFAULTFD).
	UffdNonCoop bool
	// SysResource is CAP_SYS_RESOURCE in the effective set of this process. CRIU's lazy page server
	// keeps the dumped memory in pipes and grows them (F_SETPIPE_SZ) and its RLIMIT_NOFILE; without
	// the capability both fail past the unprivileged limits. Measured on this project's test VM
	// (no CAP_SYS_RESOURCE): the live lazy page server of `runc checkpoint --lazy-pages` fails with
	// "page-pipe: tee" / "page-pipe: splice" errors on the first page request, for 0 MiB too.
	SysResource bool
	// PipeMaxSize is fs.pipe-max-size in bytes; PipeMaxSizeWritable tells whether this process can
	// raise it (root with a writable /proc/sys). Without CAP_SYS_RESOURCE, CRIU's lazy page server
	// works once fs.pipe-max-size >= LazyPipeMaxSize (EnsurePipeMaxSize raises it before each
	// post-copy dump and restore).
	PipeMaxSize         int64
	PipeMaxSizeWritable bool
}

// lazyPipesOK reports whether CRIU's lazy page server can size its pipes here.
func (c Capabilities) lazyPipesOK() bool {
	return c.SysResource || c.PipeMaxSize >= LazyPipeMaxSize || c.PipeMaxSizeWritable
}

// DetectCapabilities runs `criu check --feature` for the features the techniques need. criu is
// the CRIU binary ("" = "criu" from PATH).
func DetectCapabilities(ctx context.Context, criu string) (Capabilities, error) {
	if criu == "" {
		criu = "criu"
	}
	if _, err := exec.LookPath(criu); err != nil {
		return Capabilities{}, fmt.Errorf("detect capabilities: %w", err)
	}
	feature := func(name string) bool {
		return exec.CommandContext(ctx, criu, "check", "--feature", name).Run() == nil
	}
	pms, _ := readPipeMaxSize()
	return Capabilities{
		MemDirtyTrack:       feature("mem_dirty_track"),
		UffdNonCoop:         feature("uffd-noncoop"),
		SysResource:         hasEffectiveCap(24), // CAP_SYS_RESOURCE, linux/capability.h
		PipeMaxSize:         pms,
		PipeMaxSizeWritable: unix.Access(PipeMaxSizePath, unix.W_OK) == nil,
	}, nil
}

// Supports returns nil when t can work with these capabilities, or an error wrapping
// ErrTechniqueUnsupported that says why and what is needed.
func (c Capabilities) Supports(t Technique) error {
	var why []string
	if (t == PreCopy || t == Hybrid) && !c.MemDirtyTrack {
		alt := "cold or post-copy"
		if !c.UffdNonCoop || !c.lazyPipesOK() {
			alt = "cold" // post-copy is refused here too
		}
		why = append(why, "pre-dump needs soft-dirty memory tracking, which this kernel lacks (criu check --feature mem_dirty_track fails; build the kernel with CONFIG_MEM_SOFT_DIRTY=y); use --technique "+alt)
	}
	if t == PostCopy || t == Hybrid {
		if !c.UffdNonCoop {
			why = append(why, "lazy pages need non-cooperative userfaultfd (criu check --feature uffd-noncoop fails; needs CONFIG_USERFAULTFD=y and vm.unprivileged_userfaultfd or root)")
		}
		if !c.lazyPipesOK() {
			why = append(why, fmt.Sprintf("CRIU's lazy page server grows its page pipes to %d bytes with F_SETPIPE_SZ, which fails with EPERM above fs.pipe-max-size (%d here) without CAP_SYS_RESOURCE, and %s is read-only for this process (raise it to %d as root, or grant CAP_SYS_RESOURCE)",
				LazyPipeMaxSize, c.PipeMaxSize, PipeMaxSizePath, LazyPipeMaxSize))
		}
	}
	if t < Cold || t > Hybrid {
		why = append(why, "unknown technique")
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s: %s", ErrTechniqueUnsupported, t, strings.Join(why, "; "))
}

// hasEffectiveCap reads CapEff from /proc/self/status and tests bit n.
func hasEffectiveCap(n uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<n) != 0
		}
	}
	return false
}
