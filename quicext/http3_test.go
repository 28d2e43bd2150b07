package quicext

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/steerd/steerd/quicext/quicexttest"
)

// h3Handler answers /seq?n=N with "N" and counts requests.
func h3Handler(served *atomic.Int64) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/seq", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, r.URL.Query().Get("n"))
	})
	return mux
}

// h3Server runs ServeHTTP3 on a MovableConn.
func h3Server(t *testing.T, served *atomic.Int64) (*quicexttest.MovableConn, *Server) {
	mc, err := quicexttest.Listen("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	stls, _ := tlsConfs(t)
	srv, err := NewServer(&quic.Transport{Conn: mc}, ConfigureHTTP3TLS(stls), testQUICConf(), ServerConfig{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP3(ctx, srv, &http3.Server{Handler: h3Handler(served)}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("ServeHTTP3 returned %v, want context.Canceled", err)
		}
		srv.Close()
		mc.Close()
	})
	return mc, srv
}

// getLoop sends GET /seq?n=i every interval until stop is closed; it returns the number of
// requests and the errors (a wrong body is an error).
func getLoop(client *http.Client, url string, interval time.Duration, stop chan struct{}) func() (int, []error) {
	var n int
	var errs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			n++
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/seq?n=%d", url, n), nil)
			resp, err := client.Do(req)
			if err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && (resp.StatusCode != 200 || string(b) != strconv.Itoa(n)) {
					err = fmt.Errorf("request %d: status %d body %q", n, resp.StatusCode, b)
				}
			}
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("request %d: %w", n, err))
			}
		}
	}()
	return func() (int, []error) {
		<-done
		return n, errs
	}
}

