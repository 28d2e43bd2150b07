package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pod"
)

// calls records the order of calls across every fake of every node ("node:what").
type calls struct {
	mu  sync.Mutex
	log []string
}

func (c *calls) add(node, f string, a ...any) {
	c.mu.Lock()
	c.log = append(c.log, node+":"+fmt.Sprintf(f, a...))
	c.mu.Unlock()
}

func (c *calls) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.log...)
}

// fail holds injected failures by call name ("checkpoint", "restore", "send", ...).
type fail struct {
	mu sync.Mutex
	m  map[string]error
}

func (f *fail) set(name string, err error) {
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]error{}
	}
	f.m[name] = err
	f.mu.Unlock()
}

func (f *fail) get(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[name]
}

type fakeDP struct {
	node  string
	c     *calls
	f     *fail
	mu    sync.Mutex
	local map[uint64]LocalTarget
	rem   map[uint64]string
	stats map[uint64]InstanceStats
	// fenced host veth ifindexes (SetFenced); DetachPod removes the fence as datapath.DetachPod.
	fenced map[int]bool
}

func newFakeDP(node string, c *calls, f *fail) *fakeDP {
	return &fakeDP{node: node, c: c, f: f, local: map[uint64]LocalTarget{}, rem: map[uint64]string{}, stats: map[uint64]InstanceStats{},
		fenced: map[int]bool{}}
}

func (d *fakeDP) AttachPod(hostIfindex int, podNetNSPath string, podIfindex int) error { return nil }

func (d *fakeDP) DetachPod(hostIfindex int) error {
	d.mu.Lock()
	delete(d.fenced, hostIfindex)
	d.mu.Unlock()
	return nil
}

func (d *fakeDP) SetFenced(i int, on bool) error {
	if on {
		d.c.add(d.node, "dp.fence(%d)", i)
	} else {
		d.c.add(d.node, "dp.unfence(%d)", i)
	}
	if err := d.f.get("dp.fence." + d.node); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if on {
		d.fenced[i] = true
	} else {
		delete(d.fenced, i)
	}
	return nil
}

func (d *fakeDP) FencedPods() ([]int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []int
	for i := range d.fenced {
		out = append(out, i)
	}
	sort.Ints(out)
	return out, nil
}

func (d *fakeDP) isFenced(i int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fenced[i]
}

func (d *fakeDP) SetLocal(i uint64, t LocalTarget) error {
	d.c.add(d.node, "dp.local(%d)", i)
	if err := d.f.get("dp.local." + d.node); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.rem, i)
	d.local[i] = t
	return nil
}

func (d *fakeDP) SetRemote(i uint64, peer string) error {
	d.c.add(d.node, "dp.remote(%d,%s)", i, peer)
	if err := d.f.get("dp.remote"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.local, i)
	d.rem[i] = peer
	return nil
}

func (d *fakeDP) Delete(i uint64) error {
	d.c.add(d.node, "dp.delete(%d)", i)
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.local, i)
	delete(d.rem, i)
	return nil
}

func (d *fakeDP) InstanceStats(i uint64) (InstanceStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats[i], nil
}

// packet counts one packet for instance i, now.
func (d *fakeDP) packet(i uint64) {
	d.mu.Lock()
	s := d.stats[i]
	s.Packets++
	s.LastSeen = time.Now()
	d.stats[i] = s
	d.mu.Unlock()
}

func (d *fakeDP) entry(i uint64) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.local[i]; ok {
		return "local"
	}
	if p, ok := d.rem[i]; ok {
		return "remote:" + p
	}
	return "none"
}

func (d *fakeDP) Counters() (map[string]uint64, error) {
	return map[string]uint64{"steer_local": 3, "steer_remote": 4}, nil
}
func (d *fakeDP) Close() error { return nil }

type fakeEngine struct {
	node string
	c    *calls
	f    *fail
	mu   sync.Mutex
	// state of each container: "running", "frozen", "dumped", "removed"
	state map[string]string
	// restoredFiles are the files the last Restore found in its image directory (name -> content).
	restoredFiles map[string]string
	// freezeAtOnce is what the last Checkpoint's FreezeAtOnce said after BeforeFreeze.
	freezeAtOnce bool
}

func newFakeEngine(node string, c *calls, f *fail) *fakeEngine {
	return &fakeEngine{node: node, c: c, f: f, state: map[string]string{}}
}

func (e *fakeEngine) set(svc, st string) { e.mu.Lock(); e.state[svc] = st; e.mu.Unlock() }
func (e *fakeEngine) get(svc string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state[svc]
}

