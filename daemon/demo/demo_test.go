package demo

import (
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/examples/loadclient/load"
)

// TestViewClients: the load client's events are split by each migration's window: switches and
// gaps of the first migration do not show in the second one's line, and the reverse.
func TestViewClients(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	es := []load.Event{
		{Ev: "connected", Time: at(0), Conn: 0},
		{Ev: "negotiated", Time: at(1), Conn: 0, Strategy: "explicit-proactive|pool|symmetric"},
		// migration 1: [1000, 4000]
		{Ev: "switched", Time: at(2000), Conn: 0, Addr: "198.18.21.2:4433", Strategy: "symmetric"},
		{Ev: "switched", Time: at(2001), Conn: 1, Addr: "198.18.21.2:4433", Strategy: "symmetric"},
		{Ev: "switched", Time: at(2002), Conn: 1, Addr: "198.18.21.2:4433", Strategy: "symmetric"},
		{Ev: "gap", Time: at(2100), Conn: 1, GapMS: 786.6},
		{Ev: "gap", Time: at(2101), Conn: 0, GapMS: 700},
		// migration 2: [5000, 8000]
		{Ev: "switched", Time: at(6000), Conn: 0, Addr: "198.18.20.2:4433"},
		{Ev: "gap", Time: at(6100), Conn: 0, GapMS: 400.25},
		{Ev: "wrong", Time: at(6200), Conn: 1},
		{Ev: "error", Time: at(6300), Conn: 1, Err: "boom"},
	}
	names := map[string]string{"198.18.20.2:4433": "n0", "198.18.21.2:4433": "n1"}

	v1 := viewClients(es, at(1000), at(4000), 2)
	l1 := v1.line(names, &api.Migration{Strategy: "symmetric", Downtime: 803743 * time.Microsecond})
	for _, w := range []string{"clients: 2/2 switched to 198.18.21.2:4433 (n1),", "strategy symmetric,", "max gap 786.6 ms on conn 1", "(downtime 803.7 ms)", "wrong answers 0, failed connections 0"} {
		if !strings.Contains(l1, w) {
			t.Errorf("migration 1 line lacks %q:\n%s", w, l1)
		}
	}
	if strings.Contains(l1, "requested") {
		t.Errorf("migration 1: the clients reported the requested strategy:\n%s", l1)
	}

	v2 := viewClients(es, at(5000), at(8000), 2)
	l2 := v2.line(names, &api.Migration{Strategy: "explicit-reactive", Downtime: 600 * time.Millisecond})
	for _, w := range []string{"clients: 1/2 switched to 198.18.20.2:4433 (n0),", "strategy explicit-reactive,", "max gap 400.2 ms on conn 0", "wrong answers 1, failed connections 1"} {
		if !strings.Contains(l2, w) {
			t.Errorf("migration 2 line lacks %q:\n%s", w, l2)
		}
	}
	if strings.Contains(l2, "n1") || strings.Contains(l2, "786") {
		t.Errorf("migration 2 line shows migration 1's events:\n%s", l2)
	}

	v3 := viewClients(es, at(9000), at(9500), 2)
	l3 := v3.line(names, &api.Migration{Strategy: "pool"})
	if !strings.Contains(l3, "0/2 switched to no new address") || !strings.Contains(l3, "no gap above") {
		t.Errorf("empty window: %s", l3)
	}
}

// TestViewClientsStrategyMismatch: a strategy the clients reported that differs from the
// requested one is named.
func TestViewClientsStrategyMismatch(t *testing.T) {
	t0 := time.Now()
	es := []load.Event{{Ev: "switched", Time: t0, Conn: 0, Addr: "198.18.21.2:4433", Strategy: "pool"}}
	l := viewClients(es, t0.Add(-time.Second), t0.Add(time.Second), 1).line(nil, &api.Migration{Strategy: "symmetric"})
	if !strings.Contains(l, "strategy symmetric requested, clients reported pool") {
		t.Fatal(l)
	}
}

func TestNoRoutesAndDetail(t *testing.T) {
	if s := noRoutes(true, false); !strings.Contains(s, "nftables datapath never forwards") || strings.Contains(s, "forwarding entry") {
		t.Errorf("nftables: %q", s)
	}
	if s := noRoutes(false, false); !strings.Contains(s, "forwarding entry was removed after the drain") {
		t.Errorf("xdp: %q", s)
	}
	if got := readableDetail("3317903 image bytes"); got != "image "+api.Bytes(3317903) || got != "image 3.2MiB" {
		t.Errorf("readableDetail = %q", got)
	}
	if got := readableDetail("from n0"); got != "from n0" {
		t.Errorf("readableDetail changed %q", got)
	}
}
