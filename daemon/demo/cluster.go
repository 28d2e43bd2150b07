package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/quicext"
	"github.com/steerd/steerd/tests/netns"
)

// The service every cluster defines: examples/kvservice as container "kv".
const (
	Service  = "kv"
	Port     = 4433
	Instance = 7
)

// Stable pod addresses of the service (the same on every node, docs/architecture.md).
var (
	Pod4 = netip.MustParseAddr("198.19.0.1")
	Pod6 = netip.MustParseAddr("2001:2:0:ff::1")
)

// ClusterOptions configure StartCluster. Zero values take the defaults in brackets.
type ClusterOptions struct {
	// Steerd, Steerctl, KVService are the binaries [bin/steerd, bin/steerctl, bin/kvservice];
	// kvservice must be static (CGO_ENABLED=0): it runs alone in the container's root.
	Steerd, Steerctl, KVService string
	// KVArgs are extra kvservice arguments (e.g. "-control", "none").
	KVArgs []string
	// ExtraServices are defined on both nodes besides Service (Bundle defaults to the kvservice
	// bundle; give Args to make the container listen on the service's own pod address and port).
	ExtraServices []daemon.ServiceDef
	// Pool makes kvservice announce both nodes' public addresses as its address pool (the Pool
	// strategy). Clients that negotiate Pool probe the pool whenever the server is silent.
	Pool bool
	// NoDatapath runs the nodes without XDP (control plane only).
	NoDatapath bool
	// Datapath is both nodes' daemon.Config.Datapath: daemon.DatapathXDP or daemon.DatapathNFT
	// ("nftables": XDP off, kernel DNAT/SNAT, no forwarding of in-flight packets) [xdp].
	Datapath string
	// WorkDir holds configs, certificates, bundle, node state and logs [a temporary directory].
	WorkDir string
	// Log receives progress lines (nil: discarded).
	Log io.Writer
}

// Cluster is a netns testbed (one client, a router, two edge nodes n0 and n1, with xdp_pass on
// the router's node-facing veths) with steerd running on both nodes as child processes inside
// the node network namespaces.
type Cluster struct {
	TB      *netns.Testbed
	Names   []string
	Configs []*daemon.Config
	API     []*api.Client
	WorkDir string
	// Bundle is the OCI bundle of kvservice both nodes run.
	Bundle string

	o     ClusterOptions
	procs []*proc
}

// proc is one steerd child process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// LogPath returns the log file of node i's steerd.
func (c *Cluster) LogPath(i int) string { return filepath.Join(c.WorkDir, c.Names[i]+".log") }

func (c *Cluster) logf(f string, a ...any) {
	if c.o.Log != nil {
		fmt.Fprintf(c.o.Log, f+"\n", a...)
	}
}

// StartCluster builds the testbed, creates the CA and node certificates (steerctl init), writes
// the kvservice bundle and the node configs, and starts steerd on both nodes. On error
// everything it made is removed.
func StartCluster(ctx context.Context, o ClusterOptions) (_ *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.Steerd, "bin/steerd")
	def(&o.Steerctl, "bin/steerctl")
	def(&o.KVService, "bin/kvservice")
	for _, b := range []*string{&o.Steerd, &o.Steerctl, &o.KVService} {
		abs, err := filepath.Abs(*b)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("start cluster: binary %s: %w (run 'make build')", abs, err)
		}
		*b = abs
	}
	switch o.Datapath {
	case "", daemon.DatapathXDP, daemon.DatapathNFT:
	default:
		return nil, fmt.Errorf("start cluster: datapath %q: want %s or %s", o.Datapath, daemon.DatapathXDP, daemon.DatapathNFT)
	}
	created := false
	if o.WorkDir == "" {
		if o.WorkDir, err = os.MkdirTemp("", "steerd-demo-"); err != nil {
			return nil, err
		}
		created = true
	}
	c := &Cluster{Names: []string{"n0", "n1"}, WorkDir: o.WorkDir, o: o}
	defer func() {
		if err != nil {
			c.Close()
			if created { // holds the cluster CA key: never leave it behind unasked
				os.RemoveAll(o.WorkDir)
			}
		}
	}()
	c.logf("==> building testbed: 1 client, router, 2 nodes (datapath %s on the nodes; xdp_pass on the router's node links)", orXDP(o.Datapath))
	if c.TB, err = netns.Build(netns.Topology{Clients: 1, Nodes: 2, RouterXDPPass: true, NoPodRoutes: true}); err != nil {
		return nil, fmt.Errorf("start cluster: build testbed: %w", err)
	}
	pkiDir := filepath.Join(o.WorkDir, "pki")
	if out, err := exec.CommandContext(ctx, o.Steerctl, "init", "--dir", pkiDir, "--nodes", strings.Join(c.Names, ","), "--cluster", "demo").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start cluster: steerctl init: %w: %s", err, out)
	}
	c.logf("==> steerctl init: cluster CA and certificates for %s in %s", strings.Join(c.Names, ", "), pkiDir)
	if c.Bundle, err = c.writeBundle(); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	for i, n := range c.Names {
		cfg := c.nodeConfig(i, pkiDir)
		if err := cfg.Save(filepath.Join(o.WorkDir, n+".json")); err != nil {
			return nil, err
		}
		c.Configs = append(c.Configs, cfg)
		c.API = append(c.API, api.NewClient(cfg.ControlSocket))
		c.procs = append(c.procs, nil)
	}
	for i := range c.Names {
		if err := c.StartSteerd(ctx, i); err != nil {
			return nil, err
		}
		c.logf("==> steerd %s up in %s (uplink %s %s, control %s)", c.Names[i], c.TB.Nodes[i].NS, c.Configs[i].Uplink, c.Configs[i].IPv4, c.Configs[i].ControlSocket)
	}
	return c, nil
}

