package quicext

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/sys/unix"
)

// TestFourMoves moves one connection four times in a row (four strategies), so the connection
// must keep getting new connection IDs (quic-go retires the old path's CID, RFC 9000 section 5.1.2).
func TestFourMoves(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			tb := newTestbed(t, v6, ServerConfig{})
			tb.dial(1, ClientOptions{}, 10*time.Millisecond)
			var switched []netip.AddrPort
			for i, st := range []Strategy{StrategySymmetric, StrategyExplicit, StrategySyncSymmetric, StrategyExplicitReactive} {
				r := tb.move(i, st, 100*time.Millisecond, noAddr)
				if !r.AllReady() {
					t.Fatalf("move %d: readiness %+v", i, r)
				}
				switched = append(switched, tb.clients[0].ServerAddr())
			}
			for i := 1; i < len(switched); i++ {
				if switched[i] == switched[i-1] {
					t.Fatalf("move %d did not change the address: %v", i, switched)
				}
			}
			if st := tb.srv.Status(); st.Migrations != 4 {
				t.Fatalf("migrations = %d, want 4", st.Migrations)
			}
			// The sockets of the four earlier paths are released (pathConn.retire) while the
			// connection lives on: their ports can be bound again.
			c := tb.clients[0]
			waitFor(t, 3*time.Second, "old sockets released", func() bool { return c.openSockets() == 1 })
			c.mu.Lock()
			paths := append([]*pathConn(nil), c.paths...)
			c.mu.Unlock()
			if len(paths) != 5 {
				t.Fatalf("%d paths, want 5", len(paths))
			}
			for _, p := range paths[:4] {
				la := p.LocalAddr().(*net.UDPAddr)
				uc, err := net.ListenUDP(tb.network(), la)
				if err != nil {
					t.Fatalf("old socket %v still bound: %v", la, err)
				}
				uc.Close()
			}
			tb.finish("four moves")
		})
	}
}

