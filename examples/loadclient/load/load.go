// Package load is the load client of steerd's example service (examples/kvservice): it opens N
// long-lived QUIC connections with the server-migration extension (quicext.Dial), sends one kv
// request every Interval on one long-lived bidirectional stream per connection, and measures
// what a client sees while the service moves: the largest gap between successive responses (the
// client-observed service-migration time), every gap longer than GapThreshold, requests never
// answered, responses out of order or wrong (each connection increments its own key, so the
// values must rise by exactly one: a reset proves lost state), and the server address each
// connection ended on.
//
// Run is what the loadclient binary, the integration tests and the benchmark harness call.
package load

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/quicext"
)

// Defaults of Options.
const (
	DefaultInterval    = 10 * time.Millisecond
	DefaultDrain       = 2 * time.Second
	DefaultDialTimeout = 5 * time.Second
	// DefaultIdleTimeout is the client's QUIC idle timeout (RFC 9000 section 10.1); it must
	// exceed the longest freeze of a migration.
	DefaultIdleTimeout = 30 * time.Second
)

// ErrDial is wrapped by Run when a connection cannot be established.
var ErrDial = errors.New("load: dial failed")

// Options configures Run.
type Options struct {
	// Addr is the server address, "host:port" (the node's public address).
	Addr string
	// Conns is the number of connections; 0 means 1.
	Conns int
	// Interval between two requests on a connection; 0 means DefaultInterval.
	Interval time.Duration
	// Duration of the sending phase; 0 means until ctx ends.
	Duration time.Duration
	// Drain is how long Run waits after the sending phase for outstanding responses; 0 means
	// DefaultDrain. Requests still unanswered then are lost.
	Drain time.Duration
	// GapThreshold: gaps between successive responses longer than this are listed; 0 means
	// 3*Interval.
	GapThreshold time.Duration
	// KeyPrefix names the keys, "<prefix>-<conn>"; empty means 8 random hex digits, so that
	// two runs against one server do not share keys.
	KeyPrefix string
	// Op is the request verb; empty means kv.OpIncr (kv.OpPing measures latency without state).
	Op kv.Op
	// TLS is the client TLS config; kv.ALPN is used when NextProtos is empty.
	TLS *tls.Config
	// QUIC is the quic-go config; nil means MaxIdleTimeout DefaultIdleTimeout.
	QUIC *quic.Config
	// Client configures the extension (strategies, silence detector, local address). Its
	// OnEvent is called before Run's own handling.
	Client quicext.ClientOptions
	// DialTimeout bounds each handshake; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// OnEvent receives the events of the run (from several goroutines; it must not block).
	OnEvent func(Event)
}

// Event is one JSON line of the loadclient's event stream.
type Event struct {
	// Ev is the kind: "connected", and the quicext client event names ("negotiated",
	// "announced", "hold", "silence", "probing", "switched", "failed", "cancelled", "ignored"),
	// "gap" (a gap above the threshold just ended), "error" (a connection failed), "wrong"
	// (a wrong or out-of-order response).
	Ev   string    `json:"ev"`
	Time time.Time `json:"t"`
	// Conn is the connection index, 0..Conns-1.
	Conn     int    `json:"conn"`
	Addr     string `json:"addr,omitempty"`
	Strategy string `json:"strategy,omitempty"`
	Attempt  int    `json:"attempt,omitempty"`
	// GapMS is the gap length (ev "gap") or the silence detected (ev "silence"), milliseconds.
	GapMS float64 `json:"gap_ms,omitempty"`
	Err   string  `json:"err,omitempty"`
}

// Gap is an interval between two successive responses of a connection.
type Gap struct {
	// Start is when the response before the gap arrived, End when the one after it arrived.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// MS is End-Start in milliseconds.
	MS float64 `json:"ms"`
	// AfterSeq is the sequence number of the response before the gap.
	AfterSeq uint64 `json:"after_seq"`
}

// Switch is one path switch of a connection (quicext EventSwitched).
type Switch struct {
	Time    time.Time `json:"t"`
	Addr    string    `json:"addr"`
	Attempt int       `json:"attempt"`
}

// Latency summarises request latencies in milliseconds (send to response).
type Latency struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
}

