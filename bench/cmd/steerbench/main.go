// Command steerbench runs steerd's benchmark suite on a tests/netns testbed (1 client, 2 nodes,
// 1 pod per node) and writes CSV files, a markdown summary and PNG plots to -out:
//
//  1. datapath: packets per second node A -> pod on node B through the XDP datapath, a Go UDP
//     relay and nftables DNAT, same blaster and sink (bench/internal/dpbench);
//  2. baselines: no move (floor), TCP+DNS (runc/CRIU move + authoritative DNS update) and MPTCP,
//     same counter service and client pacing (bench/internal/baseline);
//  3. the steerd migration matrix, strategy x technique x size x XDP (bench/internal/matrix).
//
// Everything is bounded by -budget; the run count per cell is derived from it and printed.
// Needs root, runc, criu and nft. Usage: see bench/run.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/steerd/steerd/bench/internal/authdns"
	"github.com/steerd/steerd/bench/internal/baseline"
	"github.com/steerd/steerd/bench/internal/dpbench"
	"github.com/steerd/steerd/bench/internal/matrix"
	"github.com/steerd/steerd/bench/internal/report"
	"github.com/steerd/steerd/bench/internal/stats"
	"github.com/steerd/steerd/tests/netns"
)

type options struct {
	out, kvsvc, bin, repo, xdpBench string
	gen                             string
	budget, interval, dpDur         time.Duration
	matrixBudget                    time.Duration
	ttls                            []time.Duration
	sizes                           []int
	xdp                             []bool
	techniques                      []string
	maxRuns, minRuns                int
	skipDatapath, skipBaselines     bool
}

func main() {
	var o options
	var ttls, sizes, xdp, techs string
	flag.StringVar(&o.out, "out", "", "output directory (created)")
	flag.StringVar(&o.kvsvc, "kvsvc", "bin/kvsvc", "static kvsvc binary")
	flag.StringVar(&o.bin, "bin", "bin", "directory with the built steerd binaries")
	flag.StringVar(&o.repo, "repo", ".", "checkout root")
	flag.StringVar(&o.xdpBench, "xdp-bench", "", "file with `go test -bench BenchmarkXDP ./datapath` output to include")
	flag.DurationVar(&o.budget, "budget", 27*time.Minute, "time budget of the whole run")
	flag.DurationVar(&o.matrixBudget, "matrix-budget", 16*time.Minute, "share of the budget reserved for the steerd matrix when it is runnable")
	flag.DurationVar(&o.interval, "interval", 10*time.Millisecond, "client request interval (gap resolution)")
	flag.StringVar(&o.gen, "gen", dpbench.GenSendmmsg+","+dpbench.GenXDPLive, "datapath traffic generators, comma-separated: "+dpbench.GenSendmmsg+", "+dpbench.GenXDPLive+" (each runs every forwarder)")
	flag.DurationVar(&o.dpDur, "dp-duration", time.Second, "duration of each offered load of a datapath sweep")
	flag.StringVar(&ttls, "ttls", "1s,5s", "DNS TTLs of the TCP+DNS baseline (the first at every size, the others at the first size)")
	flag.StringVar(&sizes, "sizes", "0,10,50,100", "container ballast sizes in MiB")
	flag.StringVar(&xdp, "xdp", "on,off", "matrix datapaths, comma-separated: on (steerd's XDP datapath), off (steerd --datapath nftables)")
	flag.StringVar(&techs, "techniques", strings.Join(matrix.Techniques, ","), "matrix techniques, comma-separated")
	flag.IntVar(&o.maxRuns, "runs", 10, "runs per baseline cell (fewer when the budget is short)")
	flag.IntVar(&o.minRuns, "matrix-min-runs", 10, "runs per matrix cell (groups that do not fit the budget at this count are not run)")
	flag.BoolVar(&o.skipDatapath, "skip-datapath", false, "skip the datapath cases")
	flag.BoolVar(&o.skipBaselines, "skip-baselines", false, "skip the baselines")
	flag.Parse()
	for _, s := range strings.Split(ttls, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			log.Fatalf("steerbench: parse -ttls: %v", err)
		}
		o.ttls = append(o.ttls, d)
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			log.Fatalf("steerbench: parse -sizes: %v", err)
		}
		o.sizes = append(o.sizes, n)
	}
	for _, x := range strings.Split(xdp, ",") {
		switch strings.TrimSpace(x) {
		case "on":
			o.xdp = append(o.xdp, true)
		case "off":
			o.xdp = append(o.xdp, false)
		default:
			log.Fatalf("steerbench: parse -xdp: %q is not on or off", x)
		}
	}
	for _, t := range strings.Split(techs, ",") {
		if t = strings.TrimSpace(t); !slices.Contains(matrix.Techniques, t) {
			log.Fatalf("steerbench: parse -techniques: %q is not one of %s", t, strings.Join(matrix.Techniques, ", "))
		}
		o.techniques = append(o.techniques, t)
	}
	if o.out == "" {
		log.Fatal("steerbench: -out is required")
	}
	if err := run(o); err != nil {
		log.Fatalf("steerbench: %v", err)
	}
}

