package connid

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// capturingConn records every datagram a quic-go Transport sends.
type capturingConn struct {
	net.PacketConn
	mu   sync.Mutex
	sent [][]byte
}

func (c *capturingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	c.sent = append(c.sent, append([]byte(nil), b...))
	c.mu.Unlock()
	return c.PacketConn.WriteTo(b, addr)
}

func (c *capturingConn) datagrams() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.sent...)
}

func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "connid-test"},
		DNSNames:     []string{"connid-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"connid-test"},
	}
}

// TestQuicGoGenerator runs a quic-go connection (QUIC v1 and v2) on loopback with a
// Generator on the server's Transport, records every datagram the client
// sends, and checks with ParseCoalesced and RouteInfo that each datagram
// parses whole and that every packet not addressed to the client's original
// random DCID (later Initials, Handshake, 1-RTT) routes to the server's
// instance.
func TestQuicGoGenerator(t *testing.T) {
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		t.Run(v.String(), func(t *testing.T) { testQuicGoGenerator(t, v) })
	}
}

func testQuicGoGenerator(t *testing.T, version quic.Version) {
	// The capturing wrapper is not a *net.UDPConn: quic-go cannot size its
	// buffers and would log a warning.
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	const instance = 0x00beef
	codec, err := NewCodec(Config{ConfigRotation: 1, ServerIDLen: 3, NonceLen: 8, LengthSelfEncoding: true})
	if err != nil {
		t.Fatal(err)
	}
	gen, err := NewGenerator(codec, instance)
	if err != nil {
		t.Fatal(err)
	}
	serverUDP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer serverUDP.Close()
	serverTr := &quic.Transport{Conn: serverUDP, ConnectionIDGenerator: gen}
	defer serverTr.Close()
	tlsConf := selfSignedTLS(t)
	ln, err := serverTr.Listen(tlsConf, &quic.Config{Versions: []quic.Version{quic.Version1, quic.Version2}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		if err != nil {
			serverDone <- err
			return
		}
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			serverDone <- err
			return
		}
		_, err = io.Copy(str, str)
		str.Close()
		serverDone <- err
	}()

	clientUDP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer clientUDP.Close()
	capture := &capturingConn{PacketConn: clientUDP}
	clientTr := &quic.Transport{Conn: capture}
	defer clientTr.Close()
	clientTLS := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"connid-test"}, ServerName: "connid-test"}
	conn, err := clientTr.Dial(ctx, serverUDP.LocalAddr(), clientTLS, &quic.Config{Versions: []quic.Version{version}})
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("steered by DCID")
	if _, err := str.Write(msg); err != nil {
		t.Fatal(err)
	}
	str.Close()
	echo, err := io.ReadAll(str)
	if err != nil || string(echo) != string(msg) {
		t.Fatalf("echo %q, %v", echo, err)
	}
	conn.CloseWithError(0, "")
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}

	kinds := map[PacketKind]int{}
	var originalDCID []byte
	for i, d := range capture.datagrams() {
		hs, err := ParseCoalesced(d, codec.CIDLen())
		if err != nil {
			t.Fatalf("datagram %d (%d bytes): %v", i, len(d), err)
		}
		for j, h := range hs {
			id, kind, rerr := RouteInfo(d[sumPacketLen(hs[:j]):], codec)
			if kind != h.Kind {
				t.Fatalf("datagram %d packet %d: RouteInfo kind %v, ParseDCID kind %v", i, j, kind, h.Kind)
			}
			kinds[kind]++
			if h.Kind != KindShort && h.Version != uint32(version) {
				t.Fatalf("datagram %d packet %d: version %#x, want %#x", i, j, h.Version, uint32(version))
			}
			if i == 0 && j == 0 {
				originalDCID = h.DCID
			}
			if kind == KindInitial && bytes.Equal(h.DCID, originalDCID) {
				// Initials sent before the server's first reply carry the
				// client's random DCID (a ClientHello with a post-quantum
				// key share spans two of them).
				if rerr == nil {
					t.Logf("client's random DCID %x happens to decode", h.DCID)
				}
				continue
			}
			if rerr != nil || id != instance {
				t.Fatalf("datagram %d packet %d (%v, DCID %x): RouteInfo = %#x, %v; want %#x", i, j, kind, h.DCID, id, rerr, instance)
			}
		}
	}
	if kinds[KindShort] == 0 || kinds[KindInitial] == 0 {
		t.Fatalf("packet kinds seen %v: want Initial and short header packets", kinds)
	}
	t.Logf("client packets by kind: %v", kinds)
}

func sumPacketLen(hs []Header) int {
	n := 0
	for _, h := range hs {
		n += h.PacketLen
	}
	return n
}
