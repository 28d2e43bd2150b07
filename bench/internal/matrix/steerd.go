package matrix

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// Steerd drives the real steerd migration flow (cmd/steerd -> migrate/ -> quicext control
// endpoint -> datapath/). It is the HOOK for the migration engine and the daemon:
//
//   - Ready must return nil once `bin/steerd` can, on a tests/netns testbed, start the QUIC demo
//     service (quicext server + a counter over a QUIC stream, same protocol as bench/internal/kv)
//     with a ballast of Cell.BallastMB, migrate it from node 0 to node 1 with technique
//     Cell.Technique and strategy Cell.Strategy, with the XDP datapath loaded or not (Cell.XDP),
//     and report the freeze time measured by the migrate engine.
//   - Run must then (1) start that service, (2) run a paced QUIC client in client 0 (request
//     every Env.Interval, bounded; kv.Trace gives the gap), (3) trigger the migration, (4) return
//     Sample{ClientGap: trace.MaxGap(moveStart), Freeze: <engine's freeze time>, StateKept:
//     trace.Monotonic()}.
//
// Until then Ready returns an error wrapping ErrNotReady that names what is missing, and the
// matrix rows say "not run: <that reason>".
type Steerd struct {
	// Bin is the directory holding the built steerd binaries (bin/).
	Bin string
	// Repo is the checkout root (to see which packages exist yet).
	Repo string
}

// Name implements Migrator.
func (s *Steerd) Name() string { return "steerd" }

// Ready implements Migrator.
func (s *Steerd) Ready(c Cell) error {
	var missing []string
	if !hasGo(filepath.Join(s.Repo, "migrate")) {
		missing = append(missing, "migrate/ has no Go package (runc+CRIU engine)")
	}
	if fi, err := os.Stat(filepath.Join(s.Bin, "steerd")); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, "bin/steerd is not built")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %v", ErrNotReady, missing)
	}
	return fmt.Errorf("%w: the steerd migration flow is not wired into the bench yet (hook: bench/internal/matrix/steerd.go Steerd.Run)", ErrNotReady)
}

// Run implements Migrator.
func (s *Steerd) Run(ctx context.Context, env *Env, c Cell, run int) (Sample, error) {
	return Sample{}, s.Ready(c)
}

func hasGo(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range m {
		if filepath.Ext(f) == ".go" && !isTest(f) {
			return true
		}
	}
	return false
}

func isTest(f string) bool { return len(f) > 8 && f[len(f)-8:] == "_test.go" }