func run(o options) error {
	start := time.Now()
	deadline := start.Add(o.budget)
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(2*time.Minute))
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; log.Print("signal: stopping after the current run"); cancel() }()

	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "stdr-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	kvsvc, err := filepath.Abs(o.kvsvc)
	if err != nil {
		return err
	}
	mach := report.DescribeMachine()
	loadStart := report.LoadAvg()
	tb, err := netns.Build(netns.Topology{Clients: 1, Nodes: 2, PodsPerNode: 1})
	if err != nil {
		return fmt.Errorf("build testbed: %w", err)
	}
	defer tb.Close()
	log.Printf("testbed %s built in %s", tb.ID, tb.BuildTime.Round(time.Millisecond))
	s := &summary{o: o, mach: mach, started: start}

	// 1. Datapath.
	if !o.skipDatapath {
		for _, g := range strings.Split(o.gen, ",") {
			setup, err := dpbench.NewSetup(tb, g)
			if err != nil {
				return err
			}
			if setup.GenNote != "" {
				log.Printf("datapath: %s", setup.GenNote)
				s.genNotes = append(s.genNotes, setup.GenNote)
			}
			for _, f := range []dpbench.Forwarder{dpbench.Relay{}, dpbench.NFTDNAT{}, dpbench.XDP{}} {
				for _, r := range dpbench.Measure(ctx, setup, f, o.dpDur) {
					log.Printf("datapath %-8s (%s) offered %.0f pps: sent %.0f pps, arrived in the pod %.0f pps, read by the sink %.0f pps (%s)", r.Forwarder, r.Generator, r.Offered, r.SentPPS, r.ArrivedPPS, r.PPS, r.Status)
					s.dp = append(s.dp, r)
				}
			}
			setup.Close()
		}
	}
	if !o.skipDatapath {
		for _, n := range dpbench.MapSizes {
			c, err := dpbench.PerPacketCost(n, 20000)
			if err != nil {
				log.Printf("xdp per-packet cost with %d entries: %v", n, err)
				s.costErr = append(s.costErr, fmt.Sprintf("%d: %v", n, err))
				continue
			}
			log.Printf("xdp per-packet cost with %d entries: bare %.0f ns, local %.0f ns (%.1fx), forward %.0f ns (%.1fx)",
				n, c.BareMean, c.LocalMean, c.LocalRatio(), c.ForwardMean, c.ForwardRatio())
			s.costs = append(s.costs, c)
		}
	}
	if o.xdpBench != "" {
		if b, err := os.ReadFile(o.xdpBench); err == nil {
			s.xdpBench = string(b)
		}
	}

	// 3 (planned before 2 so that the baselines know their share). The matrix migrator.
	m := &matrix.Steerd{Bin: o.bin, Repo: o.repo}
	defer m.Close()
	var cells []matrix.Cell
	for _, c := range matrix.Cells() {
		if slices.Contains(o.sizes, c.BallastMB) && slices.Contains(o.xdp, c.XDP) && slices.Contains(o.techniques, c.Technique) {
			cells = append(cells, c)
		}
	}
	matrixReady := 0
	for _, c := range cells {
		if m.Ready(c) == nil {
			matrixReady++
		}
	}
	matrixBudget := time.Duration(0)
	if matrixReady > 0 {
		// The matrix takes -matrix-budget, but never more than 60% of what is left, so a short
		// -budget still gives the baselines (the ratios' denominators) their runs.
		matrixBudget = min(o.matrixBudget, time.Until(deadline)*6/10)
		if matrixBudget < o.matrixBudget {
			log.Printf("matrix budget %s: -matrix-budget %s is more than 60%% of the time left", matrixBudget.Round(time.Second), o.matrixBudget)
		}
	}

	// 2. Baselines.
	if !o.skipBaselines {
		share := time.Until(deadline) - matrixBudget
		if err := s.runBaselines(ctx, tb, work, kvsvc, share); err != nil {
			return err
		}
	}

	// 3. Matrix.
	mr := &matrix.Runner{M: m, Env: &matrix.Env{TB: tb, Work: work, Bin: o.bin, Interval: o.interval},
		Budget: min(matrixBudget, time.Until(deadline)), MinRuns: o.minRuns, MaxRuns: o.minRuns, Logf: log.Printf}
	s.matrix = mr.Run(ctx, cells)
	s.plan = mr.PlanTaken
	log.Printf("matrix: %s", s.plan.Note)

	s.elapsed = time.Since(start)
	s.load = [2]string{loadStart, report.LoadAvg()}
	return s.write()
}

type blCell struct {
	kind  baseline.Kind
	ttl   time.Duration
	size  int
	runs  []baseline.Result
	share time.Duration
}

func (s *summary) runBaselines(ctx context.Context, tb *netns.Testbed, work, kvsvc string, budget time.Duration) error {
	var cells []*blCell
	cells = append(cells, &blCell{kind: baseline.KindNone, ttl: 0, size: 0})
	for _, sz := range s.o.sizes {
		cells = append(cells, &blCell{kind: baseline.KindTCPDNS, ttl: s.o.ttls[0], size: sz})
	}
	for _, sz := range s.o.sizes {
		cells = append(cells, &blCell{kind: baseline.KindMPTCP, ttl: s.o.ttls[0], size: sz})
	}
	// The longer TTLs show what the TTL costs, which does not depend on the size: they run at
	// the first size only, last (a TTL-5s run takes ~9 s).
	for _, ttl := range s.o.ttls[1:] {
		cells = append(cells, &blCell{kind: baseline.KindTCPDNS, ttl: ttl, size: s.o.sizes[0]})
	}
	blStart := time.Now()
	s.blNote = fmt.Sprintf("baseline budget %s for %d cells, shared as it goes: each cell gets what is left / the cells left (cells that finish early leave time to the later ones); up to %d runs per cell, fewer when a cell's share runs out (the run count of each cell is in the table)",
		budget.Round(time.Second), len(cells), s.o.maxRuns)
	log.Print(s.blNote)
	var dns *authdns.Server
	var dnsTTL time.Duration = -1
	defer func() {
		if dns != nil {
			dns.Close()
		}
	}()
	for i, c := range cells {
		share := (budget - time.Since(blStart)) / time.Duration(len(cells)-i)
		ttl := c.ttl
		if ttl == 0 {
			ttl = s.o.ttls[0]
		}
		if ttl != dnsTTL {
			if dns != nil {
				dns.Close()
			}
			var err error
			dns, err = authdns.Start(tb.Router.NS, netipJoin(tb.Clients[0].Gateway4.String(), 53), baseline.Zone, ttl)
			if err != nil {
				return err
			}
			dnsTTL = ttl
		}
		env, err := baseline.NewEnv(tb, work, kvsvc, s.o.interval, dns)
		if err != nil {
			return err
		}
		cfg := baseline.Config{Kind: c.kind, BallastMB: c.size, Warmup: 500 * time.Millisecond, After: time.Second, Timeout: 40 * time.Second}
		cellStart := time.Now()
		criuOK := true
		for run := 0; run < s.o.maxRuns && ctx.Err() == nil; run++ {
			if run > 0 && time.Since(cellStart)*time.Duration(run+1)/time.Duration(run) > share {
				break
			}
			tryCRIU := c.kind == baseline.KindTCPDNS || (c.kind == baseline.KindMPTCP && criuOK)
			r := env.Run(ctx, cfg, run, tryCRIU)
			if r.CRIUError != "" {
				criuOK = false
				s.mptcpCRIU = r.CRIUError
			}
			log.Printf("baseline %s ttl=%s size=%dMB run %d: gap %s freeze %s %s%s", c.kind, r.TTL, c.size, run,
				r.Gap.Round(time.Millisecond), r.Freeze.Round(time.Millisecond), r.Method, errSuffix(r.Err))
			c.runs = append(c.runs, r)
		}
	}
	s.bl = cells
	return nil
}

