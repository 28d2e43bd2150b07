// Package demo is `steerd demo` (make demo): it builds a netns testbed (one client, a router, two
// edge nodes), starts steerd on both nodes as child processes inside the node namespaces, runs the
// example QUIC service (examples/kvservice) as a runc container on n0 (steerctl run), drives a
// load client (package examples/loadclient/load, in-process in the client namespace) against
// n0's PUBLIC address, live-migrates the service n0 -> n1 (Symmetric, cold CRIU checkpoint) and
// n1 -> n0 (Explicit-reactive), prints each migration's timeline with the XDP datapath counters
// that prove the path of the packets, checks the migrations and the load report (no lost or wrong
// answer, no failed connection), and tears everything down (namespaces, containers, processes).
//
// Cluster (cluster.go) is the same setup as a library: the integration tests (tests/netns/e2e)
// share it.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/examples/loadclient/load"
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
	// Steerd, Steerctl, KVService are the binaries [bin/steerd, bin/steerctl, bin/kvservice].
	Steerd, Steerctl, KVService string
	// Conns is the number of QUIC connections of the load client [4].
	Conns int
	// Steps are the migrations [n0->n1 symmetric cold, n1->n0 explicit-reactive cold].
	Steps []Step
	// Settle is the load time before, between and after migrations [2s].
	Settle time.Duration
	// Drain is the drain period of each migration [1s].
	Drain time.Duration
	// NoDatapath runs the nodes without XDP (control plane only).
	NoDatapath bool
	// Datapath is the nodes' datapath (ClusterOptions.Datapath) [xdp]. With "nftables" the
	// source forwards nothing, so the demo does not require forwarded packets.
	Datapath string
	// WorkDir holds configs, certificates, bundle, state and logs [a temporary directory,
	// removed unless Keep].
	WorkDir string
	Keep    bool
	Out     io.Writer
}

