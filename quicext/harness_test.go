package quicext

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/steerd/steerd/quicext/quicexttest"
)

const testALPN = "quicext-test"

var noAddr netip.AddrPort

var (
	certOnce sync.Once
	testCert tls.Certificate
	certPool *x509.CertPool
)

func tlsConfs(t testing.TB) (*tls.Config, *tls.Config) {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"quicext.test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		c, _ := x509.ParseCertificate(der)
		certPool = x509.NewCertPool()
		certPool.AddCert(c)
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	return &tls.Config{Certificates: []tls.Certificate{testCert}, NextProtos: []string{testALPN}},
		&tls.Config{RootCAs: certPool, ServerName: "quicext.test", NextProtos: []string{testALPN}}
}

func testQUICConf() *quic.Config {
	return &quic.Config{MaxIdleTimeout: 10 * time.Second, HandshakeIdleTimeout: 5 * time.Second}
}

// serveEcho accepts connections and echoes every bidirectional stream.
func serveEcho(ctx context.Context, s *Server) {
	for {
		c, err := s.Accept(ctx)
		if err != nil {
			return
		}
		go func() {
			for {
				str, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					io.Copy(str, str)
					str.Close()
				}()
			}
		}()
	}
}

// echoer sends 8-byte sequence numbers on one stream at a fixed interval and checks that the
// echo comes back complete and in order; it records the largest gap between two echoes.
type echoer struct {
	str      *quic.Stream
	interval time.Duration

	mu      sync.Mutex
	sent    uint64
	got     uint64
	maxGap  time.Duration
	gapAt   time.Time
	lastRcv time.Time
	err     error
	stop    chan struct{}
	done    chan struct{}
}

func startEcho(t testing.TB, conn *quic.Conn, interval time.Duration) *echoer {
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	e := &echoer{str: str, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		tk := time.NewTicker(interval)
		defer tk.Stop()
		var b [8]byte
		for {
			select {
			case <-e.stop:
				str.Close()
				return
			case <-tk.C:
			}
			e.mu.Lock()
			e.sent++
			n := e.sent
			e.mu.Unlock()
			binary.BigEndian.PutUint64(b[:], n)
			if _, err := str.Write(b[:]); err != nil {
				return
			}
		}
	}()
	go func() {
		defer close(e.done)
		var b [8]byte
		for {
			if _, err := io.ReadFull(str, b[:]); err != nil {
				if !errors.Is(err, io.EOF) {
					e.mu.Lock()
					e.err = err
					e.mu.Unlock()
				}
				return
			}
			now := time.Now()
			e.mu.Lock()
			n := binary.BigEndian.Uint64(b[:])
			if n != e.got+1 {
				e.err = fmt.Errorf("echo out of order: got %d after %d", n, e.got)
				e.mu.Unlock()
				return
			}
			e.got = n
			if !e.lastRcv.IsZero() && now.Sub(e.lastRcv) > e.maxGap {
				e.maxGap, e.gapAt = now.Sub(e.lastRcv), now
			}
			e.lastRcv = now
			e.mu.Unlock()
		}
	}()
	return e
}

func (e *echoer) received() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.got
}

// finish stops sending and waits for the complete echo; it returns the largest gap.
func (e *echoer) finish(t testing.TB, timeout time.Duration) time.Duration {
	close(e.stop)
	select {
	case <-e.done:
	case <-time.After(timeout):
		t.Errorf("echo did not complete: sent %d, got %d", e.sent, e.received())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		t.Errorf("echo: %v", e.err)
	}
	if e.got != e.sent {
		t.Errorf("echo incomplete: sent %d, got %d", e.sent, e.got)
	}
	return e.maxGap
}

// waitFor polls cond every 5 ms until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timeout waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testbed is a server on a MovableConn and n extension clients with echo streams.
type testbed struct {
	t       *testing.T
	v6      bool
	mc      *quicexttest.MovableConn
	srv     *Server
	clients []*ClientConn
	echoes  []*echoer
	cancel  context.CancelFunc
}

func (tb *testbed) network() string {
	if tb.v6 {
		return "udp6"
	}
	return "udp4"
}

// nextAddr returns the listen address of move i (IPv4: 127.0.0.(3+i); IPv6: [::1], new port).
func (tb *testbed) nextAddr(i int) string {
	if tb.v6 {
		return "[::1]:0"
	}
	return fmt.Sprintf("127.0.0.%d:0", 3+i)
}

func target(ap netip.AddrPort) Target {
	if ap.Addr().Is4() {
		return Target{IPv4: ap}
	}
	return Target{IPv6: ap}
}

