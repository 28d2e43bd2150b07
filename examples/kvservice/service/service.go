// Package service is the QUIC side of examples/kvservice: it serves the examples/kv protocol on
// every bidirectional stream of every connection accepted by a quicext.Server (the server side
// of steerd's QUIC server-migration extension), one server per listen address, each on a
// quic.Transport whose ConnectionIDGenerator is a connid.Generator, so every CID the service
// issues carries its QUIC-LB server ID (its instance ID, draft-ietf-quic-load-balancers-21
// section 3), which the XDP datapath routes by.
//
// The binary in the parent directory is a thin CLI over this package; tests and the benchmark
// harness run the service in-process with New and Serve.
package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/quicext"
)

// Defaults of Config.
const (
	// DefaultServerIDLen is the QUIC-LB server ID length in bytes (the XDP program's sid_len).
	DefaultServerIDLen = 2
	// DefaultCIDLen is the total CID length in bytes: 1 (first octet) + 2 (server ID) + 8
	// (nonce; connid.Generator recommends >= 8 nonce bytes so that random nonces do not collide).
	DefaultCIDLen = 11
	// DefaultIdleTimeout is the QUIC idle timeout (RFC 9000 section 10.1). It must exceed the
	// longest freeze of a migration, or clients drop their connections while the service moves.
	DefaultIdleTimeout = 30 * time.Second
)

// CloseCodeShutdown is the application error code (RFC 9000 section 20.2) with which Close
// closes the connections.
const CloseCodeShutdown quic.ApplicationErrorCode = 0

// ErrWildcard is returned by New for a listen address without a specific IP. After a migration
// the service runs in another pod namespace; quic-go answers on a wildcard socket with the
// destination address of the received packet as source (IP_PKTINFO), and the packets it sends
// before the client's next one would carry the stale source, so the service binds the pod address.
var ErrWildcard = errors.New("service: wildcard listen address")

// Config configures a Service.
type Config struct {
	// Listen lists the addresses to bind, "host:port" with a specific IP (the pod's IPv4 and/or
	// IPv6 address). Ignored when Conns is set.
	Listen []string
	// Conns are already-bound packet conns to serve on instead of Listen (tests use
	// quicexttest.MovableConn). The service closes them on Close.
	Conns []net.PacketConn
	// Instance is the QUIC-LB server ID carried by every CID the service issues.
	Instance connid.InstanceID
	// ServerIDLen and CIDLen are the CID layout in bytes (connid.DefaultConfig(ServerIDLen,
	// CIDLen-1-ServerIDLen)); 0 means DefaultServerIDLen and DefaultCIDLen.
	ServerIDLen, CIDLen int
	// Strategies the quicext servers support; 0 means quicext.AllStrategies.
	Strategies quicext.Strategy
	// Pool is the candidate address list for the Pool strategy.
	Pool []quicext.Target
	// TLS is the server TLS config; it must hold a certificate. kv.ALPN is used when NextProtos
	// is empty.
	TLS *tls.Config
	// QUIC is the quic-go config; nil means MaxIdleTimeout DefaultIdleTimeout.
	QUIC *quic.Config
	// Store is the state served; nil means a new kv.Store.
	Store *kv.Store
	// Logger logs; nil means slog.Default().
	Logger *slog.Logger
}

// Listener is one listen address of a Service.
type Listener struct {
	// Server runs the migration extension on the connections of this address.
	Server *quicext.Server
	// Transport is the quic-go transport over Conn, with the connid.Generator.
	Transport *quic.Transport
	// Conn is the UDP socket (or the Config.Conns entry).
	Conn net.PacketConn
}

// Service serves the kv protocol over QUIC with the migration extension.
type Service struct {
	cfg       Config
	log       *slog.Logger
	store     *kv.Store
	gen       *connid.Generator
	listeners []Listener

	conns   atomic.Int64
	streams atomic.Int64
	total   atomic.Int64

	mu     sync.Mutex
	active map[*quic.Conn]struct{}

	closeOnce sync.Once
}

// CheckListenAddr returns an error wrapping ErrWildcard when addr ("host:port") has an empty or
// unspecified host, and a parse error when it is not host:port with an IP literal.
func CheckListenAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("check listen address %q: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("check listen address %q: bind the pod address (after a move quic-go would send from a stale IP_PKTINFO source): %w", addr, ErrWildcard)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("check listen address %q: want an IP literal: %w", addr, err)
	}
	if ip.Unmap().IsUnspecified() {
		return fmt.Errorf("check listen address %q: bind the pod address (after a move quic-go would send from a stale IP_PKTINFO source): %w", addr, ErrWildcard)
	}
	return nil
}

