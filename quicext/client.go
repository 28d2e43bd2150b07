package quicext

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// ErrNoValidPath is carried by an EventFailed when no candidate answered a PATH_CHALLENGE.
var ErrNoValidPath = errors.New("quicext: no candidate address answered PATH_CHALLENGE")

// EventKind names a client migration event.
type EventKind int

// Event kinds.
const (
	// EventNegotiated: the server answered the negotiation; Event.Strategy is the intersection
	// (0: migration off).
	EventNegotiated EventKind = iota + 1
	// EventAnnounced: a migration was announced (MsgStrategy, SERVER_MIGRATION,
	// POOL_MIGRATION_ADDRESS); Event.Addr is the address if any.
	EventAnnounced
	// EventHold: Synchronized Symmetric, the client holds its sends.
	EventHold
	// EventSilence: the reactive detector found the server silent for Event.Silence.
	EventSilence
	// EventProbing: a PATH_CHALLENGE is being sent to Event.Addr (Event.Attempt counts from 1).
	EventProbing
	// EventSwitched: the connection now sends to Event.Addr.
	EventSwitched
	// EventFailed: probing gave up (Event.Err).
	EventFailed
	// EventCancelled: the server cancelled the migration (MIGRATION_CANCEL).
	EventCancelled
	// EventIgnored: a migration message was ignored (Event.Err says why).
	EventIgnored
)

func (k EventKind) String() string {
	return [...]string{"?", "negotiated", "announced", "hold", "silence", "probing", "switched", "failed", "cancelled", "ignored"}[k]
}

// Event is one client migration event.
type Event struct {
	Kind     EventKind
	Time     time.Time
	Strategy Strategy
	Addr     netip.AddrPort
	Attempt  int
	Silence  time.Duration
	Err      error
}

// ClientOptions configures the client side of the extension. Zero values take the defaults.
type ClientOptions struct {
	// Strategies offered in the negotiation; 0 means AllStrategies.
	Strategies Strategy
	// OnEvent is called for every event (from the extension's goroutines; must not block).
	OnEvent func(Event)
	// MinSilence is the lower bound of the silence threshold; the threshold is
	// max(MinSilence, 2*(smoothed RTT + 4*RTT variance + 25 ms)) (RFC 9002 section 6.2 PTO with
	// max_ack_delay 25 ms). Default 100 ms.
	MinSilence time.Duration
	// MinProbeInterval is the first probe wait; it doubles per round up to MaxProbeInterval.
	// Defaults 50 ms and 400 ms.
	MinProbeInterval, MaxProbeInterval time.Duration
	// ProbeTimeout bounds one migration attempt (all candidates, all rounds). Default 10 s.
	ProbeTimeout time.Duration
	// HoldTimeout bounds a Synchronized Symmetric hold. Default 5 s.
	HoldTimeout time.Duration
	// UniStreamHandler receives every server unidirectional stream that is not the extension
	// stream, after its stream-type varint (the extension owns AcceptUniStream). Nil: cancelled.
	// Not used when the ALPN is NextProtoH3Ext or "h3": those streams go unread to HTTP/3.
	UniStreamHandler func(str *quic.ReceiveStream, streamType uint64)
	// ListenAddr is the local address for the client sockets (one per path); default the
	// unspecified address of the server's family, port 0.
	ListenAddr *net.UDPAddr
}

func (o *ClientOptions) defaults() {
	if o.Strategies == 0 {
		o.Strategies = AllStrategies
	}
	if o.MinSilence == 0 {
		o.MinSilence = 100 * time.Millisecond
	}
	if o.MinProbeInterval == 0 {
		o.MinProbeInterval = 50 * time.Millisecond
	}
	if o.MaxProbeInterval == 0 {
		o.MaxProbeInterval = 400 * time.Millisecond
	}
	if o.ProbeTimeout == 0 {
		o.ProbeTimeout = 10 * time.Second
	}
	if o.HoldTimeout == 0 {
		o.HoldTimeout = 5 * time.Second
	}
}

