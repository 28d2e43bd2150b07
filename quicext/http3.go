package quicext

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// NextProtoH3Ext is the ALPN protocol ID (RFC 7301) of HTTP/3 with the server-migration
// extension. It means HTTP/3 (RFC 9114) plus one rule: each endpoint opens its extension stream
// (StreamType 0x3178) before any other unidirectional stream, so it is the client's stream 0x2
// and the server's stream 0x3 (RFC 9000 section 2.1), and the receiver dispatches by stream ID
// without reading the stream type. That is needed because quic-go v0.65's HTTP/3
// (RawServerConn.HandleUnidirectionalStream, RawClientConn.HandleUnidirectionalStream) reads
// the stream type itself, so a stream cannot be peeked and handed over. Extension-aware clients
// offer it before http3.NextProtoH3 ("h3"); a plain HTTP/3 client or server negotiates "h3" and
// the extension stays off (the connection is listed as unsupported by Prepare).
const NextProtoH3Ext = "h3+qx"

// H3NoError is the HTTP/3 error code H3_NO_ERROR (RFC 9114 section 8.1) with which ServeHTTP3
// closes its connections when its context ends.
const H3NoError quic.ApplicationErrorCode = 0x100

// ConfigureHTTP3TLS returns a clone of tlsConf whose NextProtos are NextProtoH3Ext and
// http3.NextProtoH3, in that order of preference (Go's crypto/tls server picks the first of its
// own protocols that the client offers). Use it for the Server of ServeHTTP3 and for clients.
func ConfigureHTTP3TLS(tlsConf *tls.Config) *tls.Config {
	c := tlsConf.Clone()
	c.NextProtos = []string{NextProtoH3Ext, http3.NextProtoH3}
	return c
}

// ServeHTTP3 serves HTTP/3 with h3 (its Handler, settings and limits; its listeners and
// Serve methods are not used) on every connection srv accepts, until ctx ends or srv is
// closed; it returns ctx.Err() or ErrServerClosed. srv's TLS config must offer
// NextProtoH3Ext and http3.NextProtoH3 (ConfigureHTTP3TLS). Connections with NextProtoH3Ext
// run the extension and can be migrated; connections with "h3" are plain HTTP/3; connections
// with any other protocol are closed with H3_NO_ERROR. Each connection gets an
// http3.RawServerConn (h3.NewRawServerConn): its bidirectional streams go to
// HandleRequestStream, its unidirectional streams other than the extension's go to
// HandleUnidirectionalStream. When ctx ends, ServeHTTP3 closes its connections with
// H3_NO_ERROR and returns once their request handlers have returned; after srv.Close it
// returns ErrServerClosed at once and the established connections go on until ctx ends.
func ServeHTTP3(ctx context.Context, srv *Server, h3 *http3.Server) error {
	var wg sync.WaitGroup
	for {
		c, err := srv.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
			}
			return err
		}
		wg.Go(func() { serveHTTP3Conn(ctx, srv, h3, c) })
	}
}

func serveHTTP3Conn(ctx context.Context, srv *Server, h3 *http3.Server, c *quic.Conn) {
	if modeFor(c.ConnectionState().TLS.NegotiatedProtocol) == modeType {
		c.CloseWithError(H3NoError, "not HTTP/3")
		return
	}
	raw, err := h3.NewRawServerConn(c)
	if err != nil {
		srv.logf("quicext: %v: http3 connection: %v", c.RemoteAddr(), err)
		c.CloseWithError(0x0102, "") // H3_INTERNAL_ERROR
		return
	}
	srv.attachRaw(c, raw.HandleUnidirectionalStream)
	stop := context.AfterFunc(ctx, func() { raw.CloseWithError(H3NoError, "server stopped") })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		str, err := c.AcceptStream(c.Context())
		if err != nil {
			return
		}
		wg.Go(func() { raw.HandleRequestStream(str) })
	}
}

// HTTP3ClientConn is an HTTP/3 client connection with the extension: the embedded ClientConn
// follows server migrations (Events, ServerAddr, Negotiated), H3 sends requests.
type HTTP3ClientConn struct {
	*ClientConn
	// H3 is quic-go's HTTP/3 client connection over ClientConn.Conn.
	H3 *http3.RawClientConn
}

// RoundTrip sends req on the connection (http.RoundTripper).
func (c *HTTP3ClientConn) RoundTrip(req *http.Request) (*http.Response, error) {
	return c.H3.RoundTrip(req)
}