// Supports implements TechniqueChecker: the failure set as "supports.<technique>".
func (e *fakeEngine) Supports(ctx context.Context, t api.Technique) error {
	e.c.add(e.node, "engine.supports(%s)", t)
	return e.f.get("supports." + string(t))
}

func (e *fakeEngine) Run(ctx context.Context, s ContainerSpec) error {
	e.c.add(e.node, "engine.run(%s)", s.Name)
	if err := e.f.get("run"); err != nil {
		return err
	}
	e.set(s.Name, "running")
	return nil
}

func (e *fakeEngine) Checkpoint(ctx context.Context, r CheckpointRequest) (EngineReport, error) {
	e.c.add(e.node, "engine.checkpoint(%s,%s)", r.Service, r.Technique)
	var rep EngineReport
	if r.Technique == api.PreCopy {
		e.c.add(e.node, "engine.pre-dump")
		if err := r.Transport.SendFile(ctx, "1/pages-1.img", strings.NewReader("predump"), 7); err != nil {
			return rep, err
		}
	}
	if err := r.BeforeFreeze(ctx); err != nil {
		return rep, err
	}
	e.freezeAtOnce = r.FreezeAtOnce != nil && r.FreezeAtOnce()
	e.c.add(e.node, "engine.freeze")
	e.set(r.Service, "frozen")
	if err := e.f.get("checkpoint"); err != nil {
		return rep, err
	}
	e.set(r.Service, "dumped")
	now := time.Now()
	rep.Phases = append(rep.Phases, PhaseTime{Name: "dump", Start: now.Add(-time.Millisecond), End: now})
	content := "image of " + r.Service
	if err := os.WriteFile(filepath.Join(r.ImageDir, "core.img"), []byte(content), 0o600); err != nil {
		return rep, err
	}
	f, err := os.Open(filepath.Join(r.ImageDir, "core.img"))
	if err != nil {
		return rep, err
	}
	defer f.Close()
	if err := r.Transport.SendFile(ctx, "final/core.img", f, int64(len(content))); err != nil {
		return rep, err
	}
	rep.Bytes = int64(len(content))
	return rep, nil
}

func (e *fakeEngine) Resume(ctx context.Context, svc string) error {
	e.c.add(e.node, "engine.resume(%s)", svc)
	e.set(svc, "running")
	return nil
}

func (e *fakeEngine) Complete(ctx context.Context, svc string) error {
	e.c.add(e.node, "engine.complete(%s)", svc)
	e.set(svc, "removed")
	return nil
}

func (e *fakeEngine) Restore(ctx context.Context, r RestoreRequest) (EngineReport, error) {
	e.c.add(e.node, "engine.restore(%s)", r.Service)
	files := map[string]string{}
	filepath.WalkDir(r.ImageDir, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(r.ImageDir, p)
			files[filepath.ToSlash(rel)] = string(b)
		}
		return nil
	})
	e.mu.Lock()
	e.restoredFiles = files
	e.mu.Unlock()
	if err := e.f.get("restore"); err != nil {
		e.set(r.Service, "half-restored")
		return EngineReport{}, err
	}
	e.set(r.Service, "running")
	return EngineReport{}, nil
}

func (e *fakeEngine) Remove(ctx context.Context, svc string) error {
	e.c.add(e.node, "engine.remove(%s)", svc)
	e.set(svc, "removed")
	return nil
}

type fakeCtl struct {
	node string
	c    *calls
	f    *fail
	// hang makes Prepare never answer (it waits for its timeout).
	hang bool
	// holding is the Readiness.Holding Prepare reports.
	holding int
}

func (s *fakeCtl) Prepare(ctx context.Context, podNS string, t Target, strategy string, timeout time.Duration) (Readiness, error) {
	s.c.add(s.node, "ctl.prepare(%s,%s,%s)", podNS, strategy, t.IPv4)
	if s.hang {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		<-ctx.Done()
		return Readiness{}, fmt.Errorf("wait for readiness after %v: %w", timeout, ErrPrepareTimeout)
	}
	return Readiness{Ready: 3, Unsupported: 1, Holding: s.holding}, nil
}

func (s *fakeCtl) Restored(ctx context.Context, podNS string, t Target) error {
	s.c.add(s.node, "ctl.restored(%s,%s)", podNS, t.IPv4)
	return s.f.get("restored")
}

func (s *fakeCtl) Abort(ctx context.Context, podNS string) error {
	s.c.add(s.node, "ctl.abort(%s)", podNS)
	return nil
}

type fakePods struct {
	node string
	c    *calls
	mu   sync.Mutex
	live map[string]bool
	next int
}