// New binds the listen addresses (or takes Conns), builds the CID generator and starts one
// quicext.Server per address. Errors wrap ErrWildcard, connid's config and range errors
// (connid.ErrBadCIDLen, connid.ErrServerIDRange, ...), or the bind error.
func New(cfg Config) (*Service, error) {
	if cfg.ServerIDLen == 0 {
		cfg.ServerIDLen = DefaultServerIDLen
	}
	if cfg.CIDLen == 0 {
		cfg.CIDLen = DefaultCIDLen
	}
	if cfg.TLS == nil || (len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil) {
		return nil, errors.New("new service: TLS config without a certificate")
	}
	if len(cfg.Listen) == 0 && len(cfg.Conns) == 0 {
		return nil, errors.New("new service: no listen address")
	}
	tlsConf := cfg.TLS.Clone()
	if len(tlsConf.NextProtos) == 0 {
		tlsConf.NextProtos = []string{kv.ALPN}
	}
	codec, err := connid.NewCodec(connid.DefaultConfig(cfg.ServerIDLen, cfg.CIDLen-1-cfg.ServerIDLen))
	if err != nil {
		return nil, fmt.Errorf("new service: CID layout (server ID %d bytes, CID %d bytes): %w", cfg.ServerIDLen, cfg.CIDLen, err)
	}
	gen, err := connid.NewGenerator(codec, cfg.Instance)
	if err != nil {
		return nil, fmt.Errorf("new service: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger, store: cfg.Store, gen: gen, active: map[*quic.Conn]struct{}{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.store == nil {
		s.store = kv.NewStore()
	}
	qc := cfg.QUIC
	if qc == nil {
		qc = &quic.Config{MaxIdleTimeout: DefaultIdleTimeout}
	}
	conns := cfg.Conns
	if len(conns) == 0 {
		for _, a := range cfg.Listen {
			if err := CheckListenAddr(a); err != nil {
				closeAll(conns)
				return nil, fmt.Errorf("new service: %w", err)
			}
			ua, err := net.ResolveUDPAddr("udp", a)
			if err != nil {
				closeAll(conns)
				return nil, fmt.Errorf("new service: resolve %s: %w", a, err)
			}
			uc, err := net.ListenUDP("udp", ua)
			if err != nil {
				closeAll(conns)
				return nil, fmt.Errorf("new service: %w", err)
			}
			conns = append(conns, uc)
		}
	}
	for _, pc := range conns {
		tr := &quic.Transport{Conn: pc, ConnectionIDGenerator: gen}
		srv, err := quicext.NewServer(tr, tlsConf, qc, quicext.ServerConfig{
			Strategies: cfg.Strategies,
			Pool:       cfg.Pool,
			Logf: func(format string, args ...any) {
				s.log.Warn(fmt.Sprintf(format, args...), "component", "quicext")
			},
		})
		if err != nil {
			s.closeListeners()
			closeAll(conns[len(s.listeners):])
			return nil, fmt.Errorf("new service: %w", err)
		}
		s.listeners = append(s.listeners, Listener{Server: srv, Transport: tr, Conn: pc})
	}
	return s, nil
}

func closeAll(cs []net.PacketConn) {
	for _, c := range cs {
		c.Close()
	}
}

// Listeners returns the listeners, in the order of Config.Listen (or Config.Conns).
func (s *Service) Listeners() []Listener { return s.listeners }

// Servers returns the quicext servers, one per listener (for the control endpoint).
func (s *Service) Servers() []*quicext.Server {
	out := make([]*quicext.Server, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Server
	}
	return out
}

// Addrs returns the local addresses of the listeners.
func (s *Service) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Server.Addr()
	}
	return out
}

// Store returns the served store.
func (s *Service) Store() *kv.Store { return s.store }

// Generator returns the CID generator (a restore that takes a new instance ID calls SetInstance).
func (s *Service) Generator() *connid.Generator { return s.gen }

// Stats is a snapshot of the service.
type Stats struct {
	Conns       int64    `json:"conns"`        // open connections
	TotalConns  int64    `json:"total_conns"`  // connections accepted since start
	Streams     int64    `json:"streams"`      // open streams
	Store       kv.Stats `json:"store"`        // store counters
	InstanceID  uint64   `json:"instance_id"`  // QUIC-LB server ID of new CIDs
	ListenAddrs []string `json:"listen_addrs"` // bound addresses
}

// Stats returns a snapshot.
func (s *Service) Stats() Stats {
	st := Stats{Conns: s.conns.Load(), TotalConns: s.total.Load(), Streams: s.streams.Load(),
		Store: s.store.Stats(), InstanceID: uint64(s.gen.Instance())}
	for _, a := range s.Addrs() {
		st.ListenAddrs = append(st.ListenAddrs, a.String())
	}
	return st
}

// Serve accepts connections on every listener until ctx ends, then closes the service and
// returns nil. It returns the first accept error other than the end of ctx (after closing).
func (s *Service) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(s.listeners))
	var wg sync.WaitGroup
	for _, l := range s.listeners {
		wg.Go(func() { errc <- s.acceptLoop(ctx, l.Server) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	s.Close()
	wg.Wait()
	return err
}

func (s *Service) acceptLoop(ctx context.Context, srv *quicext.Server) error {
	for {
		c, err := srv.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quicext.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("accept on %v: %w", srv.Addr(), err)
		}
		go s.handleConn(c)
	}
}

func (s *Service) handleConn(c *quic.Conn) {
	s.mu.Lock()
	s.active[c] = struct{}{}
	s.mu.Unlock()
	s.conns.Add(1)
	s.total.Add(1)
	log := s.log.With("remote", c.RemoteAddr().String())
	log.Info("connection accepted", "local", c.LocalAddr().String())
	defer func() {
		s.conns.Add(-1)
		s.mu.Lock()
		delete(s.active, c)
		s.mu.Unlock()
		log.Info("connection closed", "cause", context.Cause(c.Context()))
	}()
	for {
		str, err := c.AcceptStream(c.Context())
		if err != nil {
			return
		}
		s.streams.Add(1)
		go func() {
			defer s.streams.Add(-1)
			if err := s.store.Serve(str); err != nil {
				log.Debug("stream ended", "stream", str.StreamID(), "err", err)
				str.CancelRead(0)
			}
			str.Close()
		}()
	}
}

// Close closes every connection with CloseCodeShutdown, the listeners, transports and sockets.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		for c := range s.active {
			c.CloseWithError(CloseCodeShutdown, "service shutting down")
		}
		s.mu.Unlock()
		s.closeListeners()
	})
	return nil
}

func (s *Service) closeListeners() {
	for _, l := range s.listeners {
		l.Server.Close()
		l.Transport.Close()
		l.Conn.Close()
	}
}