func (o *Options) defaults() {
	if o.Conns == 0 {
		o.Conns = 4
	}
	if len(o.Steps) == 0 {
		o.Steps = []Step{{0, 1, "symmetric", api.Cold}, {1, 0, "explicit-reactive", api.Cold}}
	}
	if o.Settle == 0 {
		o.Settle = 2 * time.Second
	}
	if o.Drain == 0 {
		o.Drain = time.Second
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
}

// Run runs the demo. It returns an error naming the step that failed; a demo whose migrations
// or load check failed returns an error wrapping ErrVerify.
func Run(ctx context.Context, o Options) (err error) {
	o.defaults()
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	out := o.Out
	say := func(f string, a ...any) { fmt.Fprintf(out, "==> "+f+"\n", a...) }
	begin := time.Now()
	keep := o.Keep || o.WorkDir != ""
	c, err := StartCluster(ctx, ClusterOptions{Steerd: o.Steerd, Steerctl: o.Steerctl, KVService: o.KVService,
		NoDatapath: o.NoDatapath, Datapath: o.Datapath, WorkDir: o.WorkDir, Log: out})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		say("tearing down: steerd, containers, pod namespaces, testbed %s", c.TB.ID)
		if cerr := c.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("demo: tear down: %w", cerr)
		}
		if !keep && err == nil {
			os.RemoveAll(c.WorkDir)
		} else {
			// A failed demo keeps its logs for the operator (docs/operations.md).
			say("kept %s (configs, certificates, logs)", c.WorkDir)
		}
		say("total %.1fs", time.Since(begin).Seconds())
	}()

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	res, err := c.Steerctl(rctx, 0, "run", Service)
	cancel()
	if err != nil {
		return fmt.Errorf("demo: run %s on n0 (log %s): %w", Service, c.LogPath(0), err)
	}
	say("steerctl run %s on n0: %s", Service, trimNL(res))

	addr := c.Public(0)
	say("load client in %s: %d QUIC connections to n0's public address %s, one INCR per 10 ms each", c.TB.Clients[0].NS, o.Conns, addr)
	ld, err := c.StartLoad(ctx, addr, o.Conns, 0)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			ld.Stop()
		}
	}()
	sleep(ctx, o.Settle)

	var failed []string
	var used []string // "n0 -> n1 symmetric" per migration, for the load report
	names := map[string]string{}
	for i := range c.Names {
		names[c.Public(i).String()] = c.Names[i]
	}
	nft := o.Datapath == daemon.DatapathNFT && !o.NoDatapath
	for _, s := range o.Steps {
		from, to := c.Names[s.From], c.Names[s.To]
		say("migrating %s %s -> %s (strategy %s, technique %s)", Service, from, to, s.Strategy, s.Technique)
		before := [2]map[string]uint64{}
		for i := range before {
			before[i], _ = c.Counters(ctx, i)
		}
		window := time.Now()
		mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		m, err := c.Migrate(mctx, s.From, s.To, s.Strategy, s.Technique, o.Drain)
		cancel()
		if err != nil {
			return fmt.Errorf("demo: migrate %s -> %s: %w", from, to, err)
		}
		sleep(ctx, o.Settle/2)
		after := [2]map[string]uint64{}
		for i := range after {
			after[i], _ = c.Counters(ctx, i)
		}
		clients := viewClients(ld.Events(), window, time.Now(), o.Conns).line(names, m)
		printMigration(out, m, from, to, clients, delta(before[s.From], after[s.From]), delta(before[s.To], after[s.To]), nft, o.Settle/2)
		used = append(used, fmt.Sprintf("%s -> %s %s", from, to, s.Strategy))
		if routes, err := c.Steerctl(ctx, s.From, "routes"); err == nil {
			if r := strings.TrimSpace(routes); r == "(no routes)" || !strings.Contains(r, "\n") {
				routes = noRoutes(nft, o.NoDatapath)
			}
			fmt.Fprintf(out, "steerctl routes on %s after the drain:\n%s", from, indent(routes))
		}
		if m.Result != api.Succeeded {
			failed = append(failed, fmt.Sprintf("%s -> %s: %s: %v", from, to, m.Result, m.Error))
			break
		}
		if !o.NoDatapath && o.Datapath != daemon.DatapathNFT && delta(before[s.From], after[s.From])["forwarded"] == 0 {
			failed = append(failed, fmt.Sprintf("%s -> %s: %s forwarded no packet to %s", from, to, from, to))
		}
		sleep(ctx, o.Settle/2)
	}

	say("stopping the load client (waits for outstanding answers)")
	rep, lerr := ld.Stop()
	stopped = true
	if err := writeEvents(filepath.Join(c.WorkDir, "load-events.jsonl"), ld.Events()); err != nil {
		say("write load events: %v", err)
	}
	switch {
	case lerr != nil:
		failed = append(failed, fmt.Sprintf("load client: %v", lerr))
	default:
		printLoad(out, rep, names, used)
		if !rep.OK() || rep.Received == 0 {
			failed = append(failed, fmt.Sprintf("load client: lost %d, out of order %d, wrong %d, failed connections %d", rep.Lost, rep.OutOfOrder, rep.Wrong, rep.Failed))
		}
	}
	if len(failed) > 0 {
		keep = true
		return fmt.Errorf("demo: %w (logs in %s): %s", ErrVerify, c.WorkDir, strings.Join(failed, "; "))
	}
	say("demo passed: the service moved twice, every request answered, state kept")
	return nil
}

// ErrVerify is wrapped by Run's error when a migration failed or the load client lost, reordered
// or got wrong answers.
var ErrVerify = errors.New("verification failed")

func delta(a, b map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range b {
		if v > a[k] {
			d[k] = v - a[k]
		}
	}
	return d
}