// TestUnsupportedClient: a client without the extension is listed as unsupported, keeps
// working through Prepare, and is closed with CloseCodeUnsupported only when asked.
func TestUnsupportedClient(t *testing.T) {
	for _, closeIt := range []bool{false, true} {
		t.Run(fmt.Sprintf("close=%v", closeIt), func(t *testing.T) {
			tb := newTestbed(t, false, ServerConfig{})
			tb.dial(1, ClientOptions{}, 10*time.Millisecond)
			_, ctls := tlsConfs(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			plain, err := quic.DialAddr(ctx, tb.mc.Addr().String(), ctls, testQUICConf())
			if err != nil {
				t.Fatalf("dial plain: %v", err)
			}
			defer plain.CloseWithError(0, "")
			pe := startEcho(t, plain, 10*time.Millisecond)
			waitFor(t, 2*time.Second, "plain echo", func() bool { return pe.received() > 3 })
			newAddr, _ := tb.mc.Reserve("udp4", tb.nextAddr(0))
			r, err := tb.srv.PrepareWith(ctx, target(newAddr), nil, PrepareOptions{CloseUnsupported: closeIt})
			if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			if len(r.Ready) != 1 || len(r.Unsupported) != 1 || r.Unsupported[0].Negotiated != 0 {
				t.Fatalf("readiness: %+v", r)
			}
			if !closeIt {
				if r.Closed != 0 {
					t.Fatalf("closed %d", r.Closed)
				}
				n := pe.received()
				waitFor(t, 2*time.Second, "plain echo during prepare", func() bool { return pe.received() > n+3 })
				tb.srv.Abort()
				pe.finish(t, 2*time.Second)
				return
			}
			if r.Closed != 1 {
				t.Fatalf("closed %d, want 1", r.Closed)
			}
			select {
			case <-plain.Context().Done():
			case <-time.After(2 * time.Second):
				t.Fatal("plain connection not closed")
			}
			var appErr *quic.ApplicationError
			if err := context.Cause(plain.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != CloseCodeUnsupported {
				t.Fatalf("close cause %v, want application error %#x", err, CloseCodeUnsupported)
			}
			tb.srv.Abort()
		})
	}
}

// TestPoolDeadFirst: the first two pool addresses never answer; the client probes them in turn
// and switches to the third.
func TestPoolDeadFirst(t *testing.T) {
	var reserved netip.AddrPort
	var dead []netip.AddrPort
	tb := newTestbedFn(t, false, func(tb *testbed) ServerConfig {
		dead = []netip.AddrPort{deadAddr(t, "udp4", "127.0.0.7:0"), deadAddr(t, "udp4", "127.0.0.8:0")}
		reserved, _ = tb.mc.Reserve("udp4", tb.nextAddr(0))
		return ServerConfig{Pool: []Target{target(dead[0]), target(dead[1]), target(reserved)}}
	})
	var mu sync.Mutex
	probed := map[netip.AddrPort]int{}
	tb.dial(1, ClientOptions{OnEvent: func(e Event) {
		if testing.Verbose() {
			t.Logf("event %v %v attempt=%d err=%v", e.Kind, e.Addr, e.Attempt, e.Err)
		}
		if e.Kind == EventProbing {
			mu.Lock()
			probed[e.Addr]++
			mu.Unlock()
		}
	}}, 10*time.Millisecond)
	tb.move(0, StrategyPool, 150*time.Millisecond, reserved)
	mu.Lock()
	defer mu.Unlock()
	if probed[dead[0]] == 0 || probed[dead[1]] == 0 || probed[reserved] == 0 {
		t.Fatalf("probes %v", probed)
	}
	t.Logf("probes: %v", probed)
	tb.finish("pool dead first")
}

// TestAbort: a Synchronized Symmetric prepare is aborted; the client releases its hold and the
// connection goes on at the same address.
func TestAbort(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{})
	var cancelled sync.WaitGroup
	cancelled.Add(1)
	var once sync.Once
	tb.dial(1, ClientOptions{OnEvent: func(e Event) {
		if e.Kind == EventCancelled {
			once.Do(cancelled.Done)
		}
	}}, 10*time.Millisecond)
	old := tb.clients[0].ServerAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := tb.srv.Prepare(ctx, Target{IPv4: netip.MustParseAddrPort("127.0.0.9:9")}, func(*quic.Conn) Strategy { return StrategySyncSymmetric })
	if err != nil || !r.AllReady() {
		t.Fatalf("prepare: %+v %v", r, err)
	}
	if _, err := tb.srv.Prepare(ctx, Target{}, nil); !errors.Is(err, ErrPreparing) {
		t.Fatalf("second prepare: %v, want ErrPreparing", err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := tb.srv.Abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if err := tb.srv.Abort(); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("second abort: %v, want ErrNotPrepared", err)
	}
	cancelled.Wait()
	tb.finish("abort")
	if got := tb.clients[0].ServerAddr(); got != old {
		t.Fatalf("server address changed to %v", got)
	}
}

// fakeServer accepts one connection with raw quic-go (early, before handshake completion) and
// lets the test write extension messages by hand.
func fakeServer(t *testing.T, early bool, script func(conn *quic.Conn)) string {
	stls, _ := tlsConfs(t)
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	if early {
		ln, err := tr.ListenEarly(stls, testQUICConf())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept(context.Background())
			if err == nil {
				script(c)
			}
		}()
	} else {
		ln, err := tr.Listen(stls, testQUICConf())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept(context.Background())
			if err == nil {
				script(c)
			}
		}()
	}
	return uc.LocalAddr().String()
}

