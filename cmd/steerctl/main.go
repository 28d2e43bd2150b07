// Command steerctl is the command-line client of steerd: it creates the cluster's certificates
// and talks to a node daemon's control socket (package api) to run services, migrate them and
// show status, routes and migration timelines. See docs/operations.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes steerctl with args and returns the exit status: 0 ok, 1 error, 2 usage error,
// 3 migration ran and failed (rolled back or not).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if strings.HasPrefix(err.Error(), "unknown command ") {
		err = usageError{fmt.Errorf("%w (see 'steerctl --help')", err)}
	}
	if errors.Is(err, api.ErrUnreachable) {
		err = fmt.Errorf("%w\n  is steerd running on this node? (socket %s; it is mode 0600 in a 0700 directory: run steerctl as root, or give --node/--socket of a running node)", err, g.socketPath())
	}
	fmt.Fprintf(stderr, "steerctl: %v\n", err)
	var ue usageError
	var me migrationFailed
	switch {
	case errors.As(err, &ue):
		return 2
	case errors.As(err, &me):
		return 3
	}
	return 1
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

type migrationFailed struct{ m *api.Migration }

func (f migrationFailed) Error() string {
	if f.m.Error != nil {
		return fmt.Sprintf("migration %s %s: %v", f.m.ID, f.m.Result, f.m.Error)
	}
	return fmt.Sprintf("migration %s %s", f.m.ID, f.m.Result)
}

type globals struct {
	socket, node, output string
	timeout              time.Duration
}

func (g *globals) client() (*api.Client, error) {
	s := g.socketPath()
	if s == "" {
		return nil, usageError{errors.New("no control socket: give --socket PATH, --node NAME (socket /run/steerd/NAME/control.sock) or STEERD_SOCKET")}
	}
	return api.NewClient(s), nil
}

// socketPath is the control socket the flags select ("" when none does).
func (g *globals) socketPath() string {
	switch {
	case g.socket != "":
		return g.socket
	case os.Getenv("STEERD_SOCKET") != "":
		return os.Getenv("STEERD_SOCKET")
	case g.node != "":
		return api.DefaultSocket(g.node)
	}
	return ""
}

func (g *globals) json() bool { return g.output == "json" }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "steerctl",
		Short: "Control steerd nodes: certificates, services, live migration of QUIC services",
		Long: `steerctl talks to a steerd node daemon over its control socket (HTTP+JSON on a unix
socket, mode 0600, default /run/steerd/<node>/control.sock) and creates the cluster's
certificates.

Examples:
  steerctl init --dir /etc/steerd/pki --nodes n0,n1
  steerctl --node n0 run kv
  steerctl --node n0 migrate kv --to n1 --strategy symmetric --technique cold
  steerctl --node n0 status -o json
  steerctl --socket /run/steerd/n0/control.sock events

Exit status: 0 success, 1 errors, 2 usage errors (bad flags or arguments), 3 a migration
failed (migrate).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "text" && g.output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", g.output)}
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "control socket of the node (default: STEERD_SOCKET, or /run/steerd/<--node>/control.sock)")
	pf.StringVar(&g.node, "node", "", "node name; selects /run/steerd/<node>/control.sock")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "timeout of one control request (migrate waits up to 10 times this)")
	root.AddCommand(initCmd(g), runCmd(g), migrateCmd(g), statusCmd(g), routesCmd(g), eventsCmd(g))
	return root
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s: want %s, got %d arguments (see '%s --help')", cmd.Name(), what, len(args), cmd.CommandPath())}
		}
		return nil
	}
}

func initCmd(g *globals) *cobra.Command {
	var dir, nodes, cluster string
	var validity time.Duration
	c := &cobra.Command{
		Use:   "init --dir DIR --nodes NAME[,NAME...]",
		Short: "Create the cluster CA and node certificates",
		Long: `init creates a cluster certificate authority (ca.crt, ca.key) in DIR, or reuses the one
there, and issues a certificate and key (<node>.crt, <node>.key) for every node named in
--nodes that has none yet. Each node needs ca.crt and its own pair; keep ca.key off the
nodes. Keys are written with mode 0600. Peers accept each other only with certificates of
this CA, and only under the expected node name.

