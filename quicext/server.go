package quicext

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// Errors returned by the server. Callers test them with errors.Is.
var (
	// ErrUnknownStrategy is returned for a strategy name or bit this package does not know.
	ErrUnknownStrategy = errors.New("quicext: unknown strategy")
	// ErrPreparing is returned by Prepare while a migration is already prepared, and to clients
	// whose handshake arrives while a migration is prepared (quic-go refuses them).
	ErrPreparing = errors.New("quicext: migration in progress")
	// ErrNotPrepared is returned by Restored and Abort when no migration is prepared.
	ErrNotPrepared = errors.New("quicext: no migration prepared")
	// ErrAborted is returned by a Prepare that Abort cancelled while it waited for its clients:
	// handshakes and Accept are open again and every client that got the preparation was sent
	// MIGRATION_CANCEL.
	ErrAborted = errors.New("quicext: migration aborted during prepare")
	// ErrServerClosed is returned by Accept after Close.
	ErrServerClosed = errors.New("quicext: server closed")
	// ErrWildcardBind is returned by NewServer when the transport's *net.UDPConn is bound to a
	// wildcard address: after a move its replies could leave with a stale source address.
	ErrWildcardBind = errors.New("quicext: socket bound to a wildcard address")
	// ErrTooManyHandshakes is returned by the Server's Transport.ConnContext (quic-go then
	// answers CONNECTION_REFUSED, RFC 9000 section 20.1, before the handshake) when
	// ServerConfig.MaxHandshakes connections are already between their first Initial and the
	// Server's accept.
	ErrTooManyHandshakes = errors.New("quicext: too many handshakes in progress")
)

// quicAcceptQueue is quic-go v0.65's protocol.MaxAcceptQueueSize: the number of connections
// that completed their handshake and wait for Listener.Accept. quic-go closes every further
// one with CONNECTION_REFUSED *after* its handshake (server.go handleNewConn, a non-blocking
// channel send), so the client's Dial has already succeeded when the connection dies.
const quicAcceptQueue = 32

// DefaultMaxHandshakes is the default of ServerConfig.MaxHandshakes.
const DefaultMaxHandshakes = 64

// CloseCodeUnsupported is the QUIC application error code (RFC 9000 section 20.2) with which
// Prepare closes connections that did not negotiate a usable strategy, when asked to.
const CloseCodeUnsupported quic.ApplicationErrorCode = 0x5158

// MaxPool is the largest number of POOL_MIGRATION_ADDRESS frames a server sends and a client
// keeps (the rest are ignored).
const MaxPool = 8

// ServerConfig configures the extension on a server.
type ServerConfig struct {
	// Strategies the server supports; 0 means AllStrategies.
	Strategies Strategy
	// Pool is the list of candidate addresses sent to Pool clients after the handshake (at most
	// MaxPool are sent).
	Pool []Target
	// UniStreamHandler receives every peer unidirectional stream that is not the extension
	// stream, after its stream-type varint was read (the extension owns AcceptUniStream on each
	// connection: the application must not call it). Nil: such streams are cancelled with
	// H3_STREAM_CREATION_ERROR (0x0103). Not used for connections whose ALPN is NextProtoH3Ext
	// or "h3": their other streams go unread to HTTP/3 (ServeHTTP3).
	UniStreamHandler func(conn *quic.Conn, str *quic.ReceiveStream, streamType uint64)
	// NegotiationTimeout bounds how long Prepare waits, counted from the accept of a connection,
	// for its client's negotiation message before listing it as unsupported. 0 means 300 ms.
	NegotiationTimeout time.Duration
	// AllowWildcard lets NewServer accept a *net.UDPConn bound to a wildcard address (it logs a
	// warning instead of returning ErrWildcardBind).
	AllowWildcard bool
	// Logf logs; nil means log.Printf.
	Logf func(format string, args ...any)
	// MaxHandshakes bounds the connections admitted (quic-go's Transport.ConnContext, called at
	// the first Initial) and not yet taken by the Server from quic-go's accept queue. The Server
	// keeps MaxHandshakes accept goroutines parked on that queue and releases a connection's
	// slot only when its goroutine parks again, so a burst of handshake completions never finds
	// quic-go's 32-entry queue full (which would close connections with CONNECTION_REFUSED after
	// their handshake), however late the goroutines get scheduled. Handshakes beyond the bound
	// are refused before the handshake (ErrTooManyHandshakes, CONNECTION_REFUSED): the client's
	// Dial fails at once and may retry. 0 means DefaultMaxHandshakes (64).
	MaxHandshakes int
}