// TestIgnoredMessages: SERVER_MIGRATED sent before the handshake completes and before the
// negotiation answer is ignored; SERVER_MIGRATED to an address that does not answer
// PATH_CHALLENGE (a spoofed address that echoes packets back) never makes the client switch.
func TestIgnoredMessages(t *testing.T) {
	// a "spoofed" address: it reflects every datagram, which can never be a valid PATH_RESPONSE
	refl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 11)})
	if err != nil {
		t.Fatal(err)
	}
	defer refl.Close()
	var reflected int
	var rmu sync.Mutex
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := refl.ReadFrom(b)
			if err != nil {
				return
			}
			rmu.Lock()
			reflected++
			rmu.Unlock()
			refl.WriteTo(b[:n], from)
		}
	}()
	spoof := refl.LocalAddr().(*net.UDPAddr).AddrPort()
	addr := fakeServer(t, true, func(c *quic.Conn) {
		// before the handshake completes (0.5-RTT data) and before any negotiation
		s, err := c.OpenUniStream()
		if err != nil {
			return
		}
		b := quicvarint.Append(nil, StreamType)
		b = appendMessage(b, message{typ: MsgServerMigrated, addr: Target{IPv4: spoof}})
		s.Write(b)
		<-c.HandshakeComplete()
		// read the client's negotiation, answer, then announce the spoofed address
		r, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		br := bufio.NewReader(r)
		if readStreamType(br) != nil {
			return
		}
		m, err := readMessage(br)
		if err != nil || m.typ != MsgNegotiate {
			return
		}
		s.Write(appendMessage(nil, message{typ: MsgNegotiate, value: m.value}))
		s.Write(appendMessage(nil, message{typ: MsgServerMigrated, addr: Target{IPv4: spoof}}))
		go func() {
			str, err := c.AcceptStream(context.Background())
			if err == nil {
				bufio.NewReader(str).WriteTo(str)
				str.Close()
			}
		}()
		<-c.Context().Done()
	})
	_, ctls := tlsConfs(t)
	var mu sync.Mutex
	var events []Event
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, ctls, testQUICConf(), ClientOptions{ProbeTimeout: 600 * time.Millisecond, OnEvent: func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer cc.CloseWithError(0, "")
	e := startEcho(t, cc.Conn, 10*time.Millisecond)
	waitFor(t, 5*time.Second, "probing failure", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			if ev.Kind == EventFailed {
				return true
			}
		}
		return false
	})
	mu.Lock()
	var ignored, probing, switchedN int
	for _, ev := range events {
		switch ev.Kind {
		case EventIgnored:
			ignored++
		case EventProbing:
			probing++
			if ev.Addr != spoof {
				t.Errorf("probed %v", ev.Addr)
			}
		case EventSwitched:
			switchedN++
		}
	}
	mu.Unlock()
	if ignored == 0 || probing == 0 || switchedN != 0 {
		t.Fatalf("ignored=%d probing=%d switched=%d", ignored, probing, switchedN)
	}
	// Probe rate: with ProbeTimeout 600 ms and waits of 50, 100, 200, 400 ms there are at most
	// 4 rounds, and quic-go's Probe retransmits a PATH_CHALLENGE only after its 200 ms initial
	// RTT, so at most 2 datagrams per round reach the address.
	if probing > 4 {
		t.Errorf("%d probe rounds in 600 ms, want <= 4", probing)
	}
	rmu.Lock()
	if reflected == 0 || reflected > 2*probing {
		t.Errorf("%d datagrams reached the spoofed address in %d rounds", reflected, probing)
	}
	rmu.Unlock()
	if got := cc.ServerAddr().String(); got != addr {
		t.Fatalf("server address %s, want %s", got, addr)
	}
	n := e.received()
	waitFor(t, 2*time.Second, "echo on the old path", func() bool { return e.received() > n+3 })
	e.finish(t, 2*time.Second)
}