Examples:
  steerctl init --dir /etc/steerd/pki --nodes n0,n1
  steerctl init --dir /etc/steerd/pki --nodes n2        # add a node later`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || nodes == "" {
				return usageError{errors.New("init: --dir and --nodes are required")}
			}
			if strings.Trim(nodes, ", ") == "" {
				return usageError{fmt.Errorf("init: --nodes %q names no node (want NAME[,NAME...])", nodes)}
			}
			var names []string
			for _, n := range strings.Split(nodes, ",") {
				if n = strings.TrimSpace(n); n != "" {
					if err := pki.ValidateName(n); err != nil {
						return usageError{fmt.Errorf("init: %w", err)}
					}
					names = append(names, n)
				}
			}
			ca, err := pki.LoadCA(dir)
			created := false
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("init: %w", err)
				}
				if ca, err = pki.NewCA(cluster, 0); err != nil {
					return fmt.Errorf("init: %w", err)
				}
				if err := ca.Save(dir); err != nil {
					return fmt.Errorf("init: %w", err)
				}
				created = true
			}
			type out struct {
				Dir       string   `json:"dir"`
				CACreated bool     `json:"ca_created"`
				Issued    []string `json:"issued"`
				Kept      []string `json:"kept"`
			}
			o := out{Dir: dir, CACreated: created, Issued: []string{}, Kept: []string{}}
			for _, n := range names {
				if _, err := pki.LoadNode(dir, n); err == nil {
					o.Kept = append(o.Kept, n)
					continue
				}
				nc, err := ca.Issue(n, validity)
				if err != nil {
					return fmt.Errorf("init: %w", err)
				}
				if err := nc.Save(dir); err != nil {
					return fmt.Errorf("init: %w", err)
				}
				o.Issued = append(o.Issued, n)
			}
			if g.json() {
				return writeJSON(cmd.OutOrStdout(), o)
			}
			w := cmd.OutOrStdout()
			if created {
				fmt.Fprintf(w, "created cluster CA %s/%s\n", dir, pki.CACertFile)
			} else {
				fmt.Fprintf(w, "using cluster CA %s/%s\n", dir, pki.CACertFile)
			}
			for _, n := range o.Issued {
				fmt.Fprintf(w, "issued %s/%s\n", dir, pki.NodeCertFile(n))
			}
			for _, n := range o.Kept {
				fmt.Fprintf(w, "kept   %s/%s (exists)\n", dir, pki.NodeCertFile(n))
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory for ca.crt, ca.key, <node>.crt, <node>.key")
	c.Flags().StringVar(&nodes, "nodes", "", "comma-separated node names (lowercase DNS labels)")
	c.Flags().StringVar(&cluster, "cluster", "steerd", "cluster name in the CA's subject")
	c.Flags().DurationVar(&validity, "validity", pki.DefaultNodeValidity, "node certificate lifetime")
	return c
}

func runCmd(g *globals) *cobra.Command {
	var bundle string
	c := &cobra.Command{
		Use:   "run SERVICE [-- ARGS...]",
		Short: "Start a configured service container on a node",
		Long: `run asks the node to start SERVICE: it creates the pod network namespace with the
service's stable addresses, starts the container (runc) in it and routes the service's
instance to it in the XDP datapath. SERVICE must be defined in the node's configuration.
Arguments after -- replace the container process's arguments.

Examples:
  steerctl --node n0 run kv
  steerctl --node n0 run kv --bundle /var/lib/steerd/bundles/kv -- /kvservice -instance 7`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usageError{fmt.Errorf("run: want SERVICE (see 'steerctl run --help')")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			st, err := cl.Run(ctx, api.RunRequest{Service: args[0], Bundle: bundle, Args: args[1:]})
			if err != nil {
				return err
			}
			if g.json() {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "service %s %s in %s (instance %d, pod %s %s, port %d)\n", st.Name, st.State, st.PodNS, st.Instance, st.PodIPv4, st.PodIPv6, st.Port)
			return nil
		},
	}
	c.Flags().StringVar(&bundle, "bundle", "", "OCI bundle directory (default: the service's bundle in the node config)")
	return c
}

