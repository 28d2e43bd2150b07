package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pki"
)

// Peer channel: QUIC (RFC 9000) with mutual TLS 1.3 (pki.ServerConfig / pki.ClientConfig, ALPN
// pki.ALPN). One bidirectional stream per operation:
//
//	caller -> peer : peerRequest JSON, '\n'  [opImage: Size bytes, then the 32-byte SHA-256]  FIN
//	peer -> caller : PeerReply JSON, '\n'  FIN
//
// The peer acts only for nodes whose certificate chains to the cluster CA and names a configured
// peer; a handshake with any other certificate fails before a stream can be opened.

// PeerIdleTimeout is the QUIC idle timeout of the peer channel: how long a migration takes at most
// to notice a destination that died.
const PeerIdleTimeout = 5 * time.Second

// maxHeader bounds a request or reply line (bytes).
const maxHeader = 1 << 20

// peerQUICConfig is the QUIC configuration of both ends of the peer channel.
func peerQUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		// A destination that dies while the source is frozen must be noticed fast: the service
		// stays frozen until the transfer fails. quic-go ignores ICMP port unreachable, so a dead
		// peer shows only as silence: keep-alive PINGs every second, idle timeout 5 s (RFC 9000
		// section 10.1).
		MaxIdleTimeout:     PeerIdleTimeout,
		KeepAlivePeriod:    time.Second,
		MaxIncomingStreams: 256,
		// Flow control (RFC 9000 section 4): an image part of 25 MiB should never wait for
		// MAX_STREAM_DATA on a link with a sub-millisecond RTT; quic-go grows the windows up to
		// the maxima when the reader keeps up.
		InitialStreamReceiveWindow:     8 << 20,
		MaxStreamReceiveWindow:         32 << 20,
		InitialConnectionReceiveWindow: 16 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
	}
}

// Bulk image transfer. A checkpoint image is mostly one large pages-*.img file (the service's
// memory; CRIU images, https://criu.org/Images) next to a few dozen small ones. One QUIC
// connection moves the large file at the pace of one congestion window per RTT (RFC 9002
// section 7), with one connection goroutine packing and one unpacking every packet: the source
// splits a large file into parts and sends them at once, each on its own stream of its own
// connection (bulkConns connections to the peer, dialed when a migration prepares the
// destination, so no handshake falls into the freeze time).
const (
	// partMin is the size of the smallest file sent in parts (bytes): two parts of partMin/2 or
	// more each.
	partMin = 16 << 20
	// bulkConns is the number of QUIC connections to a peer that carry image parts, the
	// operations' connection included; a file goes in at most bulkConns parts.
	bulkConns = 4
	// copyBufSize is the copy buffer of an image stream, on both ends (bytes).
	copyBufSize = 256 << 10
)

// replyReaders holds the readers of reply lines (*bufio.Reader of maxHeader bytes): one per
// operation would put a MiB of garbage on the heap for every image file.
var replyReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, maxHeader) }}

// requestReaders holds the readers of request streams (*bufio.Reader of 64 KiB).
var requestReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// copyBufs holds copyBufSize buffers (*[]byte) for image streams.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// peerHandler is what a peer server serves (the Daemon).
type peerHandler interface {
	servePeer(ctx context.Context, from, op string, body json.RawMessage) *PeerReply
	receiveImagePart(migration, name string, r io.Reader, off, size, fileSize int64, verify func([32]byte) error) ([32]byte, error)
}

// PeerServer accepts peer-channel connections.
type PeerServer struct {
	ln  *quic.Listener
	h   peerHandler
	log *slog.Logger
	wg  sync.WaitGroup
	// ops counts operations served (tests check that refused peers reached none).
	mu  sync.Mutex
	ops int
}

// ListenPeers listens on the UDP address addr for peers presenting cert chains to roots whose
// node name allowed accepts.
func ListenPeers(addr string, cert tls.Certificate, roots *x509.CertPool, allowed func(string) bool, h peerHandler, log *slog.Logger) (*PeerServer, error) {
	ln, err := quic.ListenAddr(addr, pki.ServerConfig(cert, roots, allowed), peerQUICConfig())
	if err != nil {
		return nil, fmt.Errorf("listen peer channel on %s: %w", addr, err)
	}
	s := &PeerServer{ln: ln, h: h, log: log}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the UDP address the server listens on.
func (s *PeerServer) Addr() net.Addr { return s.ln.Addr() }

// Ops returns the number of operations served.
func (s *PeerServer) Ops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops
}

