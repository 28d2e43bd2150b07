// Command loadclient drives examples/kvservice through steerd's QUIC server-migration extension
// and measures what the clients of a moving service see (package load): N long-lived QUIC
// connections, one request every -interval on one bidirectional stream each, the largest gap
// between successive responses (the client-observed migration time), lost, out-of-order and
// wrong responses (the per-connection counter must rise by exactly one: state survived), and the
// server address each connection ended on.
//
//	loadclient -addr 198.18.20.2:4433 -conns 20 -interval 10ms -pin <sha256> -duration 60s
//
// Stdout carries JSON lines: events while running ({"ev":"connected"|"negotiated"|"announced"|
// "probing"|"switched"|"gap"|"wrong"|"error",...}) and the final report ({"ev":"report",...})
// after -duration or on SIGTERM/SIGINT. -report-file also writes the report (indented JSON).
//
// Exit status: 0 when every request was answered in order and right, 3 when the report shows
// lost, out-of-order or wrong responses or a failed connection, 1 on a dial or setup error, 2 on
// a usage error.
//
// Flags:
//
//	-addr host:port     server address (the node's public address); required
//	-conns N            connections (default 1)
//	-interval D         time between requests on a connection (default 10ms)
//	-duration D         sending time (default 0: until SIGTERM/SIGINT)
//	-drain D            wait for outstanding responses after sending (default 2s)
//	-gap-threshold D    list gaps longer than this (default 3 x interval)
//	-op OP              incr (default), get or ping
//	-key-prefix S       keys are "<prefix>-<conn>" (default random)
//	-strategies LIST    comma-separated strategies offered, or all (default)
//	-pin SHA256         accept only the server certificate with this SHA-256 (kvservice prints it)
//	-insecure           accept any server certificate (demos)
//	-ca FILE            PEM CA bundle to verify the server certificate
//	-server-name NAME   TLS SNI and verified name (default kvservice.steerd.test)
//	-bind IP            local IP of the client sockets
//	-min-silence D      lower bound of the silence detector (reactive strategies; default 100ms)
//	-idle-timeout D     QUIC idle timeout (default 30s)
//	-dial-timeout D     handshake timeout per connection (default 5s)
//	-report-file FILE   write the final report there
//	-quiet              no event lines, only the report
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/quicext"
)

type options struct {
	load                      load.Options
	strategies, op            string
	pin, ca, serverName, bind string
	insecure, quiet           bool
	minSilence, idle          time.Duration
	reportFile                string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("loadclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.load.Addr, "addr", "", "server `host:port` (the node's public address)")
	fs.IntVar(&o.load.Conns, "conns", 1, "number of connections")
	fs.DurationVar(&o.load.Interval, "interval", load.DefaultInterval, "time between requests on a connection")
	fs.DurationVar(&o.load.Duration, "duration", 0, "sending time (0: until SIGTERM/SIGINT)")
	fs.DurationVar(&o.load.Drain, "drain", load.DefaultDrain, "wait for outstanding responses after sending")
	fs.DurationVar(&o.load.GapThreshold, "gap-threshold", 0, "list gaps longer than this (0: 3 x interval)")
	fs.DurationVar(&o.load.DialTimeout, "dial-timeout", load.DefaultDialTimeout, "handshake timeout per connection")
	fs.StringVar(&o.load.KeyPrefix, "key-prefix", "", "key prefix (default random)")
	fs.StringVar(&o.op, "op", "incr", "request: incr, get or ping")
	fs.StringVar(&o.strategies, "strategies", "all", "comma-separated migration strategies offered, or all")
	fs.StringVar(&o.pin, "pin", "", "SHA-256 (hex) of the only server certificate to accept")
	fs.BoolVar(&o.insecure, "insecure", false, "accept any server certificate (demos)")
	fs.StringVar(&o.ca, "ca", "", "PEM CA bundle `file`")
	fs.StringVar(&o.serverName, "server-name", service.DefaultServerName, "TLS server name (SNI)")
	fs.StringVar(&o.bind, "bind", "", "local `IP` of the client sockets")
	fs.DurationVar(&o.minSilence, "min-silence", 0, "lower bound of the silence detector (0: quicext default 100ms)")
	fs.DurationVar(&o.idle, "idle-timeout", load.DefaultIdleTimeout, "QUIC idle timeout")
	fs.StringVar(&o.reportFile, "report-file", "", "write the final report to this `file`")
	fs.BoolVar(&o.quiet, "quiet", false, "print only the report")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.load.Addr == "" {
		return nil, errors.New("-addr is required")
	}
	n := 0
	for _, set := range []bool{o.pin != "", o.insecure, o.ca != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("give exactly one of -pin, -ca, -insecure")
	}
	switch o.op {
	case "incr", "get", "ping":
		o.load.Op = kv.Op(strings.ToUpper(o.op))
	default:
		return nil, fmt.Errorf("-op %q: want incr, get or ping", o.op)
	}
	if o.strategies != "all" {
		for _, s := range strings.Split(o.strategies, ",") {
			st, err := quicext.ParseStrategy(strings.TrimSpace(s))
			if err != nil {
				return nil, err
			}
			o.load.Client.Strategies |= st
		}
	}
	if o.bind != "" {
		ip := net.ParseIP(o.bind)
		if ip == nil {
			return nil, fmt.Errorf("-bind %q: not an IP address", o.bind)
		}
		o.load.Client.ListenAddr = &net.UDPAddr{IP: ip}
	}
	o.load.Client.MinSilence = o.minSilence
	o.load.QUIC = &quic.Config{MaxIdleTimeout: o.idle}
	return o, nil
}

func tlsConfig(o *options) (*tls.Config, error) {
	switch {
	case o.pin != "":
		return load.PinnedTLS(o.pin, o.serverName)
	case o.insecure:
		return &tls.Config{ServerName: o.serverName, InsecureSkipVerify: true}, nil
	default:
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA bundle %s: no certificate", o.ca)
		}
		return &tls.Config{ServerName: o.serverName, RootCAs: pool}, nil
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "loadclient: %v\n", err)
		}
		return 2
	}
	o.load.TLS, err = tlsConfig(o)
	if err != nil {
		fmt.Fprintf(stderr, "loadclient: %v\n", err)
		return 2
	}
	var mu sync.Mutex
	done := false // the report is the last line: no event after it
	enc := json.NewEncoder(stdout)
	if !o.quiet {
		o.load.OnEvent = func(e load.Event) {
			mu.Lock()
			defer mu.Unlock()
			if !done {
				enc.Encode(e)
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rep, err := load.Run(ctx, o.load)
	if err != nil {
		fmt.Fprintf(stderr, "loadclient: %v\n", err)
		return 1
	}
	mu.Lock()
	done = true
	enc.Encode(rep)
	mu.Unlock()
	if o.reportFile != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.reportFile, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "loadclient: write report: %v\n", err)
			return 1
		}
	}
	if !rep.OK() {
		return 3
	}
	return 0
}
