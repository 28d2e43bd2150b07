// Command kvservice is steerd's example stateful QUIC microservice: the examples/kv counter
// protocol (INCR/GET/PING lines, see package kv) on every bidirectional stream of every QUIC
// connection, with the server side of the QUIC server-migration extension (package quicext) and
// QUIC-LB connection IDs whose server ID is the service's instance ID (package connid), which
// steerd's XDP datapath routes by. It runs as the process of a runc container in a pod network
// namespace and is built static (CGO_ENABLED=0).
//
//	kvservice -listen 198.19.0.1:4433 -listen [2001:2:0:ff::0:1]:4433 -instance 7 \
//	    -ballast-mb 50 -log-file /kvservice.log -log-format json
//
// Flags:
//
//	-listen host:port   pod address to bind (repeat, or comma-separate, for IPv4 and IPv6).
//	                    A wildcard host (0.0.0.0, ::, empty) is refused: after a move quic-go
//	                    would send from a stale IP_PKTINFO source address.
//	-instance N         QUIC-LB server ID (instance ID) in every CID the service issues
//	-sid-len N          server ID length in bytes (default 2, as the XDP program's sid_len)
//	-cid-len N          total CID length in bytes, 8..20 (default 11: 1 + server ID + 8 nonce)
//	-ballast-mb N       MiB of memory to allocate and touch (checkpoint image size)
//	-control ADDR       unix socket of the quicext control endpoint (default @steerd-quicext,
//	                    abstract; "none" disables it)
//	-strategies LIST    comma-separated strategies the server supports (symmetric,
//	                    sync-symmetric, explicit-proactive, explicit-reactive, pool) or "all"
//	-pool LIST          comma-separated candidate addresses for the pool strategy
//	-cert/-key FILE     PEM certificate chain and key; without them a self-signed certificate is
//	                    generated at start, and its SHA-256 printed for loadclient -pin
//	-idle-timeout D     QUIC idle timeout (default 30s; must exceed a migration's freeze)
//	-max-udp-payload N  cap every QUIC packet the service sends at N bytes of UDP payload,
//	                    1200..1452 (quic-go Config.InitialPacketSize = N with
//	                    DisablePathMTUDiscovery; RFC 9000 section 14). 0 (default): quic-go
//	                    starts at 1280 and grows to 1452 by path MTU discovery. Set it to the
//	                    value steerd's MTU error names when the links between the nodes have a
//	                    1500-byte MTU: a node forwards a client packet to the node hosting the
//	                    connection inside a UDP encapsulation: N = MTU - 48 (inner IPv6+UDP)
//	                    - 28 (outer IPv4+UDP), or - 48 (outer IPv6+UDP) with IPv6 peers:
//	                    1424, or 1404, for a 1500-byte MTU.
//	-log-format F       text or json (log/slog)
//	-log-file FILE      append logs to FILE (inside the container root: CRIU cannot dump host
//	                    files as stdio, so stdout and stderr are /dev/null in the container)
//	-log-level L        debug, info, warn or error
//
// SIGTERM and SIGINT close the connections and exit 0. SIGUSR1 logs the service statistics and
// verifies the ballast (every page still holds its pattern after a restore).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/quicext"
)