// ClientConn is a QUIC client connection with the migration extension. Conn is an ordinary
// quic-go connection: use it for streams; do not call AcceptUniStream on it.
type ClientConn struct {
	Conn *quic.Conn

	opts     ClientOptions
	orig     *net.UDPAddr // address dialed; every pathConn reports reads as coming from it
	events   chan Event
	network  string
	localIP  net.IP
	tlsDone  chan struct{}
	quicConf *quic.Config
	netns    *dialNetNS // namespace of Dial's caller: every path's socket is opened there

	mu         sync.Mutex
	negotiated Strategy
	negDone    bool
	strategy   Strategy       // announced for the current migration
	explicit   netip.AddrPort // announced address (Explicit)
	pool       []netip.AddrPort
	server     netip.AddrPort // current server address
	active     *pathConn
	activePath *quic.Path // nil on the handshake path
	transports []*quic.Transport
	migCancel  context.CancelFunc
	migGen     int
	migrating  bool

	mode  streamMode
	raw   func(*quic.ReceiveStream) // modeStreamID, modeRaw: handler of the other streams
	rawCh chan struct{}             // closed when raw is set
	paths []*pathConn               // every socket of the connection (retired ones included)

	send        *quic.SendStream
	sendMu      sync.Mutex // serialises writes on send
	pingSeq     uint64
	pongSeq     uint64
	pingSince   time.Time // send time of the oldest unanswered ping; zero if none
	lastPingOut time.Time
}

// Dial opens a UDP socket, dials addr with quic-go and starts the extension. quicConf must not
// disable active migration on the server side (RFC 9000 section 18.2 disable_active_migration).
// The returned connection's streams are ordinary; migration events arrive on Events().
//
// When the negotiated ALPN protocol is NextProtoH3Ext, Dial opens the extension stream before
// it returns (so that it is stream 0x2, before HTTP/3's control stream) and treats the server's
// stream 0x3 as the server's extension stream; with http3.NextProtoH3 the extension is off.
// In both cases the other unidirectional streams go unread to the HTTP/3 connection (use
// DialHTTP3 or HTTP3Transport).
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, quicConf *quic.Config, opts ClientOptions) (*ClientConn, error) {
	opts.defaults()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve server address: %w", err)
	}
	c := &ClientConn{opts: opts, orig: raddr, events: make(chan Event, 256), quicConf: quicConf,
		rawCh: make(chan struct{})}
	c.network = "udp6"
	if raddr.IP.To4() != nil {
		c.network = "udp4"
	}
	if opts.ListenAddr != nil {
		c.localIP = opts.ListenAddr.IP
	}
	c.server = udpAddrPort(raddr)
	c.netns = captureNetNS()
	pc, err := c.newPathConn(raddr)
	if err != nil {
		c.netns.close()
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, raddr, tlsConf, quicConf)
	if err != nil {
		tr.Close()
		pc.Close()
		c.netns.close()
		return nil, fmt.Errorf("dial quic: %w", err)
	}
	c.Conn = conn
	c.active = pc
	c.transports = append(c.transports, tr)
	c.paths = append(c.paths, pc)
	c.mode = modeFor(conn.ConnectionState().TLS.NegotiatedProtocol)
	if c.mode == modeStreamID {
		// tr.Dial returned after the handshake completed; open the extension stream now, before
		// the caller opens any other unidirectional stream, so that it is stream 0x2.
		if err := c.openSend(); err != nil {
			conn.CloseWithError(0x0101, "") // H3_GENERAL_PROTOCOL_ERROR
			tr.Close()
			pc.Close()
			return nil, fmt.Errorf("open extension stream: %w", err)
		}
	}
	go c.run()
	go func() {
		<-conn.Context().Done()
		c.mu.Lock()
		trs := c.transports
		c.transports = nil
		c.mu.Unlock()
		for _, t := range trs {
			t.Close()
			t.Conn.Close()
		}
		c.netns.close()
	}()
	return c, nil
}

func (c *ClientConn) newPathConn(dst *net.UDPAddr) (*pathConn, error) {
	la := &net.UDPAddr{IP: c.localIP}
	var uc *net.UDPConn
	err := c.netns.do(func() (err error) {
		uc, err = net.ListenUDP(c.network, la)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp for path: %w", err)
	}
	return newPathConn(uc, dst, c.orig), nil
}

// Events returns the event channel (buffered; events are dropped when it is full).
func (c *ClientConn) Events() <-chan Event { return c.events }

// Negotiated returns the negotiated strategies (0 before or without negotiation).
func (c *ClientConn) Negotiated() Strategy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.negotiated
}

// ServerAddr returns the server address the connection currently sends to.
func (c *ClientConn) ServerAddr() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

// CloseWithError closes the connection and its sockets.
func (c *ClientConn) CloseWithError(code quic.ApplicationErrorCode, msg string) error {
	return c.Conn.CloseWithError(code, msg)
}

