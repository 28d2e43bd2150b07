// Command kvsvc is the benchmark service: the counter/KV protocol of bench/internal/kv over
// TLS-over-TCP or TLS-over-MPTCP, with an optional memory ballast so that its checkpoint image has
// a chosen size. It runs as the process of a runc container in a pod network namespace, so it is
// built static (CGO_ENABLED=0) and needs nothing else in its root filesystem.
//
//	kvsvc -listen :7000 -cert /cert.pem -key /key.pem [-mptcp] [-ballast-mb 50] [-start 0] [-state /state/counter]
//
// It binds the wildcard address so that a restored copy (CRIU) in another pod namespace, with
// another address, listens again. With -state it writes the counter to that file on SIGTERM and
// exits: the "stop on node A, start on node B with the state passed along" fallback.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/steerd/steerd/bench/internal/kv"
)

// ballast keeps the touched memory reachable so that CRIU dumps it.
var ballast []byte

func main() {
	listen := flag.String("listen", ":7000", "TCP address to listen on (wildcard host: restores elsewhere)")
	cert := flag.String("cert", "/cert.pem", "PEM certificate chain")
	key := flag.String("key", "/key.pem", "PEM private key")
	mptcp := flag.Bool("mptcp", false, "listen with MPTCP (IPPROTO_MPTCP) instead of TCP")
	ballastMB := flag.Int("ballast-mb", 0, "MiB of memory to allocate and dirty (image size)")
	start := flag.Uint64("start", 0, "initial counter value (state passed from a stopped instance)")
	state := flag.String("state", "", "file the counter is written to on SIGTERM (stop/start fallback)")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)

	if *ballastMB > 0 {
		ballast = make([]byte, *ballastMB<<20)
		for i := range ballast {
			ballast[i] = byte(i*7 + 1) // non-zero, non-uniform: a page CRIU must copy
		}
	}
	if *state != "" {
		if b, err := os.ReadFile(*state); err == nil {
			if v, err := strconv.ParseUint(string(b), 10, 64); err == nil && v > *start {
				*start = v
			}
		}
	}
	crt, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("kvsvc: load key pair: %v", err)
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(*mptcp)
	l, err := lc.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		log.Fatalf("kvsvc: listen %s: %v", *listen, err)
	}
	store := kv.NewStore(*start)
	if *state != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			<-sig
			if err := os.WriteFile(*state, []byte(strconv.FormatUint(store.Counter(), 10)), 0o644); err != nil {
				log.Printf("kvsvc: write state: %v", err)
				os.Exit(1)
			}
			os.Exit(0)
		}()
	}
	fmt.Fprintf(os.Stderr, "kvsvc: listening on %s mptcp=%v ballast=%dMiB start=%d\n", *listen, *mptcp, *ballastMB, *start)
	log.Fatal(store.ServeListener(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{crt}, MinVersion: tls.VersionTLS13})))
}