// ConnInfo describes one connection in a Readiness report.
type ConnInfo struct {
	Remote     string   `json:"remote"`
	Negotiated Strategy `json:"negotiated"`
	Strategy   Strategy `json:"strategy"`
}

// Readiness is the result of Prepare.
type Readiness struct {
	// Strategy is the strategy requested for the migration (the first one strategyFor returned).
	Strategy Strategy `json:"strategy"`
	// Ready lists the connections whose client acknowledged every migration message.
	Ready []ConnInfo `json:"ready"`
	// NotReady lists connections that negotiated the extension but did not acknowledge before
	// the context ended.
	NotReady []ConnInfo `json:"not_ready"`
	// Unsupported lists connections without the extension (or with no usable strategy).
	Unsupported []ConnInfo `json:"unsupported"`
	// Closed counts unsupported connections closed with CloseCodeUnsupported.
	Closed int `json:"closed"`
	// ElapsedMS is the time Prepare took, in milliseconds.
	ElapsedMS float64 `json:"elapsed_ms"`
}

// AllReady reports whether every connection is ready.
func (r Readiness) AllReady() bool { return len(r.NotReady) == 0 && len(r.Unsupported) == 0 }

// Holding counts the prepared connections whose clients hold their sends from the announcement
// until SERVER_MIGRATED (Synchronized Symmetric; Ready and NotReady, since a client that did not
// acknowledge may still have received SERVER_MIGRATION and hold). Such a client's gap starts at
// Prepare, not at the freeze: a host that freezes the service later than right after Prepare
// (runc checkpoint --lazy-pages, where CRIU freezes the container only after runc and CRIU
// start-up, 250-630 ms measured) lengthens their gap by that delay while the other strategies'
// clients are still served. With Holding() > 0 the host should freeze at once (runc pause)
// after Prepare. See docs/quicext-wire.md, "Synchronized Symmetric and the freeze".
func (r Readiness) Holding() int {
	n := 0
	for _, l := range [][]ConnInfo{r.Ready, r.NotReady} {
		for _, c := range l {
			if c.Strategy == StrategySyncSymmetric {
				n++
			}
		}
	}
	return n
}

// Status is a snapshot of the server.
type Status struct {
	Prepared    bool     `json:"prepared"`
	Strategy    Strategy `json:"strategy"`
	Target      Target   `json:"target"`
	Conns       int      `json:"conns"`
	Negotiated  int      `json:"negotiated"`
	Migrations  int      `json:"migrations"`
	LocalAddr   string   `json:"local_addr"`
	Unsupported int      `json:"unsupported"`
	// RefusedHandshakes counts client Initial packets refused because MaxHandshakes connections
	// were in progress (a client's first flight can take two Initial packets, RFC 9000 section
	// 17.2.2, e.g. with a post-quantum key share).
	RefusedHandshakes int64 `json:"refused_handshakes"`
	// InProgress is the number of admitted connections not yet taken from quic-go's accept
	// queue (handshaking, or completed and queued).
	InProgress int64 `json:"in_progress"`
}

// Server is a QUIC listener that runs the server side of the migration extension on every
// connection it accepts. It wraps quic-go's public API only.
type Server struct {
	tr   *quic.Transport
	ln   *quic.Listener
	cfg  ServerConfig
	logf func(string, ...any)

	mu         sync.Mutex
	conns      map[*quic.Conn]*serverConn
	queue      []*quic.Conn // accepted, not yet handed to Accept
	wake       chan struct{}
	prepared   bool
	strategy   Strategy
	target     Target
	migrations int
	// prepGen numbers Prepare calls; activeGen is the number of the Prepare still sending its
	// preparation (0: none). Abort zeroes it, so a connection's preparation that was not written
	// yet is never written after the MIGRATION_CANCEL; prepCancel ends that Prepare's waits.
	prepGen    uint64
	activeGen  atomic.Uint64
	prepCancel context.CancelFunc

	closeOnce sync.Once
	closed    chan struct{}

	maxHandshakes int64
	inProgress    atomic.Int64 // admitted, not yet released by an accept goroutine
	refused       atomic.Int64
	acceptHold    chan struct{} // tests: accept goroutines wait on it after Accept (nil: no wait)
}

