package load_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/quicext"
	"github.com/steerd/steerd/quicext/quicexttest"
)

const instance = connid.InstanceID(0x1234)

// sniffConn wraps the server's packet conn and decodes the DCID of every short-header packet
// the server receives: after the handshake the client addresses the CIDs the server issued,
// so each must carry the service's QUIC-LB server ID.
type sniffConn struct {
	net.PacketConn
	codec           *connid.Codec
	short, foreign  atomic.Int64
	firstForeignErr atomic.Value
}

func (s *sniffConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := s.PacketConn.ReadFrom(b)
	if err == nil {
		id, kind, rerr := connid.RouteInfo(b[:n], s.codec)
		if kind == connid.KindShort {
			s.short.Add(1)
			if rerr != nil || id != instance {
				s.foreign.Add(1)
				s.firstForeignErr.CompareAndSwap(nil, errors.Join(rerr, errors.New("instance mismatch")))
			}
		}
	}
	return n, a, err
}

// Pass the buffer-size calls through (quic-go asks for them).
func (s *sniffConn) SetReadBuffer(n int) error {
	if c, ok := s.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		return c.SetReadBuffer(n)
	}
	return nil
}

func (s *sniffConn) SetWriteBuffer(n int) error {
	if c, ok := s.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return c.SetWriteBuffer(n)
	}
	return nil
}