func (c *ClientConn) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if c.opts.OnEvent != nil {
		c.opts.OnEvent(e)
	}
	select {
	case c.events <- e:
	default:
	}
}

// openSend opens the client's extension stream and writes its type and NEGOTIATE.
func (c *ClientConn) openSend() error {
	send, err := c.Conn.OpenUniStream()
	if err != nil {
		return err
	}
	b := quicvarint.Append(nil, StreamType)
	b = appendMessage(b, message{typ: MsgNegotiate, value: uint64(c.opts.Strategies)})
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.send = send
	_, err = send.Write(b)
	return err
}

// attachRaw sets the handler of the unidirectional streams that are not the extension's
// (modeStreamID, modeRaw). Streams that arrived earlier wait for it.
func (c *ClientConn) attachRaw(h func(*quic.ReceiveStream)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil {
		return
	}
	c.raw = h
	close(c.rawCh)
}

func (c *ClientConn) handleRaw(str *quic.ReceiveStream) {
	select {
	case <-c.rawCh:
	case <-c.Conn.Context().Done():
		return
	}
	c.mu.Lock()
	h := c.raw
	c.mu.Unlock()
	h(str)
}

func (c *ClientConn) run() {
	ctx := c.Conn.Context()
	select {
	case <-c.Conn.HandshakeComplete():
	case <-ctx.Done():
		return
	}
	switch c.mode {
	case modeRaw:
		for {
			str, err := c.Conn.AcceptUniStream(ctx)
			if err != nil {
				return
			}
			go c.handleRaw(str)
		}
	case modeStreamID:
		go c.silenceLoop(ctx)
		for {
			str, err := c.Conn.AcceptUniStream(ctx)
			if err != nil {
				return
			}
			if str.StreamID() != serverExtStreamID {
				go c.handleRaw(str)
				continue
			}
			go func() {
				if t, err := readVarintByByte(str); err != nil || t != StreamType {
					str.CancelRead(0x0103) // H3_STREAM_CREATION_ERROR
					return
				}
				c.readServer(str, c.send)
			}()
		}
	}
	if err := c.openSend(); err != nil {
		return
	}
	send := c.send
	go c.silenceLoop(ctx)
	haveExt := false
	for {
		str, err := c.Conn.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		t, err := readVarintByByte(str)
		if err != nil {
			continue
		}
		if t != StreamType || haveExt {
			if t != StreamType && c.opts.UniStreamHandler != nil {
				go c.opts.UniStreamHandler(str, t)
			} else {
				str.CancelRead(0x0103)
			}
			continue
		}
		haveExt = true
		go c.readServer(str, send)
	}
}