// ConnReport is the result of one connection.
type ConnReport struct {
	Conn int    `json:"conn"`
	Key  string `json:"key"`
	// Negotiated is the strategy set the server agreed to ("none" without the extension).
	Negotiated string `json:"negotiated"`
	// Sent, Received and Lost count requests (Lost = Sent - answered).
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Lost     uint64 `json:"lost"`
	// OutOfOrder counts responses whose sequence number is not the next expected one.
	OutOfOrder uint64 `json:"out_of_order"`
	// Wrong counts responses with the wrong key, an ERR line, a malformed line, or a value that
	// is not the previous value plus one (a reset means the service lost its state).
	Wrong uint64 `json:"wrong"`
	// LastResponse is when the last response arrived (with Lost > 0: when the service was last
	// seen answering).
	LastResponse time.Time `json:"last_response"`
	// FirstValue and LastValue are the first and last counter values received.
	FirstValue uint64 `json:"first_value"`
	LastValue  uint64 `json:"last_value"`
	// MaxGap is the largest gap between successive responses: the client-observed
	// service-migration time when the service moved during the run.
	MaxGap Gap `json:"max_gap"`
	// Gaps lists every gap longer than the threshold, in order.
	Gaps    []Gap   `json:"gaps"`
	Latency Latency `json:"latency_ms"`
	// Switches lists the path switches; ServerAddr is the address the connection sent to at
	// the end, LocalAddr its local address at the handshake.
	Switches   []Switch `json:"switches"`
	ServerAddr string   `json:"server_addr"`
	LocalAddr  string   `json:"local_addr"`
	// Err is the error that ended the connection early, if any.
	Err string `json:"err,omitempty"`
}

