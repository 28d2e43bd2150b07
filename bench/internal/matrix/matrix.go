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

// String is "<strategy>/<technique>/<size>MB/xdp-<on|off>", the name of the cell in logs and CSVs.
func (c Cell) String() string { return c.Strategy + "/" + c.Group().String() }

// Cells returns the whole matrix in priority order: when the budget cannot give every group (see
// Group) the minimum number of runs, the groups of the first cells are the ones that run. The
// order puts the extreme sizes (0 and 100 MB) before the middle ones, XDP on before off, then
// technique, then strategy.
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

// Group is what one migration measures: the technique, the container size and the datapath. A
// migration carries one client connection per strategy of the group, each offering only its own
// strategy (quicext negotiates the strategy per connection, docs/quicext-wire.md), so one freeze
// gives one sample of every strategy's cell.
type Group struct {
	Technique string
	BallastMB int
	XDP       bool
}

// String is "<technique>/<size>MB/xdp-<on|off>".
func (g Group) String() string {
	x := "off"
	if g.XDP {
		x = "on"
	}
	return fmt.Sprintf("%s/%dMB/xdp-%s", g.Technique, g.BallastMB, x)
}

// Group returns the group the cell belongs to.
func (c Cell) Group() Group { return Group{Technique: c.Technique, BallastMB: c.BallastMB, XDP: c.XDP} }

// Env is what a Migrator gets for each run.
type Env struct {
	TB *netns.Testbed
	// Work is a scratch directory; Bin the directory with the built binaries (bin/).
	Work, Bin string
	// Interval is the paced client's request interval (same as the baselines).
	Interval time.Duration
}

// Sample is one strategy's measurement of one migration.
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

// Result is one strategy's outcome of one migration: a Sample, or the error that made its
// connection's measurement void (the connection failed, no report).
type Result struct {
	Strategy string
	Sample
	Err error
}

// Migrator performs and measures migrations on the testbed.
type Migrator interface {
	// Name identifies the implementation in the report.
	Name() string
	// Ready returns nil when cell can run, or an error wrapping ErrNotReady that says why not.
	Ready(cell Cell) error
	// Run migrates the service once under group with one client connection per strategy and
	// returns a Result per strategy, in the order given. An error means the migration itself
	// failed (every strategy's run counts as an error).
	Run(ctx context.Context, env *Env, g Group, strategies []string, run int) ([]Result, error)
}

// Plan is the run count per group derived from the time budget.
type Plan struct {
	Budget, PerRun time.Duration
	RunsPerCell    int
	// Run are the groups that get RunsPerCell runs; Skipped the ones the budget leaves out.
	Run, Skipped []Group
	// Note explains the computation for the report.
	Note string
}

