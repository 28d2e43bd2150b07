package matrix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/migrate"
	"github.com/steerd/steerd/quicext"
)

// Steerd drives the real steerd migration flow through its public interfaces, the way
// `steerd demo` and the e2e tests do (daemon/demo.Cluster): bin/steerd runs on both nodes of a
// netns testbed of its own (1 client, router, 2 nodes) with the group's datapath (XDP, or
// nftables for XDP off), bin/steerctl starts the QUIC example service (examples/kvservice with
// examples/kv's Store, as a runc container, with -ballast-mb Group.BallastMB, announcing both
// nodes' addresses as its Pool) on node 0. Each run starts one QUIC load client per strategy
// (examples/loadclient/load, one connection, one INCR every 10 ms, in the client namespace,
// offering only its strategy) toward the public address of the service's node, and the control
// API (package api) migrates the service to the other node with Group.Technique. Each run moves
// the service once (n0 -> n1, then n1 -> n0, ...); one cluster serves every run of a ballast size
// and datapath and is replaced when they change.
//
// Sample: ClientGap is the load client's largest gap between successive responses
// (load.ConnReport.MaxGap); Freeze is the daemon's migration report's downtime (api.Migration.
// Downtime: start of the checkpoint to the end of the restore); StateKept: every response carried
// exactly the previous value + 1 (load.ConnReport.Wrong == 0, none out of order); Lost: requests
// never answered.
type Steerd struct {
	// Bin is the directory holding the built binaries (bin/: steerd, steerctl, kvservice).
	Bin string
	// Repo is the checkout root (unused by the runs; kept for the report).
	Repo string
	// Warmup is the load time before the migration [1.5s: tests/netns/e2e measured that a
	// Symmetric client whose connection is younger often fails its PATH_CHALLENGEs to the
	// destination]; After the load time after the migration's end [300ms]; Drain the
	// migration's drain period [300ms, drain timeout 10 s].
	Warmup, After, Drain time.Duration
	// Log receives the clusters' progress lines (nil: discarded).
	Log io.Writer

	capsOnce sync.Once
	caps     migrate.Capabilities
	capsErr  error

	cluster *demo.Cluster
	key     Group // ballast and datapath of cluster (Technique unset)
	at      int   // node index the service is on
}

// Name implements Migrator.
func (s *Steerd) Name() string { return "steerd" }

func (s *Steerd) bin(name string) string { return filepath.Join(s.Bin, name) }

// Ready implements Migrator: the binaries exist and this machine's CRIU/kernel support the
// technique (migrate.DetectCapabilities). XDP-off cells run steerd with its nftables datapath
// (daemon.DatapathNFT).
func (s *Steerd) Ready(c Cell) error {
	var missing []string
	for _, b := range []string{"steerd", "steerctl", "kvservice"} {
		if fi, err := os.Stat(s.bin(b)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, s.bin(b))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: not built: %s (make build)", ErrNotReady, strings.Join(missing, ", "))
	}
	t, err := technique(c.Technique)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	s.capsOnce.Do(func() { s.caps, s.capsErr = migrate.DetectCapabilities(context.Background(), "") })
	if s.capsErr != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, s.capsErr)
	}
	if err := s.caps.Supports(t); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return nil
}

func technique(name string) (migrate.Technique, error) {
	for _, t := range migrate.Techniques {
		if t.String() == name {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown technique %q", name)
}

// Run implements Migrator: one migration of the service with one load client connection per
// strategy (each offering only its strategy, so each negotiates it), all started together and
// warmed up for Warmup; the control API then moves the service with strategies[0] as the
// preferred strategy (a connection that negotiated another one uses its own:
// quicext.Server.PrepareWith).
func (s *Steerd) Run(ctx context.Context, env *Env, g Group, strategies []string, run int) ([]Result, error) {
	if len(strategies) == 0 {
		return nil, errors.New("no strategy to measure")
	}
	for _, st := range strategies {
		if err := s.Ready(cell(g, st)); err != nil {
			return nil, err
		}
	}
	warm, after, drain := orDefault(s.Warmup, 1500*time.Millisecond), orDefault(s.After, 300*time.Millisecond), orDefault(s.Drain, 300*time.Millisecond)
	if err := s.ensureCluster(ctx, env, g); err != nil {
		return nil, err
	}
	cl := s.cluster
	from, to := s.at, 1-s.at
	loads := make([]*demo.Load, len(strategies))
	errs := make([]error, len(strategies))
	var wg sync.WaitGroup
	for i, name := range strategies {
		st, err := quicext.ParseStrategy(name)
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			loads[i], errs[i] = cl.StartLoad(ctx, cl.Public(from), 1, st)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, l := range loads {
			if l != nil {
				l.Stop()
			}
		}
		s.closeCluster() // the next run starts afresh
		return nil, fmt.Errorf("start load on %s: %w", cl.Names[from], err)
	}
	sleep(ctx, warm)
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	m, merr := cl.API[from].Migrate(mctx, api.MigrateRequest{Service: demo.Service, To: cl.Names[to], Strategy: strategies[0],
		Technique: api.Technique(g.Technique), DrainPeriod: drain, DrainTimeout: 10 * time.Second, Wait: true})
	cancel()
	sleep(ctx, after)
	reps := make([]*load.Report, len(loads))
	lerrs := make([]error, len(loads))
	for i, l := range loads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], lerrs[i] = l.Stop()
		}()
	}
	wg.Wait()
	if merr == nil && m.Result == api.Succeeded {
		s.at = to
	} else if at, ok := s.locate(ctx); ok {
		s.at = at
	} else {
		s.closeCluster()
	}
	switch {
	case merr != nil:
		return nil, fmt.Errorf("migrate %s -> %s: %w", cl.Names[from], cl.Names[to], merr)
	case m.Result != api.Succeeded:
		return nil, fmt.Errorf("migrate %s -> %s: %s: %v", cl.Names[from], cl.Names[to], m.Result, m.Error)
	}
	out := make([]Result, len(strategies))
	for i, name := range strategies {
		out[i] = result(name, reps[i], lerrs[i], m, cl.Names[from], cl.Names[to])
	}
	return out, nil
}