func tlsConfs(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	cert, fp, err := service.SelfSigned(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := load.PinnedTLS(fp, service.DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, ctls
}

// startService serves on pc and returns the service; it is closed when the test ends.
func startService(t *testing.T, pc net.PacketConn, stls *tls.Config) *service.Service {
	t.Helper()
	svc, err := service.New(service.Config{
		Conns:    []net.PacketConn{pc},
		Instance: instance,
		TLS:      stls,
		QUIC:     &quic.Config{MaxIdleTimeout: 5 * time.Second},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("new service: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return svc
}

// checkReport asserts the invariants of a clean run: nothing lost, in order, counters rising by
// one per request and matching the server's store.
func checkReport(t *testing.T, rep *load.Report, svc *service.Service, conns int, minSent uint64) {
	t.Helper()
	if len(rep.Conns) != conns {
		t.Fatalf("report has %d connections, want %d", len(rep.Conns), conns)
	}
	if !rep.OK() {
		t.Errorf("report not OK: lost=%d ooo=%d wrong=%d failed=%d", rep.Lost, rep.OutOfOrder, rep.Wrong, rep.Failed)
	}
	var sum uint64
	for _, c := range rep.Conns {
		if c.Err != "" {
			t.Errorf("conn %d: %s", c.Conn, c.Err)
		}
		if c.Sent < minSent || c.Received != c.Sent || c.Lost != 0 {
			t.Errorf("conn %d: sent %d received %d lost %d (want >= %d sent, all answered)", c.Conn, c.Sent, c.Received, c.Lost, minSent)
		}
		if c.FirstValue != 1 || c.LastValue != c.Received {
			t.Errorf("conn %d: values %d..%d for %d responses", c.Conn, c.FirstValue, c.LastValue, c.Received)
		}
		if got := svc.Store().Get(c.Key); got != c.LastValue {
			t.Errorf("conn %d: store has %s=%d, client saw %d", c.Conn, c.Key, got, c.LastValue)
		}
		if c.Negotiated != quicext.AllStrategies.String() {
			t.Errorf("conn %d: negotiated %q", c.Conn, c.Negotiated)
		}
		if got := c.MaxGap.End.Sub(c.MaxGap.Start); c.MaxGap.MS != float64(got.Microseconds())/1000 || got <= 0 {
			t.Errorf("conn %d: max gap %+v inconsistent", c.Conn, c.MaxGap)
		}
		for _, g := range c.Gaps {
			if g.MS <= rep.GapThresholdMS || g.MS > c.MaxGap.MS {
				t.Errorf("conn %d: listed gap %.1f ms outside (%.1f, %.1f]", c.Conn, g.MS, rep.GapThresholdMS, c.MaxGap.MS)
			}
		}
		if c.Latency.Min <= 0 || c.Latency.Min > c.Latency.Median || c.Latency.Median > c.Latency.Max {
			t.Errorf("conn %d: latency %+v", c.Conn, c.Latency)
		}
		sum += c.Sent
	}
	if rep.Sent != sum || rep.Received != sum {
		t.Errorf("totals sent %d received %d, want %d", rep.Sent, rep.Received, sum)
	}
}

// TestRunLoopback runs 5 connections for 1 s against an in-process service on 127.0.0.2 and
// checks the report and that every short-header packet carried the service's instance ID.
func TestRunLoopback(t *testing.T) {
	ua, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	codec, err := connid.NewCodec(connid.DefaultConfig(service.DefaultServerIDLen, service.DefaultCIDLen-1-service.DefaultServerIDLen))
	if err != nil {
		t.Fatal(err)
	}
	sniff := &sniffConn{PacketConn: ua, codec: codec}
	stls, ctls := tlsConfs(t)
	svc := startService(t, sniff, stls)

	var mu sync.Mutex
	evs := map[string]int{}
	rep, err := load.Run(context.Background(), load.Options{
		Addr: ua.LocalAddr().String(), Conns: 5, Interval: 10 * time.Millisecond, Duration: time.Second,
		TLS: ctls,
		OnEvent: func(e load.Event) {
			mu.Lock()
			evs[e.Ev]++
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkReport(t, rep, svc, 5, 50)
	if rep.Switched != 0 {
		t.Errorf("%d connections switched without a move", rep.Switched)
	}
	for _, c := range rep.Conns {
		if c.ServerAddr != ua.LocalAddr().String() {
			t.Errorf("conn %d ended on %s", c.Conn, c.ServerAddr)
		}
	}
	mu.Lock()
	if evs["connected"] != 5 || evs["negotiated"] != 5 {
		t.Errorf("events %v, want 5 connected and 5 negotiated", evs)
	}
	mu.Unlock()
	// Each request leaves in at least one short-header packet unless coalesced with the next.
	if sniff.short.Load() < int64(rep.Sent)/2 || sniff.foreign.Load() != 0 {
		t.Errorf("short-header packets: %d, with a foreign DCID: %d (%v)", sniff.short.Load(), sniff.foreign.Load(), sniff.firstForeignErr.Load())
	}
	t.Logf("sent %d, max gap %.1f ms, median latency %.2f ms", rep.Sent, rep.MaxGapMS, rep.Conns[0].Latency.Median)
}

// TestRunMove freezes the service for 300 ms in the middle of a run and moves it to another
// address (quicexttest.MovableConn, quicext Prepare/Restored with the Symmetric strategy): every
// connection must switch to the new address, lose nothing, keep its counter, and report a
// largest gap that spans the freeze.
func TestRunMove(t *testing.T) {
	for _, st := range []quicext.Strategy{quicext.StrategySymmetric, quicext.StrategyExplicit, quicext.StrategyExplicitReactive} {
		t.Run(st.String(), func(t *testing.T) { testMove(t, st, false) })
	}
	// The same move driven through the service's control endpoint (quicext control protocol on
	// an abstract unix socket), as steerd drives it.
	t.Run("symmetric-via-control", func(t *testing.T) { testMove(t, quicext.StrategySymmetric, true) })
}

func testMove(t *testing.T, st quicext.Strategy, viaControl bool) {
	const freeze = 300 * time.Millisecond
	mc, err := quicexttest.Listen("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	stls, ctls := tlsConfs(t)
	svc := startService(t, mc, stls)
	srv := svc.Servers()[0]

	type result struct {
		rep *load.Report
		err error
	}
	res := make(chan result, 1)
	var switched atomic.Int64
	go func() {
		rep, err := load.Run(context.Background(), load.Options{
			Addr: mc.Addr().String(), Conns: 5, Interval: 10 * time.Millisecond, Duration: 1500 * time.Millisecond,
			TLS: ctls,
			OnEvent: func(e load.Event) {
				if e.Ev == "switched" {
					switched.Add(1)
				}
			},
		})
		res <- result{rep, err}
	}()
	// Let the connections negotiate and run.
	deadline := time.Now().Add(3 * time.Second)
	for srv.Status().Negotiated < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("negotiation: %+v", srv.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)

	newAddr, err := mc.Reserve("udp4", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	target := quicext.Target{IPv4: newAddr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	prepare := func() (quicext.Readiness, error) {
		return srv.Prepare(ctx, target, func(*quic.Conn) quicext.Strategy { return st })
	}
	restored := func() error { return srv.Restored(ctx, target) }
	if viaControl {
		addr := fmt.Sprintf("@stdr-load-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
		l, err := quicext.ListenControl(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go svc.ServeControl(l)
		cc := quicext.NewControlClient(addr)
		prepare = func() (quicext.Readiness, error) { return cc.Prepare(ctx, target, st.String(), time.Second, false) }
		restored = func() error { return cc.Restored(ctx, target) }
	}
	r, err := prepare()
	if err != nil || len(r.Ready) != 5 || r.Strategy != st {
		t.Fatalf("prepare: %+v, %v", r, err)
	}
	mc.Freeze()
	frozeAt := time.Now()
	time.Sleep(freeze)
	if err := mc.Restore(); err != nil {
		t.Fatal(err)
	}
	restoredAt := time.Now()
	if err := restored(); err != nil {
		t.Fatalf("restored: %v", err)
	}

	out := <-res
	if out.err != nil {
		t.Fatalf("run: %v", out.err)
	}
	rep := out.rep
	checkReport(t, rep, svc, 5, 100)
	if rep.Switched != 5 || switched.Load() != 5 {
		t.Errorf("switched: report %d, events %d; want 5", rep.Switched, switched.Load())
	}
	for _, c := range rep.Conns {
		if c.ServerAddr != newAddr.String() || len(c.Switches) != 1 || c.Switches[0].Addr != newAddr.String() {
			t.Errorf("conn %d: ended on %s, switches %+v; want %s", c.Conn, c.ServerAddr, c.Switches, newAddr)
		}
		g := c.MaxGap
		// The largest gap spans the freeze: it starts before it (a response the server sent just
		// before the freeze may still be read shortly after; slack) and ends after the restore.
		const slack = 50 * time.Millisecond
		if g.Start.After(frozeAt.Add(slack)) || g.End.Before(restoredAt) {
			t.Errorf("conn %d: max gap %v..%v does not span the freeze %v..%v", c.Conn,
				g.Start.Format("15:04:05.000"), g.End.Format("15:04:05.000"), frozeAt.Format("15:04:05.000"), restoredAt.Format("15:04:05.000"))
		}
		if g.MS < ms(freeze-slack) || g.MS > ms(freeze)+700 {
			t.Errorf("conn %d: max gap %.1f ms, want about the %v freeze", c.Conn, g.MS, freeze)
		}
		if len(c.Gaps) == 0 || c.Gaps[len(c.Gaps)-1] != g && !containsGap(c.Gaps, g) {
			t.Errorf("conn %d: max gap not listed in gaps %+v", c.Conn, c.Gaps)
		}
	}
	t.Logf("%v: freeze %v, client-observed max gap %.1f ms", st, freeze, rep.MaxGapMS)
}

func containsGap(gs []load.Gap, g load.Gap) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestRunDialError checks that an unreachable server fails with ErrDial within the timeout.
func TestRunDialError(t *testing.T) {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close() // bound, never answers
	_, ctls := tlsConfs(t)
	start := time.Now()
	_, err = load.Run(context.Background(), load.Options{Addr: uc.LocalAddr().String(), TLS: ctls, DialTimeout: 300 * time.Millisecond})
	if !errors.Is(err, load.ErrDial) {
		t.Fatalf("run error = %v, want ErrDial", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("dial took %v", el)
	}
}

// TestPinnedTLSMismatch checks that a pin of another certificate fails the handshake.
func TestPinnedTLSMismatch(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	stls, _ := tlsConfs(t)
	startService(t, pc, stls)
	_, otherFP, err := service.SelfSigned(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := load.PinnedTLS(otherFP, service.DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	_, err = load.Run(context.Background(), load.Options{Addr: pc.LocalAddr().String(), TLS: ctls, DialTimeout: time.Second})
	if !errors.Is(err, load.ErrDial) {
		t.Fatalf("run with a wrong pin: %v", err)
	}
	if !errors.Is(err, load.ErrPinMismatch) {
		t.Errorf("run with a wrong pin: %v, want ErrPinMismatch", err)
	}
	if _, err := load.PinnedTLS("abcd", ""); err == nil {
		t.Error("short pin accepted")
	}
}

// TestRunDetectsForeignWrites runs two clients on the same key: each sees the counter jump by
// the other's increments, which is what a counter that did not continue looks like, so both
// must report wrong responses (and still lose nothing).
func TestRunDetectsForeignWrites(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	stls, ctls := tlsConfs(t)
	startService(t, pc, stls)
	reps := make(chan *load.Report, 2)
	for range 2 {
		go func() {
			rep, err := load.Run(context.Background(), load.Options{Addr: pc.LocalAddr().String(), KeyPrefix: "shared",
				Duration: 500 * time.Millisecond, TLS: ctls})
			if err != nil {
				t.Error(err)
			}
			reps <- rep
		}()
	}
	for range 2 {
		rep := <-reps
		if rep == nil {
			continue
		}
		if rep.Wrong == 0 || rep.Lost != 0 || rep.OutOfOrder != 0 || rep.OK() {
			t.Errorf("report: wrong %d lost %d ooo %d ok %v; want wrong > 0 only", rep.Wrong, rep.Lost, rep.OutOfOrder, rep.OK())
		}
	}
}
