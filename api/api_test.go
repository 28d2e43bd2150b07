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
		!strings.HasPrefix(lines[3], "+1.500s") || !strings.Contains(lines[3], "300ms") {
		t.Fatalf("timeline:\n%s", b.String())
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
	m := &Migration{ID: "x", Service: "kv", From: "n0", To: "n1", Result: Succeeded, Ready: 3}
	var b strings.Builder
	if err := WriteMigrationSummary(&b, m); err != nil || strings.Contains(b.String(), "warning") {
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