// Close stops accepting and waits for the accept loop.
func (s *PeerServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func (s *PeerServer) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept(context.Background())
		if err != nil {
			return
		}
		from := pki.PeerName(conn.ConnectionState().TLS)
		s.log.Debug("peer connected", "peer", from, "remote", conn.RemoteAddr())
		go s.serveConn(conn, from)
	}
}

func (s *PeerServer) serveConn(conn *quic.Conn, from string) {
	for {
		str, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go s.serveStream(conn.Context(), str, from)
	}
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func readLine(br *bufio.Reader, v any) error {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return fmt.Errorf("read line: longer than %d bytes", br.Size())
	}
	if err != nil {
		return fmt.Errorf("read line: %w", err)
	}
	return json.Unmarshal(line, v)
}

func (s *PeerServer) serveStream(ctx context.Context, str *quic.Stream, from string) {
	defer str.Close()
	br := requestReaders.Get().(*bufio.Reader)
	br.Reset(str)
	defer func() { br.Reset(nil); requestReaders.Put(br) }()
	var req peerRequest
	reply := func(r *PeerReply) {
		if err := writeLine(str, r); err != nil {
			s.log.Warn("peer reply", "peer", from, "op", req.Op, "error", err)
		}
	}
	if err := readLine(br, &req); err != nil {
		reply(&PeerReply{Error: &api.Error{Phase: api.PhasePeer, Cause: fmt.Sprintf("bad request header: %v", err)}})
		str.CancelRead(1)
		return
	}
	s.mu.Lock()
	s.ops++
	s.mu.Unlock()
	if req.Op != opImage {
		reply(s.h.servePeer(ctx, from, req.Op, req.Body))
		return
	}
	if req.Size < 0 {
		reply(&PeerReply{Error: &api.Error{Phase: api.PhaseTransfer, Cause: "negative image size"}})
		return
	}
	// Only the migration's source sends its image (a handler without checkSource: tests).
	if sc, ok := s.h.(interface{ checkSource(from, id string) error }); ok {
		if err := sc.checkSource(from, req.Migration); err != nil {
			reply(&PeerReply{Error: &api.Error{Phase: api.PhaseTransfer, Cause: fmt.Sprintf("receive image file %s: %v", req.Name, err)}})
			str.CancelRead(1)
			return
		}
	}
	fileSize := req.FileSize
	if fileSize == 0 {
		fileSize = req.Size // the whole file
	}
	// The 32-byte trailer follows the file (or part): verify it before keeping the bytes.
	sum, err := s.h.receiveImagePart(req.Migration, req.Name, br, req.Offset, req.Size, fileSize, func(got [32]byte) error {
		var want [32]byte
		if _, err := io.ReadFull(br, want[:]); err != nil {
			return fmt.Errorf("read checksum trailer: %w", err)
		}
		if want != got {
			return fmt.Errorf("%w: sender %x, received %x", ErrChecksum, want[:8], got[:8])
		}
		return nil
	})
	r := &PeerReply{SHA256: sha256Hex(sum), Bytes: req.Size}
	if err != nil {
		if d, ok := s.h.(*Daemon); ok {
			r.Error = d.apiErr(api.PhaseTransfer, err)
		} else {
			r.Error = &api.Error{Phase: api.PhaseTransfer, Cause: err.Error()}
		}
		str.CancelRead(1)
	}
	reply(r)
}

// PeerClient is the Peer of one configured node over the peer channel. It dials on first use and
// redials when a connection is gone. Operations go on its first connection; image parts also on
// up to bulkConns-1 more.
type PeerClient struct {
	name, addr string
	tls        *tls.Config

	conns  [bulkConns]peerConn
	closed atomic.Bool
}

// peerConn is one QUIC connection of a PeerClient; mu serializes its dialing.
type peerConn struct {
	mu   sync.Mutex
	conn *quic.Conn
}