// PlanRuns divides budget among groups given the time of one run (one migration): runs per
// group is budget / (groups x perRun), capped at maxRuns. When that is below minRuns, every run
// group gets minRuns and only as many groups (in the given priority order) as fit are run.
func PlanRuns(groups []Group, budget, perRun time.Duration, minRuns, maxRuns int) Plan {
	p := Plan{Budget: budget, PerRun: perRun}
	if len(groups) == 0 || perRun <= 0 {
		p.Note = "no runnable cell"
		p.Skipped = groups
		return p
	}
	n := int(budget / (time.Duration(len(groups)) * perRun))
	if n >= minRuns {
		p.RunsPerCell = min(n, maxRuns)
		p.Run = groups
		p.Note = fmt.Sprintf("budget %s / (%d migration groups x %.1f s per migration) = %d runs per cell (cap %d)",
			budget.Round(time.Second), len(groups), perRun.Seconds(), n, maxRuns)
		return p
	}
	fit := int(budget / (time.Duration(minRuns) * perRun))
	fit = max(0, min(fit, len(groups)))
	p.RunsPerCell = minRuns
	p.Run, p.Skipped = groups[:fit], groups[fit:]
	p.Note = fmt.Sprintf("budget %s / (%d migration groups x %.1f s per migration) = %d runs per cell < %d: %d groups run %d times each in priority order, %d groups not run (over budget)",
		budget.Round(time.Second), len(groups), perRun.Seconds(), n, minRuns, fit, minRuns, len(groups)-fit)
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

// Run groups the ready cells (one migration measures every ready strategy of a group),
// calibrates on the first group, plans the run count, and runs. Cells whose migrator is not
// ready get one row "not run: <reason>".
func (r *Runner) Run(ctx context.Context, cells []Cell) []Row {
	var rows []Row
	var groups []Group
	strategies := map[Group][]string{}
	for _, c := range cells {
		if err := r.M.Ready(c); err != nil {
			rows = append(rows, Row{Cell: c, Migrator: r.M.Name(), Status: "not run: " + err.Error()})
			continue
		}
		g := c.Group()
		if _, ok := strategies[g]; !ok {
			groups = append(groups, g)
		}
		strategies[g] = append(strategies[g], c.Strategy)
	}
	if len(groups) == 0 {
		r.PlanTaken = Plan{Budget: r.Budget, Note: fmt.Sprintf("no cell is runnable with migrator %s; 0 s of the %s budget used", r.M.Name(), r.Budget.Round(time.Second))}
		return rows
	}
	// Calibration: the first run of the first group gives the time of one migration.
	start := time.Now()
	g0 := groups[0]
	res, err := r.M.Run(ctx, r.Env, g0, strategies[g0], 0)
	perRun := time.Since(start)
	rows = append(rows, r.rows(g0, strategies[g0], 0, res, err)...)
	if err != nil {
		// A failed calibration run is no estimate of a migration: assume MinPerRun.
		perRun = max(perRun, MinPerRun)
	}
	r.PlanTaken = PlanRuns(groups, r.Budget-perRun, perRun, r.MinRuns, r.MaxRuns)
	if r.Logf != nil {
		r.Logf("matrix plan: %s", r.PlanTaken.Note)
	}
	deadline := start.Add(r.Budget)
	consecutive := 0
	if err != nil {
		consecutive = 1
	}
	lastErr := err
	for i, g := range r.PlanTaken.Run {
		first := 0
		if i == 0 {
			first = 1 // the calibration run counts
		}
		for run := first; run < r.PlanTaken.RunsPerCell; run++ {
			var why string
			switch {
			case time.Now().After(deadline) || ctx.Err() != nil:
				why = "not run: budget exhausted"
			case consecutive >= MaxConsecutiveErrors:
				why = fmt.Sprintf("not run: the matrix stopped after %d consecutive errors; last: %v", consecutive, lastErr)
			}
			if why != "" {
				for _, s := range strategies[g] {
					rows = append(rows, Row{Cell: cell(g, s), Migrator: r.M.Name(), Run: run, Status: why})
				}
				break
			}
			res, err := r.M.Run(ctx, r.Env, g, strategies[g], run)
			rows = append(rows, r.rows(g, strategies[g], run, res, err)...)
			if err != nil {
				consecutive++
				lastErr = err
			} else {
				consecutive = 0
			}
		}
	}
	for _, g := range r.PlanTaken.Skipped {
		for _, s := range strategies[g] {
			rows = append(rows, Row{Cell: cell(g, s), Migrator: r.M.Name(), Status: "not run: over the time budget (" + r.PlanTaken.Note + ")"})
		}
	}
	return rows
}

func cell(g Group, strategy string) Cell {
	return Cell{Strategy: strategy, Technique: g.Technique, BallastMB: g.BallastMB, XDP: g.XDP}
}

// rows turns one migration of g into a row per strategy (and logs them). A migration error, or
// a missing Result, makes that strategy's row an error.
func (r *Runner) rows(g Group, strategies []string, run int, res []Result, err error) []Row {
	by := map[string]Result{}
	for _, x := range res {
		by[x.Strategy] = x
	}
	out := make([]Row, 0, len(strategies))
	for _, s := range strategies {
		c := cell(g, s)
		x, ok := by[s]
		e := err
		if e == nil && !ok {
			e = errors.New("migrator returned no result for the strategy")
		}
		if e == nil {
			e = x.Err
		}
		out = append(out, row(r.M.Name(), c, run, x.Sample, e))
		r.logRun(c, run, x.Sample, e)
	}
	return out
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
