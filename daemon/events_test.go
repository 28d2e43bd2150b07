package daemon

import (
	"testing"
	"time"

	"github.com/steerd/steerd/api"
)

// TestTimelineMergeDedup: a peer's events merged twice (prepare-dest answer, then the abort's
// whole timeline) appear once; distinct events with the same phase stay.
func TestTimelineMergeDedup(t *testing.T) {
	tl := newTimeline("m1", "n0", nil)
	t0 := time.Now()
	first := []api.Event{
		{Node: "n1", Phase: api.PhaseDest, Kind: api.Start, Time: t0, Detail: "from n0"},
		{Node: "n1", Phase: api.PhaseDest, Kind: api.End, Time: t0.Add(time.Millisecond)},
	}
	tl.merge(first)
	tl.merge(append(append([]api.Event(nil), first...),
		api.Event{Node: "n1", Phase: api.PhaseRollback, Kind: api.Start, Time: t0.Add(time.Second), Detail: "abort from n0"},
		api.Event{Node: "n1", Phase: api.PhaseDest, Kind: api.Start, Time: t0.Add(2 * time.Second), Detail: "from n0"}))
	got := tl.snapshot()
	if len(got) != 4 {
		t.Fatalf("merged %d events, want 4: %+v", len(got), got)
	}
	for _, e := range got {
		if e.Migration != "m1" {
			t.Fatalf("event without the migration ID: %+v", e)
		}
	}
}