// TestHTTP3Move runs an HTTP/3 GET loop through a move, for Symmetric and Explicit, with an
// extension client (HTTP3Transport) and a plain quic-go HTTP/3 client on the same server:
// every request of both is answered, the extension client switched to the new address, the
// plain client is listed as unsupported.
func TestHTTP3Move(t *testing.T) {
	for _, st := range []Strategy{StrategySymmetric, StrategyExplicit} {
		t.Run(st.String(), func(t *testing.T) {
			var served atomic.Int64
			mc, srv := h3Server(t, &served)
			_, ctls := tlsConfs(t)
			url := "https://" + mc.Addr().String()
			var mu sync.Mutex
			var events []EventKind
			ext := &HTTP3Transport{TLSClientConfig: ctls, QUICConfig: testQUICConf(), Options: ClientOptions{
				OnEvent: func(e Event) {
					mu.Lock()
					events = append(events, e.Kind)
					mu.Unlock()
				}}}
			defer ext.Close()
			plain := &http3.Transport{TLSClientConfig: ctls.Clone(), QUICConfig: testQUICConf()}
			defer plain.Close()

			stop, plainStop := make(chan struct{}), make(chan struct{})
			extDone := getLoop(&http.Client{Transport: ext}, url, 10*time.Millisecond, stop)
			plainDone := getLoop(&http.Client{Transport: plain}, url, 10*time.Millisecond, plainStop)
			waitFor(t, 5*time.Second, "requests before the move", func() bool { return served.Load() > 20 })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cc, err := ext.Conn(ctx, mc.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if got := cc.Conn.ConnectionState().TLS.NegotiatedProtocol; got != NextProtoH3Ext {
				t.Fatalf("extension client ALPN %q", got)
			}
			waitFor(t, 2*time.Second, "negotiation", func() bool { return cc.Negotiated() != 0 })
			newAddr, err := mc.Reserve("udp4", "127.0.0.3:0")
			if err != nil {
				t.Fatal(err)
			}
			r, err := srv.Prepare(ctx, target(newAddr), func(*quic.Conn) Strategy { return st })
			if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			if len(r.Ready) != 1 || len(r.Unsupported) != 1 || len(r.NotReady) != 0 {
				t.Fatalf("readiness: %+v", r)
			}
			// The plain client cannot follow the move: stop it before the freeze.
			close(plainStop)
			nPlain, errsPlain := plainDone()
			mc.Freeze()
			time.Sleep(150 * time.Millisecond)
			mc.Restore()
			if err := srv.Restored(ctx, target(newAddr)); err != nil {
				t.Fatalf("restored: %v", err)
			}
			waitFor(t, 10*time.Second, "switch", func() bool { return cc.ServerAddr() == newAddr })
			mark := served.Load()
			waitFor(t, 10*time.Second, "requests after the move", func() bool { return served.Load() > mark+20 })
			close(stop)
			nExt, errsExt := extDone()
			for _, err := range append(errsExt, errsPlain...) {
				t.Error(err)
			}
			if nExt < 30 || nPlain < 5 {
				t.Fatalf("requests: extension %d, plain %d", nExt, nPlain)
			}
			// A new plain HTTP/3 client reaches the server at its new address.
			plain2 := &http3.Transport{TLSClientConfig: ctls.Clone(), QUICConfig: testQUICConf()}
			defer plain2.Close()
			stop2 := make(chan struct{})
			plain2Done := getLoop(&http.Client{Transport: plain2}, "https://"+newAddr.String(), 10*time.Millisecond, stop2)
			time.Sleep(100 * time.Millisecond)
			close(stop2)
			n2, errs2 := plain2Done()
			if n2 == 0 || len(errs2) != 0 {
				t.Fatalf("plain client at the new address: %d requests, errors %v", n2, errs2)
			}
			mu.Lock()
			defer mu.Unlock()
			if !containsKind(events, EventSwitched) {
				t.Fatalf("no switch event: %v", events)
			}
			t.Logf("%v: extension client %d requests, plain client %d requests, all answered; events %v", st, nExt, nPlain, events)
		})
	}
}

func containsKind(ks []EventKind, k EventKind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// TestHTTP3PlainServer: the extension client against quic-go's own HTTP/3 server (no
// extension) negotiates "h3" and works without the extension.
func TestHTTP3PlainServer(t *testing.T) {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 12)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	stls, ctls := tlsConfs(t)
	var served atomic.Int64
	hs := &http3.Server{Handler: h3Handler(&served), TLSConfig: http3.ConfigureTLSConfig(stls), QUICConfig: testQUICConf()}
	go hs.Serve(uc)
	defer hs.Close()
	tr := &HTTP3Transport{TLSClientConfig: ctls, QUICConfig: testQUICConf()}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := 1; i <= 5; i++ {
		resp, err := client.Get(fmt.Sprintf("https://%s/seq?n=%d", uc.LocalAddr(), i))
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != strconv.Itoa(i) {
			t.Fatalf("get %d: body %q", i, b)
		}
	}
	cc, err := tr.Conn(context.Background(), uc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := cc.Conn.ConnectionState().TLS.NegotiatedProtocol; got != http3.NextProtoH3 {
		t.Fatalf("ALPN %q, want h3", got)
	}
	if cc.Negotiated() != 0 || served.Load() != 5 {
		t.Fatalf("negotiated %v, served %d", cc.Negotiated(), served.Load())
	}
	if _, err := client.Get("http://" + uc.LocalAddr().String() + "/seq"); err == nil {
		t.Fatal("http URL accepted")
	}
}

// TestHTTP3StreamIDs checks the dispatch rule of NextProtoH3Ext: the extension streams are the
// first unidirectional streams (client 0x2, server 0x3) and HTTP/3's control streams follow.
func TestHTTP3StreamIDs(t *testing.T) {
	var served atomic.Int64
	mc, srv := h3Server(t, &served)
	_, ctls := tlsConfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialHTTP3(ctx, mc.Addr().String(), ctls, testQUICConf(), ClientOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	if c.send.StreamID() != clientExtStreamID {
		t.Fatalf("client extension stream %d, want %d", c.send.StreamID(), clientExtStreamID)
	}
	// a request proves HTTP/3 runs beside the extension streams
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+mc.Addr().String()+"/seq?n=1", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, 2*time.Second, "settings", func() bool {
		select {
		case <-c.H3.ReceivedSettings():
			return true
		default:
			return false
		}
	})
	waitFor(t, 2*time.Second, "negotiation", func() bool { return c.Negotiated() == AllStrategies })
	srv.mu.Lock()
	var sc *serverConn
	for _, x := range srv.conns {
		sc = x
	}
	srv.mu.Unlock()
	sc.mu.Lock()
	id := sc.send.StreamID()
	sc.mu.Unlock()
	if id != serverExtStreamID {
		t.Fatalf("server extension stream %d, want %d", id, serverExtStreamID)
	}
}
