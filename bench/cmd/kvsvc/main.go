// Command kvsvc is the benchmark service of the TCP/TLS and MPTCP baselines: examples/kv's Store
// and line protocol ("INCR <key> <seq>" -> "<key> <value> <seq>", the same logic the QUIC example
// service examples/kvservice runs for the steerd matrix) over TLS 1.3 on TCP or MPTCP, with
// examples/kv's memory ballast so that its checkpoint image has a chosen size. It runs as the
// process of a runc container in a pod network namespace, so it is built static (CGO_ENABLED=0)
// and needs nothing else in its root filesystem.
//
//	kvsvc -listen :7000 -cert /cert.pem -key /key.pem [-mptcp] [-ballast-mb 50] [-state /state/counter -state-key bench]
//
// It binds the wildcard address so that a restored copy (CRIU) in another pod namespace, with
// another address, listens again. With -state it writes the value of -state-key to that file on
// SIGTERM and exits, and at start it brings the key back to the value in the file: the "stop on
// node A, start on node B with the state passed along" fallback (examples/kv's Store has no
// setter, so the value is restored by as many INCRs: a few thousand at most in a run).
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
	"strings"
	"sync"
	"syscall"

	"github.com/steerd/steerd/examples/kv"
)

func main() {
	listen := flag.String("listen", ":7000", "TCP address to listen on (wildcard host: restores elsewhere)")
	cert := flag.String("cert", "/cert.pem", "PEM certificate chain")
	key := flag.String("key", "/key.pem", "PEM private key")
	mptcp := flag.Bool("mptcp", false, "listen with MPTCP (IPPROTO_MPTCP) instead of TCP")
	ballastMB := flag.Int("ballast-mb", 0, "MiB of memory to allocate and dirty (image size)")
	state := flag.String("state", "", "file the value of -state-key is written to on SIGTERM and read at start (stop/start fallback)")
	stateKey := flag.String("state-key", "bench", "the kv key whose value -state carries")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)

	if _, err := kv.Ballast(*ballastMB); err != nil {
		log.Fatalf("kvsvc: %v", err)
	}
	store := kv.NewStore()
	if *state != "" {
		if b, err := os.ReadFile(*state); err == nil {
			v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				log.Fatalf("kvsvc: parse state file %s: %v", *state, err)
			}
			for store.Get(*stateKey) < v {
				store.Incr(*stateKey)
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
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	if *state != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			<-sig
			// Close every connection before reading the value: a response a client received
			// was written before the close, after its increment, so the saved value is at
			// least every value a client saw (the counter never goes backwards across the move).
			mu.Lock()
			l.Close()
			for c := range conns {
				c.Close()
			}
			// mu stays locked until the process exits: nothing else may end it first.
			if err := os.WriteFile(*state, []byte(strconv.FormatUint(store.Get(*stateKey), 10)), 0o644); err != nil {
				log.Printf("kvsvc: write state: %v", err)
				os.Exit(1)
			}
			os.Exit(0)
		}()
	}
	fmt.Fprintf(os.Stderr, "kvsvc: listening on %s mptcp=%v ballast=%dMiB %s=%d\n", *listen, *mptcp, *ballastMB, *stateKey, store.Get(*stateKey))
	tl := tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{crt}, MinVersion: tls.VersionTLS13, NextProtos: []string{kv.ALPN}})
	for {
		c, err := tl.Accept()
		if err != nil {
			mu.Lock() // the SIGTERM handler holds it while it closes l; it exits the process
			log.Fatalf("kvsvc: accept: %v", err)
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		go func() {
			_ = store.Serve(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		}()
	}
}