// phaseDur returns the duration and bytes of the first End (or Fail) event of phase p on node
// ("" = any); engine selects the sub-phase events the container engine reported.
func phaseDur(es []api.Event, p api.Phase, node string, engine bool) (time.Duration, int64, bool) {
	for _, e := range es {
		if e.Phase == p && (e.Kind == api.End || e.Kind == api.Fail) && (node == "" || e.Node == node) && engine == (e.Detail == "engine") {
			return e.Duration, e.Bytes, true
		}
	}
	return 0, 0, false
}

func ms(d time.Duration) string { return api.MS(d) }

// noRoutes is what the demo prints for an empty `steerctl routes` on the source after the drain,
// worded for the datapath (nft: the nftables datapath, which never forwards).
func noRoutes(nft, noDatapath bool) string {
	switch {
	case nft:
		return "(no routes: the nftables datapath never forwards; the source drops the packets that still reach it)\n"
	case noDatapath:
		return "(no routes: the nodes run without a datapath)\n"
	}
	return "(no routes: the forwarding entry was removed after the drain)\n"
}

// imageBytes matches the restore detail "<n> image bytes" of the destination's steerd.
var imageBytes = regexp.MustCompile(`^(\d+) image bytes$`)

// readableDetail rewrites a raw byte count in an event detail with api.Bytes ("3.2MiB image").
func readableDetail(d string) string {
	if sm := imageBytes.FindStringSubmatch(d); sm != nil {
		if n, err := strconv.ParseInt(sm[1], 10, 64); err == nil {
			return "image " + api.Bytes(n)
		}
	}
	return d
}

// printMigration prints a migration's timeline (per-file transfer events folded into one line),
// its phase durations, what the clients saw (the line clients, printed right after the phases) and
// the datapath counters of both nodes from the migration's start to after (settle) after it
// ended (nft: the nodes run the nftables datapath, daemon.NFT).
func printMigration(w io.Writer, m *api.Migration, from, to, clients string, src, dst map[string]uint64, nft bool, after time.Duration) {
	var es []api.Event
	files := 0
	for _, e := range m.Events {
		if e.Phase == api.PhaseTransfer && e.Detail != "engine" {
			if e.Kind == api.End {
				files++
			}
			continue
		}
		e.Detail = readableDetail(e.Detail)
		es = append(es, e)
	}
	fmt.Fprintln(w, "timeline:")
	var b strings.Builder
	_ = api.WriteTimeline(&b, es)
	fmt.Fprint(w, indent(b.String()))
	_ = api.WriteMigration(w, m)
	line := func(name string, p api.Phase, node, extra string) {
		engine := p == "pause" || p == "dump" || p == "runc-restore"
		if d, _, ok := phaseDur(m.Events, p, node, engine); ok {
			fmt.Fprintf(w, "  %-22s %10s  %s\n", name, ms(d), extra)
		}
	}
	fmt.Fprintln(w, "phases:")
	line("prepare-dest ("+to+")", api.PhaseDest, "", "destination reserves the service")
	line("prepare (quicext)", api.PhasePrepare, from, fmt.Sprintf("%s: %d connections ready, %d not ready, %d unsupported", m.Strategy, m.Ready, m.NotReady, m.Unsupported))
	line("pause (freezer)", "pause", from, "cgroup freezer stops the container (freeze begins)")
	_, dumpBytes, _ := phaseDur(m.Events, "dump", from, true)
	line("dump (CRIU)", "dump", from, fmt.Sprintf("image %s", api.Bytes(dumpBytes)))
	if d, n, ok := phaseDur(m.Events, api.PhaseTransfer, from, true); ok {
		rate := 0.0
		if d > 0 {
			rate = float64(n) / (1 << 20) / d.Seconds()
		}
		fmt.Fprintf(w, "  %-22s %10s  %s in %d files over the mTLS peer channel (%.0f MiB/s)\n", "transfer", ms(d), api.Bytes(n), files, rate)
	}
	line("restore ("+to+")", api.PhaseRestore, to, "pod namespace + runc restore + datapath local")
	line("  runc restore", "runc-restore", to, "")
	route := "source forwards the instance to " + to
	if nft {
		route = "source drops the service's port (nftables: no forwarding)"
	}
	line("route ("+from+")", api.PhaseRoute, from, route)
	line("restored (quicext)", api.PhaseRestored, to, "service told its new address")
	line("complete ("+from+")", api.PhaseComplete, from, "source container removed")
	line("drain ("+from+")", api.PhaseDrain, from, drainDetail(m.Events))
	fmt.Fprintf(w, "  %-22s %10s  freeze to restored container running: the service answers nobody (steerd's measure)\n", "downtime", ms(m.Downtime))
	fmt.Fprintln(w, clients)
	window := fmt.Sprintf("packets from the migration's start to %.1f s after its end; the drain line above counts only from the route switch to the drain's end", after.Seconds())
	if nft {
		fmt.Fprintf(w, "nftables datapath (XDP off), %s:\n", window)
		fmt.Fprintf(w, "  %s: delivered to the pod %d, dropped after the move %d (stale: nothing is forwarded)\n", from, src[daemon.NFTDelivered], src[daemon.NFTDroppedStale])
		fmt.Fprintf(w, "  %s: delivered to the pod %d, dropped while the restored copy was fenced %d\n", to, dst[daemon.NFTDelivered], dst[daemon.NFTDroppedFenced])
		return
	}
	fmt.Fprintf(w, "XDP datapath, %s:\n", window)
	fmt.Fprintf(w, "  %s: forwarded to %s %d, delivered locally %d, replies SNAT'd %d\n", from, to, src["forwarded"], src["local"], src["snat"]+src["snat_default"])
	fmt.Fprintf(w, "  %s: decapsulated %d, delivered locally %d, replies SNAT'd %d (to the address the client used)\n", to, dst["decapsulated"], dst["local"], dst["snat"]+dst["snat_default"])
	explain := map[string]string{
		"pass_unknown_instance": "packets whose DCID names no instance this node steers, handed to the kernel (XDP_PASS): sent before the node had the entry or after the drain removed it",
	}
	for _, k := range []string{"drop_decap_undeliverable", "drop_peer_unreachable", "drop_too_big", "drop_error", "pass_unknown_instance"} {
		if src[k]+dst[k] > 0 {
			fmt.Fprintf(w, "  %s: %s %d, %s %d", k, from, src[k], to, dst[k])
			if e := explain[k]; e != "" {
				fmt.Fprintf(w, " (%s)", e)
			}
			fmt.Fprintln(w)
		}
	}
}

