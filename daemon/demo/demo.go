// Package demo is `steerd demo` (make demo): it builds a netns testbed (one client, a router, two
// edge nodes), starts steerd on both nodes as child processes inside the node namespaces
// (`ip netns exec <ns> steerd --config ...`), runs the example QUIC service (examples/kvservice)
// on node n0, starts a load client (examples/loadclient) in the client namespace, migrates the
// service n0 -> n1 (Symmetric) and n1 -> n0 (Explicit-reactive), prints the timelines, checks the
// migrations and the load report, and tears everything down.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/pki"
	"github.com/steerd/steerd/tests/netns"
)

// ErrNotRoot is returned when the demo lacks the privileges for namespaces and XDP.
var ErrNotRoot = errors.New("demo needs root (network namespaces, XDP, runc, CRIU)")

// Step is one migration of the demo.
type Step struct {
	From, To  int // node indexes
	Strategy  string
	Technique api.Technique
}

// Options configure the demo. Zero values take the defaults in brackets.
type Options struct {
	// Steerd, KVService, LoadClient are the binaries [bin/steerd, bin/kvservice, bin/loadclient].
	Steerd, KVService, LoadClient string
	// Bundle is the OCI bundle of the kvservice container on both nodes [bin/bundles/kvservice].
	Bundle string
	// Conns is the number of QUIC connections of the load client [4].
	Conns int
	// Steps are the migrations [n0->n1 symmetric cold, n1->n0 explicit-reactive cold].
	Steps []Step
	// Settle is the load time before, between and after migrations [2s].
	Settle time.Duration
	// NoDatapath runs the nodes without XDP (control plane only).
	NoDatapath bool
	// WorkDir holds configs, certificates, logs [a temporary directory, removed unless Keep].
	WorkDir string
	Keep    bool
	Out     io.Writer
}

func (o *Options) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.Steerd, "bin/steerd")
	def(&o.KVService, "bin/kvservice")
	def(&o.LoadClient, "bin/loadclient")
	def(&o.Bundle, "bin/bundles/kvservice")
	if o.Conns == 0 {
		o.Conns = 4
	}
	if len(o.Steps) == 0 {
		o.Steps = []Step{{0, 1, "symmetric", api.Cold}, {1, 0, "explicit-reactive", api.Cold}}
	}
	if o.Settle == 0 {
		o.Settle = 2 * time.Second
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
}

const (
	service  = "kv"
	port     = 4433
	instance = 7
)

var (
	pod4 = netip.MustParseAddr("198.19.0.1")
	pod6 = netip.MustParseAddr("2001:2:0:ff::1")
)