func netipJoin(host string, port int) string { return fmt.Sprintf("%s:%d", host, port) }

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " ERROR " + e
}

// summary collects everything for the output files.
type summary struct {
	o         options
	mach      report.Machine
	started   time.Time
	elapsed   time.Duration
	dp        []dpbench.Result
	xdpBench  string
	costs     []dpbench.Cost
	genNotes  []string
	load      [2]string // /proc/loadavg at the start and the end
	costErr   []string
	bl        []*blCell
	blNote    string
	mptcpCRIU string
	matrix    []matrix.Row
	plan      matrix.Plan
}

func ms(d time.Duration) string { return strconv.FormatFloat(stats.Ms(d), 'f', 1, 64) }

func (s *summary) write() error {
	out := s.o.out
	// datapath.csv
	var rows [][]string
	for _, r := range s.dp {
		rows = append(rows, []string{r.Forwarder, r.Generator, strconv.FormatFloat(r.Offered, 'f', 0, 64), r.Status, strconv.FormatFloat(r.Duration.Seconds(), 'f', 3, 64),
			strconv.FormatUint(r.Sent, 10), strconv.FormatUint(r.Arrived, 10), strconv.FormatUint(r.Received, 10),
			strconv.FormatFloat(r.SentPPS, 'f', 0, 64), strconv.FormatFloat(r.ArrivedPPS, 'f', 0, 64), strconv.FormatFloat(r.PPS, 'f', 0, 64)})
	}
	if err := report.WriteCSV(filepath.Join(out, "datapath.csv"), []string{"forwarder", "generator", "offered_pps", "status", "duration_s", "sent", "arrived_pod", "read_sink", "sent_pps", "arrived_pps", "read_pps"}, rows); err != nil {
		return err
	}
	// xdp_cost.csv
	rows = nil
	for _, c := range s.costs {
		ff := func(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
		rows = append(rows, []string{strconv.Itoa(c.N), strconv.Itoa(c.Runs), strconv.Itoa(c.Packets), ff(c.BareMean), ff(c.BareMedian),
			ff(c.LocalMean), ff(c.LocalMedian), ff(c.ForwardMean), ff(c.ForwardMedian), strconv.FormatFloat(c.LocalRatio(), 'f', 2, 64),
			strconv.FormatFloat(c.ForwardRatio(), 'f', 2, 64), ms(c.FillTime)})
	}
	if err := report.WriteCSV(filepath.Join(out, "xdp_cost.csv"), []string{"entries", "runs", "packets", "bare_mean_ns", "bare_median_ns", "local_mean_ns", "local_median_ns", "forward_mean_ns", "forward_median_ns", "local_over_bare", "forward_over_bare", "fill_ms"}, rows); err != nil {
		return err
	}
	// baselines.csv
	rows = nil
	for _, c := range s.bl {
		for _, r := range c.runs {
			status := "ok"
			if r.Err != "" {
				status = "error: " + r.Err
			}
			rows = append(rows, []string{string(r.Kind), r.Method, strconv.FormatFloat(r.TTL.Seconds(), 'f', 0, 64), strconv.Itoa(r.BallastMB), strconv.Itoa(r.Run), status,
				ms(r.Gap), ms(r.Freeze), ms(r.Checkpoint), ms(r.Restore), strconv.FormatInt(r.ImageBytes, 10),
				strconv.FormatBool(r.StateKept), strconv.FormatBool(r.MPTCP), strconv.Itoa(r.Responses), strconv.Itoa(r.Dials), strconv.Itoa(r.Failures), r.FirstError})
		}
	}
	if err := report.WriteCSV(filepath.Join(out, "baselines.csv"), []string{"kind", "method", "ttl_s", "ballast_mb", "run", "status", "gap_ms", "freeze_ms", "checkpoint_ms", "restore_ms", "image_bytes", "state_kept", "mptcp", "responses_after", "dials", "failures", "first_error"}, rows); err != nil {
		return err
	}
	// matrix.csv
	rows = nil
	for _, r := range s.matrix {
		rows = append(rows, []string{r.Migrator, r.Strategy, r.Technique, strconv.Itoa(r.BallastMB), strconv.FormatBool(r.XDP), strconv.Itoa(r.Run), r.Status,
			ms(r.ClientGap), ms(r.Freeze), strconv.FormatBool(r.StateKept), strconv.Itoa(r.Lost), r.Notes})
	}
	if err := report.WriteCSV(filepath.Join(out, "matrix.csv"), []string{"migrator", "strategy", "technique", "ballast_mb", "xdp", "run", "status", "client_gap_ms", "freeze_ms", "state_kept", "lost", "notes"}, rows); err != nil {
		return err
	}
	if err := s.plots(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "summary.md"), []byte(s.markdown()), 0o644)
}

