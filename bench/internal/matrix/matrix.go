// Package matrix runs the service-migration matrix: every QUIC server-migration strategy x
// migration technique x container size, with the XDP datapath on and off, several runs each, and
// summarises client gap, freeze time and their ratio per cell.
//
// The migration itself is pluggable (Migrator), so the harness, the budget and the report exist
// before the migration flow does; Steerd (steerd.go) is the implementation that drives the real
// steerd flow, and it says "not run: <reason>" until that flow is there. No number is ever made
// up: a cell that did not run has no value.
package matrix

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/steerd/steerd/bench/internal/stats"
	"github.com/steerd/steerd/tests/netns"
)

// ErrNotReady is wrapped by Migrator.Ready when a cell cannot run yet; the message says why.
var ErrNotReady = errors.New("not ready")

// Strategies are the quicext control-endpoint strategy names (quicext.ParseStrategy).
var Strategies = []string{"symmetric", "sync-symmetric", "explicit-proactive", "explicit-reactive", "pool"}

// Techniques are the migrate engine's techniques: cold (one dump while frozen), pre-copy
// (iterative pre-dumps, then a final dump), post-copy (lazy pages: restore first, pages fault in
// over the network), hybrid (one pre-dump, then post-copy).
var Techniques = []string{"cold", "pre-copy", "post-copy", "hybrid"}

// SizesMB are the container ballast sizes (MiB of dirtied memory in the service).
var SizesMB = []int{0, 10, 50, 100}

// Cell is one configuration of the matrix.
type Cell struct {
	Strategy  string
	Technique string
	BallastMB int
	XDP       bool
}

func (c Cell) String() string {
	x := "off"
	if c.XDP {
		x = "on"
	}
	return fmt.Sprintf("%s/%s/%dMB/xdp-%s", c.Strategy, c.Technique, c.BallastMB, x)
}

// Cells returns the whole matrix in priority order: when the budget cannot give every cell the
// minimum number of runs, the first cells are the ones that run. The order puts XDP on before
// off, the extreme sizes (0 and 100 MB) before the middle ones, then technique, then strategy.
func Cells() []Cell {
	var out []Cell
	for _, size := range []int{0, 100, 50, 10} {
		for _, xdp := range []bool{true, false} {
			for _, tech := range Techniques {
				for _, s := range Strategies {
					out = append(out, Cell{Strategy: s, Technique: tech, BallastMB: size, XDP: xdp})
				}
			}
		}
	}
	return out
}

// Env is what a Migrator gets for each run.
type Env struct {
	TB *netns.Testbed
	// Work is a scratch directory; Bin the directory with the built binaries (bin/).
	Work, Bin string
	// Interval is the paced client's request interval (same as the baselines).
	Interval time.Duration
}

// Sample is one measured migration.
type Sample struct {
	// ClientGap is the largest interval between successive responses at the client around the
	// move; Freeze the time the service process was frozen (from the migrate engine's report).
	ClientGap, Freeze time.Duration
	// StateKept: the client's counter never went backwards (QUIC: every response carried the
	// previous value + 1).
	StateKept bool
	// Lost counts requests the client never got an answer to (load.ConnReport.Lost).
	Lost int
	// Notes is free text for the CSV (technique details, image size).
	Notes string
}

// Migrator performs and measures one migration of a cell on the testbed.
type Migrator interface {
	// Name identifies the implementation in the report.
	Name() string
	// Ready returns nil when cell can run, or an error wrapping ErrNotReady that says why not.
	Ready(cell Cell) error
	// Run migrates the service once under cell and measures it.
	Run(ctx context.Context, env *Env, cell Cell, run int) (Sample, error)
}

// Plan is the run count per cell derived from the time budget.
type Plan struct {
	Budget, PerRun time.Duration
	RunsPerCell    int
	// Run are the cells that get RunsPerCell runs; Skipped the ones the budget leaves out.
	Run, Skipped []Cell
	// Note explains the computation for the report.
	Note string
}