type options struct {
	listen      []string
	instance    uint64
	sidLen      int
	cidLen      int
	ballastMB   int
	control     string
	strategies  string
	pool        string
	cert, key   string
	idleTimeout time.Duration
	// maxUDPPayload caps the UDP payload of every packet sent, in bytes (0: quic-go's PMTUD).
	maxUDPPayload int
	logFormat     string
	logFile       string
	logLevel      string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("kvservice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Func("listen", "pod `host:port` to bind, specific IP (repeat or comma-separate)", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.listen = append(o.listen, a)
			}
		}
		return nil
	})
	fs.Uint64Var(&o.instance, "instance", 1, "QUIC-LB server ID (instance ID) carried by every CID")
	fs.IntVar(&o.sidLen, "sid-len", service.DefaultServerIDLen, "QUIC-LB server ID length in `bytes`")
	fs.IntVar(&o.cidLen, "cid-len", service.DefaultCIDLen, "total CID length in `bytes` (8..20)")
	fs.IntVar(&o.ballastMB, "ballast-mb", 0, "`MiB` of memory to allocate and touch")
	fs.StringVar(&o.control, "control", quicext.DefaultControlAddr, "unix socket `address` of the quicext control endpoint (\"none\": off)")
	fs.StringVar(&o.strategies, "strategies", "all", "comma-separated migration strategies the server supports, or all")
	fs.StringVar(&o.pool, "pool", "", "comma-separated candidate `addresses` for the pool strategy")
	fs.StringVar(&o.cert, "cert", "", "PEM certificate chain `file` (default: self-signed)")
	fs.StringVar(&o.key, "key", "", "PEM private key `file`")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", service.DefaultIdleTimeout, "QUIC idle timeout")
	fs.IntVar(&o.maxUDPPayload, "max-udp-payload", 0, "cap every QUIC packet at this many `bytes` of UDP payload, "+
		"1200..1452 (quic-go InitialPacketSize with path MTU discovery off); 0: PMTUD up to 1452. "+
		"Use the value steerd's MTU error names for 1500-byte links between nodes (1424 with IPv4 peers, 1404 with IPv6 peers)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logFile, "log-file", "", "append logs to this `file` instead of stderr")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(o.listen) == 0 {
		return nil, errors.New("-listen is required (the pod address, e.g. 198.19.0.1:4433)")
	}
	for _, a := range o.listen {
		if err := service.CheckListenAddr(a); err != nil {
			return nil, err
		}
	}
	if (o.cert == "") != (o.key == "") {
		return nil, errors.New("-cert and -key go together")
	}
	if o.maxUDPPayload != 0 && (o.maxUDPPayload < minUDPPayload || o.maxUDPPayload > maxUDPPayload) {
		return nil, fmt.Errorf("-max-udp-payload %d: want 0 or %d..%d bytes (QUIC needs %d, RFC 9000 section 14; quic-go sends at most %d)",
			o.maxUDPPayload, minUDPPayload, maxUDPPayload, minUDPPayload, maxUDPPayload)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format %q: want text or json", o.logFormat)
	}
	return o, nil
}

// UDP payload bounds of -max-udp-payload in bytes: RFC 9000 section 14 requires a path that
// carries 1200-byte UDP payloads; quic-go never sends more than 1452 (its MaxPacketBufferSize).
const (
	minUDPPayload = 1200
	maxUDPPayload = 1452
)

// quicConfig is the service's quic-go config: the idle timeout, and with -max-udp-payload a fixed
// packet size (InitialPacketSize, which quic-go keeps as long as path MTU discovery is off).
//
// Its GetConfigForClient returns the same settings: quicext.Server installs a GetConfigForClient
// that returns (nil, nil) when it has none to call, and quic-go then applies its defaults to the
// connection instead of the listener's config.
func quicConfig(o *options) *quic.Config {
	base := &quic.Config{MaxIdleTimeout: o.idleTimeout}
	if o.maxUDPPayload > 0 {
		base.InitialPacketSize = uint16(o.maxUDPPayload)
		base.DisablePathMTUDiscovery = true
	}
	qc := base.Clone()
	qc.GetConfigForClient = func(*quic.ClientInfo) (*quic.Config, error) { return base.Clone(), nil }
	return qc
}

// parseStrategies parses "all" or a comma-separated list of quicext strategy names.
func parseStrategies(v string) (quicext.Strategy, error) {
	if v == "" || v == "all" {
		return quicext.AllStrategies, nil
	}
	var s quicext.Strategy
	for _, n := range strings.Split(v, ",") {
		st, err := quicext.ParseStrategy(strings.TrimSpace(n))
		if err != nil {
			return 0, err
		}
		s |= st
	}
	return s, nil
}

