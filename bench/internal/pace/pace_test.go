package pace

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steerd/steerd/examples/kv"
)

// TestPaceReconnect serves the counter on loopback, cuts the client's connection once, and checks
// that the client reconnects, that the trace is monotonic and that MaxGap sees the outage.
func TestPaceReconnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	store := kv.NewStore()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns <- c
			go func() { store.Serve(c); c.Close() }()
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
	tr, err := Pace(ctx, Config{
		Interval: 5 * time.Millisecond, MaxRequests: 80, Key: "bench",
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
	if len(tr.Samples) == 0 || tr.Samples[len(tr.Samples)-1].Value != store.Get("bench") {
		t.Errorf("last value seen %v, server has %d", tr.Samples[len(tr.Samples)-1], store.Get("bench"))
	}
}

func TestPaceBounds(t *testing.T) {
	if _, err := Pace(context.Background(), Config{Interval: time.Millisecond, MaxRequests: 1, Key: "k", Dial: func(context.Context) (net.Conn, error) { return nil, nil }}); !errors.Is(err, ErrBounds) {
		t.Errorf("Pace without deadline: %v, want ErrBounds", err)
	}
}

// TestIncrMismatch checks that a response for another sequence number is refused.
func TestIncrMismatch(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		buf := make([]byte, 64)
		b.Read(buf)
		b.Write([]byte("k 1 99\n"))
		b.Close()
	}()
	_, err := Incr(a, bufioReader(a), "k", 1, time.Now().Add(time.Second))
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("Incr with a wrong seq: %v, want ErrMismatch", err)
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