// PlanRuns divides budget among cells given the time of one run: runs per cell is
// budget / (cells x perRun), capped at maxRuns. When that is below minRuns, every run cell gets
// minRuns and only as many cells (in the given priority order) as fit are run.
func PlanRuns(cells []Cell, budget, perRun time.Duration, minRuns, maxRuns int) Plan {
	p := Plan{Budget: budget, PerRun: perRun}
	if len(cells) == 0 || perRun <= 0 {
		p.Note = "no runnable cell"
		p.Skipped = cells
		return p
	}
	n := int(budget / (time.Duration(len(cells)) * perRun))
	if n >= minRuns {
		p.RunsPerCell = min(n, maxRuns)
		p.Run = cells
		p.Note = fmt.Sprintf("budget %s / (%d cells x %.1f s per run) = %d runs per cell (cap %d)",
			budget.Round(time.Second), len(cells), perRun.Seconds(), n, maxRuns)
		return p
	}
	fit := int(budget / (time.Duration(minRuns) * perRun))
	fit = max(0, min(fit, len(cells)))
	p.RunsPerCell = minRuns
	p.Run, p.Skipped = cells[:fit], cells[fit:]
	p.Note = fmt.Sprintf("budget %s / (%d cells x %.1f s per run) = %d runs per cell < %d: %d cells run %d times each in priority order, %d cells not run (over budget)",
		budget.Round(time.Second), len(cells), perRun.Seconds(), n, minRuns, fit, minRuns, len(cells)-fit)
	return p
}

// Row is one run (or one not-run cell) for the CSV.
type Row struct {
	Cell
	Migrator string
	Run      int
	Status   string // "ok", "error: ...", "not run: ..."
	Sample
}

// CellSummary summarises the rows of one cell.
type CellSummary struct {
	Cell
	Status                string
	Gap, Freeze, Ratio    stats.Summary // milliseconds; Ratio is gap/freeze per run
	StateKept, Runs, Errs int
	// Lost is the sum of Sample.Lost over the ok runs.
	Lost int
}

// Runner runs a matrix with one Migrator.
type Runner struct {
	M         Migrator
	Env       *Env
	Budget    time.Duration
	MinRuns   int
	MaxRuns   int
	Logf      func(format string, args ...any)
	PlanTaken Plan
}

// Run calibrates on the first ready cell, plans the run count, and runs. Cells whose migrator is
// not ready get one row "not run: <reason>".
func (r *Runner) Run(ctx context.Context, cells []Cell) []Row {
	var rows []Row
	var ready []Cell
	for _, c := range cells {
		if err := r.M.Ready(c); err != nil {
			rows = append(rows, Row{Cell: c, Migrator: r.M.Name(), Status: "not run: " + err.Error()})
			continue
		}
		ready = append(ready, c)
	}
	if len(ready) == 0 {
		r.PlanTaken = Plan{Budget: r.Budget, Note: fmt.Sprintf("no cell is runnable with migrator %s; 0 s of the %s budget used", r.M.Name(), r.Budget.Round(time.Second))}
		return rows
	}
	// Calibration: the first run of the first cell gives the time of one run.
	start := time.Now()
	s, err := r.M.Run(ctx, r.Env, ready[0], 0)
	perRun := time.Since(start)
	rows = append(rows, row(r.M.Name(), ready[0], 0, s, err))
	r.logRun(ready[0], 0, s, err)
	if err != nil {
		// A failed calibration run is no estimate of a migration: assume MinPerRun.
		perRun = max(perRun, MinPerRun)
	}
	r.PlanTaken = PlanRuns(ready, r.Budget-perRun, perRun, r.MinRuns, r.MaxRuns)
	if r.Logf != nil {
		r.Logf("matrix plan: %s", r.PlanTaken.Note)
	}
	deadline := start.Add(r.Budget)
	consecutive := 0
	if err != nil {
		consecutive = 1
	}
	var lastErr error = err
	for i, c := range r.PlanTaken.Run {
		first := 0
		if i == 0 {
			first = 1 // the calibration run counts
		}
		for run := first; run < r.PlanTaken.RunsPerCell; run++ {
			if time.Now().After(deadline) || ctx.Err() != nil {
				rows = append(rows, Row{Cell: c, Migrator: r.M.Name(), Run: run, Status: "not run: budget exhausted"})
				break
			}
			if consecutive >= MaxConsecutiveErrors {
				rows = append(rows, Row{Cell: c, Migrator: r.M.Name(), Run: run,
					Status: fmt.Sprintf("not run: the matrix stopped after %d consecutive errors; last: %v", consecutive, lastErr)})
				break
			}
			s, err := r.M.Run(ctx, r.Env, c, run)
			rows = append(rows, row(r.M.Name(), c, run, s, err))
			r.logRun(c, run, s, err)
			if err != nil {
				consecutive++
				lastErr = err
			} else {
				consecutive = 0
			}
		}
	}
	for _, c := range r.PlanTaken.Skipped {
		rows = append(rows, Row{Cell: c, Migrator: r.M.Name(), Status: "not run: over the time budget (" + r.PlanTaken.Note + ")"})
	}
	return rows
}

