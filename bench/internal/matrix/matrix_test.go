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

func TestPlanRuns(t *testing.T) {
	cells := Cells()[:10]
	p := PlanRuns(cells, 100*time.Second, time.Second, 3, 5)
	if p.RunsPerCell != 5 || len(p.Run) != 10 || len(p.Skipped) != 0 {
		t.Errorf("ample budget: %+v", p)
	}
	p = PlanRuns(cells, 40*time.Second, time.Second, 3, 8)
	if p.RunsPerCell != 4 || len(p.Run) != 10 {
		t.Errorf("40 s for 10 cells of 1 s: %d runs, %d cells", p.RunsPerCell, len(p.Run))
	}
	p = PlanRuns(cells, 20*time.Second, time.Second, 10, 20)
	if p.RunsPerCell != 10 || len(p.Run) != 2 || len(p.Skipped) != 8 || !strings.Contains(p.Note, "not run") {
		t.Errorf("short budget: %d runs, %d run, %d skipped, %q", p.RunsPerCell, len(p.Run), len(p.Skipped), p.Note)
	}
}

type fake struct {
	ready func(Cell) error
	runs  int
}

func (f *fake) Name() string       { return "fake" }
func (f *fake) Ready(c Cell) error { return f.ready(c) }
func (f *fake) Run(_ context.Context, _ *Env, c Cell, run int) (Sample, error) {
	f.runs++
	if run == 2 {
		return Sample{}, errors.New("boom")
	}
	return Sample{ClientGap: time.Duration(10*(run+1)) * time.Millisecond, Freeze: 10 * time.Millisecond, StateKept: true}, nil
}

func TestRunnerNotReadyAndSummary(t *testing.T) {
	cells := Cells()[:4]
	f := &fake{ready: func(c Cell) error {
		if c.Strategy == Strategies[0] {
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
		t.Errorf("ran %d times, want 4 (calibration + 3, capped at MaxRuns)", f.runs)
	}
	for _, s := range sums {
		if s.Strategy == Strategies[0] {
			if s.Status != "ok" || s.Runs != 3 || s.Errs != 1 || s.Gap.Median != 20 || s.Ratio.Median != 2 {
				t.Errorf("summary of the ready cell %s: %+v", s.Cell, s)
			}
			continue
		}
		if !strings.HasPrefix(s.Status, "not run: not ready: no engine") || s.Runs != 0 {
			t.Errorf("not-ready cell %s: %+v", s.Cell, s)
		}
	}
}

// TestSteerdReady checks the reasons a steerd cell does not run: missing binaries, XDP off.
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
	c.XDP = false
	if err := s.Ready(c); !errors.Is(err, ErrNoXDPOff) {
		t.Errorf("Ready with XDP off: %v, want ErrNoXDPOff", err)
	}
	c.XDP, c.Technique = true, "lukewarm"
	if err := s.Ready(c); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "lukewarm") {
		t.Errorf("Ready with an unknown technique: %v", err)
	}
}