// admission is the handshake slot of one connection, stored in its context.
type admission struct{ released atomic.Bool }

type admissionKey struct{}

func (s *Server) release(a *admission) {
	if a != nil && a.released.CompareAndSwap(false, true) {
		s.inProgress.Add(-1)
	}
}

// Listen opens a UDP socket on addr (bind the pod address, not a wildcard) and returns a Server
// on a new quic.Transport over it.
func Listen(addr string, tlsConf *tls.Config, quicConf *quic.Config, cfg ServerConfig) (*Server, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve listen address: %w", err)
	}
	uc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("listen udp: %w", err)
	}
	s, err := NewServer(&quic.Transport{Conn: uc}, tlsConf, quicConf, cfg)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return s, nil
}

// NewServer starts listening on tr. New handshakes are refused (quic-go's
// Config.GetConfigForClient returns ErrPreparing) between Prepare and Restored/Abort.
// Connections are handed out by Accept. NewServer sets tr.ConnContext (it wraps the one
// already set) to count handshakes in progress, see ServerConfig.MaxHandshakes; tr must not be
// listening yet.
//
// The ALPN protocol of a connection selects how its unidirectional streams are dispatched:
// NextProtoH3Ext (HTTP/3 with the extension) by stream ID, http3.NextProtoH3 (plain HTTP/3,
// extension off) all to HTTP/3, any other protocol by stream type (see
// ServerConfig.UniStreamHandler and docs/quicext-wire.md). ServeHTTP3 serves both HTTP/3 kinds.
func NewServer(tr *quic.Transport, tlsConf *tls.Config, quicConf *quic.Config, cfg ServerConfig) (*Server, error) {
	if cfg.Strategies == 0 {
		cfg.Strategies = AllStrategies
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.NegotiationTimeout == 0 {
		cfg.NegotiationTimeout = 300 * time.Millisecond
	}
	s := &Server{
		tr:            tr,
		cfg:           cfg,
		logf:          cfg.Logf,
		conns:         map[*quic.Conn]*serverConn{},
		wake:          make(chan struct{}),
		closed:        make(chan struct{}),
		maxHandshakes: int64(cfg.MaxHandshakes),
	}
	if s.logf == nil {
		s.logf = log.Printf
	}
	if uc, ok := tr.Conn.(*net.UDPConn); ok {
		if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.IsUnspecified() {
			if !cfg.AllowWildcard {
				return nil, fmt.Errorf("new server on %v: %w", la, ErrWildcardBind)
			}
			s.logf("quicext: warning: %v is a wildcard bind; bind the pod address so replies keep their source after a move", la)
		}
	}
	var qc *quic.Config
	if quicConf != nil {
		qc = quicConf.Clone()
	} else {
		qc = &quic.Config{}
	}
	userGet := qc.GetConfigForClient
	// quic-go uses the config GetConfigForClient returns for the connection, and its defaults
	// when that is nil: return the listener's own config (without the callback), so the
	// service's settings (idle timeout, packet size, ...) hold for every connection.
	base := qc.Clone()
	base.GetConfigForClient = nil
	qc.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
		s.mu.Lock()
		p := s.prepared
		s.mu.Unlock()
		if p {
			return nil, ErrPreparing
		}
		if userGet != nil {
			return userGet(info)
		}
		return base, nil
	}
	userCC := tr.ConnContext
	tr.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		out := ctx
		if userCC != nil {
			var err error
			if out, err = userCC(ctx, info); err != nil {
				return nil, err
			}
		}
		if s.inProgress.Add(1) > s.maxHandshakes {
			s.inProgress.Add(-1)
			s.refused.Add(1)
			return nil, ErrTooManyHandshakes
		}
		a := &admission{}
		// quic-go cancels ctx when the connection closes or its handshake fails.
		context.AfterFunc(ctx, func() { s.release(a) })
		return context.WithValue(out, admissionKey{}, a), nil
	}
	ln, err := tr.Listen(tlsConf, qc)
	if err != nil {
		tr.ConnContext = userCC
		return nil, fmt.Errorf("listen quic: %w", err)
	}
	s.ln = ln
	for range cfg.MaxHandshakes {
		go s.acceptLoop()
	}
	return s, nil
}

