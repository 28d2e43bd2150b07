package kv

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func TestStoreHandle(t *testing.T) {
	s := NewStore(41)
	for _, c := range []struct{ in, want string }{
		{"INC", "42"}, {"INC", "43"}, {"GET a", ""}, {"SET a b c", "OK"}, {"GET a", "b c"},
	} {
		got, err := s.Handle(c.in)
		if err != nil || got != c.want {
			t.Errorf("Handle(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "DEL a", "SET a"} {
		if _, err := s.Handle(bad); !errors.Is(err, ErrProtocol) {
			t.Errorf("Handle(%q) error = %v, want ErrProtocol", bad, err)
		}
	}
}

// TestPaceReconnect serves the counter on loopback, cuts the client's connection once, and checks
// that the client reconnects, that the trace is monotonic and that MaxGap sees the outage.
func TestPaceReconnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	store := NewStore(0)
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns <- c
			go store.Serve(c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	const outage = 150 * time.Millisecond
	var cutNs atomic.Int64
	cutAt := func() time.Time { return time.Unix(0, cutNs.Load()) }
	go func() {
		c := <-conns
		time.Sleep(100 * time.Millisecond)
		cutNs.Store(time.Now().UnixNano())
		c.Close()
	}()
	dials := 0
	tr, err := Pace(ctx, PaceConfig{
		Interval: 5 * time.Millisecond, MaxRequests: 80,
		Dial: func(ctx context.Context) (net.Conn, error) {
			dials++
			if dials > 1 && time.Since(cutAt()) < outage {
				return nil, errors.New("refused (simulated outage)")
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", l.Addr().String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Monotonic() {
		t.Error("counter went backwards")
	}
	if tr.Failures == 0 || tr.Dials < 2 {
		t.Errorf("no reconnect seen: dials %d failures %d", tr.Dials, tr.Failures)
	}
	gap, _ := tr.MaxGap(cutAt().Add(-time.Millisecond))
	if gap < outage || gap > outage+200*time.Millisecond {
		t.Errorf("MaxGap = %s, want about %s", gap, outage)
	}
	if len(tr.Samples) == 0 || tr.Samples[len(tr.Samples)-1].Counter != store.Counter() {
		t.Errorf("last counter seen %v, server has %d", tr.Samples[len(tr.Samples)-1], store.Counter())
	}
}

func TestPaceBounds(t *testing.T) {
	if _, err := Pace(context.Background(), PaceConfig{Interval: time.Millisecond, MaxRequests: 1, Dial: func(context.Context) (net.Conn, error) { return nil, nil }}); !errors.Is(err, ErrBounds) {
		t.Errorf("Pace without deadline: %v, want ErrBounds", err)
	}
}