type cellStats struct {
	n, errs, kept, mptcp int
	gap, freeze, ratio   stats.Summary
	method               string
}

func (c *blCell) stats() cellStats {
	var cs cellStats
	var g, f, r []float64
	methods := map[string]bool{}
	for _, x := range c.runs {
		if x.Err != "" {
			cs.errs++
			continue
		}
		cs.n++
		methods[x.Method] = true
		if x.StateKept {
			cs.kept++
		}
		if x.MPTCP {
			cs.mptcp++
		}
		g = append(g, stats.Ms(x.Gap))
		f = append(f, stats.Ms(x.Freeze))
		if x.Freeze > 0 {
			r = append(r, float64(x.Gap)/float64(x.Freeze))
		}
	}
	var ms []string
	for m := range methods {
		if !methods[m+" (CRIU refused)"] { // "stop-start" after the first run said why
			ms = append(ms, m)
		}
	}
	sort.Strings(ms)
	cs.method = strings.Join(ms, ", ")
	cs.gap, cs.freeze, cs.ratio = stats.Summarize(g), stats.Summarize(f), stats.Summarize(r)
	return cs
}

func (c *blCell) label() string {
	switch c.kind {
	case baseline.KindNone:
		return "no move"
	case baseline.KindTCPDNS:
		return fmt.Sprintf("TCP+DNS %ds %dMB", int(c.ttl.Seconds()), c.size)
	}
	return fmt.Sprintf("MPTCP %dMB", c.size)
}

func f1(x float64) string {
	if x != x { // NaN
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 1, 64)
}

func f2(x float64) string {
	if x != x {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 2, 64)
}

func (s *summary) plots() error {
	var gaps, freezes []report.Bar
	for _, c := range s.bl {
		cs := c.stats()
		if cs.n == 0 {
			continue
		}
		gaps = append(gaps, report.Bar{Label: c.label(), Value: cs.gap.Median, Top: cs.gap.P95})
		if c.kind != baseline.KindNone {
			freezes = append(freezes, report.Bar{Label: c.label(), Value: cs.freeze.Median, Top: cs.freeze.P95})
		}
	}
	if err := report.BarChart(filepath.Join(s.o.out, "baseline_gap.png"), "Baselines: client gap (largest interval between responses)", "gap (ms)", "median", "p95", gaps); err != nil {
		return err
	}
	if err := report.BarChart(filepath.Join(s.o.out, "baseline_freeze.png"), "Baselines: service downtime (checkpoint/stop start -> restore/start done)", "downtime (ms)", "median", "p95", freezes); err != nil {
		return err
	}
	var dp []report.Bar
	for _, g := range s.generators() {
		for _, f := range s.forwarders() {
			if r, ok := dpbench.Best(s.dpOf(g, f)); ok {
				dp = append(dp, report.Bar{Label: f + " / " + shortGen(g), Value: r.ArrivedPPS / 1000, Top: r.SentPPS / 1000})
			}
		}
	}
	if err := report.BarChart(filepath.Join(s.o.out, "datapath_pps.png"), fmt.Sprintf("Node A -> pod on node B, %d-byte UDP payload, best of a load sweep", dpbench.PayloadLen), "kpps", "best rate arrived in the pod (eth0 rx)", "offered (sent) at that point", dp); err != nil {
		return err
	}
	// One matrix chart per size: 20 bars (strategy x technique x datapath) stay readable.
	sums := matrix.Summarize(s.matrix)
	for _, size := range s.o.sizes {
		var mx []report.Bar
		for _, c := range sums {
			if c.Status == "ok" && c.BallastMB == size {
				dp := "xdp"
				if !c.XDP {
					dp = "nft"
				}
				mx = append(mx, report.Bar{Label: fmt.Sprintf("%s/%s/%s", c.Strategy, c.Technique, dp), Value: c.Gap.Median, Top: c.Gap.P95})
			}
		}
		title := fmt.Sprintf("steerd migration, %d MB ballast: client gap (xdp = XDP datapath, nft = XDP off)", size)
		if err := report.BarChart(filepath.Join(s.o.out, fmt.Sprintf("matrix_gap_%dmb.png", size)), title, "gap (ms)", "median", "p95", mx); err != nil {
			return err
		}
	}
	return nil
}

