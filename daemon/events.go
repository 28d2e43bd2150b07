package daemon

import (
	"sync"
	"time"

	"github.com/steerd/steerd/api"
)

// timeline records the events of one migration on one node. Safe for concurrent use.
type timeline struct {
	id, node string
	onEnd    func(p api.Phase, d time.Duration)

	mu     sync.Mutex
	events []api.Event
	starts map[api.Phase]time.Time
	merged map[eventKey]bool // events merged from other nodes (a peer may send one twice)
}

// eventKey identifies an event for merge's deduplication.
type eventKey struct {
	node, detail string
	phase        api.Phase
	kind         api.EventKind
	unixNano     int64
	bytes        int64
}

func newTimeline(id, node string, onEnd func(api.Phase, time.Duration)) *timeline {
	return &timeline{id: id, node: node, onEnd: onEnd, starts: map[api.Phase]time.Time{}}
}

func (t *timeline) add(e api.Event) {
	if e.Migration == "" {
		e.Migration = t.id
	}
	if e.Node == "" {
		e.Node = t.node
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	t.mu.Lock()
	t.events = append(t.events, e)
	t.mu.Unlock()
}

func (t *timeline) start(p api.Phase, detail string) {
	now := time.Now()
	t.mu.Lock()
	t.starts[p] = now
	t.mu.Unlock()
	t.add(api.Event{Phase: p, Kind: api.Start, Time: now, Detail: detail})
}

// end records the end of p (with err: a Fail event) and returns the phase duration.
func (t *timeline) end(p api.Phase, err error) time.Duration {
	now := time.Now()
	t.mu.Lock()
	st, ok := t.starts[p]
	t.mu.Unlock()
	var d time.Duration
	if ok {
		d = now.Sub(st)
	}
	e := api.Event{Phase: p, Kind: api.End, Time: now, Duration: d}
	if err != nil {
		e.Kind, e.Detail = api.Fail, err.Error()
	} else if t.onEnd != nil {
		t.onEnd(p, d)
	}
	t.add(e)
	return d
}

// merge appends events recorded elsewhere (the destination's part of the timeline). An event
// merged before is skipped: the destination's abort answers with its whole timeline, which
// repeats the events its prepare-dest answer carried.
func (t *timeline) merge(es []api.Event) {
	for _, e := range es {
		k := eventKey{node: e.Node, detail: e.Detail, phase: e.Phase, kind: e.Kind, unixNano: e.Time.UnixNano(), bytes: e.Bytes}
		t.mu.Lock()
		if t.merged == nil {
			t.merged = map[eventKey]bool{}
		}
		dup := t.merged[k]
		t.merged[k] = true
		t.mu.Unlock()
		if !dup {
			t.add(e)
		}
	}
}

func (t *timeline) snapshot() []api.Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]api.Event(nil), t.events...)
}

// since returns the events from index i on, and the next index.
func (t *timeline) since(i int) ([]api.Event, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i > len(t.events) {
		i = len(t.events)
	}
	return append([]api.Event(nil), t.events[i:]...), len(t.events)
}
