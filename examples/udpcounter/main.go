// Command udpcounter is a small stateful service for the migration tests (package migrate).
//
// UDP mode (default) answers on -listen, which should be the pod's stable address (a service bound
// to 0.0.0.0 would reply from a node address that changes with the move). Requests are ASCII:
//
//	"inc"   -> "<n>"          the counter after incrementing it (starts at 0, so the first reply is 1)
//	"get"   -> "<n>"          the counter without changing it
//	"check" -> "ok <crc32>"   the ballast still holds the bytes written at start ("bad <crc32>" if not)
//	"pid"   -> "<pid>"        the process ID (inside the container's PID namespace)
//
// QUIC mode (-quic) is a plain quic-go echo server (RFC 9000 transport, no steerd extension) with
// a self-signed certificate made at start and ALPN EchoALPN: every bidirectional stream echoes what
// it reads until the peer closes its send side.
//
// -ballast-mb N allocates N MiB and writes a position-dependent pattern into every page so that all
// of it is resident and non-zero: CRIU has to dump and restore every page, and "check" proves that
// the restored pages (possibly pulled lazily with userfaultfd) carry the right bytes.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// EchoALPN is the TLS ALPN protocol of the QUIC echo mode.
const EchoALPN = "steerd-echo"

var (
	ballast    []byte
	ballastSum uint32
)

func main() {
	listen := flag.String("listen", "127.0.0.1:4000", "address:port to bind (the pod address)")
	quicMode := flag.Bool("quic", false, "serve QUIC echo instead of the UDP counter")
	ballastMB := flag.Int("ballast-mb", 0, "MiB of memory to allocate and touch")
	flag.Parse()
	log.SetFlags(0)

	if *ballastMB > 0 {
		ballast = make([]byte, *ballastMB<<20)
		for i := 0; i < len(ballast); i += 64 {
			ballast[i] = byte(i>>12) | 1
			ballast[i+1] = byte(i >> 20)
		}
		ballastSum = crc32.ChecksumIEEE(ballast)
	}
	addr, err := net.ResolveUDPAddr("udp", *listen)
	if err != nil {
		log.Fatalf("udpcounter: resolve %s: %v", *listen, err)
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		log.Fatalf("udpcounter: listen %s: %v", *listen, err)
	}
	if *quicMode {
		if err := serveQUIC(conn); err != nil {
			log.Fatalf("udpcounter: %v", err)
		}
		return
	}
	serveCounter(conn)
}

func serveCounter(conn *net.UDPConn) {
	var n atomic.Uint64
	buf := make([]byte, 1500)
	for {
		k, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			log.Fatalf("udpcounter: read: %v", err)
		}
		var reply string
		switch string(buf[:k]) {
		case "inc":
			reply = strconv.FormatUint(n.Add(1), 10)
		case "get":
			reply = strconv.FormatUint(n.Load(), 10)
		case "check":
			sum := crc32.ChecksumIEEE(ballast)
			if sum == ballastSum {
				reply = fmt.Sprintf("ok %08x", sum)
			} else {
				reply = fmt.Sprintf("bad %08x", sum)
			}
		case "pid":
			reply = strconv.Itoa(os.Getpid())
		default:
			reply = "unknown request"
		}
		// A send error (for example while the pod's route is being changed) must not stop the service.
		_, _ = conn.WriteToUDPAddrPort([]byte(reply), from)
	}
}

func serveQUIC(conn *net.UDPConn) error {
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: conn}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{EchoALPN}},
		&quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("listen quic: %w", err)
	}
	for {
		c, err := ln.Accept(context.Background())
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			for {
				s, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					_, _ = io.Copy(s, s)
					_ = s.Close()
				}()
			}
		}()
	}
}

// selfSigned makes an ECDSA P-256 certificate valid for one day.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "udpcounter"},
		DNSNames:     []string{"udpcounter"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
