package api

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, s := range Strategies {
		if got, err := ParseStrategy(s); err != nil || got != s {
			t.Errorf("ParseStrategy(%q) = %q, %v", s, got, err)
		}
	}
	if got, _ := ParseStrategy("explicit"); got != "explicit-proactive" {
		t.Errorf("explicit -> %q", got)
	}
	if _, err := ParseStrategy("warp"); err == nil || !strings.Contains(err.Error(), "symmetric, sync-symmetric") {
		t.Errorf("bad strategy error %v", err)
	}
	for _, tc := range Techniques {
		if got, err := ParseTechnique(string(tc)); err != nil || got != tc {
			t.Errorf("ParseTechnique(%q) = %q, %v", tc, got, err)
		}
	}
	if _, err := ParseTechnique("lukewarm"); err == nil {
		t.Error("bad technique accepted")
	}
}

func TestErrorText(t *testing.T) {
	e := &Error{Node: "n1", Phase: PhaseRestore, Cause: "restore kv: boom"}
	if e.Error() != "node n1: phase restore: restore kv: boom" {
		t.Fatal(e.Error())
	}
}

func TestWriteTimeline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := WriteTimeline(&b, []Event{
		{Node: "n1", Phase: PhaseRestore, Kind: End, Time: t0.Add(1500 * time.Millisecond), Duration: 300 * time.Millisecond},
		{Node: "n0", Phase: PhaseDest, Kind: Start, Time: t0},
		{Node: "n0", Phase: PhaseTransfer, Kind: Progress, Time: t0.Add(time.Second), Detail: "pages-1.img", Bytes: 4 << 20, Total: 8 << 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[1], "+0.000s") || !strings.Contains(lines[2], "4.0MiB/8.0MiB") ||
		!strings.HasPrefix(lines[3], "+1.500s") || !strings.Contains(lines[3], "300.0 ms") || !strings.Contains(lines[3], "began +1.200s") {
		t.Fatalf("timeline:\n%s", b.String())
	}
}

// TestWriteTimelineEngine: an End event without a Start of its phase on its node says when the
// phase began (its time minus its duration) and spells out the detail "engine"; an End whose
// Start is listed does not; durations are one-decimal milliseconds.
func TestWriteTimelineEngine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := WriteTimeline(&b, []Event{
		{Node: "n0", Phase: PhaseDest, Kind: Start, Time: t0},
		{Node: "n0", Phase: PhaseDest, Kind: End, Time: t0.Add(50 * time.Millisecond), Duration: 50 * time.Millisecond},
		{Node: "n0", Phase: "pause", Kind: End, Time: t0.Add(240 * time.Millisecond), Duration: 168930 * time.Microsecond, Detail: "engine"},
		{Node: "n0", Phase: PhaseDrain, Kind: End, Time: t0.Add(3 * time.Second), Duration: 1001140 * time.Microsecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("timeline:\n%s", b.String())
	}
	if strings.Contains(lines[2], "began") || !strings.Contains(lines[2], "50.0 ms") {
		t.Errorf("end with a start: %q", lines[2])
	}
	for _, w := range []string{"168.9 ms", "container engine (runc/CRIU) step", "began +0.071s"} {
		if !strings.Contains(lines[3], w) {
			t.Errorf("engine end %q lacks %q", lines[3], w)
		}
	}
	if strings.Contains(lines[3], " engine,") || !strings.Contains(lines[4], "1001.1 ms") || !strings.Contains(lines[4], "began +1.999s") {
		t.Errorf("timeline:\n%s", b.String())
	}
}

func TestMS(t *testing.T) {
	for d, want := range map[time.Duration]string{
		803743 * time.Microsecond:  "803.7 ms",
		80 * time.Microsecond:      "0.1 ms",
		1438625 * time.Microsecond: "1438.6 ms",
		0:                          "0.0 ms",
	} {
		if got := MS(d); got != want {
			t.Errorf("MS(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestWriteTimelineMigrations: events of two migrations get a MIGRATION column, each migration's
// rows together with times relative to its own start; a multi-line detail stays on one row.
func TestWriteTimelineMigrations(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := WriteTimeline(&b, []Event{
		{Migration: "bbb", Node: "n1", Phase: PhaseDest, Kind: Start, Time: t0.Add(10 * time.Second)},
		{Migration: "aaa", Node: "n0", Phase: PhaseDest, Kind: Start, Time: t0},
		{Migration: "bbb", Node: "n1", Phase: PhaseRestore, Kind: Fail, Time: t0.Add(12 * time.Second), Detail: "restore kv:\nError (criu/cr-restore.c:1):\n\tboom"},
		{Migration: "aaa", Node: "n1", Phase: PhaseRestore, Kind: End, Time: t0.Add(time.Second), Duration: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"MIGRATION", "T", "NODE"},
		{"aaa", "+0.000s", "prepare-dest"},
		{"aaa", "+1.000s", "restore"},
		{"bbb", "+0.000s", "prepare-dest"},
		{"bbb", "+2.000s", "restore", "restore kv: | Error (criu/cr-restore.c:1): | boom"},
	}
	if len(lines) != len(want) {
		t.Fatalf("timeline has %d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, ws := range want {
		for _, w := range ws {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
}

func TestMigrationWarning(t *testing.T) {
	m := &Migration{ID: "x", Service: "kv", From: "n0", To: "n1", Result: Succeeded, Ready: 3, Downtime: 803743 * time.Microsecond}
	var b strings.Builder
	if err := WriteMigrationSummary(&b, m); err != nil || strings.Contains(b.String(), "warning") || !strings.Contains(b.String(), "downtime 803.7 ms,") {
		t.Fatalf("all ready: %q %v", b.String(), err)
	}
	m.NotReady, m.Unsupported = 1, 2
	b.Reset()
	WriteMigrationSummary(&b, m)
	out := b.String()
	for _, w := range []string{"not ready 1 / unsupported 2", "warning: 1 connection(s) not ready", "2 connection(s) without server-migration support", "cut off when the drain ends"} {
		if !strings.Contains(out, w) {
			t.Errorf("summary lacks %q:\n%s", w, out)
		}
	}
	m.Result, m.Error = RolledBack, &Error{Node: "n1", Phase: PhaseRestore, Cause: "boom"}
	b.Reset()
	WriteMigrationSummary(&b, m)
	if strings.Contains(b.String(), "warning") || strings.Contains(b.String(), "boom") {
		t.Fatalf("rolled back summary: %q", b.String())
	}
	b.Reset()
	WriteMigration(&b, m)
	if strings.Count(b.String(), "boom") != 1 {
		t.Fatalf("WriteMigration: %q", b.String())
	}
}