// DialHTTP3 dials addr like Dial, offering NextProtoH3Ext then http3.NextProtoH3 (tlsConf's
// NextProtos are replaced), and starts an HTTP/3 client connection with h3's settings (nil: a
// zero http3.Transport). Against a plain HTTP/3 server the connection works without the
// extension (Negotiated() stays 0).
func DialHTTP3(ctx context.Context, addr string, tlsConf *tls.Config, quicConf *quic.Config, opts ClientOptions, h3 *http3.Transport) (*HTTP3ClientConn, error) {
	if tlsConf == nil {
		tlsConf = &tls.Config{}
	}
	tc := ConfigureHTTP3TLS(tlsConf)
	if tc.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tc.ServerName = host
		}
	}
	cc, err := Dial(ctx, addr, tc, quicConf, opts)
	if err != nil {
		return nil, err
	}
	if cc.mode == modeType { // cannot happen with the NextProtos above; defensive
		cc.CloseWithError(0x0101, "")
		return nil, fmt.Errorf("dial http3 %s: negotiated ALPN %q", addr, cc.Conn.ConnectionState().TLS.NegotiatedProtocol)
	}
	if h3 == nil {
		h3 = &http3.Transport{}
	}
	raw := h3.NewRawClientConn(cc.Conn)
	cc.attachRaw(raw.HandleUnidirectionalStream)
	return &HTTP3ClientConn{ClientConn: cc, H3: raw}, nil
}

// ErrNotHTTPS is returned by HTTP3Transport.RoundTrip for a URL whose scheme is not https.
var ErrNotHTTPS = errors.New("quicext: http3 needs an https URL")

// HTTP3Transport is an http.RoundTripper over HTTP/3 connections dialed with DialHTTP3: one
// connection per host:port (default port 443), redialed when it has closed. Connections that
// negotiated the extension follow server migrations.
type HTTP3Transport struct {
	// TLSClientConfig is the TLS configuration (NextProtos are replaced; ServerName defaults
	// to the URL's host).
	TLSClientConfig *tls.Config
	// QUICConfig is the quic-go configuration.
	QUICConfig *quic.Config
	// Options configures the extension on every connection.
	Options ClientOptions
	// H3 provides the HTTP/3 settings (MaxResponseHeaderBytes, DisableCompression, ...); nil
	// means a zero http3.Transport. Its own dialing is not used.
	H3 *http3.Transport

	mu     sync.Mutex
	conns  map[string]*h3Dial
	closed bool
}

type h3Dial struct {
	done chan struct{}
	conn *HTTP3ClientConn
	err  error
}

// RoundTrip implements http.RoundTripper.
func (t *HTTP3Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Scheme != "https" {
		return nil, ErrNotHTTPS
	}
	hostport := req.URL.Host
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		hostport = net.JoinHostPort(req.URL.Hostname(), "443")
	}
	c, err := t.Conn(req.Context(), hostport)
	if err != nil {
		return nil, err
	}
	return c.RoundTrip(req)
}

// Conn returns the connection to hostport, dialing it if there is none or it has closed.
func (t *HTTP3Transport) Conn(ctx context.Context, hostport string) (*HTTP3ClientConn, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, net.ErrClosed
	}
	if t.conns == nil {
		t.conns = map[string]*h3Dial{}
	}
	d := t.conns[hostport]
	if d != nil {
		select {
		case <-d.done:
			if d.err != nil || d.conn.Conn.Context().Err() != nil {
				d = nil // failed or closed: dial again
			}
		default:
		}
	}
	if d == nil {
		d = &h3Dial{done: make(chan struct{})}
		t.conns[hostport] = d
		t.mu.Unlock()
		d.conn, d.err = t.dial(ctx, hostport)
		close(d.done)
		return d.conn, d.err
	}
	t.mu.Unlock()
	select {
	case <-d.done:
		return d.conn, d.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (t *HTTP3Transport) dial(ctx context.Context, hostport string) (*HTTP3ClientConn, error) {
	tc := t.TLSClientConfig
	if tc == nil {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc = tc.Clone()
		tc.ServerName, _, _ = net.SplitHostPort(hostport)
	}
	c, err := DialHTTP3(ctx, hostport, tc, t.QUICConfig, t.Options, t.H3)
	if err != nil {
		return nil, fmt.Errorf("dial http3 %s: %w", hostport, err)
	}
	return c, nil
}

// Close closes every connection with H3_NO_ERROR; the transport cannot be used afterwards.
func (t *HTTP3Transport) Close() error {
	t.mu.Lock()
	conns := t.conns
	t.conns = nil
	t.closed = true
	t.mu.Unlock()
	for _, d := range conns {
		<-d.done
		if d.conn != nil {
			d.conn.CloseWithError(H3NoError, "")
		}
	}
	return nil
}