// result is one strategy's Result from its load client's report.
func result(strategy string, rep *load.Report, lerr error, m *api.Migration, from, to string) Result {
	r := Result{Strategy: strategy}
	switch {
	case lerr != nil:
		r.Err = fmt.Errorf("load client: %w", lerr)
		return r
	case rep == nil || len(rep.Conns) != 1:
		r.Err = errors.New("load client: no connection report")
		return r
	}
	cr := rep.Conns[0]
	if cr.Err != "" {
		r.Err = fmt.Errorf("client connection failed across the migration: %s", cr.Err)
		return r
	}
	r.Sample = Sample{
		ClientGap: time.Duration(cr.MaxGap.MS * float64(time.Millisecond)),
		Freeze:    m.Downtime,
		StateKept: cr.Wrong == 0 && cr.OutOfOrder == 0 && cr.Received > 0,
		Lost:      int(cr.Lost),
		Notes: fmt.Sprintf("%s %s->%s image %.1fMiB; answered %d lost %d wrong %d; switches %d; negotiated %s",
			m.ID, from, to, float64(m.Bytes)/(1<<20), cr.Received, cr.Lost, cr.Wrong, len(cr.Switches), cr.Negotiated),
	}
	return r
}

// ensureCluster starts a cluster whose service has the group's ballast and datapath, unless the
// current one has them already.
func (s *Steerd) ensureCluster(ctx context.Context, env *Env, g Group) error {
	key := Group{BallastMB: g.BallastMB, XDP: g.XDP}
	if s.cluster != nil && s.key == key {
		return nil
	}
	s.closeCluster()
	work := filepath.Join(env.Work, fmt.Sprintf("steerd-%dmb-%d", g.BallastMB, time.Now().UnixNano()))
	cl, err := demo.StartCluster(ctx, demo.ClusterOptions{
		Steerd: s.bin("steerd"), Steerctl: s.bin("steerctl"), KVService: s.bin("kvservice"),
		KVArgs: []string{"-ballast-mb", fmt.Sprint(g.BallastMB)}, Pool: true, WorkDir: work, Log: s.Log,
		Datapath: datapathOf(g),
	})
	if err != nil {
		return fmt.Errorf("start steerd cluster: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = cl.Steerctl(rctx, 0, "run", demo.Service)
	cancel()
	if err != nil {
		cl.Close()
		os.RemoveAll(work)
		return fmt.Errorf("steerctl run %s on n0: %w", demo.Service, err)
	}
	s.cluster, s.key, s.at = cl, key, 0
	return nil
}

// datapathOf is the steerd datapath of a group: XDP on is steerd's XDP datapath (DCID steering,
// in-flight packets forwarded to the new node); XDP off is the kernel's NAT (steerd --datapath
// nftables: DNAT/SNAT by conntrack, packets that still reach the old node dropped).
func datapathOf(g Group) string {
	if g.XDP {
		return daemon.DatapathXDP
	}
	return daemon.DatapathNFT
}

// locate asks both nodes where the service runs (after a failed migration).
func (s *Steerd) locate(ctx context.Context) (int, bool) {
	for i := range s.cluster.Names {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := s.cluster.API[i].Status(sctx)
		cancel()
		if err != nil {
			continue
		}
		for _, sv := range st.Services {
			if sv.Name == demo.Service && sv.State == "running" {
				return i, true
			}
		}
	}
	return 0, false
}

func (s *Steerd) closeCluster() {
	if s.cluster == nil {
		return
	}
	_ = s.cluster.Close()
	os.RemoveAll(s.cluster.WorkDir)
	s.cluster = nil
}

// Close stops the cluster of the last runs (steerd processes, containers, namespaces).
func (s *Steerd) Close() error {
	s.closeCluster()
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