// writeBundle writes the OCI bundle of kvservice (config.json + rootfs with the static binary):
// the service binds the stable pod addresses, issues CIDs with server ID Instance (2 bytes, CID
// 11 bytes, the datapath's layout) and offers both nodes' public addresses as its pool.
func (c *Cluster) writeBundle() (string, error) {
	dir := filepath.Join(c.WorkDir, "bundles", Service)
	root := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("write bundle: %w", err)
	}
	b, err := os.ReadFile(c.o.KVService)
	if err != nil {
		return "", fmt.Errorf("write bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "kvservice"), b, 0o755); err != nil {
		return "", fmt.Errorf("write bundle: %w", err)
	}
	var pool []string
	for _, n := range c.TB.Nodes {
		pool = append(pool, netip.AddrPortFrom(n.IPv4, Port).String(), netip.AddrPortFrom(n.IPv6, Port).String())
	}
	args := []string{"/kvservice",
		"-listen", netip.AddrPortFrom(Pod4, Port).String(), "-listen", netip.AddrPortFrom(Pod6, Port).String(),
		"-instance", fmt.Sprint(Instance), "-sid-len", "2", "-cid-len", "11", "-log-file", "/tmp/kvservice.log"}
	if c.o.Pool {
		args = append(args, "-pool", strings.Join(pool, ","))
	}
	args = append(args, c.o.KVArgs...)
	spec := map[string]any{
		"ociVersion": "1.0.2",
		"root":       map[string]any{"path": "rootfs"},
		"process":    map[string]any{"args": args, "env": []string{"PATH=/"}, "cwd": "/"},
	}
	j, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), j, 0o644); err != nil {
		return "", fmt.Errorf("write bundle: %w", err)
	}
	return dir, nil
}

func (c *Cluster) nodeConfig(i int, pkiDir string) *daemon.Config {
	n := c.TB.Nodes[i]
	name := c.Names[i]
	cfg := &daemon.Config{
		Node: name, Uplink: n.Link, IPv4: n.IPv4, IPv6: n.IPv6,
		PKIDir:        pkiDir,
		StateDir:      filepath.Join(c.WorkDir, name, "state"),
		ControlSocket: filepath.Join(c.WorkDir, name, "control.sock"),
		PodNSPrefix:   fmt.Sprintf("stdr-t%s-%s-", c.TB.ID, name),
		NoDatapath:    c.o.NoDatapath,
		Datapath:      c.o.Datapath,
		DetachOnExit:  true, // a test cluster leaves no XDP program or pin behind
		Runtime:       "runc",
		Services: []daemon.ServiceDef{{Name: Service, Port: Port, Instance: Instance, PodIPv4: Pod4, PodIPv6: Pod6,
			Bundle: c.Bundle}},
	}
	for _, sd := range c.o.ExtraServices {
		if sd.Bundle == "" {
			sd.Bundle = c.Bundle
		}
		cfg.Services = append(cfg.Services, sd)
	}
	for j, p := range c.TB.Nodes {
		if j != i {
			cfg.Peers = append(cfg.Peers, daemon.PeerDef{Name: c.Names[j], Address: p.IPv4, IPv6: p.IPv6})
		}
	}
	_ = cfg.Normalize()
	return cfg
}