func (p *fakePods) Create(s pod.Spec) (*pod.Pod, error) {
	p.c.add(p.node, "pods.create(%s)", s.NetNS)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live[s.NetNS] {
		return nil, fmt.Errorf("create pod %s: %w", s.NetNS, os.ErrExist)
	}
	p.live[s.NetNS] = true
	p.next++
	return &pod.Pod{Spec: s, HostVeth: pod.HostVethName(s.NetNS), HostIndex: 100 + p.next}, nil
}

func (p *fakePods) Delete(x *pod.Pod) error {
	p.c.add(p.node, "pods.delete(%s)", x.NetNS)
	p.mu.Lock()
	delete(p.live, x.NetNS)
	p.mu.Unlock()
	return nil
}

func (p *fakePods) has(ns string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live[ns]
}

// loopPeer is a Peer that calls another in-process daemon directly (JSON round trip included),
// authenticated as node from.
type loopPeer struct {
	from string
	to   *Daemon
	f    *fail
}

func (l *loopPeer) Call(ctx context.Context, op string, req any) (*PeerReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if e := l.f.get("peer." + op); e != nil {
		return nil, e
	}
	r := l.to.servePeer(ctx, l.from, op, body)
	if e := l.f.get("peer." + op + ".after"); e != nil {
		return nil, e // the peer ran the operation, the reply was lost
	}
	if r.Error != nil {
		return r, r.Error
	}
	return r, nil
}

func (l *loopPeer) SendImage(ctx context.Context, mig, name string, r io.Reader, size int64, progress func(int64)) error {
	if e := l.f.get("send"); e != nil {
		return e
	}
	h := sha256.New()
	_, err := l.to.receiveImage(mig, name, io.TeeReader(r, h), size, func(got [32]byte) error {
		if [32]byte(h.Sum(nil)) != got {
			return ErrChecksum
		}
		return nil
	})
	if err == nil && progress != nil {
		progress(size)
	}
	return err
}

// node is one daemon with its fakes.
type node struct {
	d    *Daemon
	dp   *fakeDP
	eng  *fakeEngine
	ctl  *fakeCtl
	pods *fakePods
}

const testSvc = "kv"

func testConfig(t *testing.T, name string, subnet int, peer string, peerSubnet int) *Config {
	return &Config{
		Node: name, Uplink: "eth0",
		IPv4:          netip.AddrFrom4([4]byte{198, 18, byte(subnet), 2}),
		IPv6:          netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::2", subnet)),
		PKIDir:        t.TempDir(),
		StateDir:      t.TempDir(),
		ControlSocket: filepath.Join(t.TempDir(), "control.sock"),
		PodNSPrefix:   "stdr-test-" + name + "-",
		Services: []ServiceDef{{Name: testSvc, Port: 4433, Instance: 7,
			PodIPv4: netip.MustParseAddr("198.19.0.1"), PodIPv6: netip.MustParseAddr("2001:2:0:ff::1")}},
		Peers: []PeerDef{{Name: peer, Address: netip.AddrFrom4([4]byte{198, 18, byte(peerSubnet), 2}),
			IPv6: netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::2", peerSubnet))}},
	}
}

// pair builds daemons a and b wired to each other through loopPeer, sharing one call log and
// one failure table, with the service running on a.
func pair(t *testing.T) (a, b *node, c *calls, f *fail) {
	t.Helper()
	c, f = &calls{}, &fail{}
	mk := func(name string, subnet int, peer string, peerSubnet int) *node {
		n := &node{dp: newFakeDP(name, c, f), eng: newFakeEngine(name, c, f), ctl: &fakeCtl{node: name, c: c, f: f},
			pods: &fakePods{node: name, c: c, live: map[string]bool{}}}
		return n
	}
	a, b = mk("a", 20, "b", 21), mk("b", 21, "a", 20)
	var err error
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a.d, err = New(testConfig(t, "a", 20, "b", 21), Deps{Datapath: a.dp, Engine: a.eng, Control: a.ctl, Pods: a.pods, Logger: log,
		Dial: func(name string) (Peer, error) { return &loopPeer{from: "a", to: b.d, f: f}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	b.d, err = New(testConfig(t, "b", 21, "a", 20), Deps{Datapath: b.dp, Engine: b.eng, Control: b.ctl, Pods: b.pods, Logger: log,
		Dial: func(name string) (Peer, error) { return &loopPeer{from: "b", to: a.d, f: f}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.d.Close(); b.d.Close() })
	if _, err := a.d.Run(context.Background(), api.RunRequest{Service: testSvc}); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.log = nil
	c.mu.Unlock()
	return a, b, c, f
}