func (s *summary) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# steerd benchmarks\n\nRun started %s, took %s (budget %s).\n\n", s.started.UTC().Format(time.RFC3339), s.elapsed.Round(time.Second), s.o.budget)
	w("## Machine\n\n%s- load average (1/5/15 min) at the start: %s; at the end: %s (the machine is shared: other work running during the run shows here and slows every number)\n\n", s.mach.Markdown(), s.load[0], s.load[1])
	w("%s", s.headline())
	w("## Method\n\n")
	w("- Testbed: tests/netns, 1 client, 2 edge nodes, 1 pod per node (addresses in docs/architecture.md); the service moves from pod 0 of node 0 (198.19.0.1) to pod 0 of node 1 (198.19.1.1).\n")
	w("- Service logic: examples/kv (Store and line protocol, `INCR <key> <seq>` -> `<key> <value> <seq>`, memory ballast kv.Ballast of 0/10/50/100 MiB with one written word per 4 KiB page) in a runc container in the pod namespace: over TLS 1.3 on TCP/MPTCP in bench/cmd/kvsvc for the baselines, over QUIC in examples/kvservice for steerd.\n")
	w("- Client: one long-lived connection, one INCR every %s (bounded count and time; bench/internal/pace for TCP/MPTCP, examples/loadclient/load for QUIC, same pacing); gap = largest interval between successive responses; state kept = the value never went backwards (QUIC: every response exactly the previous value + 1; requests never answered are counted as lost, separately).\n", s.o.interval)
	w("- Freeze (baselines): service downtime from the start of `runc checkpoint` (or SIGTERM) to the end of `runc restore` (or `runc run`) on node 1; ratio = gap / freeze per run.\n")
	w("- TCP+DNS: authoritative DNS server (miekg/dns) in the router namespace for %s, TTL %s (an operator's short TTLs; the TTLs after the first run at the first size only: the TTL's cost does not depend on the size); the client's stub cache honours the TTL; the orchestrator moves the container with `runc checkpoint`/`runc restore` (CRIU, `tcp-close`: the listener is restored, established connections are not) and then rewrites the A record; the client detects the broken connection, re-resolves, reconnects (TLS resumption), resumes. The move starts after 0.5 s plus a uniform random part of the TTL (random age of the cached record).\n", baseline.Zone, durList(s.o.ttls))
	w("- MPTCP: the same over MPTCP (Go SetMultipathTCP on both ends, `ip mptcp limits set subflow 2 add_addr_accepted 2` in the client and both pods), DNS TTL %s.\n", s.o.ttls[0])
	w("- %s\n\n", s.blNote)

	w("## Baselines\n\n| baseline | method | runs | gap median ms | gap p95 ms | freeze median ms | freeze p95 ms | gap/freeze median | gap/freeze p95 | state kept | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var floor, tcp1 map[int]float64 = map[int]float64{}, map[int]float64{}
	for _, c := range s.bl {
		cs := c.stats()
		fr, fp, rt, rp := f1(cs.freeze.Median), f1(cs.freeze.P95), f2(cs.ratio.Median), f2(cs.ratio.P95)
		if c.kind == baseline.KindNone {
			fr, fp, rt, rp = "-", "-", "-", "-"
			floor[0] = cs.gap.Median
		}
		if c.kind == baseline.KindTCPDNS && c.ttl == s.o.ttls[0] {
			tcp1[c.size] = cs.gap.Median
		}
		w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %d/%d | %d |\n", c.label(), cs.method, cs.n, f1(cs.gap.Median), f1(cs.gap.P95), fr, fp, rt, rp, cs.kept, cs.n, cs.errs)
	}
	w("\nRatios (median gap):\n\n")
	for _, c := range s.bl {
		cs := c.stats()
		if c.kind == baseline.KindMPTCP && cs.n > 0 && tcp1[c.size] > 0 {
			w("- MPTCP %d MB: %s of TCP+DNS (TTL %s)\n", c.size, f2(cs.gap.Median/tcp1[c.size]), s.o.ttls[0])
		}
		if c.kind == baseline.KindTCPDNS && cs.n > 0 && floor[0] > 0 {
			w("- %s: %s x the no-move floor\n", c.label(), f1(cs.gap.Median/floor[0]))
		}
	}
	for _, c := range s.bl {
		for _, r := range c.runs {
			if r.Err != "" {
				w("- error in %s run %d: %s\n", c.label(), r.Run, r.Err)
			}
		}
	}
	w("\n### MPTCP and CRIU\n\n")
	if s.mptcpCRIU != "" {
		w("CRIU could not checkpoint the MPTCP container, so the MPTCP runs move the service by stop/start with the counter passed along (SIGTERM -> state file -> new container on node 1). CRIU said:\n\n```\n%s\n```\n\n", s.mptcpCRIU)
	} else {
		w("No CRIU refusal recorded for MPTCP in this run (see the method column).\n\n")
	}
	w("What the client experiences: the MPTCP connection's only subflow ends with the server process (reset), and no subflow can join the new instance: its kernel has no state for the connection's token (RFC 8684 section 3.2, MP_JOIN needs the peer's token), and ADD_ADDR can only be sent by the old server kernel, which does not know the new address. The client must open a new MPTCP connection to an address it re-resolves, so MPTCP behaves as TCP+DNS here (see its gap above); it does not carry a connection across a server move.\n\n")

	if s.o.skipDatapath {
		w("## Datapath\n\nNot run in this run (-skip-datapath).\n\n")
	} else {
		w("## Datapath\n\nPackets per second from client 0 through node 0's public address (%s) to a sink in the pod on node 1, %d-byte UDP payload (a QUIC short header with a connid DCID naming the pod's instance), all forwarders in one run on the same testbed, once with each generator:\n\n", "198.18.20.2:9000", dpbench.PayloadLen)
		w("- `%s`: %d UDP sockets in client 0, one goroutine each, sendmmsg batches of %d (x/net/ipv4 WriteBatch).\n", shortGen(dpbench.GenSendmmsg), dpbench.GenSockets, dpbench.Batch)
		w("- `%s`: in the kernel, BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs an XDP_TX program on client 0's uplink (about 2 ms of frames per call when paced, %d unpaced), no socket; the router's client-facing veth runs xdp_pass. The frames' path (router, forwarder, node B) runs in softirq inline with the generating syscall, so this generator is throttled by the path it feeds.\n", dpbench.GenXDPLive, 1<<15)
		for _, n := range s.genNotes {
			w("- %s\n", n)
		}
		w("\nEach forwarder is offered a sweep of loads (%s pps, up to the second load of which less than 90%% arrived, then the generator unpaced), %s per load; the table shows the load with the highest arrived rate. Arrived = the pod's eth0 rx_packets counter (what the path delivered); read = what the sink socket (recvmmsg, batches of %d) read.\n\n", rateList(), s.o.dpDur, dpbench.Batch)
		for _, g := range s.generators() {
			w("Generator `%s`:\n\n| forwarder | status | offered at best | sent pps | arrived pps (best) | read pps | arrived / go-relay | limit |\n|---|---|---|---|---|---|---|---|\n", g)
			var relay float64
			if r, ok := dpbench.Best(s.dpOf(g, "go-relay")); ok {
				relay = r.ArrivedPPS
			}
			for _, f := range s.forwarders() {
				rs := s.dpOf(g, f)
				if len(rs) == 0 {
					continue
				}
				r, ok := dpbench.Best(rs)
				if !ok {
					w("| %s | %s | - | - | - | - | - | - |\n", f, rs[0].Status)
					continue
				}
				rel := "-"
				if relay > 0 {
					rel = f2(r.ArrivedPPS / relay)
				}
				limit := "forwarder path: the best rate is below the offered load"
				if r.Arrived >= r.Sent*95/100 {
					limit = "generator: the path kept up with the most this generator offered"
				}
				w("| %s | ok | %s | %.0f | %.0f | %.0f | %s | %s |\n", f, offered(r.Offered), r.SentPPS, r.ArrivedPPS, r.PPS, rel, limit)
			}
			w("\n")
		}
		w("Every load of the sweeps (datapath.csv has each one):\n\n| generator | forwarder | offered | sent pps | arrived pps | arrived / sent |\n|---|---|---|---|---|---|\n")
		for _, r := range s.dp {
			if r.Status == "ok" && r.Sent > 0 {
				w("| %s | %s | %s | %.0f | %.0f | %s |\n", shortGen(r.Generator), r.Forwarder, offered(r.Offered), r.SentPPS, r.ArrivedPPS, f2(float64(r.Arrived)/float64(r.Sent)))
			}
		}
		w("\nThe generator, the router, the forwarder and the sink share the machine's %d cores (softirq and user time), so these are relative numbers for this machine. Limit: where arrived is at least 95%% of sent, the generator was the limit and the case shows only that the forwarder kept up; otherwise the offered load exceeded what the path (router + forwarder + node B) delivered, and the arrived rate is that path's maximum on this machine.\n\n", s.mach.NProc)
		w("### XDP per-packet cost (prog.Benchmark / BPF_PROG_TEST_RUN)\n\n")
		if s.xdpBench != "" {
			w("From `go test -run '^$' -bench BenchmarkXDP ./datapath/` (datapath/bench_test.go: a handful of instances in the maps):\n\n```\n%s\n```\n\n", strings.TrimSpace(s.xdpBench))
		} else {
			w("not run: no BenchmarkXDP output given (-xdp-bench).\n\n")
		}
		w("Per-packet cost with N instances (half local, half on a peer) and N client entries in the maps: mean of %d single BPF_PROG_TEST_RUN runs per program (repeat 1, because xdp_steer rewrites its packet; datapath.RunXDP with ingress_ifindex = the node uplink), cycling through 4096 distinct 1242-byte frames with random instances and clients among the N; bare = xdp_parse in the same process. 3-byte server IDs; the instances and clients maps are resized with datapath.OpenSized (compiled limits: MAX_INSTANCES 65536, MAX_CLIENTS 262144 in bpf/consts.h, so 100k and 1M need a build with larger limits).\n\n", 20000)
		w("| instances/clients in the maps | bare ns/pkt | local ns/pkt (median) | local / bare | forward ns/pkt (median) | forward / bare | map fill |\n|---|---|---|---|---|---|---|\n")
		for _, c := range s.costs {
			w("| %d | %.0f | %.0f (%.0f) | %.1f | %.0f (%.0f) | %.1f | %s |\n", c.N, c.BareMean, c.LocalMean, c.LocalMedian, c.LocalRatio(), c.ForwardMean, c.ForwardMedian, c.ForwardRatio(), c.FillTime.Round(time.Millisecond))
		}
		for _, e := range s.costErr {
			w("| %s | not run | | | | | |\n", e)
		}
	}
	w("\n")
	w("\n## steerd migration matrix\n\n")
	w("Method: bench/internal/matrix.Steerd drives steerd through its public interfaces as `steerd demo` does (daemon/demo.Cluster): a netns testbed of its own (1 client, router with xdp_pass toward the nodes, 2 nodes), bin/steerd on both nodes (runc+CRIU engine, quicext control endpoint, the datapath of the cell: see XDP below), `steerctl run kv` starts examples/kvservice with `-ballast-mb <size>` on n0 (announcing both nodes' public addresses as its Pool). One migration measures every strategy at once: per run, one QUIC load client per strategy (examples/loadclient/load via demo.Cluster.StartLoad, 1 connection each, one INCR every 10 ms, each offering only its strategy, so each connection negotiates its own: quicext negotiates per connection) connects to the public address of the node the service is on; after 1.5 s (the warm-up tests/netns/e2e found a Symmetric client needs) the control API (api.Client.Migrate, drain 0.3 s, drain timeout 10 s, wait) moves the service to the other node with the cell's technique, and every connection is made ready for its own strategy before the freeze; the clients run 0.3 s more. A run of a cell is one strategy's connection in one migration, so the strategies of a technique/size/datapath share their freezes (the freeze columns of one group are the same migrations). Because every migration carries a Synchronized Symmetric connection, whose client holds its sends from the prepare on, steerd pauses the service right after the prepare in every post-copy migration here (daemon CheckpointRequest.FreezeAtOnce; without such a client CRIU freezes it only after its start-up, and the other strategies' clients are served a little longer). Gap = the connection's largest gap between responses; freeze = the daemon's migration report (api.Migration.Downtime: start of the checkpoint to the end of the restore). One cluster serves every run of a size and datapath; the service alternates n0 -> n1 -> n0.\n\nXDP: `true` is steerd's XDP datapath (the node uplink steers each QUIC packet by the instance in its DCID; after the move the old node encapsulates in-flight packets to the new one until the drain ends); `false` is the XDP datapath off, with `steerd --datapath nftables` (daemon.NFT: nftables DNAT of the node's public address and port to the pod, SNAT of the pod's packets, conntrack per client; packets that still reach the old node after the move are dropped there, so only QUIC loss recovery and the strategy's signalling bring the client over). The quicext strategies are the same in both.\n\n")
	w("Plan: %s.\n\n", s.plan.Note)
	sums := matrix.Summarize(s.matrix)
	type nr struct {
		reason string
		cells  []string
	}
	var notRun []*nr
	for _, c := range sums {
		if c.Runs > 0 || strings.HasPrefix(c.Status, "error") {
			continue
		}
		var g *nr
		for _, x := range notRun {
			if x.reason == c.Status {
				g = x
			}
		}
		if g == nil {
			g = &nr{reason: c.Status}
			notRun = append(notRun, g)
		}
		g.cells = append(g.cells, c.Cell.String())
	}
	ran := 0
	for _, c := range sums {
		if c.Runs > 0 || strings.HasPrefix(c.Status, "error") {
			ran++
		}
	}
	w("%d of %d cells ran. ", ran, len(sums))
	if len(notRun) > 0 {
		w("Cells that did not run, by reason:\n\n| cells | reason |\n|---|---|\n")
		for _, g := range notRun {
			w("| %d (e.g. %s) | %s |\n", len(g.cells), g.cells[0], strings.ReplaceAll(g.reason, "|", "/"))
		}
	}
	w("\n| strategy | technique | size MB | XDP | runs | errors | gap median ms | gap p95 ms | freeze median ms | freeze p95 ms | gap/freeze median | gap/freeze p95 | state kept | lost requests | vs TCP+DNS %s (median gap) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n", s.o.ttls[0])
	for _, size := range s.o.sizes {
		for _, c := range sums {
			if c.BallastMB != size || (c.Runs == 0 && !strings.HasPrefix(c.Status, "error")) {
				continue
			}
			vs := "-"
			if c.Runs > 0 && tcp1[c.BallastMB] > 0 {
				vs = f2(c.Gap.Median / tcp1[c.BallastMB])
			}
			w("| %s | %s | %d | %v | %d | %d | %s | %s | %s | %s | %s | %s | %d/%d | %d | %s |\n", c.Strategy, c.Technique, c.BallastMB, c.XDP, c.Runs, c.Errs,
				f1(c.Gap.Median), f1(c.Gap.P95), f1(c.Freeze.Median), f1(c.Freeze.P95), f2(c.Ratio.Median), f2(c.Ratio.P95), c.StateKept, c.Runs, c.Lost, vs)
		}
	}
	errs := 0
	for _, r := range s.matrix {
		if strings.HasPrefix(r.Status, "error") {
			if errs < 10 {
				w("\n- error in %s run %d: %s", r.Cell, r.Run, r.Status)
			}
			errs++
		}
	}
	if errs > 10 {
		w("\n- ... %d errors in all (matrix.csv)", errs)
	}
	w("\n")
	dpFiles := "datapath.csv (one row per offered load), xdp_cost.csv, "
	dpPlot := "datapath_pps.png, "
	if s.o.skipDatapath {
		dpFiles, dpPlot = "", ""
	}
	w("\n## Files\n\n- baselines.csv, %smatrix.csv: one row per run (matrix: one row per not-run cell)\n- baseline_gap.png, baseline_freeze.png, %smatrix_gap_<size>mb.png (one per container size)\n- run.log (the whole run), xdp_bench.txt (BenchmarkXDP output)\n", dpFiles, dpPlot)
	return b.String()
}