func newTestbed(t *testing.T, v6 bool, cfg ServerConfig) *testbed {
	return newTestbedFn(t, v6, func(*testbed) ServerConfig { return cfg })
}

// newTestbedFn builds the server config after the movable conn exists (Pool needs reserved
// addresses).
func newTestbedFn(t *testing.T, v6 bool, cfgFn func(*testbed) ServerConfig) *testbed {
	tb := &testbed{t: t, v6: v6}
	addr := "127.0.0.2:0"
	if v6 {
		addr = "[::1]:0"
	}
	mc, err := quicexttest.Listen(tb.network(), addr)
	if err != nil {
		t.Fatalf("listen movable: %v", err)
	}
	tb.mc = mc
	cfg := cfgFn(tb)
	stls, _ := tlsConfs(t)
	cfg.Logf = t.Logf
	srv, err := NewServer(&quic.Transport{Conn: mc}, stls, testQUICConf(), cfg)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	tb.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	tb.cancel = cancel
	go serveEcho(ctx, srv)
	t.Cleanup(func() {
		for _, c := range tb.clients {
			c.CloseWithError(0, "")
		}
		cancel()
		srv.Close()
		mc.Close()
	})
	return tb
}

func (tb *testbed) dial(n int, opts ClientOptions, interval time.Duration) {
	_, ctls := tlsConfs(tb.t)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	// All n dial at once: the server must absorb the burst of handshake completions
	// (ServerConfig.MaxHandshakes), however late its accept goroutines get scheduled.
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Dial(ctx, tb.mc.Addr().String(), ctls, testQUICConf(), opts)
			if err != nil {
				errs <- err
				return
			}
			e := startEcho(tb.t, c.Conn, interval)
			mu.Lock()
			tb.clients = append(tb.clients, c)
			tb.echoes = append(tb.echoes, e)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.t.Fatalf("dial: %v", err)
	}
	defer func() {
		if tb.t.Failed() {
			n := 0
			for i, c := range tb.clients {
				if c.Negotiated() == 0 || tb.echoes[i].received() < 2 {
					n++
					tb.t.Logf("not ready: %v negotiated=%v echo=%d cause=%v", c.Conn.LocalAddr(), c.Negotiated(), tb.echoes[i].received(), context.Cause(c.Conn.Context()))
				}
			}
			tb.t.Logf("not negotiated %d/%d; server status %+v", n, len(tb.clients), tb.srv.Status())
		}
	}()
	waitFor(tb.t, 10*time.Second, "negotiation and echo", func() bool {
		for i, c := range tb.clients {
			if c.Negotiated() == 0 || tb.echoes[i].received() < 2 {
				return false
			}
		}
		return true
	})
}

// move runs Prepare, freezes the conn for freeze, restores it on the next address and calls
// Restored; it waits until every client sends to the new address.
func (tb *testbed) move(i int, st Strategy, freeze time.Duration, newAddr netip.AddrPort) Readiness {
	t := tb.t
	if !newAddr.IsValid() {
		var err error
		newAddr, err = tb.mc.Reserve(tb.network(), tb.nextAddr(i))
		if err != nil {
			t.Fatalf("reserve: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := tb.srv.Prepare(ctx, target(newAddr), func(*quic.Conn) Strategy { return st })
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	tb.mc.Freeze()
	time.Sleep(freeze)
	if err := tb.mc.Restore(); err != nil {
		t.Fatalf("restore conn: %v", err)
	}
	if err := tb.srv.Restored(ctx, target(newAddr)); err != nil {
		t.Fatalf("restored: %v", err)
	}
	waitFor(t, 15*time.Second, fmt.Sprintf("clients switched to %v", newAddr), func() bool {
		for _, c := range tb.clients {
			if c.ServerAddr() != newAddr {
				return false
			}
		}
		return true
	})
	return r
}

// finish waits for the echoes and logs the client-observed gaps.
func (tb *testbed) finish(label string) {
	// let every stream make progress on the new path first
	marks := make([]uint64, len(tb.echoes))
	for i, e := range tb.echoes {
		marks[i] = e.received()
	}
	waitFor(tb.t, 5*time.Second, "echo progress after the move", func() bool {
		for i, e := range tb.echoes {
			if e.received() < marks[i]+3 {
				return false
			}
		}
		return true
	})
	gaps := make([]time.Duration, len(tb.echoes))
	for i, e := range tb.echoes {
		gaps[i] = e.finish(tb.t, 5*time.Second)
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	tb.t.Logf("%s: clients=%d client-observed gap median=%v max=%v", label, len(gaps),
		gaps[len(gaps)/2].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
}
