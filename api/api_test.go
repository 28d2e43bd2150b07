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