func durList(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.String())
	}
	return strings.Join(s, " and ")
}

func offered(r float64) string {
	if r == dpbench.RateUnpaced {
		return "unpaced"
	}
	return strconv.FormatFloat(r, 'f', 0, 64)
}

func rateList() string {
	var out []string
	for _, r := range dpbench.Rates {
		out = append(out, strconv.FormatFloat(r/1000, 'f', 0, 64)+"k")
	}
	return strings.Join(out, ", ")
}

// forwarders returns the forwarder names of the datapath results in first-seen order.
func (s *summary) forwarders() []string {
	var out []string
	for _, r := range s.dp {
		if !slices.Contains(out, r.Forwarder) {
			out = append(out, r.Forwarder)
		}
	}
	return out
}

// generators returns the generator names of the datapath results in first-seen order.
func (s *summary) generators() []string {
	var out []string
	for _, r := range s.dp {
		if !slices.Contains(out, r.Generator) {
			out = append(out, r.Generator)
		}
	}
	return out
}

func shortGen(g string) string {
	if strings.HasPrefix(g, dpbench.GenSendmmsg) {
		return dpbench.GenSendmmsg
	}
	return g
}

func (s *summary) dpOf(g, f string) []dpbench.Result {
	var out []dpbench.Result
	for _, r := range s.dp {
		if r.Forwarder == f && r.Generator == g {
			out = append(out, r)
		}
	}
	return out
}

