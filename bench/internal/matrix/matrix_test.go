package matrix

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/daemon"
)

func TestCellsComplete(t *testing.T) {
	cells := Cells()
	if want := len(Strategies) * len(Techniques) * len(SizesMB) * 2; len(cells) != want {
		t.Fatalf("%d cells, want %d", len(cells), want)
	}
	seen := map[Cell]bool{}
	for _, c := range cells {
		if seen[c] {
			t.Fatalf("duplicate cell %s", c)
		}
		seen[c] = true
	}
	if !cells[0].XDP || cells[0].BallastMB != 0 {
		t.Errorf("first cell %s: want XDP on, 0 MB first", cells[0])
	}
}

func groupsOf(cells []Cell) []Group {
	var out []Group
	seen := map[Group]bool{}
	for _, c := range cells {
		if g := c.Group(); !seen[g] {
			seen[g] = true
			out = append(out, g)
		}
	}
	return out
}

func TestGroupsFollowPriority(t *testing.T) {
	gs := groupsOf(Cells())
	if want := len(Techniques) * len(SizesMB) * 2; len(gs) != want {
		t.Fatalf("%d groups, want %d", len(gs), want)
	}
	if g := gs[0]; g.BallastMB != 0 || !g.XDP || g.Technique != Techniques[0] {
		t.Errorf("first group %s, want %s/0MB/xdp-on", g, Techniques[0])
	}
}

func TestPlanRuns(t *testing.T) {
	groups := groupsOf(Cells())[:10]
	p := PlanRuns(groups, 100*time.Second, time.Second, 3, 5)
	if p.RunsPerCell != 5 || len(p.Run) != 10 || len(p.Skipped) != 0 {
		t.Errorf("ample budget: %+v", p)
	}
	p = PlanRuns(groups, 40*time.Second, time.Second, 3, 8)
	if p.RunsPerCell != 4 || len(p.Run) != 10 {
		t.Errorf("40 s for 10 groups of 1 s: %d runs, %d groups", p.RunsPerCell, len(p.Run))
	}
	p = PlanRuns(groups, 20*time.Second, time.Second, 10, 20)
	if p.RunsPerCell != 10 || len(p.Run) != 2 || len(p.Skipped) != 8 || !strings.Contains(p.Note, "not run") {
		t.Errorf("short budget: %d runs, %d run, %d skipped, %q", p.RunsPerCell, len(p.Run), len(p.Skipped), p.Note)
	}
}

// fake measures every strategy of a migration: gap 10 ms x (run+1), the second strategy's
// connection fails on run 1, the whole migration fails on run 2.
type fake struct {
	ready func(Cell) error
	runs  int
	got   [][]string
}

func (f *fake) Name() string       { return "fake" }
func (f *fake) Ready(c Cell) error { return f.ready(c) }
func (f *fake) Run(_ context.Context, _ *Env, g Group, strategies []string, run int) ([]Result, error) {
	f.runs++
	f.got = append(f.got, strategies)
	if run == 2 {
		return nil, errors.New("boom")
	}
	var out []Result
	for i, s := range strategies {
		r := Result{Strategy: s, Sample: Sample{ClientGap: time.Duration(10*(run+1)) * time.Millisecond, Freeze: 10 * time.Millisecond, StateKept: true}}
		if i == 1 && run == 1 {
			r = Result{Strategy: s, Err: errors.New("connection failed")}
		}
		out = append(out, r)
	}
	return out, nil
}

func TestRunnerNotReadyAndSummary(t *testing.T) {
	cells := Cells()[:4] // one group, four strategies
	f := &fake{ready: func(c Cell) error {
		if c.Strategy == Strategies[0] || c.Strategy == Strategies[1] {
			return nil
		}
		return fmt.Errorf("%w: no engine", ErrNotReady)
	}}
	r := &Runner{M: f, Budget: time.Minute, MinRuns: 3, MaxRuns: 4}
	rows := r.Run(context.Background(), cells)
	sums := Summarize(rows)
	if len(sums) != 4 {
		t.Fatalf("%d summaries, want 4", len(sums))
	}
	if f.runs != 4 {
		t.Errorf("ran %d migrations, want 4 (calibration + 3, capped at MaxRuns)", f.runs)
	}
	for _, got := range f.got {
		if len(got) != 2 || got[0] != Strategies[0] || got[1] != Strategies[1] {
			t.Fatalf("a migration measured %v, want the two ready strategies %v", got, Strategies[:2])
		}
	}
	for _, s := range sums {
		switch s.Strategy {
		case Strategies[0]:
			// runs 0, 1, 3 ok (gaps 10, 20, 40 ms), run 2 the migration failed.
			if s.Status != "ok" || s.Runs != 3 || s.Errs != 1 || s.Gap.Median != 20 || s.Ratio.Median != 2 {
				t.Errorf("summary of %s: %+v", s.Cell, s)
			}
		case Strategies[1]:
			// runs 0 and 3 ok (10, 40 ms), run 1 its connection failed, run 2 the migration.
			if s.Status != "ok" || s.Runs != 2 || s.Errs != 2 || s.Gap.Median != 25 {
				t.Errorf("summary of %s: %+v", s.Cell, s)
			}
		default:
			if !strings.HasPrefix(s.Status, "not run: not ready: no engine") || s.Runs != 0 {
				t.Errorf("not-ready cell %s: %+v", s.Cell, s)
			}
		}
	}
}

// TestSteerdReady checks the reasons a steerd cell does not run: missing binaries, an unknown
// technique.
func TestSteerdReady(t *testing.T) {
	dir := t.TempDir()
	s := &Steerd{Bin: dir}
	c := Cell{Strategy: "symmetric", Technique: "cold", XDP: true}
	if err := s.Ready(c); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "steerd") {
		t.Errorf("Ready without binaries: %v, want ErrNotReady naming steerd", err)
	}
	for _, b := range []string{"steerd", "steerctl", "kvservice"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c.XDP, c.Technique = true, "lukewarm"
	if err := s.Ready(c); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "lukewarm") {
		t.Errorf("Ready with an unknown technique: %v", err)
	}
}

// TestXDPOffIsNFT: XDP-off groups run steerd's nftables datapath, XDP-on groups its XDP one,
// and an XDP-off cell is exactly as ready as its XDP-on twin.
func TestXDPOffIsNFT(t *testing.T) {
	if got := datapathOf(Group{XDP: false}); got != daemon.DatapathNFT {
		t.Errorf("XDP off: datapath %q, want %q", got, daemon.DatapathNFT)
	}
	if got := datapathOf(Group{XDP: true}); got != daemon.DatapathXDP {
		t.Errorf("XDP on: datapath %q, want %q", got, daemon.DatapathXDP)
	}
	s := &Steerd{Bin: t.TempDir()}
	on := Cell{Strategy: "symmetric", Technique: "cold", XDP: true}
	off := on
	off.XDP = false
	if a, b := s.Ready(on), s.Ready(off); (a == nil) != (b == nil) {
		t.Errorf("Ready(XDP on) = %v but Ready(XDP off) = %v", a, b)
	}
}