// Run runs the demo. It returns an error naming the step that failed.
func Run(ctx context.Context, o Options) (err error) {
	o.defaults()
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	for _, b := range []string{o.Steerd, o.KVService, o.LoadClient} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("demo: binary %s: %w (run 'make build')", b, err)
		}
	}
	out := o.Out
	say := func(f string, a ...any) { fmt.Fprintf(out, "==> "+f+"\n", a...) }
	if o.WorkDir == "" {
		if o.WorkDir, err = os.MkdirTemp("", "steerd-demo-"); err != nil {
			return err
		}
		if !o.Keep {
			defer os.RemoveAll(o.WorkDir)
		}
	}
	say("building testbed: 1 client, router, 2 nodes")
	tb, err := netns.Build(netns.Topology{Clients: 1, Nodes: 2})
	if err != nil {
		return fmt.Errorf("demo: build testbed: %w", err)
	}
	defer func() {
		say("tearing down testbed %s", tb.ID)
		if cerr := tb.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("demo: tear down: %w", cerr)
		}
	}()

	pkiDir := filepath.Join(o.WorkDir, "pki")
	ca, err := pki.NewCA("demo", 0)
	if err != nil {
		return err
	}
	if err := ca.Save(pkiDir); err != nil {
		return err
	}
	names := []string{"n0", "n1"}
	clients := make([]*api.Client, len(names))
	for i, n := range names {
		nc, err := ca.Issue(n, 0)
		if err != nil {
			return err
		}
		if err := nc.Save(pkiDir); err != nil {
			return err
		}
		cfg := nodeConfig(o, tb, i, names, pkiDir)
		path := filepath.Join(o.WorkDir, n+".json")
		if err := cfg.Save(path); err != nil {
			return err
		}
		stop, err := startSteerd(ctx, o, tb.Nodes[i].NS, path, filepath.Join(o.WorkDir, n+".log"))
		if err != nil {
			return fmt.Errorf("demo: start steerd on %s: %w", n, err)
		}
		defer stop()
		clients[i] = api.NewClient(cfg.ControlSocket)
		defer clients[i].Close()
		if err := waitReady(ctx, clients[i], 10*time.Second); err != nil {
			return fmt.Errorf("demo: steerd on %s not ready (log %s): %w", n, filepath.Join(o.WorkDir, n+".log"), err)
		}
		say("steerd %s up in %s (control %s)", n, tb.Nodes[i].NS, cfg.ControlSocket)
	}

	say("starting %s on n0", service)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = clients[0].Run(rctx, api.RunRequest{Service: service})
	cancel()
	if err != nil {
		return fmt.Errorf("demo: run %s on n0: %w", service, err)
	}

	report := filepath.Join(o.WorkDir, "load-report.json")
	addr := netip.AddrPortFrom(tb.Nodes[0].IPv4, port)
	say("load client: %d connections to %s", o.Conns, addr)
	lc := tb.Clients[0].Command(o.LoadClient, "-addr", addr.String(), "-conns", fmt.Sprint(o.Conns), "-insecure", "-quiet", "-report-file", report)
	lf, err := os.Create(filepath.Join(o.WorkDir, "loadclient.log"))
	if err != nil {
		return err
	}
	defer lf.Close()
	lc.Stdout, lc.Stderr = lf, lf
	if err := lc.Start(); err != nil {
		return fmt.Errorf("demo: start load client: %w", err)
	}
	lcDone := make(chan error, 1)
	go func() { lcDone <- lc.Wait() }()
	stopLoad := func() error {
		_ = lc.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-lcDone:
			return err
		case <-time.After(15 * time.Second):
			_ = lc.Process.Kill()
			return errors.New("load client did not stop")
		}
	}
	sleep(ctx, o.Settle)

	var failed []string
	for _, s := range o.Steps {
		say("migrating %s %s -> %s (%s, %s)", service, names[s.From], names[s.To], s.Strategy, s.Technique)
		mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		m, err := clients[s.From].Migrate(mctx, api.MigrateRequest{Service: service, To: names[s.To], Strategy: s.Strategy,
			Technique: s.Technique, DrainPeriod: time.Second, Wait: true})
		cancel()
		if err != nil {
			_ = stopLoad()
			return fmt.Errorf("demo: migrate %s -> %s: %w", names[s.From], names[s.To], err)
		}
		if err := api.WriteTimeline(out, m.Events); err != nil {
			return err
		}
		if err := api.WriteMigration(out, m); err != nil {
			return err
		}
		if m.Result != api.Succeeded {
			failed = append(failed, fmt.Sprintf("%s -> %s: %v", names[s.From], names[s.To], m.Error))
			break
		}
		sleep(ctx, o.Settle)
	}

	say("stopping the load client")
	lerr := stopLoad()
	rep, rerr := readReport(report)
	switch {
	case rerr != nil:
		failed = append(failed, fmt.Sprintf("load report: %v (load client: %v)", rerr, lerr))
	default:
		fmt.Fprintf(out, "load: sent %d, received %d, lost %d, out of order %d, wrong %d, failed connections %d, switched %d, max gap %.1f ms\n",
			rep.Sent, rep.Received, rep.Lost, rep.OutOfOrder, rep.Wrong, rep.Failed, rep.Switched, rep.MaxGapMS)
		if rep.Lost != 0 || rep.Wrong != 0 || rep.Failed != 0 || rep.Received == 0 {
			failed = append(failed, "load client saw lost or wrong answers or failed connections")
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("demo: verification failed (logs in %s): %v", o.WorkDir, failed)
	}
	say("demo passed")
	return nil
}

// loadReport is the subset of examples/loadclient's report the demo checks.
type loadReport struct {
	Sent, Received, Lost, OutOfOrder, Wrong uint64
	Switched, Failed                        int
	MaxGapMS                                float64 `json:"max_gap_ms"`
}

func readReport(path string) (*loadReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r struct {
		Sent       uint64  `json:"sent"`
		Received   uint64  `json:"received"`
		Lost       uint64  `json:"lost"`
		OutOfOrder uint64  `json:"out_of_order"`
		Wrong      uint64  `json:"wrong"`
		Switched   int     `json:"switched"`
		Failed     int     `json:"failed"`
		MaxGapMS   float64 `json:"max_gap_ms"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	lr := loadReport(r)
	return &lr, nil
}

func nodeConfig(o Options, tb *netns.Testbed, i int, names []string, pkiDir string) *daemon.Config {
	n := tb.Nodes[i]
	cfg := &daemon.Config{
		Node: names[i], Uplink: n.Link, IPv4: n.IPv4, IPv6: n.IPv6,
		PKIDir:        pkiDir,
		StateDir:      filepath.Join(o.WorkDir, names[i], "state"),
		ControlSocket: filepath.Join(o.WorkDir, names[i], "control.sock"),
		PodNSPrefix:   fmt.Sprintf("stdr-t%s-%s-", tb.ID, names[i]),
		NoDatapath:    o.NoDatapath,
		Services: []daemon.ServiceDef{{Name: service, Port: port, Instance: instance, PodIPv4: pod4, PodIPv6: pod6,
			Bundle: o.Bundle}},
	}
	for j, p := range tb.Nodes {
		if j != i {
			cfg.Peers = append(cfg.Peers, daemon.PeerDef{Name: names[j], Address: p.IPv4, IPv6: p.IPv6})
		}
	}
	return cfg
}

// startSteerd starts steerd inside the namespace ns and returns a function that stops it
// (SIGTERM, then SIGKILL after 5 s).
func startSteerd(ctx context.Context, o Options, ns, cfgPath, logPath string) (func(), error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(o.Steerd)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", ns, abs, "--config", cfgPath, "--log-format", "json")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done); lf.Close() }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}, nil
}

func waitReady(ctx context.Context, c *api.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, last = c.Status(rctx)
		cancel()
		if last == nil {
			return nil
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	return last
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