// StartSteerd starts steerd for node i inside its network namespace and waits until its control
// API answers. steerd enters only the network namespace (nsenter --net): `ip netns exec` would
// also give it a private mount namespace with a fresh /sys, hiding /sys/fs/cgroup from runc and
// the bpffs from the datapath.
func (c *Cluster) StartSteerd(ctx context.Context, i int) error {
	if p := c.procs[i]; p != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("start steerd on %s: already running", c.Names[i])
		}
	}
	lf, err := os.OpenFile(c.LogPath(i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net="+nsutil.Path(c.TB.Nodes[i].NS), "--",
		c.o.Steerd, "--config", filepath.Join(c.WorkDir, c.Names[i]+".json"), "--log-format", "json")
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start steerd on %s: %w", c.Names[i], err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: c.LogPath(i)}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	c.procs[i] = p
	deadline := time.Now().Add(15 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.API[i].Status(rctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("start steerd on %s: exited: %s", c.Names[i], tail(c.LogPath(i), 5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start steerd on %s: not ready after 15s: %w (log %s)", c.Names[i], err, c.LogPath(i))
		}
	}
}

// StopSteerd stops node i's steerd: SIGTERM (SIGKILL with kill set, or after 5 s).
func (c *Cluster) StopSteerd(i int, kill bool) {
	p := c.procs[i]
	if p == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	c.API[i].Close()
}

// Steerctl runs steerctl against node i's control socket and returns its standard output.
func (c *Cluster) Steerctl(ctx context.Context, i int, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.o.Steerctl, append([]string{"--socket", c.Configs[i].ControlSocket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("steerctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Public returns node i's public IPv4 address of the service.
func (c *Cluster) Public(i int) netip.AddrPort { return netip.AddrPortFrom(c.TB.Nodes[i].IPv4, Port) }

// Counters returns node i's datapath counters (packets by reason).
func (c *Cluster) Counters(ctx context.Context, i int) (map[string]uint64, error) {
	st, err := c.API[i].Status(ctx)
	if err != nil {
		return nil, err
	}
	return st.Counters, nil
}

// Migrate migrates the service from node from to node to and waits for the end.
func (c *Cluster) Migrate(ctx context.Context, from, to int, strategy string, technique api.Technique, drain time.Duration) (*api.Migration, error) {
	return c.API[from].Migrate(ctx, api.MigrateRequest{Service: Service, To: c.Names[to], Strategy: strategy,
		Technique: technique, DrainPeriod: drain, Wait: true})
}

// Close stops both steerds, deletes the containers they left (runc delete --force), the pod
// namespaces and the testbed. It removes the work directory unless keep.
func (c *Cluster) Close() error {
	var errs []error
	for i := range c.procs {
		c.StopSteerd(i, false)
	}
	for _, cfg := range c.Configs {
		if err := removeContainers(filepath.Join(cfg.StateDir, "engine", "runc")); err != nil {
			errs = append(errs, err)
		}
		pods, _ := nsutil.List(cfg.PodNSPrefix)
		for _, p := range pods {
			if err := nsutil.Delete(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.TB != nil {
		if err := c.TB.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeContainers force-deletes every runc container under the runc root dir.
func removeContainers(root string) error {
	if _, err := os.Stat(root); err != nil {
		return nil
	}
	out, err := exec.Command("runc", "--root", root, "list", "-q").Output()
	if err != nil {
		return fmt.Errorf("runc list in %s: %w", root, err)
	}
	var errs []error
	for _, id := range strings.Fields(string(out)) {
		if b, err := exec.Command("runc", "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("runc delete %s: %w: %s", id, err, b))
		}
	}
	return errors.Join(errs...)
}

// Load is a load client running in the client namespace (package load, in-process).
type Load struct {
	cancel context.CancelFunc
	done   chan struct{}
	rep    *load.Report
	err    error

	mu     sync.Mutex
	events []load.Event
}

// StartLoad starts conns QUIC connections from the client namespace to addr, one INCR every
// 10 ms each, offering every quicext strategy unless strategies is set. It returns once every
// connection completed its handshake.
func (c *Cluster) StartLoad(ctx context.Context, addr netip.AddrPort, conns int, strategies quicext.Strategy) (*Load, error) {
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &Load{cancel: cancel, done: make(chan struct{})}
	connected := make(chan struct{}, conns)
	o := load.Options{
		Addr: addr.String(), Conns: conns, Interval: 10 * time.Millisecond, Drain: 3 * time.Second,
		TLS:    &tls.Config{ServerName: service.DefaultServerName, InsecureSkipVerify: true},
		Client: quicext.ClientOptions{Strategies: strategies},
		OnEvent: func(e load.Event) {
			if e.Ev == "connected" {
				connected <- struct{}{}
			}
			l.mu.Lock()
			l.events = append(l.events, e)
			l.mu.Unlock()
		},
	}
	go func() {
		defer close(l.done)
		l.err = c.TB.Clients[0].Do(func() error {
			var err error
			l.rep, err = load.Run(lctx, o)
			return err
		})
	}()
	for n := 0; n < conns; n++ {
		select {
		case <-connected:
		case <-l.done:
			return nil, fmt.Errorf("start load to %s: %w", addr, l.err)
		case <-ctx.Done():
			l.Stop()
			return nil, ctx.Err()
		}
	}
	return l, nil
}

// Events returns the load client's events so far.
func (l *Load) Events() []load.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]load.Event(nil), l.events...)
}

// Stop ends the sending phase, waits for the outstanding responses and returns the report.
func (l *Load) Stop() (*load.Report, error) {
	l.cancel()
	<-l.done
	return l.rep, l.err
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func orXDP(dp string) string {
	if dp == "" {
		return daemon.DatapathXDP
	}
	return dp
}