// MinPerRun is the time of one run the plan assumes when the calibration run failed.
const MinPerRun = 4 * time.Second

// MaxConsecutiveErrors stops the matrix: after that many failed runs in a row the remaining cells
// are "not run" with the last error, rather than spending the budget on failures.
const MaxConsecutiveErrors = 8

func (r *Runner) logRun(c Cell, run int, s Sample, err error) {
	if r.Logf == nil {
		return
	}
	if err != nil {
		r.Logf("matrix %s run %d: ERROR %v", c, run, err)
		return
	}
	r.Logf("matrix %s run %d: gap %s freeze %s state kept %v lost %d", c, run, s.ClientGap.Round(time.Millisecond), s.Freeze.Round(time.Millisecond), s.StateKept, s.Lost)
}

func row(m string, c Cell, run int, s Sample, err error) Row {
	st := "ok"
	if err != nil {
		st = "error: " + err.Error()
	}
	return Row{Cell: c, Migrator: m, Run: run, Status: st, Sample: s}
}

// Summarize groups rows by cell (in first-seen order) into per-cell statistics. A cell with no
// successful run keeps the status of its first row.
func Summarize(rows []Row) []CellSummary {
	idx := map[Cell]int{}
	var out []CellSummary
	var gaps, freezes, ratios [][]float64
	for _, rw := range rows {
		i, ok := idx[rw.Cell]
		if !ok {
			i = len(out)
			idx[rw.Cell] = i
			out = append(out, CellSummary{Cell: rw.Cell, Status: rw.Status})
			gaps, freezes, ratios = append(gaps, nil), append(freezes, nil), append(ratios, nil)
		}
		switch {
		case rw.Status == "ok":
			out[i].Runs++
			if rw.StateKept {
				out[i].StateKept++
			}
			out[i].Lost += rw.Lost
			gaps[i] = append(gaps[i], stats.Ms(rw.ClientGap))
			freezes[i] = append(freezes[i], stats.Ms(rw.Freeze))
			if rw.Freeze > 0 {
				ratios[i] = append(ratios[i], float64(rw.ClientGap)/float64(rw.Freeze))
			}
		case len(rw.Status) > 5 && rw.Status[:5] == "error":
			out[i].Errs++
		}
	}
	for i := range out {
		if out[i].Runs > 0 {
			out[i].Status = "ok"
		}
		out[i].Gap, out[i].Freeze, out[i].Ratio = stats.Summarize(gaps[i]), stats.Summarize(freezes[i]), stats.Summarize(ratios[i])
	}
	return out
}