func drainDetail(es []api.Event) string {
	for _, e := range es {
		if e.Phase == api.PhaseDrain && e.Kind == api.Info {
			return e.Detail
		}
	}
	return ""
}

// clientView is what the load client saw during one migration: its events in a time window.
type clientView struct {
	conns    int      // connections of the load client
	switched int      // connections with a "switched" event in the window
	addrs    []string // the addresses switched to, in order of first appearance
	// maxGapMS is the largest gap (ms) that ended in the window, on connection maxGapConn; 0 when
	// no gap went above the load client's threshold.
	maxGapMS   float64
	maxGapConn int
	wrong      int      // "wrong" events: wrong or out-of-order answers
	failed     int      // "error" events: connections that failed
	strategies []string // strategies the clients' events named (announced, switched, ...)
}

// viewClients splits the load client's events by a migration's window [from, to]: a "gap" event
// (sent when the gap ends) counts when its gap ended in the window.
func viewClients(es []load.Event, from, to time.Time, conns int) clientView {
	v := clientView{conns: conns, maxGapConn: -1}
	sw := map[int]bool{}
	seen := map[string]bool{}
	for _, e := range es {
		if e.Time.Before(from) || e.Time.After(to) {
			continue
		}
		switch e.Ev {
		case "switched":
			sw[e.Conn] = true
			if e.Addr != "" && !seen[e.Addr] {
				seen[e.Addr] = true
				v.addrs = append(v.addrs, e.Addr)
			}
		case "gap":
			if e.GapMS > v.maxGapMS {
				v.maxGapMS, v.maxGapConn = e.GapMS, e.Conn
			}
		case "wrong":
			v.wrong++
		case "error":
			v.failed++
		}
		if e.Strategy != "" && !seen["strategy:"+e.Strategy] && e.Ev != "negotiated" {
			seen["strategy:"+e.Strategy] = true
			v.strategies = append(v.strategies, e.Strategy)
		}
	}
	v.switched = len(sw)
	return v
}