// Addr returns the local address of the listener.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Transport returns the wrapped transport.
func (s *Server) Transport() *quic.Transport { return s.tr }

// Close closes the listener (not the transport nor established connections).
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return s.ln.Close()
}

func (s *Server) notifyLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// acceptLoop is one of MaxHandshakes goroutines parked in quic-go's Listener.Accept. The
// handshake slot of the connection it took is released only when it calls Accept again, so
// admitted connections never outnumber parked goroutines plus quic-go's 32 queue entries.
func (s *Server) acceptLoop() {
	var prev *admission
	for {
		s.release(prev)
		prev = nil
		c, err := s.ln.Accept(context.Background())
		if err != nil {
			s.closeOnce.Do(func() { close(s.closed) })
			return
		}
		prev, _ = c.Context().Value(admissionKey{}).(*admission)
		s.mu.Lock()
		hold := s.acceptHold
		s.mu.Unlock()
		if hold != nil {
			<-hold
		}
		sc := newServerConn(s, c)
		s.mu.Lock()
		s.conns[c] = sc
		s.queue = append(s.queue, c)
		s.notifyLocked()
		s.mu.Unlock()
		go sc.run()
	}
}

// Stream IDs of the extension streams when the ALPN is NextProtoH3Ext: each side opens its
// extension stream before any other unidirectional stream (RFC 9000 section 2.1: the first
// client-initiated unidirectional stream is 0x2, the first server-initiated one 0x3).
const (
	clientExtStreamID quic.StreamID = 2
	serverExtStreamID quic.StreamID = 3
)

// streamMode says how the unidirectional streams of a connection are dispatched.
type streamMode int

const (
	// modeType: read the stream type of every stream (any ALPN but the HTTP/3 ones).
	modeType streamMode = iota
	// modeStreamID: NextProtoH3Ext; the peer's first unidirectional stream is the extension
	// stream, every other one goes unread to the raw handler (HTTP/3).
	modeStreamID
	// modeRaw: plain HTTP/3; no extension, every stream goes unread to the raw handler.
	modeRaw
)

func modeFor(alpn string) streamMode {
	switch alpn {
	case NextProtoH3Ext:
		return modeStreamID
	case http3.NextProtoH3:
		return modeRaw
	}
	return modeType
}

func newServerConn(s *Server, c *quic.Conn) *serverConn {
	sc := &serverConn{s: s, conn: c, accepted: time.Now(), negotiatedCh: make(chan struct{}),
		ackCh: make(chan struct{}), rawCh: make(chan struct{}),
		mode: modeFor(c.ConnectionState().TLS.NegotiatedProtocol)}
	switch sc.mode {
	case modeStreamID:
		// Opened before the connection is handed to Accept, hence before HTTP/3 opens its
		// control stream: it is stream 0x3.
		if err := sc.openSend(); err != nil {
			s.logf("quicext: %v: open extension stream: %v", c.RemoteAddr(), err)
		}
	case modeRaw:
		sc.negotiatedDone = true
		close(sc.negotiatedCh)
	}
	return sc
}