// Report is the final result of Run.
type Report struct {
	// Ev is always "report" (the binary prints the report as the last JSON line).
	Ev    string    `json:"ev"`
	Addr  string    `json:"addr"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// IntervalMS and GapThresholdMS echo the options, in milliseconds.
	IntervalMS     float64 `json:"interval_ms"`
	GapThresholdMS float64 `json:"gap_threshold_ms"`
	// Totals over all connections.
	Sent       uint64       `json:"sent"`
	Received   uint64       `json:"received"`
	Lost       uint64       `json:"lost"`
	OutOfOrder uint64       `json:"out_of_order"`
	Wrong      uint64       `json:"wrong"`
	Switched   int          `json:"switched"`   // connections that switched path at least once
	Failed     int          `json:"failed"`     // connections that ended with an error
	MaxGapMS   float64      `json:"max_gap_ms"` // largest MaxGap of all connections
	Conns      []ConnReport `json:"conns"`
}

// OK reports whether every request was answered, in order and right, and no connection failed.
func (r *Report) OK() bool {
	return r.Lost == 0 && r.OutOfOrder == 0 && r.Wrong == 0 && r.Failed == 0
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run dials Options.Conns connections, drives them until Duration passed or ctx ended, drains
// the outstanding responses and returns the report. It dials from the calling goroutine, one
// connection after the other, so that a caller locked into a network namespace (netns.Host.Do)
// creates every client socket there. A dial error closes the connections already open and
// returns an error wrapping ErrDial. Errors of a connection after the handshake end only that
// connection and are reported in its ConnReport.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Drain <= 0 {
		o.Drain = DefaultDrain
	}
	if o.GapThreshold <= 0 {
		o.GapThreshold = 3 * o.Interval
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.Op == "" {
		o.Op = kv.OpIncr
	}
	if o.Op != kv.OpIncr && o.Op != kv.OpPing && o.Op != kv.OpGet {
		return nil, fmt.Errorf("run load: unknown op %q", o.Op)
	}
	if o.KeyPrefix == "" {
		var b [4]byte
		rand.Read(b[:])
		o.KeyPrefix = hex.EncodeToString(b[:])
	}
	if o.TLS == nil {
		return nil, errors.New("run load: no TLS config")
	}
	tlsConf := o.TLS.Clone()
	if len(tlsConf.NextProtos) == 0 {
		tlsConf.NextProtos = []string{kv.ALPN}
	}
	qc := o.QUIC
	if qc == nil {
		qc = &quic.Config{MaxIdleTimeout: DefaultIdleTimeout}
	}
	emit := func(e Event) {
		if o.OnEvent != nil {
			o.OnEvent(e)
		}
	}

	rep := &Report{Ev: "report", Addr: o.Addr, Start: time.Now(), IntervalMS: ms(o.Interval), GapThresholdMS: ms(o.GapThreshold)}
	runners := make([]*runner, o.Conns)
	for i := range runners {
		r := &runner{id: i, key: fmt.Sprintf("%s-%d", o.KeyPrefix, i), o: &o, emit: emit}
		copts := o.Client
		userEv := copts.OnEvent
		copts.OnEvent = func(e quicext.Event) {
			if userEv != nil {
				userEv(e)
			}
			r.onQuicextEvent(e)
		}
		dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
		cc, err := quicext.Dial(dctx, o.Addr, tlsConf, qc, copts)
		cancel()
		if err != nil {
			for _, r := range runners[:i] {
				r.cc.CloseWithError(0, "dial failed")
			}
			return nil, fmt.Errorf("run load: connection %d to %s: %w: %w", i, o.Addr, ErrDial, err)
		}
		r.cc = cc
		r.local = cc.Conn.LocalAddr().String()
		runners[i] = r
		emit(Event{Ev: "connected", Time: time.Now(), Conn: i, Addr: cc.ServerAddr().String()})
	}

	sendCtx := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		sendCtx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Go(func() { r.run(sendCtx) })
	}
	wg.Wait()
	rep.End = time.Now()
	for _, r := range runners {
		r.cc.CloseWithError(0, "load done")
		cr := r.report()
		rep.Sent += cr.Sent
		rep.Received += cr.Received
		rep.Lost += cr.Lost
		rep.OutOfOrder += cr.OutOfOrder
		rep.Wrong += cr.Wrong
		if len(cr.Switches) > 0 {
			rep.Switched++
		}
		if cr.Err != "" {
			rep.Failed++
		}
		rep.MaxGapMS = max(rep.MaxGapMS, cr.MaxGap.MS)
		rep.Conns = append(rep.Conns, cr)
	}
	return rep, nil
}

// runner drives one connection.
type runner struct {
	id    int
	key   string
	o     *Options
	emit  func(Event)
	cc    *quicext.ClientConn
	local string

	mu       sync.Mutex
	sentAt   []time.Time // index seq-1
	received uint64
	nextSeq  uint64 // next expected response seq
	lastVal  uint64
	firstVal uint64
	haveVal  bool
	lastRcv  time.Time
	lastSeq  uint64
	ooo      uint64
	wrong    uint64
	maxGap   Gap
	gaps     []Gap
	lat      []time.Duration
	switches []Switch
	err      error
}

func (r *runner) onQuicextEvent(e quicext.Event) {
	ev := Event{Ev: e.Kind.String(), Time: e.Time, Conn: r.id, Attempt: e.Attempt}
	if e.Addr.IsValid() {
		ev.Addr = e.Addr.String()
	}
	if e.Strategy != 0 {
		ev.Strategy = e.Strategy.String()
	}
	if e.Silence > 0 {
		ev.GapMS = ms(e.Silence)
	}
	if e.Err != nil {
		ev.Err = e.Err.Error()
	}
	if e.Kind == quicext.EventSwitched {
		r.mu.Lock()
		r.switches = append(r.switches, Switch{Time: e.Time, Addr: ev.Addr, Attempt: e.Attempt})
		r.mu.Unlock()
	}
	r.emit(ev)
}

func (r *runner) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.emit(Event{Ev: "error", Time: time.Now(), Conn: r.id, Err: err.Error()})
}

// run sends until ctx ends, closes the send side and waits up to Drain for the responses.
func (r *runner) run(ctx context.Context) {
	str, err := r.cc.Conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.fail(fmt.Errorf("open stream: %w", err))
		}
		return
	}
	r.mu.Lock()
	r.nextSeq = 1
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.read(str)
	}()
	tk := time.NewTicker(r.o.Interval)
	defer tk.Stop()
	var b []byte
	var seq uint64
	sendErr := func() error {
		for {
			seq++
			b = kv.AppendRequest(b[:0], kv.Request{Op: r.o.Op, Key: r.key, Seq: seq})
			r.mu.Lock()
			r.sentAt = append(r.sentAt, time.Now())
			r.mu.Unlock()
			if _, err := str.Write(b); err != nil {
				r.mu.Lock()
				r.sentAt = r.sentAt[:len(r.sentAt)-1]
				r.mu.Unlock()
				return fmt.Errorf("write request %d: %w", seq, err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-done:
				return nil // the read side ended (its error is recorded)
			case <-tk.C:
			}
		}
	}()
	if sendErr != nil {
		r.fail(sendErr)
	}
	str.Close() // FIN: the server answers what it has and closes its side
	t := time.NewTimer(r.o.Drain)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		str.CancelRead(0)
		<-done
	}
}

// read parses responses until EOF or an error.
func (r *runner) read(str *quic.Stream) {
	br := bufio.NewReaderSize(str, kv.MaxLine)
	for {
		line, err := br.ReadSlice('\n')
		now := time.Now()
		if err != nil {
			var se *quic.StreamError
			if errors.Is(err, io.EOF) || (errors.As(err, &se) && !se.Remote) {
				return // EOF, or our own CancelRead after the drain: lost requests are counted
			}
			r.fail(fmt.Errorf("read response: %w", err))
			return
		}
		r.handle(string(line), now)
	}
}

func (r *runner) handle(line string, now time.Time) {
	resp, perr := kv.ParseResponse(line)
	var gapEv *Event
	r.mu.Lock()
	r.received++
	var problem string
	switch {
	case perr != nil:
		r.wrong++
		problem = perr.Error()
	case resp.Seq != r.nextSeq:
		r.ooo++
		problem = fmt.Sprintf("response seq %d, want %d", resp.Seq, r.nextSeq)
	}
	if perr == nil && resp.Seq >= 1 && resp.Seq <= uint64(len(r.sentAt)) && resp.Seq >= r.nextSeq {
		r.nextSeq = resp.Seq + 1
		r.lat = append(r.lat, now.Sub(r.sentAt[resp.Seq-1]))
		if !r.lastRcv.IsZero() {
			g := Gap{Start: r.lastRcv, End: now, MS: ms(now.Sub(r.lastRcv)), AfterSeq: r.lastSeq}
			if g.MS > r.maxGap.MS {
				r.maxGap = g
			}
			if now.Sub(r.lastRcv) > r.o.GapThreshold {
				r.gaps = append(r.gaps, g)
				gapEv = &Event{Ev: "gap", Time: now, Conn: r.id, GapMS: g.MS}
			}
		}
		r.lastRcv, r.lastSeq = now, resp.Seq
		if problem == "" && r.o.Op != kv.OpPing {
			switch {
			case resp.Key != r.key:
				r.wrong++
				problem = fmt.Sprintf("response for key %q, want %q", resp.Key, r.key)
			case r.o.Op == kv.OpIncr && r.haveVal && resp.Value != r.lastVal+1:
				r.wrong++
				problem = fmt.Sprintf("counter went from %d to %d", r.lastVal, resp.Value)
			case r.o.Op == kv.OpGet && r.haveVal && resp.Value != r.lastVal:
				r.wrong++
				problem = fmt.Sprintf("value changed from %d to %d", r.lastVal, resp.Value)
			}
			if !r.haveVal {
				r.firstVal, r.haveVal = resp.Value, true
			}
			r.lastVal = resp.Value
		}
	} else if perr == nil && problem == "" {
		r.wrong++
		problem = fmt.Sprintf("response seq %d was never sent", resp.Seq)
	}
	r.mu.Unlock()
	if gapEv != nil {
		r.emit(*gapEv)
	}
	if problem != "" {
		r.emit(Event{Ev: "wrong", Time: now, Conn: r.id, Err: problem})
	}
}

func (r *runner) report() ConnReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	cr := ConnReport{
		Conn: r.id, Key: r.key, Negotiated: r.cc.Negotiated().String(),
		Sent: uint64(len(r.sentAt)), Received: r.received, OutOfOrder: r.ooo, Wrong: r.wrong,
		FirstValue: r.firstVal, LastValue: r.lastVal, MaxGap: r.maxGap, Gaps: r.gaps, LastResponse: r.lastRcv,
		Switches: r.switches, ServerAddr: r.cc.ServerAddr().String(), LocalAddr: r.local,
	}
	answered := uint64(len(r.lat))
	cr.Lost = cr.Sent - min(cr.Sent, answered)
	if cr.Gaps == nil {
		cr.Gaps = []Gap{}
	}
	if cr.Switches == nil {
		cr.Switches = []Switch{}
	}
	if r.err != nil {
		cr.Err = r.err.Error()
	}
	if len(r.lat) > 0 {
		l := slices.Clone(r.lat)
		slices.Sort(l)
		q := func(p float64) float64 { return ms(l[min(len(l)-1, int(p*float64(len(l))))]) }
		cr.Latency = Latency{Min: ms(l[0]), Median: q(0.5), P99: q(0.99), Max: ms(l[len(l)-1])}
	}
	return cr
}