// line formats the view as the demo's per-migration client line, e.g.
//
//	clients: 4/4 switched to 198.18.21.2:4433 (n1), strategy symmetric, max gap 786.6 ms on conn 2 (downtime 803.7 ms), wrong answers 0, failed connections 0
//
// names maps a public address to its node name.
func (v clientView) line(names map[string]string, m *api.Migration) string {
	to := "no new address"
	if len(v.addrs) > 0 {
		var as []string
		for _, a := range v.addrs {
			if n := names[a]; n != "" {
				a += " (" + n + ")"
			}
			as = append(as, a)
		}
		to = strings.Join(as, ", ")
	}
	strategy := m.Strategy
	if len(v.strategies) > 0 && (len(v.strategies) != 1 || v.strategies[0] != m.Strategy) {
		strategy += " requested, clients reported " + strings.Join(v.strategies, ", ")
	}
	gap := "no gap above the load client's threshold"
	if v.maxGapConn >= 0 {
		gap = fmt.Sprintf("max gap %.1f ms on conn %d", v.maxGapMS, v.maxGapConn)
	}
	return fmt.Sprintf("clients: %d/%d switched to %s, strategy %s, %s (downtime %s), wrong answers %d, failed connections %d (lost requests: counted when the load stops)",
		v.switched, v.conns, to, strategy, gap, api.MS(m.Downtime), v.wrong, v.failed)
}

// printLoad prints the load report: totals, the strategy each migration used, and per connection
// the largest gap, switches and the server address it ended on (names: public address -> node).
func printLoad(w io.Writer, r *load.Report, names map[string]string, used []string) {
	fmt.Fprintf(w, "load: %d connections, sent %d, received %d, lost %d, out of order %d, wrong %d, failed connections %d, switched %d, max gap %.1f ms\n",
		len(r.Conns), r.Sent, r.Received, r.Lost, r.OutOfOrder, r.Wrong, r.Failed, r.Switched, r.MaxGapMS)
	fmt.Fprintln(w, "  (max gap: the largest interval between two answers on one connection, what a client experienced;")
	fmt.Fprintln(w, "   downtime: steerd's measure, from the freeze to the end of the destination's restore call. CRIU lets the")
	fmt.Fprintln(w, "   restored process run a little before that call returns, so max gap can be slightly below the downtime)")
	if len(used) > 0 {
		fmt.Fprintf(w, "  strategy used per migration: %s\n", strings.Join(used, ", "))
	}
	for _, cr := range r.Conns {
		var sw []string
		for _, s := range cr.Switches {
			n := names[s.Addr]
			sw = append(sw, fmt.Sprintf("%s(%s)", s.Addr, n))
		}
		fmt.Fprintf(w, "  conn %d: strategies negotiated (any of): %s, %d answered, counter %d..%d, max gap %.1f ms, switches [%s], ended on %s (%s)%s\n",
			cr.Conn, cr.Negotiated, cr.Received, cr.FirstValue, cr.LastValue, cr.MaxGap.MS, strings.Join(sw, " "), cr.ServerAddr, names[cr.ServerAddr], errSuffix(cr.Err))
	}
}

func errSuffix(s string) string {
	if s == "" {
		return ""
	}
	return ", error: " + s
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// writeEvents writes the load client's events as JSON lines.
func writeEvents(path string, es []load.Event) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, e := range es {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func trimNL(s string) string { return strings.TrimSpace(s) }

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