// attachRaw sets the handler of the unidirectional streams that are not the extension's, for
// connections in modeStreamID and modeRaw (ServeHTTP3 passes RawServerConn's handler). Streams
// that arrived earlier wait for it.
func (s *Server) attachRaw(c *quic.Conn, h func(*quic.ReceiveStream)) bool {
	s.mu.Lock()
	sc := s.conns[c]
	s.mu.Unlock()
	if sc == nil {
		return false
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.raw != nil {
		return false
	}
	sc.raw = h
	close(sc.rawCh)
	return true
}

// Accept returns the next connection. While a migration is prepared it holds connections back
// (they are handed out after Restored or Abort).
func (s *Server) Accept(ctx context.Context) (*quic.Conn, error) {
	for {
		s.mu.Lock()
		if !s.prepared && len(s.queue) > 0 {
			c := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return c, nil
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
			return nil, ErrServerClosed
		case <-wake:
		}
	}
}

// Prepare starts a migration: it refuses new handshakes, holds Accept, and signals every
// connection according to strategyFor(conn) (nil means StrategySymmetric for all). A strategy
// the connection did not negotiate is replaced by the first negotiated one of Symmetric,
// Explicit, Explicit reactive, Pool, Synchronized Symmetric. Prepare waits until each client
// acknowledged (MsgMigrationAck) or ctx ends, and returns the readiness. With closeUnsupported,
// connections without a usable strategy are closed with CloseCodeUnsupported.
// It returns ErrPreparing if a migration is already prepared. Unsupported connections stay open
// (they keep working until the old path dies); see PrepareWith to close them.
func (s *Server) Prepare(ctx context.Context, target Target, strategyFor func(*quic.Conn) Strategy) (Readiness, error) {
	return s.PrepareWith(ctx, target, strategyFor, PrepareOptions{})
}

// PrepareOptions are the options of PrepareWith.
type PrepareOptions struct {
	// CloseUnsupported closes connections without a usable strategy with CloseCodeUnsupported.
	CloseUnsupported bool
}

// PrepareWith is Prepare with options.
func (s *Server) PrepareWith(ctx context.Context, target Target, strategyFor func(*quic.Conn) Strategy, opts PrepareOptions) (Readiness, error) {
	closeUnsupported := opts.CloseUnsupported
	start := time.Now()
	s.mu.Lock()
	if s.prepared {
		s.mu.Unlock()
		return Readiness{}, ErrPreparing
	}
	s.prepared = true
	s.target = target
	s.prepGen++
	gen := s.prepGen
	s.activeGen.Store(gen)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.prepCancel = cancel
	conns := make([]*serverConn, 0, len(s.conns))
	for _, sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	if strategyFor == nil {
		strategyFor = func(*quic.Conn) Strategy { return StrategySymmetric }
	}

	type result struct {
		info  ConnInfo
		state int // 0 ready, 1 not ready, 2 unsupported
	}
	results := make([]result, len(conns))
	var wg sync.WaitGroup
	for i, sc := range conns {
		wg.Go(func() {
			want := strategyFor(sc.conn)
			neg := sc.waitNegotiated(ctx, s.cfg.NegotiationTimeout)
			info := ConnInfo{Remote: sc.conn.RemoteAddr().String(), Negotiated: neg, Strategy: want}
			st := pickStrategy(want, neg)
			if st == 0 {
				results[i] = result{info, 2}
				return
			}
			info.Strategy = st
			if err := sc.prepare(st, target, gen); err != nil {
				results[i] = result{info, 1}
				return
			}
			if sc.waitAcked(ctx) {
				results[i] = result{info, 0}
			} else {
				results[i] = result{info, 1}
			}
		})
	}
	wg.Wait()
	var r Readiness
	for i, res := range results {
		if i == 0 || r.Strategy == 0 {
			r.Strategy = res.info.Strategy
		}
		switch res.state {
		case 0:
			r.Ready = append(r.Ready, res.info)
		case 1:
			r.NotReady = append(r.NotReady, res.info)
		case 2:
			r.Unsupported = append(r.Unsupported, res.info)
			if closeUnsupported {
				conns[i].conn.CloseWithError(CloseCodeUnsupported, "server migration not supported")
				r.Closed++
			}
		}
	}
	r.ElapsedMS = float64(time.Since(start).Microseconds()) / 1000
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.activeGen.Load() != gen {
		return r, ErrAborted
	}
	s.strategy = r.Strategy
	s.prepCancel = nil
	return r, nil
}

// pickStrategy returns want if negotiated, else a fallback, else 0.
func pickStrategy(want, negotiated Strategy) Strategy {
	if negotiated.Has(want) && want.isSingle() {
		return want
	}
	for _, s := range []Strategy{StrategySymmetric, StrategyExplicit, StrategyExplicitReactive, StrategyPool, StrategySyncSymmetric} {
		if negotiated.Has(s) {
			return s
		}
	}
	return 0
}

// Restored ends a migration after the restore: it re-applies the socket options CRIU does not
// restore (IP_RECVTOS, IP_MTU_DISCOVER and the IPv6 twins, see ReapplySocketOptions) when the
// transport's conn is a *net.UDPConn, sends SERVER_MIGRATED(newAddr) to Symmetric and
// Synchronized Symmetric connections, and reopens handshakes and Accept. It returns
// ErrNotPrepared without a prepared migration; a socket-option error is returned after all of
// the above was done.
func (s *Server) Restored(ctx context.Context, newAddr Target) error {
	s.mu.Lock()
	if !s.prepared {
		s.mu.Unlock()
		return ErrNotPrepared
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for _, sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	var sockErr error
	if uc, ok := s.tr.Conn.(*net.UDPConn); ok {
		sockErr = ReapplySocketOptions(uc)
	}
	for _, sc := range conns {
		sc.restored(newAddr)
	}
	s.mu.Lock()
	s.prepared = false
	s.strategy = 0
	s.target = newAddr
	s.migrations++
	s.notifyLocked()
	s.mu.Unlock()
	if sockErr != nil {
		return fmt.Errorf("restore socket options: %w", sockErr)
	}
	return ctx.Err()
}

// Abort cancels a prepared migration (the service stays where it is): clients get
// MIGRATION_CANCEL, handshakes and Accept reopen. A Prepare still waiting for its clients'
// acknowledgements is cancelled at once (it returns ErrAborted) and no preparation is sent after
// the cancel. It returns ErrNotPrepared without a prepared migration.
func (s *Server) Abort() error {
	s.mu.Lock()
	if !s.prepared {
		s.mu.Unlock()
		return ErrNotPrepared
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for _, sc := range s.conns {
		conns = append(conns, sc)
	}
	s.prepared = false
	s.strategy = 0
	s.activeGen.Store(0)
	if s.prepCancel != nil {
		s.prepCancel()
		s.prepCancel = nil
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, sc := range conns {
		sc.abort()
	}
	return nil
}

// Status returns a snapshot.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Prepared: s.prepared, Strategy: s.strategy, Target: s.target, Conns: len(s.conns),
		Migrations: s.migrations, LocalAddr: s.ln.Addr().String(),
		RefusedHandshakes: s.refused.Load(), InProgress: s.inProgress.Load()}
	for _, sc := range s.conns {
		sc.mu.Lock()
		if sc.negotiated != 0 {
			st.Negotiated++
		} else if sc.negotiatedDone {
			st.Unsupported++
		}
		sc.mu.Unlock()
	}
	return st
}

// serverConn is the extension state of one connection.
type serverConn struct {
	s        *Server
	conn     *quic.Conn
	accepted time.Time

	mu             sync.Mutex
	negotiated     Strategy
	negotiatedDone bool
	negotiatedCh   chan struct{}
	send           *quic.SendStream
	haveExt        bool
	sent, acked    uint64
	ackCh          chan struct{}
	prepared       Strategy
	pool           []Target // POOL_MIGRATION_ADDRESS sent on this connection, in order

	mode  streamMode
	raw   func(*quic.ReceiveStream) // modeStreamID, modeRaw: handler of the other streams
	rawCh chan struct{}             // closed when raw is set
}

func (sc *serverConn) run() {
	defer func() {
		sc.s.mu.Lock()
		delete(sc.s.conns, sc.conn)
		sc.s.mu.Unlock()
	}()
	for {
		str, err := sc.conn.AcceptUniStream(sc.conn.Context())
		if err != nil {
			return
		}
		switch {
		case sc.mode == modeType:
			go sc.handleUni(str)
		case sc.mode == modeStreamID && str.StreamID() == clientExtStreamID:
			go func() {
				if t, err := readVarintByByte(str); err != nil || t != StreamType {
					str.CancelRead(0x0103) // H3_STREAM_CREATION_ERROR
					return
				}
				sc.mu.Lock()
				sc.haveExt = true
				sc.mu.Unlock()
				sc.readExt(bufio.NewReader(str), str)
			}()
		default:
			go sc.handleRaw(str)
		}
	}
}

// handleRaw waits for the raw handler (or the end of the connection) and passes str unread.
func (sc *serverConn) handleRaw(str *quic.ReceiveStream) {
	select {
	case <-sc.rawCh:
	case <-sc.conn.Context().Done():
		return
	}
	sc.mu.Lock()
	h := sc.raw
	sc.mu.Unlock()
	h(str)
}

// openSend opens the server's extension stream and writes its stream type.
func (sc *serverConn) openSend() error {
	send, err := sc.conn.OpenUniStream()
	if err != nil {
		return err
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.send = send
	_, err = send.Write(quicvarint.Append(nil, StreamType))
	return err
}

// readVarintByByte reads a varint without reading past it.
func readVarintByByte(str *quic.ReceiveStream) (uint64, error) {
	return quicvarint.Read(byteReader{str})
}

type byteReader struct {
	r interface{ Read([]byte) (int, error) }
}

func (b byteReader) ReadByte() (byte, error) {
	var p [1]byte
	for {
		n, err := b.r.Read(p[:])
		if n == 1 {
			return p[0], nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func (sc *serverConn) handleUni(str *quic.ReceiveStream) {
	t, err := readVarintByByte(str)
	if err != nil {
		return
	}
	sc.mu.Lock()
	dup := sc.haveExt
	if t == StreamType {
		sc.haveExt = true
	}
	sc.mu.Unlock()
	if t != StreamType {
		if h := sc.s.cfg.UniStreamHandler; h != nil {
			h(sc.conn, str, t)
		} else {
			str.CancelRead(0x0103)
		}
		return
	}
	if dup {
		str.CancelRead(0x0103)
		return
	}
	sc.readExt(bufio.NewReader(str), str)
}

// readExt serves the client's extension stream after its stream type: NEGOTIATE first (the
// answer goes on the server's stream, opened here unless it already is), then PING and
// MIGRATION_ACK.
func (sc *serverConn) readExt(r *bufio.Reader, str *quic.ReceiveStream) {
	m, err := readMessage(r)
	if err != nil || m.typ != MsgNegotiate {
		str.CancelRead(0x0103)
		return
	}
	neg := Strategy(m.value) & sc.s.cfg.Strategies
	sc.mu.Lock()
	send := sc.send
	sc.mu.Unlock()
	var b []byte
	if send == nil {
		if send, err = sc.conn.OpenUniStream(); err != nil {
			return
		}
		b = quicvarint.Append(b, StreamType)
	}
	b = appendMessage(b, message{typ: MsgNegotiate, value: uint64(neg)})
	var counted uint64
	if neg.Has(StrategyPool) {
		for i, t := range sc.s.cfg.Pool {
			if i == MaxPool {
				break
			}
			b = appendMessage(b, message{typ: MsgPoolMigrationAddress, addr: t})
			counted++
		}
	}
	sc.mu.Lock()
	if neg.Has(StrategyPool) {
		sc.pool = append(sc.pool, sc.s.cfg.Pool[:min(len(sc.s.cfg.Pool), MaxPool)]...)
	}
	sc.send = send
	sc.sent += counted
	_, werr := send.Write(b)
	sc.negotiated = neg
	sc.negotiatedDone = true
	close(sc.negotiatedCh)
	sc.mu.Unlock()
	if werr != nil {
		return
	}
	for {
		m, err := readMessage(r)
		if err != nil {
			return
		}
		if m.typ == MsgPing {
			sc.mu.Lock()
			_, err := sc.send.Write(appendMessage(nil, message{typ: MsgPong, value: m.value}))
			sc.mu.Unlock()
			if err != nil {
				return
			}
		}
		if m.typ == MsgMigrationAck {
			sc.mu.Lock()
			if m.value > sc.acked && m.value <= sc.sent {
				sc.acked = m.value
				close(sc.ackCh)
				sc.ackCh = make(chan struct{})
			}
			sc.mu.Unlock()
		}
	}
}

// waitNegotiated waits for the client's negotiation until accept time + timeout or ctx ends.
func (sc *serverConn) waitNegotiated(ctx context.Context, timeout time.Duration) Strategy {
	t := time.NewTimer(time.Until(sc.accepted.Add(timeout)))
	defer t.Stop()
	select {
	case <-sc.negotiatedCh:
	case <-t.C:
	case <-ctx.Done():
	case <-sc.conn.Context().Done():
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.negotiated
}

// writeLocked writes counted messages on the server stream.
func (sc *serverConn) writeLocked(ms ...message) error {
	if sc.send == nil {
		return errors.New("write message: no extension stream")
	}
	var b []byte
	for _, m := range ms {
		b = appendMessage(b, m)
	}
	sc.sent += uint64(len(ms))
	if _, err := sc.send.Write(b); err != nil {
		return fmt.Errorf("write message: %w", err)
	}
	return nil
}

// prepare sends the preparation of Prepare number gen, unless Abort cancelled it already (then
// it returns ErrAborted and sends nothing). sc.mu orders it against abort: a preparation written
// first is cancelled by the abort that follows.
func (sc *serverConn) prepare(st Strategy, target Target, gen uint64) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.s.activeGen.Load() != gen {
		return ErrAborted
	}
	sc.prepared = st
	var ms []message
	if st == StrategyPool && sc.needsPoolTarget(target) {
		// The client probes only announced pool addresses: without the destination among them
		// it would never leave the old address, and lose every request sent there once the
		// source stops forwarding (drain). Announce it first; the stream is ordered, so the
		// client has it before the STRATEGY that arms Pool.
		ms = append(ms, message{typ: MsgPoolMigrationAddress, addr: target})
		sc.pool = append(sc.pool, target)
	}
	ms = append(ms, message{typ: MsgStrategy, value: uint64(st)})
	switch st {
	case StrategyExplicit, StrategyExplicitReactive:
		ms = append(ms, message{typ: MsgServerMigration, addr: target, hasAddr: true})
	case StrategySyncSymmetric:
		ms = append(ms, message{typ: MsgServerMigration})
	}
	return sc.writeLocked(ms...)
}

// needsPoolTarget reports whether a Pool preparation must announce target first: the address of
// the connection's family is valid and not among the POOL_MIGRATION_ADDRESS already sent, and
// the client's pool (MaxPool addresses) has room for it. Called with sc.mu held.
func (sc *serverConn) needsPoolTarget(target Target) bool {
	remote := addrPortOf(sc.conn.RemoteAddr())
	a := target.For(remote)
	if !a.IsValid() || len(sc.pool) >= MaxPool {
		return false
	}
	for _, t := range sc.pool {
		if t.For(remote) == a {
			return false
		}
	}
	return true
}

// addrPortOf returns the address of a *net.UDPAddr (the zero AddrPort for other types).
func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		return ua.AddrPort()
	}
	return netip.AddrPort{}
}

func (sc *serverConn) waitAcked(ctx context.Context) bool {
	for {
		sc.mu.Lock()
		done := sc.acked >= sc.sent
		ch := sc.ackCh
		sc.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-sc.conn.Context().Done():
			return false
		}
	}
}

func (sc *serverConn) restored(newAddr Target) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.prepared
	sc.prepared = 0
	if st == StrategySymmetric || st == StrategySyncSymmetric {
		if err := sc.writeLocked(message{typ: MsgServerMigrated, addr: newAddr}); err != nil {
			sc.s.logf("quicext: %v: %v", sc.conn.RemoteAddr(), err)
		}
	}
}

func (sc *serverConn) abort() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.prepared != 0 {
		sc.prepared = 0
		sc.writeLocked(message{typ: MsgMigrationCancel})
	}
}
