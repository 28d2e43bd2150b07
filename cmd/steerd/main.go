// Command steerd is the steerd node daemon (package daemon): it attaches the XDP datapath to the
// node's uplink, owns the node's pod namespaces and service containers, serves the control API
// on a unix socket for steerctl, talks to other nodes over the mutually authenticated QUIC peer
// channel, and live-migrates QUIC services. `steerd demo` runs the end-to-end demo (make demo).
// See docs/operations.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/daemon/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// run executes steerd and returns the exit status (0 ok, 1 error, 2 usage error).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(ctx)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "steerd: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

type flags struct {
	config, node, uplink, ipv4, ipv6, pkiDir, stateDir, socket, metrics, peerListen, runtime string
	datapath, logFormat, logLevel                                                            string
	services, peers                                                                          []string
	noDatapath                                                                               bool
	maxUDPPayload                                                                            int
}

func newRoot(ctx context.Context) *cobra.Command {
	var f flags
	root := &cobra.Command{
		Use:   "steerd --config FILE [flags]",
		Short: "steerd node daemon: steer QUIC by connection ID and live-migrate QUIC services",
		Long: `steerd runs on every edge node. It attaches the XDP datapath to the uplink, owns the
node's pod network namespaces and service containers (runc + CRIU), serves the control API
for steerctl on a unix socket (mode 0600), and talks to other nodes over QUIC with mutual
TLS (certificates of the cluster CA from 'steerctl init').

The configuration is a JSON file; flags override its fields. --service and --peer take
comma-separated key=value lists and may be repeated.

Examples:
  steerd --config /etc/steerd/n0.json
  steerd --node n0 --uplink eth0 --ipv4 198.18.20.2 --ipv6 2001:2:0:20::2 \
      --pki-dir /etc/steerd/pki \
      --service name=kv,port=4433,instance=7,pod4=198.19.0.1,pod6=2001:2:0:ff::1,bundle=/srv/kv \
      --peer name=n1,addr=198.18.21.2,ipv6=2001:2:0:21::2
  nsenter --net=/var/run/netns/stdr-n0 steerd --config n0.json --log-format json
      # a node in a network namespace: enter only the netns ('ip netns exec' also
      # remounts /sys, which hides /sys/fs/cgroup from runc)
  steerd demo                      # the end-to-end demo (make demo)

Exit status: 0 success, 1 errors, 2 usage errors (bad flags or arguments).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %q (see 'steerd --help')", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(f.logFormat, f.logLevel, cmd.ErrOrStderr())
			if err != nil {
				return usageError{err}
			}
			cfg, err := buildConfig(cmd, &f)
			if err != nil {
				return err
			}
			return daemon.Serve(cmd.Context(), cfg, daemon.ServeOptions{Logger: log})
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	fl := root.Flags()
	fl.StringVar(&f.config, "config", "", "JSON configuration file (package daemon, type Config)")
	fl.StringVar(&f.node, "node", "", "node name (a DNS label; the node certificate's name)")
	fl.StringVar(&f.uplink, "uplink", "", "uplink interface clients' packets arrive on (the XDP attach point; with --datapath nftables the interface the pods' packets are SNATed on)")
	fl.StringVar(&f.ipv4, "ipv4", "", "node public IPv4 address")
	fl.StringVar(&f.ipv6, "ipv6", "", "node public IPv6 address")
	fl.StringVar(&f.pkiDir, "pki-dir", "", "directory with ca.crt, <node>.crt, <node>.key")
	fl.StringVar(&f.stateDir, "state-dir", "", "state directory (default /var/lib/steerd/<node>)")
	fl.StringVar(&f.socket, "socket", "", "control socket (default /run/steerd/<node>/control.sock)")
	fl.StringVar(&f.metrics, "metrics", "", "Prometheus listen address, e.g. 127.0.0.1:9464 (default off)")
	fl.StringVar(&f.peerListen, "peer-listen", "", "UDP address of the peer channel (default <ipv4>:7443)")
	fl.StringVar(&f.runtime, "runtime", "", "container engine: runc or none")
	fl.StringArrayVar(&f.services, "service", nil, "service: name=N,port=P,instance=I,pod4=A,pod6=A[,pod_port=P][,bundle=DIR]")
	fl.StringArrayVar(&f.peers, "peer", nil, "peer: name=N,addr=A[,port=P][,ipv4=A][,ipv6=A]")
	fl.BoolVar(&f.noDatapath, "no-datapath", false, "control plane only: nothing delivers client packets to the pods (for tests and dry runs); for XDP off use --datapath nftables")
	fl.StringVar(&f.datapath, "datapath", "", datapathHelp)
	fl.IntVar(&f.maxUDPPayload, "max-udp-payload", 0, "largest UDP payload the services send, in bytes (default 1452; the uplink MTU must be at least this + 76, or + 96 with IPv6 peers)")
	pf := root.PersistentFlags()
	pf.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(demoCmd(&f))
	return root
}

// datapathHelp is the help text of --datapath (steerd and steerd demo).
const datapathHelp = `datapath: xdp (default) or nftables. xdp steers QUIC packets by the DCID's QUIC-LB server ID and forwards the packets that still reach a node after its service moved to the new node. nftables (XDP off) uses the kernel's NAT: DNAT of the public UDP port to the local pod, SNAT back, conntrack state per client flow; it gives up DCID steering and the forwarding of in-flight packets (after a move they are dropped at the old node; clients recover by loss recovery and the server's announced address)`

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// buildConfig loads --config (if any) and applies the flags that were set.
func buildConfig(cmd *cobra.Command, f *flags) (*daemon.Config, error) {
	cfg := &daemon.Config{}
	if f.config != "" {
		c, err := daemon.LoadConfig(f.config)
		if err != nil {
			return nil, err
		}
		cfg = c
	} else if f.node == "" {
		return nil, usageError{errors.New("give --config FILE or at least --node, --uplink, --ipv4/--ipv6 and --pki-dir (see 'steerd --help')")}
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("node", &cfg.Node, f.node)
	set("uplink", &cfg.Uplink, f.uplink)
	set("pki-dir", &cfg.PKIDir, f.pkiDir)
	set("state-dir", &cfg.StateDir, f.stateDir)
	set("socket", &cfg.ControlSocket, f.socket)
	set("metrics", &cfg.MetricsListen, f.metrics)
	set("peer-listen", &cfg.PeerListen, f.peerListen)
	set("runtime", &cfg.Runtime, f.runtime)
	set("datapath", &cfg.Datapath, f.datapath)
	if cmd.Flags().Changed("no-datapath") {
		cfg.NoDatapath = f.noDatapath
	}
	if cmd.Flags().Changed("max-udp-payload") {
		cfg.MaxUDPPayload = f.maxUDPPayload
	}
	for _, a := range []struct {
		flag, v string
		dst     *netip.Addr
	}{{"ipv4", f.ipv4, &cfg.IPv4}, {"ipv6", f.ipv6, &cfg.IPv6}} {
		if cmd.Flags().Changed(a.flag) {
			ip, err := netip.ParseAddr(a.v)
			if err != nil {
				return nil, usageError{fmt.Errorf("--%s: %w", a.flag, err)}
			}
			*a.dst = ip
		}
	}
	for _, s := range f.services {
		def, err := parseService(s)
		if err != nil {
			return nil, usageError{fmt.Errorf("--service %q: %w", s, err)}
		}
		cfg.Services = append(cfg.Services, def)
	}
	for _, s := range f.peers {
		p, err := parsePeer(s)
		if err != nil {
			return nil, usageError{fmt.Errorf("--peer %q: %w", s, err)}
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	if err := cfg.Normalize(); err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func kv(s string, known ...string) (map[string]string, error) {
	m := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		found := false
		for _, n := range known {
			if n == k {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown key %q (known: %s)", k, strings.Join(known, ", "))
		}
		m[k] = v
	}
	return m, nil
}

func parseService(s string) (daemon.ServiceDef, error) {
	m, err := kv(s, "name", "port", "pod_port", "instance", "pod4", "pod6", "bundle")
	if err != nil {
		return daemon.ServiceDef{}, err
	}
	d := daemon.ServiceDef{Name: m["name"], Bundle: m["bundle"]}
	for _, p := range []struct {
		k   string
		dst *uint16
	}{{"port", &d.Port}, {"pod_port", &d.PodPort}} {
		if v, ok := m[p.k]; ok {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return d, fmt.Errorf("%s: %w", p.k, err)
			}
			*p.dst = uint16(n)
		}
	}
	if v, ok := m["instance"]; ok {
		if d.Instance, err = strconv.ParseUint(v, 0, 64); err != nil {
			return d, fmt.Errorf("instance: %w", err)
		}
	}
	for _, a := range []struct {
		k   string
		dst *netip.Addr
	}{{"pod4", &d.PodIPv4}, {"pod6", &d.PodIPv6}} {
		if v, ok := m[a.k]; ok {
			if *a.dst, err = netip.ParseAddr(v); err != nil {
				return d, fmt.Errorf("%s: %w", a.k, err)
			}
		}
	}
	return d, nil
}

func parsePeer(s string) (daemon.PeerDef, error) {
	m, err := kv(s, "name", "addr", "port", "ipv4", "ipv6")
	if err != nil {
		return daemon.PeerDef{}, err
	}
	p := daemon.PeerDef{Name: m["name"]}
	for _, a := range []struct {
		k   string
		dst *netip.Addr
	}{{"addr", &p.Address}, {"ipv4", &p.IPv4}, {"ipv6", &p.IPv6}} {
		if v, ok := m[a.k]; ok {
			if *a.dst, err = netip.ParseAddr(v); err != nil {
				return p, fmt.Errorf("%s: %w", a.k, err)
			}
		}
	}
	if v, ok := m["port"]; ok {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return p, fmt.Errorf("port: %w", err)
		}
		p.Port = uint16(n)
	}
	return p, nil
}

func demoCmd(f *flags) *cobra.Command {
	var o demo.Options
	var technique string
	c := &cobra.Command{
		Use:   "demo",
		Short: "Live-migrate a QUIC service between two edge nodes on a netns testbed (root)",
		Long: `demo builds a network-namespace testbed (one client, a router, two edge nodes n0 and
n1), starts steerd on both nodes inside their namespaces, runs the example QUIC service
(kvservice) on n0, starts a load client, migrates the service n0 -> n1 with the Symmetric
strategy and back n1 -> n0 with Explicit-reactive, prints each migration's timeline,
phases, datapath counters and what the clients saw (switches, largest gap), checks that both migrations succeeded and that the load client lost no request, and tears
everything down. It needs root, clang-built BPF objects, runc and CRIU ('make deps').

Examples:
  make demo
  bin/steerd demo --technique post-copy --conns 20
  bin/steerd demo --datapath nftables            # XDP off: kernel NAT, no forwarding
  bin/steerd demo --keep --workdir /tmp/demo     # keep configs, certificates and logs
  scripts/demo.sh --datapath nftables            # flags after scripts/demo.sh go to steerd demo

Exit status: 0 the demo passed, 1 it failed (set-up, a migration or the load check; the work
directory is kept and named), 2 usage errors (bad flags or arguments).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("demo: unexpected argument %q", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			tech, err := api.ParseTechnique(technique)
			if err != nil {
				return usageError{fmt.Errorf("--technique: %w", err)}
			}
			o.Steps = []demo.Step{{From: 0, To: 1, Strategy: "symmetric", Technique: tech}, {From: 1, To: 0, Strategy: "explicit-reactive", Technique: tech}}
			o.Out = cmd.OutOrStdout()
			return demo.Run(cmd.Context(), o)
		},
	}
	fl := c.Flags()
	fl.StringVar(&o.Steerd, "steerd", "", "steerd binary run on the nodes (default: this binary)")
	fl.StringVar(&o.Steerctl, "steerctl", "bin/steerctl", "steerctl binary (init, run, routes)")
	fl.StringVar(&o.KVService, "kvservice", "bin/kvservice", "example service binary (static; copied into the container's bundle)")
	fl.IntVar(&o.Conns, "conns", 4, "QUIC connections of the load client")
	fl.StringVar(&technique, "technique", "cold", "container migration technique: cold, pre-copy, post-copy, hybrid")
	fl.DurationVar(&o.Settle, "settle", 2*time.Second, "load time before, between and after the migrations")
	fl.DurationVar(&o.Drain, "drain", time.Second, "drain period: the source forwards until the instance was quiet this long")
	fl.StringVar(&o.Datapath, "datapath", "xdp", datapathHelp)
	fl.StringVar(&o.WorkDir, "workdir", "", "directory for configs, certificates and logs (default: temporary, removed)")
	fl.BoolVar(&o.Keep, "keep", false, "keep the work directory")
	c.PreRun = func(cmd *cobra.Command, args []string) {
		if o.Steerd == "" {
			if exe, err := os.Executable(); err == nil {
				o.Steerd = exe
			}
		}
	}
	return c
}