func migrateCmd(g *globals) *cobra.Command {
	var req api.MigrateRequest
	var to, strategy, technique string
	var noWait, quiet bool
	c := &cobra.Command{
		Use:   "migrate SERVICE --to NODE --strategy S --technique T",
		Short: "Live-migrate a QUIC service to another node",
		Long: `migrate moves SERVICE from the node behind --socket/--node to NODE while its QUIC clients
keep their connections. The source asks the service to prepare its clients (quicext,
strategy S), checkpoints the container with CRIU (technique T), streams the image to NODE
over the mutually authenticated peer channel, restores it there, makes NODE deliver the
service's instance locally and itself forward it to NODE, tells the service it was
restored, and forwards until no packet for the instance arrived for the drain period.
With the nftables datapath (steerd --datapath nftables) nothing is forwarded: packets that
still reach the old node are dropped, and clients recover by QUIC loss recovery
(retransmission to the service's new address).

Any failure before the commit (the end of the restore; the destination's copy is fenced
until then) rolls back: the service keeps running on the source.
Errors name the node, the phase and the cause.

Strategies: symmetric, sync-symmetric, explicit-proactive (or explicit), explicit-reactive, pool
Techniques: cold, pre-copy, post-copy, hybrid (pre-copy and hybrid need soft-dirty memory
tracking, CONFIG_MEM_SOFT_DIRTY; a node refuses a technique it cannot run before anything moves)

Exit status: 0 succeeded, 3 the migration failed (rolled back or not), 2 usage errors (bad
flags or arguments), 1 other errors.

Examples:
  steerctl --node n0 migrate kv --to n1 --strategy symmetric --technique cold
  steerctl --node n1 migrate kv --to n0 --strategy explicit-reactive --technique post-copy
  steerctl --node n0 migrate kv --to n1 --strategy pool --technique post-copy --no-wait -o json`,
		Args: exactArgs(1, "SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usageError{errors.New("migrate: --to NODE is required")}
			}
			st, err := api.ParseStrategy(strategy)
			if err != nil {
				return usageError{fmt.Errorf("migrate: --strategy: %w", err)}
			}
			tech, err := api.ParseTechnique(technique)
			if err != nil {
				return usageError{fmt.Errorf("migrate: --technique: %w", err)}
			}
			req.Service, req.To, req.Strategy, req.Technique = args[0], to, st, tech
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*g.timeout)
			defer cancel()
			m, err := cl.Migrate(ctx, req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if noWait {
				if g.json() {
					return writeJSON(w, m)
				}
				fmt.Fprintf(w, "migration %s started: %s %s -> %s\n", m.ID, m.Service, m.From, m.To)
				return nil
			}
			if !g.json() && !quiet {
				fmt.Fprintf(w, "migration %s: %s %s -> %s (%s, %s)\n", m.ID, m.Service, m.From, m.To, m.Strategy, m.Technique)
			}
			seen := 0
			fl := &follower{w: w}
			for {
				m, err = cl.Migration(ctx, m.ID)
				if err != nil {
					return err
				}
				if !g.json() && !quiet {
					fl.add(m.Events[min(seen, len(m.Events)):])
					seen = len(m.Events)
				}
				if m.Result != api.Running {
					fl.flush()
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("wait for migration %s: %w", m.ID, ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
			if g.json() {
				if err := writeJSON(w, m); err != nil {
					return err
				}
			} else if err := api.WriteMigrationSummary(w, m); err != nil {
				return err // the error itself is printed once, by run
			}
			if m.Result != api.Succeeded {
				return migrationFailed{m}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&to, "to", "", "destination node name")
	f.StringVar(&strategy, "strategy", "symmetric", "server-migration strategy: "+strings.Join(api.Strategies, ", "))
	f.StringVar(&technique, "technique", "cold", "container migration technique: cold, pre-copy, post-copy, hybrid")
	f.DurationVar(&req.PrepareTimeout, "prepare-timeout", 2*time.Second, "how long the service may take to prepare its clients")
	f.DurationVar(&req.DrainPeriod, "drain-period", 2*time.Second, "forwarding stops after no packet arrived at the source for this long")
	f.DurationVar(&req.DrainTimeout, "drain-timeout", 30*time.Second, "forwarding stops after this long in any case")
	f.BoolVar(&noWait, "no-wait", false, "return once the migration started (follow it with 'steerctl events ID')")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the result")
	return c
}

// follower prints a migration's events while it runs: each poll's new events in time order (the
// engine's sub-phases arrive after the fact), the destination's events once, and the image
// transfer as one progress line per progressBytes or progressEvery plus one summary instead of a
// start and an end line per image file.
type follower struct {
	w       io.Writer
	printed map[string]bool

	// transfer in progress
	files, failed      int
	bytes, lastBytes   int64
	first, last, lastP time.Time
	node               string
}

const (
	progressBytes = 4 << 20
	progressEvery = time.Second
)

func (f *follower) add(es []api.Event) {
	es = append([]api.Event(nil), es...)
	sort.SliceStable(es, func(i, j int) bool { return es[i].Time.Before(es[j].Time) })
	if f.printed == nil {
		f.printed = map[string]bool{}
	}
	for _, e := range es {
		key := fmt.Sprintf("%s|%s|%s|%d|%s", e.Node, e.Phase, e.Kind, e.Time.UnixNano(), e.Detail)
		if f.printed[key] {
			continue
		}
		f.printed[key] = true
		if e.Phase == api.PhaseTransfer && e.Detail != "engine" {
			f.transfer(e)
			continue
		}
		f.flush()
		printEvent(f.w, e)
	}
}

// transfer accounts one per-file transfer event.
func (f *follower) transfer(e api.Event) {
	if f.first.IsZero() {
		f.first, f.lastP, f.node = e.Time, e.Time, e.Node
	}
	switch e.Kind {
	case api.End:
		f.files++
		f.bytes += e.Bytes
	case api.Fail:
		f.failed++
		printEvent(f.w, e)
	}
	f.last = e.Time
	if f.bytes-f.lastBytes >= progressBytes || e.Time.Sub(f.lastP) >= progressEvery {
		fmt.Fprintf(f.w, "  %s %-3s %-13s %d files, %s sent\n", e.Time.Format("15:04:05.000"), f.node, api.PhaseTransfer, f.files, api.Bytes(f.bytes))
		f.lastBytes, f.lastP = f.bytes, e.Time
	}
}

// flush prints the summary of a transfer in progress.
func (f *follower) flush() {
	if f.first.IsZero() {
		return
	}
	d := f.last.Sub(f.first)
	rate := ""
	if d > 0 {
		rate = fmt.Sprintf(" (%.1f MiB/s)", float64(f.bytes)/(1<<20)/d.Seconds())
	}
	failed := ""
	if f.failed > 0 {
		failed = fmt.Sprintf(", %d failed", f.failed)
	}
	fmt.Fprintf(f.w, "  %s %-3s %-13s done  %d files, %s in %v%s%s\n", f.last.Format("15:04:05.000"), f.node, api.PhaseTransfer,
		f.files, api.Bytes(f.bytes), d.Round(10*time.Microsecond), rate, failed)
	f.files, f.failed, f.bytes, f.lastBytes = 0, 0, 0, 0
	f.first, f.last, f.lastP = time.Time{}, time.Time{}, time.Time{}
}

func printEvent(w io.Writer, e api.Event) {
	e.Detail = api.OneLine(e.Detail)
	switch e.Kind {
	case api.Start:
		fmt.Fprintf(w, "  %s %-3s %-13s start %s\n", e.Time.Format("15:04:05.000"), e.Node, e.Phase, e.Detail)
	case api.End:
		fmt.Fprintf(w, "  %s %-3s %-13s done  %v %s\n", e.Time.Format("15:04:05.000"), e.Node, e.Phase, e.Duration.Round(10*time.Microsecond), e.Detail)
	case api.Progress:
		fmt.Fprintf(w, "  %s %-3s %-13s %s %s/%s\n", e.Time.Format("15:04:05.000"), e.Node, e.Phase, e.Detail, api.Bytes(e.Bytes), api.Bytes(e.Total))
	case api.Fail:
		fmt.Fprintf(w, "  %s %-3s %-13s FAILED %s\n", e.Time.Format("15:04:05.000"), e.Node, e.Phase, e.Detail)
	default:
		fmt.Fprintf(w, "  %s %-3s %-13s %s\n", e.Time.Format("15:04:05.000"), e.Node, e.Phase, e.Detail)
	}
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show a node's services, peers and datapath counters",
		Long: `status shows the node's public addresses, its services (stopped, running, migrating,
restoring, or remote with the node they moved to), its peers and the XDP datapath counters.

Examples:
  steerctl --node n0 status
  steerctl --socket /run/steerd/n1/control.sock status -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			st, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.json() {
				return writeJSON(w, st)
			}
			fmt.Fprintf(w, "node %s  uplink %s  ipv4 %s  ipv6 %s  peer channel %s  datapath %s  up %v\n",
				st.Node, st.Uplink, st.IPv4, st.IPv6, st.PeerListen, st.Datapath, time.Since(st.Started).Round(time.Second))
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tSTATE\tINSTANCE\tPORT\tPOD")
			for _, s := range st.Services {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s %s\n", s.Name, serviceState(s), s.Instance, s.Port, s.PodIPv4, s.PodIPv6)
			}
			fmt.Fprintln(tw, "PEER\tADDRESS\tLAST ERROR")
			for _, p := range st.Peers {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, p.Address, p.LastError)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(st.Counters) > 0 {
				keys := make([]string, 0, len(st.Counters))
				for k := range st.Counters {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				fmt.Fprintln(w, "datapath counters (packets):")
				cw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
				for _, k := range keys {
					fmt.Fprintf(cw, "  %s\t%d\t\n", k, st.Counters[k])
				}
				return cw.Flush()
			}
			return nil
		},
	}
}

// serviceState is a service's state for the status table: "remote (n1)" names the node it moved
// to.
func serviceState(s api.ServiceStatus) string {
	if s.Peer != "" {
		return fmt.Sprintf("%s (%s)", s.State, s.Peer)
	}
	return s.State
}

func routesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "routes",
		Short: "Show where a node steers each QUIC instance",
		Long: `routes lists the node's datapath entries: for every instance (QUIC-LB server ID) whether
the node delivers it to a local pod or encapsulates it to a peer, with the packets steered
and the time of the last one.

Examples:
  steerctl --node n0 routes
  steerctl --node n0 routes -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			rs, err := cl.Routes(ctx)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.json() {
				return writeJSON(w, rs)
			}
			if len(rs) == 0 {
				_, err := fmt.Fprintln(w, "(no routes)")
				return err
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INSTANCE\tSERVICE\tKIND\tPEER\tPACKETS\tLAST SEEN")
			for _, r := range rs {
				last := "-"
				if !r.LastSeen.IsZero() {
					last = time.Since(r.LastSeen).Round(time.Millisecond).String() + " ago"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", r.Instance, r.Service, r.Kind, r.Peer, r.Packets, last)
			}
			return tw.Flush()
		},
	}
}

func eventsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "events [MIGRATION]",
		Short: "Show the timeline of a migration (or of all)",
		Long: `events prints the phase timeline of one migration (start and end of each phase with
timestamps, transfer progress, the destination's phases), or of every migration the node
ran or received when no ID is given. Migration IDs are printed by 'steerctl migrate'.

Examples:
  steerctl --node n0 events 3f2a9c01b7d4
  steerctl --node n1 events -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageError{fmt.Errorf("events: want at most one MIGRATION id (see 'steerctl events --help')")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			ev, err := cl.Events(ctx, id)
			if err != nil {
				return err
			}
			if g.json() {
				return writeJSON(cmd.OutOrStdout(), ev)
			}
			return api.WriteTimeline(cmd.OutOrStdout(), ev)
		},
	}
}