// parsePool parses comma-separated host:port candidates into one Target each.
func parsePool(v string) ([]quicext.Target, error) {
	var out []quicext.Target
	for _, a := range strings.Split(v, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			return nil, fmt.Errorf("parse pool address %q: %w", a, err)
		}
		ap := ua.AddrPort()
		if ap.Addr().Unmap().Is4() {
			out = append(out, quicext.Target{IPv4: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())})
		} else {
			out = append(out, quicext.Target{IPv6: ap})
		}
	}
	return out, nil
}

func newLogger(o *options, stderr io.Writer) (*slog.Logger, io.Closer, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, nil, fmt.Errorf("-log-level: %w", err)
	}
	w := stderr
	var closer io.Closer = io.NopCloser(nil)
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file: %w", err)
		}
		w, closer = f, f
	}
	ho := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(w, ho)
	if o.logFormat == "json" {
		h = slog.NewJSONHandler(w, ho)
	}
	return slog.New(h), closer, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit: 0 after a signal, 1 on a runtime error, 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "kvservice: %v\n", err)
		}
		return 2
	}
	log, closer, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kvservice: %v\n", err)
		return 2
	}
	defer closer.Close()
	if err := serve(o, log, stdout); err != nil {
		log.Error("kvservice failed", "err", err)
		fmt.Fprintf(stderr, "kvservice: %v\n", err)
		return 1
	}
	return 0
}

func serve(o *options, log *slog.Logger, stdout io.Writer) error {
	strategies, err := parseStrategies(o.strategies)
	if err != nil {
		return err
	}
	pool, err := parsePool(o.pool)
	if err != nil {
		return err
	}
	ballast, err := kv.Ballast(o.ballastMB)
	if err != nil {
		return err
	}
	var cert tls.Certificate
	var fp string
	if o.cert != "" {
		cert, fp, err = service.LoadCert(o.cert, o.key)
	} else {
		var ips []net.IP
		for _, a := range o.listen {
			if ua, rerr := net.ResolveUDPAddr("udp", a); rerr == nil {
				ips = append(ips, ua.IP)
			}
		}
		cert, fp, err = service.SelfSigned(ips)
	}
	if err != nil {
		return err
	}
	svc, err := service.New(service.Config{
		Listen:      o.listen,
		Instance:    connid.InstanceID(o.instance),
		ServerIDLen: o.sidLen,
		CIDLen:      o.cidLen,
		Strategies:  strategies,
		Pool:        pool,
		TLS:         &tls.Config{Certificates: []tls.Certificate{cert}},
		QUIC:        quicConfig(o),
		Logger:      log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.control != "" && o.control != "none" {
		l, err := quicext.ListenControl(o.control)
		if err != nil {
			svc.Close()
			return err
		}
		defer l.Close()
		go func() {
			if err := svc.ServeControl(l); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("control endpoint stopped", "err", err)
			}
		}()
	}
	// Logged once everything listens: harnesses wait for this line.
	fmt.Fprintf(stdout, "kvservice: certificate sha256 %s\n", fp)
	var addrs []string
	for _, a := range svc.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info("kvservice listening", "addrs", addrs, "instance", o.instance, "sid_len", o.sidLen,
		"cid_len", o.cidLen, "strategies", strategies.String(), "ballast_mb", o.ballastMB,
		"cert_sha256", fp, "control", o.control, "max_udp_payload", o.maxUDPPayload, "pid", os.Getpid())
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			st := svc.Stats()
			log.Info("kvservice stats", "conns", st.Conns, "total_conns", st.TotalConns, "streams", st.Streams,
				"keys", st.Store.Keys, "requests", st.Store.Requests, "errors", st.Store.Errors,
				"ballast_ok", ballast.Verify() == nil)
		}
	}()
	err = svc.Serve(ctx)
	log.Info("kvservice stopped", "requests", svc.Store().Stats().Requests, "err", err)
	return err
}
