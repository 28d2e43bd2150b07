package adversarial

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/steerd/steerd/quicext"
)

func loopTLS(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"adv.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(crt)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"adv"}},
		&tls.Config{RootCAs: pool, ServerName: "adv.test", NextProtos: []string{"adv"}}
}

// echoOnce writes one message on a new stream and waits for its echo.
func echoOnce(ctx context.Context, c *quic.Conn) error {
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := str.Write([]byte("ping")); err != nil {
		return err
	}
	str.Close()
	if dl, ok := ctx.Deadline(); ok {
		str.SetReadDeadline(dl)
	}
	b, err := io.ReadAll(str)
	if err == nil && string(b) != "ping" {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// TestClientHostileMigrated points a Symmetric quicext client (loopback) at addresses that must
// not take its connection away: SERVER_MIGRATED to a port nobody answers on, to the client's own
// address, and two announcements in quick succession (the second while the first attempt still
// probes). The client must never switch to an unvalidated address, must report the failed
// attempts, and its connection must keep working on the original path.
func TestClientHostileMigrated(t *testing.T) {
	stls, ctls := loopTLS(t)
	qc := &quic.Config{MaxIdleTimeout: 10 * time.Second}
	srv, err := quicext.Listen("127.0.0.1:0", stls, qc, quicext.ServerConfig{Strategies: quicext.StrategySymmetric})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		for {
			c, err := srv.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				for {
					str, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(str, str); str.Close() }()
				}
			}()
		}
	}()
	// A bound socket that never answers (packets are read and dropped).
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := dead.ReadFrom(b); err != nil {
				return
			}
		}
	}()
	// A port with no socket (ICMP port unreachable on loopback).
	closed, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	closedAddr := closed.LocalAddr().(*net.UDPAddr).AddrPort()
	closed.Close()

	events := make(chan quicext.Event, 256)
	cc, err := quicext.Dial(ctx, srv.Addr().String(), ctls, qc, quicext.ClientOptions{
		Strategies: quicext.StrategySymmetric, ProbeTimeout: 700 * time.Millisecond,
		OnEvent: func(e quicext.Event) {
			select {
			case events <- e:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.CloseWithError(0, "")
	orig := cc.ServerAddr()
	self := netip.MustParseAddrPort(cc.Conn.LocalAddr().String())
	if err := echoOnce(ctx, cc.Conn); err != nil {
		t.Fatalf("echo before: %v", err)
	}
	move := func(to netip.AddrPort) {
		t.Helper()
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		r, err := srv.Prepare(pctx, quicext.Target{IPv4: to}, func(*quic.Conn) quicext.Strategy { return quicext.StrategySymmetric })
		if err != nil || len(r.Ready) != 1 {
			t.Fatalf("prepare toward %v: %+v %v", to, r, err)
		}
		if err := srv.Restored(pctx, quicext.Target{IPv4: to}); err != nil {
			t.Fatalf("restored %v: %v", to, err)
		}
	}
	targets := []netip.AddrPort{dead.LocalAddr().(*net.UDPAddr).AddrPort(), self, closedAddr}
	for i, to := range targets {
		move(to)
		if i == 0 {
			time.Sleep(100 * time.Millisecond) // the next one lands while this attempt probes
		} else {
			time.Sleep(time.Second)
		}
		if err := echoOnce(ctx, cc.Conn); err != nil {
			t.Fatalf("echo after SERVER_MIGRATED to %v: %v", to, err)
		}
	}
	time.Sleep(time.Second)
	var failed, switched int
	for len(events) > 0 {
		e := <-events
		switch e.Kind {
		case quicext.EventFailed:
			failed++
		case quicext.EventSwitched:
			switched++
			t.Errorf("client switched to %v, which never validated", e.Addr)
		}
	}
	if cc.ServerAddr() != orig {
		t.Errorf("server address %v, want the original %v", cc.ServerAddr(), orig)
	}
	if failed < 2 {
		t.Errorf("%d failed attempts reported, want at least 2 (own address, closed port)", failed)
	}
	if err := echoOnce(ctx, cc.Conn); err != nil {
		t.Errorf("echo at the end: %v", err)
	}
}