// NewPeerClient returns a client for node name at the UDP address addr, authenticating with cert
// and accepting only a certificate for name chained to roots.
func NewPeerClient(name, addr string, cert tls.Certificate, roots *x509.CertPool) *PeerClient {
	return &PeerClient{name: name, addr: addr, tls: pki.ClientConfig(cert, roots, name)}
}

// connect returns connection i (0: the operations' connection), dialing it if needed.
func (c *PeerClient) connect(ctx context.Context, i int) (*quic.Conn, error) {
	pc := &c.conns[i]
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.conn != nil && pc.conn.Context().Err() == nil {
		return pc.conn, nil
	}
	if c.closed.Load() {
		return nil, fmt.Errorf("dial peer %s: %w", c.name, net.ErrClosed)
	}
	conn, err := quic.DialAddr(ctx, c.addr, c.tls.Clone(), peerQUICConfig())
	if err != nil {
		return nil, fmt.Errorf("dial peer %s at %s: %w", c.name, c.addr, err)
	}
	if c.closed.Load() { // closed while dialing
		conn.CloseWithError(0, "closing")
		return nil, fmt.Errorf("dial peer %s: %w", c.name, net.ErrClosed)
	}
	pc.conn = conn
	return conn, nil
}

// warm dials the bulk connections in the background (errors are left to the transfer, which
// falls back to the operations' connection).
func (c *PeerClient) warm() {
	for i := 1; i < bulkConns; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), PeerIdleTimeout)
			defer cancel()
			c.connect(ctx, i)
		}()
	}
}

// Close closes the connections, if any; the client dials no more.
func (c *PeerClient) Close() error {
	c.closed.Store(true)
	var err error
	for i := range c.conns {
		pc := &c.conns[i]
		pc.mu.Lock()
		if pc.conn != nil {
			if cerr := pc.conn.CloseWithError(0, "closing"); i == 0 {
				err = cerr
			}
		}
		pc.mu.Unlock()
	}
	return err
}

// open opens a stream on connection i, redialing a stale connection once; a bulk connection
// that cannot be had gives way to the operations' connection.
func (c *PeerClient) open(ctx context.Context, i int) (*quic.Stream, error) {
	for try := 0; ; try++ {
		conn, err := c.connect(ctx, i)
		if err != nil {
			if i != 0 && ctx.Err() == nil {
				i, try = 0, -1
				continue
			}
			return nil, err
		}
		str, err := conn.OpenStreamSync(ctx)
		if err == nil {
			context.AfterFunc(ctx, func() { str.CancelRead(2); str.CancelWrite(2) })
			return str, nil
		}
		if try > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("open stream to %s: %w", c.name, err)
		}
		pc := &c.conns[i]
		pc.mu.Lock()
		if pc.conn == conn {
			pc.conn = nil // stale connection: redial once
		}
		pc.mu.Unlock()
	}
}

func (c *PeerClient) finish(str *quic.Stream, op string) (*PeerReply, error) {
	br := replyReaders.Get().(*bufio.Reader)
	br.Reset(str)
	defer func() { br.Reset(nil); replyReaders.Put(br) }()
	var r PeerReply
	if err := readLine(br, &r); err != nil {
		return nil, fmt.Errorf("peer %s: %s: %w", c.name, op, err)
	}
	if r.Error != nil {
		if r.Error.Node == "" {
			r.Error.Node = c.name
		}
		return &r, r.Error
	}
	return &r, nil
}

// Call implements Peer. A successful opPrepareRestore also dials the bulk connections for the
// image that follows.
func (c *PeerClient) Call(ctx context.Context, op string, req any) (*PeerReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", op, err)
	}
	str, err := c.open(ctx, 0)
	if err != nil {
		return nil, err
	}
	if err := writeLine(str, peerRequest{Op: op, Body: body}); err != nil {
		return nil, fmt.Errorf("peer %s: send %s: %w", c.name, op, err)
	}
	str.Close()
	r, err := c.finish(str, op)
	if err == nil && op == opPrepareRestore {
		c.warm()
	}
	return r, err
}

