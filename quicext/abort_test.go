package quicext

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestAbortDuringPrepare: a Prepare that waits for a client that never negotiates is cancelled by
// Abort: Prepare returns ErrAborted at once, handshakes reopen (a new client connects), a second
// Prepare is accepted, and the extension client that was prepared got MIGRATION_CANCEL.
func TestAbortDuringPrepare(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{NegotiationTimeout: 30 * time.Second})
	cancelled := make(chan struct{})
	tb.dial(1, ClientOptions{OnEvent: func(e Event) {
		if e.Kind == EventCancelled {
			select {
			case <-cancelled:
			default:
				close(cancelled)
			}
		}
	}}, 10*time.Millisecond)
	_, ctls := tlsConfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain, err := quic.DialAddr(ctx, tb.mc.Addr().String(), ctls, testQUICConf())
	if err != nil {
		t.Fatalf("dial plain: %v", err)
	}
	defer plain.CloseWithError(0, "")
	waitFor(t, 2*time.Second, "two connections", func() bool { return tb.srv.Status().Conns == 2 })

	type res struct {
		r   Readiness
		err error
	}
	done := make(chan res, 1)
	go func() {
		r, err := tb.srv.Prepare(ctx, Target{IPv4: netip.MustParseAddrPort("127.0.0.9:9")}, func(*quic.Conn) Strategy { return StrategySyncSymmetric })
		done <- res{r, err}
	}()
	waitFor(t, 2*time.Second, "prepared", func() bool { return tb.srv.Status().Prepared })
	time.Sleep(100 * time.Millisecond) // the extension client gets its preparation and acks
	select {
	case r := <-done:
		t.Fatalf("prepare returned before the abort: %+v %v (the plain client should hold it)", r.r, r.err)
	default:
	}
	start := time.Now()
	if err := tb.srv.Abort(); err != nil {
		t.Fatalf("abort during prepare: %v", err)
	}
	var r res
	select {
	case r = <-done:
	case <-time.After(time.Second):
		t.Fatal("prepare still running 1 s after the abort")
	}
	if !errors.Is(r.err, ErrAborted) {
		t.Fatalf("prepare after abort: %+v %v, want ErrAborted", r.r, r.err)
	}
	t.Logf("prepare returned %v after the abort", time.Since(start).Round(time.Microsecond))
	if st := tb.srv.Status(); st.Prepared || st.Strategy != 0 {
		t.Fatalf("status after abort: %+v", st)
	}
	select {
	case <-cancelled:
	case <-time.After(2 * time.Second):
		t.Fatal("prepared client got no MIGRATION_CANCEL")
	}
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := quic.DialAddr(dctx, tb.mc.Addr().String(), ctls, testQUICConf())
	dcancel()
	if err != nil {
		t.Fatalf("handshake right after the abort: %v", err)
	}
	c.CloseWithError(0, "")
	pctx, pcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer pcancel()
	if _, err := tb.srv.Prepare(pctx, Target{}, nil); errors.Is(err, ErrPreparing) {
		t.Fatalf("next prepare: %v", err)
	}
	if err := tb.srv.Abort(); err != nil {
		t.Fatalf("abort of the next prepare: %v", err)
	}
	tb.finish("abort during prepare")
}

// TestStalePrepare: a prepare read after its deadline is refused with ErrStalePrepare and leaves
// the server accepting; one within its deadline prepares.
func TestStalePrepare(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{})
	ln, err := net.Listen("unix", "@steerd-quicext-test-stale-"+strings.ReplaceAll(t.Name(), "/", "-"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go ServeControl(ln, tb.srv)
	cc := NewControlClient(ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = cc.Do(ctx, ControlRequest{Op: "prepare", TimeoutMS: 100, DeadlineUnixMS: time.Now().Add(-time.Second).UnixMilli()})
	if !errors.Is(err, ErrControl) || !strings.Contains(err.Error(), ErrStalePrepare.Error()) {
		t.Fatalf("stale prepare: %v, want %v", err, ErrStalePrepare)
	}
	if tb.srv.Status().Prepared {
		t.Fatal("stale prepare prepared the server")
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	if _, err := cc.Prepare(pctx, Target{}, "symmetric", 100*time.Millisecond, false); err != nil {
		t.Fatalf("prepare within its deadline: %v", err)
	}
	if !tb.srv.Status().Prepared {
		t.Fatal("prepare within its deadline did not prepare")
	}
	if err := cc.Abort(ctx); err != nil {
		t.Fatalf("abort: %v", err)
	}
}