// headline is the summary's first section: a table of the median client gap of every steerd
// cell relative to TCP+DNS (first TTL) at the same size, strategies and datapaths in rows,
// technique and size in columns, with the baselines under it; then how to read it.
func (s *summary) headline() string {
	var b strings.Builder
	tcp := map[int]float64{}
	floor := 0.0
	for _, c := range s.bl {
		cs := c.stats()
		if cs.n == 0 {
			continue
		}
		if c.kind == baseline.KindTCPDNS && c.ttl == s.o.ttls[0] {
			tcp[c.size] = cs.gap.Median
		}
		if c.kind == baseline.KindNone {
			floor = cs.gap.Median
		}
	}
	sums := matrix.Summarize(s.matrix)
	byCell := map[matrix.Cell]matrix.CellSummary{}
	techs := map[string]bool{}
	for _, c := range sums {
		byCell[c.Cell] = c
		if c.Runs > 0 {
			techs[c.Technique] = true
		}
	}
	type col struct {
		tech string
		size int
	}
	var cols []col
	for _, t := range matrix.Techniques {
		if !techs[t] {
			continue
		}
		for _, size := range s.o.sizes {
			cols = append(cols, col{t, size})
		}
	}
	fmt.Fprintf(&b, "## Headline\n\nMedian client gap of a service migration with steerd, as a fraction of TCP+DNS (TTL %s, runc/CRIU move, same service logic and pacing) at the same container size, with the gap in ms in brackets; each cell is >= %d runs unless the matrix section says otherwise. XDP = steerd's datapath (DCID steering, in-flight packets forwarded to the new node); kernel NAT = the XDP datapath off (steerd --datapath nftables: nftables DNAT/SNAT, packets that still reach the old node are dropped). No-move floor %s ms.\n\n", s.o.ttls[0], s.o.minRuns, f1(floor))
	if f := strings.Fields(s.load[0]); len(f) > 0 {
		if l, err := strconv.ParseFloat(f[0], 64); err == nil && l > float64(runtime.NumCPU()) {
			fmt.Fprintf(&b, "**Warning:** the 1-minute load average was %.2f at the start, above the %d cores: other work competed with this run and every number is slower than on a quiet machine.\n\n", l, runtime.NumCPU())
		}
	}
	if len(cols) == 0 {
		b.WriteString("No steerd cell ran (see the matrix section).\n\n")
	} else {
		b.WriteString("| strategy | datapath |")
		for _, c := range cols {
			fmt.Fprintf(&b, " %s %d MB |", c.tech, c.size)
		}
		b.WriteString("\n|---|---|" + strings.Repeat("---|", len(cols)) + "\n")
		for _, xdp := range []bool{true, false} {
			for _, st := range matrix.Strategies {
				var cells []string
				any := false
				for _, c := range cols {
					cs, ok := byCell[matrix.Cell{Strategy: st, Technique: c.tech, BallastMB: c.size, XDP: xdp}]
					switch {
					case !ok || cs.Runs == 0:
						cells = append(cells, "-")
					case tcp[c.size] > 0:
						cells = append(cells, fmt.Sprintf("%s (%.0f)", f2(cs.Gap.Median/tcp[c.size]), cs.Gap.Median))
						any = true
					default:
						cells = append(cells, fmt.Sprintf("(%.0f)", cs.Gap.Median))
						any = true
					}
				}
				if !any {
					continue
				}
				dp := "XDP"
				if !xdp {
					dp = "kernel NAT"
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", strategyTitle(st), dp, strings.Join(cells, " | "))
			}
		}
		for _, kind := range []baseline.Kind{baseline.KindTCPDNS, baseline.KindMPTCP} {
			var cells []string
			refused := false
			for _, c := range cols {
				v := "-"
				for _, bc := range s.bl {
					if cs := bc.stats(); bc.kind == kind && bc.ttl == s.o.ttls[0] && bc.size == c.size && cs.n > 0 {
						v = fmt.Sprintf("%s (%.0f)", f2(cs.gap.Median/tcp[c.size]), cs.gap.Median)
						if cs.n < s.o.minRuns {
							v += fmt.Sprintf(" [%d runs]", cs.n)
						}
						if strings.Contains(cs.method, "CRIU refused") {
							refused = true
						}
					}
				}
				cells = append(cells, v)
			}
			name := "TCP+DNS (baseline, TTL " + s.o.ttls[0].String() + ")"
			if kind == baseline.KindMPTCP {
				name = "MPTCP + DNS (baseline, TTL " + s.o.ttls[0].String() + ")"
				if refused {
					name = "MPTCP + DNS (baseline, TTL " + s.o.ttls[0].String() + "; moved by stop/start: CRIU refused MPTCP sockets)"
				}
			}
			fmt.Fprintf(&b, "| %s | kernel | %s |\n", name, strings.Join(cells, " | "))
		}
		b.WriteString("\n")
	}
	for _, t := range matrix.Techniques {
		if techs[t] {
			continue
		}
		for _, c := range sums {
			if c.Technique == t && c.XDP {
				fmt.Fprintf(&b, "- %s: no column, %s\n", t, strings.TrimPrefix(c.Status, "not run: "))
				break
			}
		}
	}
	b.WriteString("\n")
	var tr []string
	for _, c := range s.bl {
		if cs := c.stats(); c.kind == baseline.KindTCPDNS && cs.n > 0 {
			tr = append(tr, fmt.Sprintf("%s %s", c.label(), f2(cs.ratio.Median)))
		}
	}
	var above []string
	for _, c := range sums {
		if c.Runs > 0 && c.Ratio.Median > 1.1 {
			above = append(above, fmt.Sprintf("%s %s", c.Cell, f2(c.Ratio.Median)))
		}
	}
	aboveText := "no steerd cell is above 1.1"
	if len(above) > 0 {
		aboveText = "steerd cells above 1.1, where the client waits longer than the freeze: " + strings.Join(above, ", ")
	}
	fmt.Fprintf(&b, "Read the two freezes apart: steerd's (the daemon's api.Migration.Downtime) includes the CRIU dump, sending the image to the other node over the mTLS peer channel and the restore there; the baselines' `runc checkpoint`/`runc restore` read the image from the same filesystem (both nodes are one machine here), with no transfer. Gap/freeze is what the path to the service adds to the freeze: steerd's connections survive the move, so its gap is about the freeze or less (below 1 where the daemon's downtime ends after the service answers again, as with post-copy, whose restored process runs while its pages are still fetched); %s. TCP+DNS adds detection, re-resolution and reconnection (gap/freeze median: %s). The baselines and the matrix run one after the other on a shared 2-core machine (load averages in the Machine section).\n\n", aboveText, strings.Join(tr, ", "))
	return b.String()
}

func strategyTitle(s string) string {
	parts := strings.Split(s, "-")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "-")
}
