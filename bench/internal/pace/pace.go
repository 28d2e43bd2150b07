// Package pace is the paced client of the TCP/TLS and MPTCP baselines: one request of the
// examples/kv protocol ("INCR <key> <seq>" -> "<key> <value> <seq>", the protocol and Store the
// QUIC service of the steerd matrix runs) every Interval on one long-lived stream connection,
// reconnecting when it breaks, and a Trace of when each response arrived with the value it
// carried. The QUIC side of the matrix uses examples/loadclient/load, which paces the same way.
package pace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/steerd/steerd/examples/kv"
)

// ErrBounds is returned by Pace for a configuration without a time or count bound.
var ErrBounds = errors.New("pace: client needs an interval, a request limit, a key and a deadline")

// ErrMismatch is wrapped by Incr when a response names another key or sequence number than
// the request (a stream out of step).
var ErrMismatch = errors.New("pace: response does not match the request")

// Config configures a paced client: one INCR request every Interval on one long-lived
// connection; when the connection breaks it calls Dial again (at once, then once per Interval).
type Config struct {
	// Dial opens a connection to the service (name resolution, TCP/MPTCP connect, TLS included).
	Dial func(ctx context.Context) (net.Conn, error)
	// Interval between requests; the gap resolution of every measurement.
	Interval time.Duration
	// RequestTimeout bounds one request/response round trip (a missing reply counts as a broken
	// connection). 0 means 1 s.
	RequestTimeout time.Duration
	// MaxRequests bounds the number of requests sent (successful or not).
	MaxRequests int
	// Key is the kv key the client increments (kv.ValidKey).
	Key string
}

// Sample is one response: when it arrived and the key's value it carried.
type Sample struct {
	At    time.Time
	Value uint64
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
func Pace(ctx context.Context, cfg Config) (*Trace, error) {
	if cfg.Interval <= 0 || cfg.MaxRequests <= 0 || cfg.Dial == nil || !kv.ValidKey(cfg.Key) {
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
			c, r = nc, bufio.NewReaderSize(nc, kv.MaxLine)
		}
		sent++
		v, err := Incr(c, r, cfg.Key, uint64(sent), time.Now().Add(cfg.RequestTimeout))
		if err != nil {
			fail(err)
			next = time.Now() // detect, then retry at once
			continue
		}
		tr.Samples = append(tr.Samples, Sample{At: time.Now(), Value: v})
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

// Monotonic reports whether the value never went backwards or repeated: the service state
// survived every move.
func (t *Trace) Monotonic() bool {
	for i := 1; i < len(t.Samples); i++ {
		if t.Samples[i].Value <= t.Samples[i-1].Value {
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

// Incr sends "INCR <key> <seq>" on an established connection and returns the value in the
// matching "<key> <value> <seq>" response (examples/kv protocol). The deadline bounds the round
// trip. A response for another key or seq returns an error wrapping ErrMismatch; an ERR line one
// wrapping kv.ErrServer; a malformed line one wrapping kv.ErrMalformed.
func Incr(c net.Conn, r *bufio.Reader, key string, seq uint64, deadline time.Time) (uint64, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return 0, err
	}
	if _, err := c.Write(kv.AppendRequest(nil, kv.Request{Op: kv.OpIncr, Key: key, Seq: seq})); err != nil {
		return 0, fmt.Errorf("send INCR: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read INCR reply: %w", io.ErrUnexpectedEOF)
		}
		return 0, fmt.Errorf("read INCR reply: %w", err)
	}
	resp, err := kv.ParseResponse(line)
	if err != nil {
		return 0, fmt.Errorf("read INCR reply: %w", err)
	}
	if resp.Key != key || resp.Seq != seq {
		return 0, fmt.Errorf("read INCR reply: got %s seq %d for %s seq %d: %w", resp.Key, resp.Seq, key, seq, ErrMismatch)
	}
	return resp.Value, nil
}