func TestValidCandidate(t *testing.T) {
	c := &ClientConn{server: netip.MustParseAddrPort("198.18.21.2:4433")}
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"198.18.22.2:4433", true},
		{"0.0.0.0:4433", false},
		{"224.0.0.1:4433", false},
		{"255.255.255.255:4433", false},
		{"127.0.0.1:4433", false},
		{"169.254.1.1:4433", false},
		{"198.18.22.2:0", false},
	} {
		_, err := c.validCandidate(Target{IPv4: netip.MustParseAddrPort(tc.addr)})
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
	c6 := &ClientConn{server: netip.MustParseAddrPort("[2001:2:0:21::2]:4433")}
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"[2001:2:0:22::2]:4433", true},
		{"[::]:4433", false},
		{"[ff02::1]:4433", false},
		{"[::1]:4433", false},
		{"[::ffff:0.0.0.0]:4433", false}, // netip: IsUnspecified is false for it
		{"[::ffff:127.0.0.1]:4433", false},
		{"[::ffff:224.0.0.1]:4433", false},
		{"[::ffff:198.18.22.2]:4433", false},
		{"[fe80::1]:4433", false},
	} {
		_, err := c6.validCandidate(Target{IPv6: netip.MustParseAddrPort(tc.addr)})
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
	// loopback is fine when the server is on loopback; the other family is absent
	lo := &ClientConn{server: netip.MustParseAddrPort("127.0.0.2:1")}
	if _, err := lo.validCandidate(Target{IPv4: netip.MustParseAddrPort("127.0.0.3:2")}); err != nil {
		t.Errorf("loopback on loopback: %v", err)
	}
	if _, err := lo.validCandidate(Target{IPv6: netip.MustParseAddrPort("[::1]:2")}); err == nil {
		t.Errorf("IPv6-only target accepted for an IPv4 connection")
	}
}

func TestWireBytes(t *testing.T) {
	tg := Target{IPv4: netip.MustParseAddrPort("198.18.21.2:4433"), IPv6: netip.MustParseAddrPort("[2001:2:0:21::2]:443")}
	got := appendMessage(nil, message{typ: MsgServerMigrated, addr: tg})
	want := []byte{0x33, 24, 198, 18, 21, 2, 0x11, 0x51,
		0x20, 0x01, 0, 2, 0, 0, 0, 0x21, 0, 0, 0, 0, 0, 0, 0, 2, 0x01, 0xbb}
	if string(got) != string(want) {
		t.Fatalf("SERVER_MIGRATED bytes\n got % x\nwant % x", got, want)
	}
	if b := quicvarint.Append(nil, StreamType); string(b) != "qx" {
		t.Fatalf("stream type bytes % x", b)
	}
	for _, m := range []message{
		{typ: MsgNegotiate, value: uint64(AllStrategies)},
		{typ: MsgStrategy, value: uint64(StrategyPool)},
		{typ: MsgServerMigration},
		{typ: MsgServerMigration, addr: Target{IPv6: tg.IPv6}, hasAddr: true},
		{typ: MsgPoolMigrationAddress, addr: Target{IPv4: tg.IPv4}},
		{typ: MsgMigrationAck, value: 300},
		{typ: MsgMigrationCancel},
		{typ: MsgPing, value: 7},
	} {
		b := appendMessage(nil, m)
		r, err := readMessage(bufio.NewReader(bytesReader(b)))
		if err != nil || r != m {
			t.Errorf("round trip %+v: got %+v, %v", m, r, err)
		}
	}
	// an empty SERVER_MIGRATION is two bytes; a short address body is malformed
	if b := appendMessage(nil, message{typ: MsgServerMigration}); len(b) != 2 {
		t.Errorf("empty SERVER_MIGRATION: % x", b)
	}
	if _, err := readMessage(bufio.NewReader(bytesReader([]byte{0x33, 3, 1, 2, 3}))); !errors.Is(err, ErrMalformed) {
		t.Errorf("short body: %v", err)
	}
}

type bytesReaderT struct{ b []byte }

func bytesReader(b []byte) *bytesReaderT { return &bytesReaderT{b} }
func (r *bytesReaderT) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, errEOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

var errEOF = errors.New("EOF")