// SendImage implements Peer. A file of at least partMin bytes read from an io.ReaderAt (an
// *os.File) goes in up to bulkConns parts at once, each on its own connection, each with its own
// SHA-256 verified by the peer; the first part that fails cancels the others. Anything else goes
// whole on one stream.
func (c *PeerClient) SendImage(ctx context.Context, migration, name string, r io.Reader, size int64, progress func(int64)) error {
	ra, ok := r.(io.ReaderAt)
	if !ok || size < partMin {
		return c.sendPart(ctx, 0, migration, name, r, 0, size, 0, progress)
	}
	parts := int(min(int64(bulkConns), size/(partMin/2)))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		total int64
		sent  = make([]int64, parts)
		wg    sync.WaitGroup
	)
	for i := range parts {
		off, end := size*int64(i)/int64(parts), size*int64(i+1)/int64(parts)
		wg.Go(func() {
			err := c.sendPart(ctx, i, migration, name, io.NewSectionReader(ra, off, end-off), off, end-off, size, func(n int64) {
				mu.Lock()
				defer mu.Unlock()
				total += n - sent[i]
				sent[i] = n
				if progress != nil && first == nil {
					progress(total)
				}
			})
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				cancel()
			}
		})
	}
	wg.Wait()
	return first
}

// sendPart sends the size bytes of r as the bytes [off, off+size) of the image file name of
// fileSize bytes (fileSize 0: r is the whole file) on a stream of connection conn, and waits for
// the peer's SHA-256 verdict.
func (c *PeerClient) sendPart(ctx context.Context, conn int, migration, name string, r io.Reader, off, size, fileSize int64, progress func(int64)) error {
	str, err := c.open(ctx, conn)
	if err != nil {
		return err
	}
	hdr := peerRequest{Op: opImage, Migration: migration, Name: name, Size: size}
	what := name
	if fileSize != 0 && (off != 0 || size != fileSize) {
		hdr.Offset, hdr.FileSize = off, fileSize
		what = fmt.Sprintf("%s bytes [%d, +%d)", name, off, size)
	}
	if err := writeLine(str, hdr); err != nil {
		return fmt.Errorf("peer %s: send image header: %w", c.name, err)
	}
	h := sha256.New()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int64
	for n < size && err == nil {
		var m int
		m, err = io.ReadFull(r, buf[:min(int64(len(buf)), size-n)])
		if m > 0 {
			h.Write(buf[:m])
			if _, werr := str.Write(buf[:m]); werr != nil {
				err = werr
				break
			}
			n += int64(m)
			if progress != nil {
				progress(n)
			}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("image file %s: read %d of %d bytes: %w", what, n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		str.CancelWrite(3)
		// The peer may have answered with its own error already.
		if r, rerr := c.finish(str, opImage); rerr != nil && r != nil {
			return rerr
		}
		return fmt.Errorf("peer %s: send image %s: %w", c.name, what, err)
	}
	sum := h.Sum(nil)
	if _, err := str.Write(sum); err != nil {
		return fmt.Errorf("peer %s: send checksum: %w", c.name, err)
	}
	str.Close()
	rep, err := c.finish(str, opImage)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("%x", sum); rep.SHA256 != want {
		return fmt.Errorf("peer %s: image %s: %w: peer has %s", c.name, what, ErrChecksum, rep.SHA256)
	}
	return nil
}

// Dialer returns a PeerDialer for the configured peers of cfg that reuses one PeerClient per
// peer.
func Dialer(cfg *Config, cert tls.Certificate, roots *x509.CertPool) PeerDialer {
	var mu sync.Mutex
	clients := map[string]*PeerClient{}
	return func(name string) (Peer, error) {
		p, ok := cfg.Peer(name)
		if !ok {
			return nil, fmt.Errorf("dial %q: %w", name, ErrUnknownPeer)
		}
		mu.Lock()
		defer mu.Unlock()
		c, ok := clients[name]
		if !ok {
			c = NewPeerClient(name, p.AddrPort().String(), cert, roots)
			clients[name] = c
		}
		return c, nil
	}
}

// ListenPeers starts the daemon's peer-channel server on Config.PeerListen; only configured
// peers are accepted.
func (d *Daemon) ListenPeers(cert tls.Certificate, roots *x509.CertPool) (*PeerServer, error) {
	allowed := func(n string) bool { _, ok := d.cfg.Peer(n); return ok }
	return ListenPeers(d.cfg.PeerListen, cert, roots, allowed, d, d.log)
}
