package kv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrBounds is returned by Pace for a configuration without a time or count bound.
var ErrBounds = errors.New("kv: client needs an interval, a request limit and a deadline")

// PaceConfig configures a paced client: one INC request every Interval on one long-lived
// connection; when the connection breaks it calls Dial again (at once, then once per Interval).
type PaceConfig struct {
	// Dial opens a connection to the service (name resolution, TCP/MPTCP connect, TLS included).
	Dial func(ctx context.Context) (net.Conn, error)
	// Interval between requests; the gap resolution of every measurement.
	Interval time.Duration
	// RequestTimeout bounds one request/response round trip (a missing reply counts as a broken
	// connection). 0 means 1 s.
	RequestTimeout time.Duration
	// MaxRequests bounds the number of requests sent (successful or not).
	MaxRequests int
}

// Sample is one response: when it arrived and the counter it carried.
type Sample struct {
	At      time.Time
	Counter uint64
}

// Trace is what a paced client saw.
type Trace struct {
	Samples []Sample
	// Dials counts connection attempts, Failures the failed requests and dials.
	Dials, Failures int
	// FirstError is the first failure, for the report ("read INC reply: EOF").
	FirstError string
}

// Pace runs the client until ctx ends (it must have a deadline) or MaxRequests requests were sent,
// and returns what the client saw. It returns ErrBounds for an unbounded configuration.
func Pace(ctx context.Context, cfg PaceConfig) (*Trace, error) {
	if cfg.Interval <= 0 || cfg.MaxRequests <= 0 || cfg.Dial == nil {
		return nil, ErrBounds
	}
	if _, ok := ctx.Deadline(); !ok {
		return nil, ErrBounds
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = time.Second
	}
	tr := &Trace{Samples: make([]Sample, 0, cfg.MaxRequests)}
	var c net.Conn
	var r *bufio.Reader
	fail := func(err error) {
		tr.Failures++
		if tr.FirstError == "" {
			tr.FirstError = err.Error()
		}
		if c != nil {
			c.Close()
			c, r = nil, nil
		}
	}
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	next := time.Now()
	for sent := 0; sent < cfg.MaxRequests; {
		if err := sleepUntil(ctx, next); err != nil {
			return tr, nil
		}
		next = next.Add(cfg.Interval)
		if now := time.Now(); next.Before(now) {
			next = now // a long outage does not turn into a burst
		}
		if c == nil {
			tr.Dials++
			dctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
			nc, err := cfg.Dial(dctx)
			cancel()
			if err != nil {
				fail(fmt.Errorf("dial: %w", err))
				continue
			}
			c, r = nc, bufio.NewReaderSize(nc, MaxLine)
		}
		sent++
		v, err := Inc(c, r, time.Now().Add(cfg.RequestTimeout))
		if err != nil {
			fail(err)
			next = time.Now() // detect, then retry at once
			continue
		}
		tr.Samples = append(tr.Samples, Sample{At: time.Now(), Counter: v})
	}
	return tr, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// MaxGap returns the largest interval between successive responses whose later response arrived
// after from (the start of the move), and the arrival time of the response that ended it.
// With fewer than two samples it returns 0.
func (t *Trace) MaxGap(from time.Time) (gap time.Duration, end time.Time) {
	for i := 1; i < len(t.Samples); i++ {
		if t.Samples[i].At.Before(from) {
			continue
		}
		if d := t.Samples[i].At.Sub(t.Samples[i-1].At); d > gap {
			gap, end = d, t.Samples[i].At
		}
	}
	return gap, end
}

// Monotonic reports whether the counter never went backwards or repeated: the service state
// survived every move.
func (t *Trace) Monotonic() bool {
	for i := 1; i < len(t.Samples); i++ {
		if t.Samples[i].Counter <= t.Samples[i-1].Counter {
			return false
		}
	}
	return true
}

// ResponsesAfter counts the responses that arrived after t.
func (t *Trace) ResponsesAfter(at time.Time) int {
	n := 0
	for _, s := range t.Samples {
		if s.At.After(at) {
			n++
		}
	}
	return n
}