func TestReapplySocketOptions(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		uc, err := net.ListenUDP(tc.network, mustUDP(tc.network, tc.addr))
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := uc.SyscallConn()
		get := func(level, opt int) int {
			var v int
			var gerr error
			rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
			if gerr != nil {
				t.Fatalf("getsockopt: %v", gerr)
			}
			return v
		}
		level, recv, mtu, probe := unix.IPPROTO_IP, unix.IP_RECVTOS, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE
		if tc.network == "udp6" {
			level, recv, mtu, probe = unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE
		}
		// a fresh socket, as after a CRIU restore that lost them
		if get(level, recv) != 0 || get(level, mtu) == probe {
			t.Fatalf("%s: options already set", tc.network)
		}
		if err := ReapplySocketOptions(uc); err != nil {
			t.Fatalf("%s: %v", tc.network, err)
		}
		if get(level, recv) != 1 || get(level, mtu) != probe {
			t.Fatalf("%s: recv=%d mtu=%d after reapply", tc.network, get(level, recv), get(level, mtu))
		}
		uc.Close()
	}
}

func mustUDP(network, addr string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		panic(err)
	}
	return a
}

func TestWildcardRefused(t *testing.T) {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	stls, _ := tlsConfs(t)
	if _, err := NewServer(&quic.Transport{Conn: uc}, stls, nil, ServerConfig{}); !errors.Is(err, ErrWildcardBind) {
		t.Fatalf("wildcard bind: %v, want ErrWildcardBind", err)
	}
}

// TestControlEndpoint drives a move through ServeControl and ControlClient over a unix socket.
func TestControlEndpoint(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{})
	tb.dial(2, ClientOptions{}, 10*time.Millisecond)
	sock := fmt.Sprintf("@steerd-quicext-test-%d", os.Getpid())
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go ServeControl(l, tb.srv)
	cc := NewControlClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	newAddr, _ := tb.mc.Reserve("udp4", tb.nextAddr(0))
	if _, err := cc.Prepare(ctx, Target{}, "warp", time.Second, false); !errors.Is(err, ErrControl) {
		t.Fatalf("bad strategy: %v, want ErrControl", err)
	}
	r, err := cc.Prepare(ctx, target(newAddr), "explicit-proactive", 2*time.Second, false)
	if err != nil || len(r.Ready) != 2 || r.Strategy != StrategyExplicit {
		t.Fatalf("prepare: %+v %v", r, err)
	}
	st, err := cc.Status(ctx)
	if err != nil || !st.Prepared || st.Conns != 2 || st.Negotiated != 2 {
		t.Fatalf("status: %+v %v", st, err)
	}
	tb.mc.Freeze()
	time.Sleep(100 * time.Millisecond)
	tb.mc.Restore()
	if err := cc.Restored(ctx, target(newAddr)); err != nil {
		t.Fatalf("restored: %v", err)
	}
	if err := cc.Abort(ctx); !errors.Is(err, ErrControl) {
		t.Fatalf("abort after restored: %v, want ErrControl", err)
	}
	waitFor(t, 10*time.Second, "switch", func() bool {
		return tb.clients[0].ServerAddr() == newAddr && tb.clients[1].ServerAddr() == newAddr
	})
	tb.finish("control endpoint")
}

// TestServerConfigApplies checks that the service's quic.Config holds for its connections (the
// admission callback quicext installs must not fall back to quic-go's defaults): a server that
// allows one incoming bidirectional stream lets the client open exactly one.
func TestServerConfigApplies(t *testing.T) {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	stls, ctls := tlsConfs(t)
	s, err := NewServer(&quic.Transport{Conn: uc}, stls, &quic.Config{MaxIncomingStreams: 1}, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := Dial(ctx, uc.LocalAddr().String(), ctls, &quic.Config{}, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.CloseWithError(0, "")
	if _, err := cc.Conn.OpenStream(); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	if _, err := cc.Conn.OpenStream(); err == nil {
		t.Fatal("a second bidirectional stream opened: the server's MaxIncomingStreams = 1 was not applied (quic-go defaults used)")
	}
}