func (c *ClientConn) readServer(str *quic.ReceiveStream, send *quic.SendStream) {
	r := bufio.NewReader(str)
	var count uint64
	for {
		m, err := readMessage(r)
		if err != nil {
			return
		}
		if m.typ == MsgNegotiate {
			c.mu.Lock()
			if c.negDone {
				c.mu.Unlock()
				continue
			}
			c.negDone = true
			c.negotiated = Strategy(m.value) & c.opts.Strategies
			neg := c.negotiated
			c.mu.Unlock()
			c.emit(Event{Kind: EventNegotiated, Strategy: neg})
			continue
		}
		if m.typ == MsgPong {
			c.mu.Lock()
			if m.value > c.pongSeq && m.value <= c.pingSeq {
				c.pongSeq = m.value
				if c.pongSeq == c.pingSeq {
					c.pingSince = time.Time{}
				}
			}
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		negDone := c.negDone
		c.mu.Unlock()
		if !negDone {
			// Migration messages before the negotiation answer are a protocol violation: the
			// server sends its answer first. Ignore (and do not count) them.
			c.emit(Event{Kind: EventIgnored, Err: fmt.Errorf("message %#x before negotiation", m.typ)})
			continue
		}
		switch m.typ {
		case MsgStrategy, MsgServerMigration, MsgServerMigrated, MsgPoolMigrationAddress, MsgMigrationCancel:
			c.handle(m)
			count++
			// The acknowledgement goes out before a hold starts (see handle).
			ack := appendMessage(nil, message{typ: MsgMigrationAck, value: count})
			c.sendMu.Lock()
			_, err := send.Write(ack)
			c.sendMu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// validCandidate checks an announced address: right family, a unicast address (not
// unspecified, multicast, broadcast, IPv4-mapped), a port, and loopback or link-local only when
// the current server address is too (no redirect to local services).
func (c *ClientConn) validCandidate(t Target) (netip.AddrPort, error) {
	c.mu.Lock()
	cur := c.server
	c.mu.Unlock()
	a := t.For(cur)
	switch {
	case !a.IsValid() || a.Port() == 0:
		return a, errors.New("no address of the connection's family")
	case a.Addr().Is4In6():
		// A dual-stack socket sends a mapped address over IPv4, and netip's IsUnspecified is
		// false for ::ffff:0.0.0.0: never accept a mapped address for an IPv6 connection.
		return a, fmt.Errorf("IPv4-mapped address %v in the IPv6 field", a)
	case a.Addr().IsUnspecified(), a.Addr().IsMulticast(), a.Addr() == netip.IPv4Unspecified(),
		a.Addr().Is4() && a.Addr().As4() == [4]byte{255, 255, 255, 255}:
		return a, fmt.Errorf("address %v is not unicast", a)
	case a.Addr().IsLoopback() && !cur.Addr().IsLoopback():
		return a, fmt.Errorf("loopback address %v for a non-loopback server", a)
	case a.Addr().IsLinkLocalUnicast() && !cur.Addr().IsLinkLocalUnicast():
		return a, fmt.Errorf("link-local address %v for a non-link-local server", a)
	}
	return a, nil
}

func (c *ClientConn) handle(m message) {
	c.mu.Lock()
	neg := c.negotiated
	c.mu.Unlock()
	switch m.typ {
	case MsgStrategy:
		s := Strategy(m.value)
		if !s.isSingle() || !neg.Has(s) {
			c.emit(Event{Kind: EventIgnored, Err: fmt.Errorf("strategy %v not negotiated", s)})
			return
		}
		c.mu.Lock()
		c.strategy = s
		c.mu.Unlock()
		c.emit(Event{Kind: EventAnnounced, Strategy: s})
	case MsgServerMigration:
		c.mu.Lock()
		st := c.strategy
		c.mu.Unlock()
		if !m.hasAddr {
			if st != StrategySyncSymmetric {
				c.emit(Event{Kind: EventIgnored, Err: errors.New("empty SERVER_MIGRATION without Synchronized Symmetric")})
				return
			}
			c.mu.Lock()
			pc := c.active
			srtt := c.Conn.ConnectionStats().SmoothedRTT
			c.mu.Unlock()
			// Let the acknowledgement of this message leave before the hold starts.
			pc.hold(10*time.Millisecond+srtt, c.opts.HoldTimeout)
			c.emit(Event{Kind: EventHold, Strategy: st})
			return
		}
		if st != StrategyExplicit && st != StrategyExplicitReactive {
			c.emit(Event{Kind: EventIgnored, Err: errors.New("SERVER_MIGRATION with address without Explicit")})
			return
		}
		a, err := c.validCandidate(m.addr)
		if err != nil {
			c.emit(Event{Kind: EventIgnored, Err: err})
			return
		}
		c.mu.Lock()
		c.explicit = a
		c.mu.Unlock()
		c.emit(Event{Kind: EventAnnounced, Strategy: st, Addr: a})
		if st == StrategyExplicit {
			c.startMigration([]netip.AddrPort{a})
		}
	case MsgServerMigrated:
		if !neg.Has(StrategySymmetric) && !neg.Has(StrategySyncSymmetric) {
			c.emit(Event{Kind: EventIgnored, Err: errors.New("SERVER_MIGRATED without Symmetric")})
			return
		}
		a, err := c.validCandidate(m.addr)
		c.mu.Lock()
		pc := c.active
		c.mu.Unlock()
		pc.release(err == nil)
		if err != nil {
			c.emit(Event{Kind: EventIgnored, Err: err})
			return
		}
		c.emit(Event{Kind: EventAnnounced, Strategy: StrategySymmetric, Addr: a})
		c.startMigration([]netip.AddrPort{a})
	case MsgPoolMigrationAddress:
		if !neg.Has(StrategyPool) {
			c.emit(Event{Kind: EventIgnored, Err: errors.New("POOL_MIGRATION_ADDRESS without Pool")})
			return
		}
		a, err := c.validCandidate(m.addr)
		if err != nil {
			c.emit(Event{Kind: EventIgnored, Err: err})
			return
		}
		c.mu.Lock()
		full := len(c.pool) >= MaxPool
		if !full {
			c.pool = append(c.pool, a)
		}
		c.mu.Unlock()
		if full {
			c.emit(Event{Kind: EventIgnored, Err: fmt.Errorf("pool full (%d addresses)", MaxPool)})
			return
		}
		c.emit(Event{Kind: EventAnnounced, Strategy: StrategyPool, Addr: a})
	case MsgMigrationCancel:
		c.mu.Lock()
		c.strategy = 0
		c.explicit = netip.AddrPort{}
		pc := c.active
		if c.migCancel != nil {
			c.migCancel()
		}
		c.mu.Unlock()
		pc.release(false)
		c.emit(Event{Kind: EventCancelled})
	}
}

// silenceThreshold is max(MinSilence, 2*(srtt + 4*rttvar + 25 ms)).
func (c *ClientConn) silenceThreshold() time.Duration {
	st := c.Conn.ConnectionStats()
	return max(c.opts.MinSilence, 2*(st.SmoothedRTT+4*st.MeanDeviation+25*time.Millisecond))
}

// silenceLoop is the reactive detector: it triggers probing of the Explicit-reactive address,
// else of the pool, when the active path has gone unanswered longer than the threshold. Two
// signals: (1) at least two packets written and none read for the threshold (a frozen server);
// (2) while a reactive or Pool migration is announced, a MsgPing on the extension stream every
// MinSilence/2 whose MsgPong has not come back within the threshold (a restored server that
// reaches the client while the client's packets still go to the dead address).
func (c *ClientConn) silenceLoop(ctx context.Context) {
	tick := time.NewTicker(c.opts.MinSilence / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mu.Lock()
		neg, st, pc, busy := c.negotiated, c.strategy, c.active, c.migrating
		explicit, pool := c.explicit, make([]netip.AddrPort, 0, len(c.pool))
		for _, a := range c.pool {
			// The current address is the silent one: probing it validates nothing new, and
			// behind steerd's datapath it still answers (forwarded), which would "switch" the
			// client onto the path it is already on.
			if a != c.server {
				pool = append(pool, a)
			}
		}
		c.mu.Unlock()
		if busy || !neg.Has(StrategyExplicitReactive) && !neg.Has(StrategyPool) {
			continue
		}
		armed := st == StrategyExplicitReactive || st == StrategyPool
		thr := c.silenceThreshold()
		silent := pc.silentFor()
		if armed {
			if ps := c.pingSilence(); ps > silent {
				silent = ps
			}
		}
		if silent == 0 || silent < thr {
			continue
		}
		var cands []netip.AddrPort
		switch {
		case st == StrategyExplicitReactive && explicit.IsValid():
			cands = []netip.AddrPort{explicit}
		case neg.Has(StrategyPool) && len(pool) > 0:
			cands = pool
		default:
			continue
		}
		c.emit(Event{Kind: EventSilence, Silence: silent})
		c.startMigration(cands)
	}
}

// pingSilence sends a MsgPing when due and returns the age of the oldest unanswered one.
func (c *ClientConn) pingSilence() time.Duration {
	now := time.Now()
	c.mu.Lock()
	due := now.Sub(c.lastPingOut) >= c.opts.MinSilence/2
	var seq uint64
	if due {
		c.pingSeq++
		seq = c.pingSeq
		c.lastPingOut = now
		if c.pingSince.IsZero() {
			c.pingSince = now
		}
	}
	since := c.pingSince
	c.mu.Unlock()
	if due {
		c.sendMu.Lock()
		if c.send != nil {
			c.send.Write(appendMessage(nil, message{typ: MsgPing, value: seq}))
		}
		c.sendMu.Unlock()
	}
	if since.IsZero() {
		return 0
	}
	return now.Sub(since)
}

// startMigration cancels a running migration attempt and starts one over cands.
func (c *ClientConn) startMigration(cands []netip.AddrPort) {
	ctx, cancel := context.WithTimeout(c.Conn.Context(), c.opts.ProbeTimeout)
	c.mu.Lock()
	if c.migCancel != nil {
		c.migCancel()
	}
	c.migGen++
	gen := c.migGen
	c.migCancel = cancel
	c.migrating = true
	c.mu.Unlock()
	go func() {
		defer cancel()
		err := c.migrate(ctx, cands)
		c.mu.Lock()
		if c.migGen == gen {
			c.migrating = false
			c.migCancel = nil
		}
		c.mu.Unlock()
		if err != nil && !errors.Is(err, context.Canceled) {
			c.emit(Event{Kind: EventFailed, Err: err})
		}
	}()
}

type probePath struct {
	pc   *pathConn
	tr   *quic.Transport
	path *quic.Path
}

// migrate probes cands in turn, one PATH_CHALLENGE per candidate per round, with a wait that
// doubles per round (MinProbeInterval..MaxProbeInterval), and switches to the first one whose
// PATH_RESPONSE arrives (quic-go validates it, RFC 9000 section 8.2). It never switches to an
// unvalidated path: every Probe starts a fresh challenge (quic-go forgets the earlier ones), so
// only the candidate probed in that attempt can validate it.
//
// One quic.Path (one new local socket, one new connection ID) serves the whole attempt: the
// destination rotates over the candidates. The server's spare connection IDs are few (quic-go
// advertises active_connection_id_limit 4) and no new ones arrive while the active path is dead,
// so a path per candidate would run out. This sends one connection ID to several addresses of
// the same service, which RFC 9000 section 9.5 discourages for linkability; the addresses were
// all announced by the server itself over the encrypted extension stream.
func (c *ClientConn) migrate(ctx context.Context, cands []netip.AddrPort) error {
	var p *probePath
	defer func() {
		if p != nil && p.path != nil {
			// abandoned: quic-go will not send on it again (Path.Close), release its socket
			p.path.Close()
			p.pc.retire()
		}
	}()
	wait := c.opts.MinProbeInterval
	attempt := 0
	for {
		attempt++
		for _, a := range cands {
			if ctx.Err() != nil {
				return fmt.Errorf("migrate to %v: %w", cands, ErrNoValidPath)
			}
			if p == nil {
				var err error
				if p, err = c.addPath(a); err != nil {
					return fmt.Errorf("migrate to %v: %w", a, err)
				}
			}
			p.pc.dst.Store(net.UDPAddrFromAddrPort(a))
			c.emit(Event{Kind: EventProbing, Addr: a, Attempt: attempt})
			pctx, cancel := context.WithTimeout(ctx, wait)
			err := p.path.Probe(pctx)
			cancel()
			if err != nil {
				if errors.Is(err, quic.ErrPathClosed) || c.Conn.Context().Err() != nil {
					return fmt.Errorf("probe %v: %w", a, err)
				}
				continue
			}
			if err := p.path.Switch(); err != nil {
				continue
			}
			c.mu.Lock()
			oldPath, oldPC := c.activePath, c.active
			c.activePath = p.path
			c.active = p.pc
			c.server = a
			c.strategy = 0
			c.explicit = netip.AddrPort{}
			c.pingSince = time.Time{}
			c.pongSeq = c.pingSeq
			c.mu.Unlock()
			p = nil // active now: keep it open
			if oldPath != nil {
				oldPath.Close()
			}
			// The old socket may still receive packets the server sent before it saw the new
			// path; keep it for retireGrace, then release it (see pathConn.retire).
			time.AfterFunc(c.retireGrace(), oldPC.retire)
			c.emit(Event{Kind: EventSwitched, Addr: a, Attempt: attempt})
			return nil
		}
		wait = min(wait*2, c.opts.MaxProbeInterval)
	}
}

func (c *ClientConn) addPath(a netip.AddrPort) (*probePath, error) {
	dst := net.UDPAddrFromAddrPort(a)
	pc, err := c.newPathConn(dst)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	path, err := c.Conn.AddPath(tr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("add path: %w", err)
	}
	c.mu.Lock()
	c.transports = append(c.transports, tr)
	c.paths = append(c.paths, pc)
	c.mu.Unlock()
	return &probePath{pc: pc, tr: tr, path: path}, nil
}

// retireGrace is how long an old path's socket stays open after a switch:
// max(500 ms, 3 x (smoothed RTT + 4 x RTT variance)), three RFC 9002 PTOs without
// max_ack_delay, enough for packets the server sent before it saw the new path.
func (c *ClientConn) retireGrace() time.Duration {
	st := c.Conn.ConnectionStats()
	return max(500*time.Millisecond, 3*(st.SmoothedRTT+4*st.MeanDeviation))
}

// openSockets returns the number of the connection's UDP sockets that are still open.
func (c *ClientConn) openSockets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.paths {
		if !p.retired.Load() {
			n++
		}
	}
	return n
}
