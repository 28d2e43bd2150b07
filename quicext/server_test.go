package quicext

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/steerd/steerd/quicext/quicexttest"
)

// TestHandshakeBurst reproduces the lost-handshake failure deterministically: the accept
// goroutines are held (as a loaded scheduler would), and more clients than MaxHandshakes dial
// at once. quic-go v0.65 would queue 32 completed handshakes and close the next ones with
// CONNECTION_REFUSED after the client's Dial succeeded; the Server must instead refuse the
// excess before the handshake (the Dial fails) and keep every connection whose Dial succeeded.
func TestHandshakeBurst(t *testing.T) {
	const maxHS, clients = 40, 48
	mc, err := quicexttest.Listen("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	stls, ctls := tlsConfs(t)
	srv, err := NewServer(&quic.Transport{Conn: mc}, stls, testQUICConf(), ServerConfig{MaxHandshakes: maxHS, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hold := make(chan struct{})
	srv.mu.Lock()
	srv.acceptHold = hold
	srv.mu.Unlock()

	var mu sync.Mutex
	var ok []*ClientConn
	var refused int
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Dial(ctx, mc.Addr().String(), ctls, testQUICConf(), ClientOptions{})
			mu.Lock()
			defer mu.Unlock()
			var te *quic.TransportError
			switch {
			case err == nil:
				ok = append(ok, c)
			case errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused:
				refused++
			default:
				t.Errorf("dial: %v", err)
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range ok {
			c.CloseWithError(0, "")
		}
	}()
	if len(ok) != maxHS || refused != clients-maxHS {
		t.Fatalf("dials: %d succeeded, %d refused; want %d and %d", len(ok), refused, maxHS, clients-maxHS)
	}
	if st := srv.Status(); st.RefusedHandshakes < clients-maxHS || st.InProgress != maxHS {
		t.Fatalf("status while held: %+v", st)
	}
	// Every admitted connection is held by an accept goroutine: none may have been closed.
	time.Sleep(100 * time.Millisecond)
	for _, c := range ok {
		if err := context.Cause(c.Conn.Context()); err != nil {
			t.Fatalf("connection closed after a successful dial: %v", err)
		}
	}
	close(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range maxHS {
		if _, err := srv.Accept(ctx); err != nil {
			t.Fatalf("accept: %v", err)
		}
	}
	waitFor(t, 2*time.Second, "slots released", func() bool { return srv.Status().InProgress == 0 })
	for _, c := range ok {
		if err := context.Cause(c.Conn.Context()); err != nil {
			t.Fatalf("connection closed: %v", err)
		}
	}
	// the slots are free again: a new client gets in
	c, err := Dial(ctx, mc.Addr().String(), ctls, testQUICConf(), ClientOptions{})
	if err != nil {
		t.Fatalf("dial after the burst: %v", err)
	}
	c.CloseWithError(0, "")
}

// TestPrepareStates: Prepare twice -> ErrPreparing; Restored or Abort without Prepare ->
// ErrNotPrepared; a handshake during Prepare is refused and succeeds after Abort.
func TestPrepareStates(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tg := Target{IPv4: netip.MustParseAddrPort("127.0.0.9:9")}
	if err := tb.srv.Restored(ctx, tg); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("restored without prepare: %v, want ErrNotPrepared", err)
	}
	if err := tb.srv.Abort(); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("abort without prepare: %v, want ErrNotPrepared", err)
	}
	if _, err := tb.srv.Prepare(ctx, tg, nil); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if _, err := tb.srv.Prepare(ctx, tg, nil); !errors.Is(err, ErrPreparing) {
		t.Fatalf("second prepare: %v, want ErrPreparing", err)
	}
	_, ctls := tlsConfs(t)
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err := Dial(dctx, tb.mc.Addr().String(), ctls, testQUICConf(), ClientOptions{})
	dcancel()
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("dial during prepare: %v, want CONNECTION_REFUSED", err)
	}
	if err := tb.srv.Abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	tb.dial(1, ClientOptions{}, 10*time.Millisecond)
	tb.finish("after abort")
}
