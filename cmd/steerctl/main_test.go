package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/pki"
)

func steerctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Examples:", "steerctl init", "migrate", "--socket", "2 usage errors"}},
		{[]string{"init", "--help"}, []string{"Examples:", "--nodes n0,n1", "ca.key", "0600"}},
		{[]string{"run", "--help"}, []string{"Examples:", "steerctl --node n0 run kv", "pod network namespace"}},
		{[]string{"migrate", "--help"}, []string{"Examples:", "--strategy", "explicit-reactive", "post-copy", "rolls back", "node, the phase and the cause", "nftables", "dropped", "QUIC loss recovery", "2 usage errors"}},
		{[]string{"status", "--help"}, []string{"Examples:", "-o json"}},
		{[]string{"routes", "--help"}, []string{"Examples:", "QUIC-LB server ID"}},
		{[]string{"events", "--help"}, []string{"Examples:", "timeline"}},
	} {
		code, out, _ := steerctl(t, tc.args...)
		if code != 0 {
			t.Errorf("%v: exit %d", tc.args, code)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: help lacks %q", tc.args, w)
			}
		}
	}
}

func TestBadUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"migrate", "kv", "--to", "n1", "--strategy", "warp"}, []string{"--strategy", "warp", "symmetric, sync-symmetric"}},
		{[]string{"migrate", "kv", "--to", "n1", "--technique", "teleport"}, []string{"--technique", "cold, pre-copy, post-copy, hybrid"}},
		{[]string{"migrate", "kv"}, []string{"--to NODE is required"}},
		{[]string{"migrate"}, []string{"steerctl: migrate: want SERVICE", "'steerctl migrate --help'"}},
		{[]string{"status", "--bogus"}, []string{"unknown flag: --bogus", "steerctl status --help"}},
		{[]string{"status", "-o", "yaml"}, []string{"want text or json"}},
		{[]string{"status"}, []string{"no control socket", "--socket"}},
		{[]string{"init", "--dir", "x"}, []string{"--nodes are required"}},
		{[]string{"init", "--dir", "x", "--nodes", "Bad_Name"}, []string{"invalid node name"}},
	} {
		t.Setenv("STEERD_SOCKET", "")
		code, _, errOut := steerctl(t, tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, errOut)
		}
		if strings.Contains(errOut, "steerctl: steerctl ") {
			t.Errorf("%v: stderr repeats the prefix: %q", tc.args, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: stderr %q lacks %q", tc.args, errOut, w)
			}
		}
	}
	code, _, errOut := steerctl(t, "--socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	if code != 1 || !strings.Contains(errOut, "control socket unreachable") || !strings.Contains(errOut, "is steerd running on this node?") {
		t.Fatalf("unreachable: exit %d, %q", code, errOut)
	}
	for _, args := range [][]string{{"bogus"}, {"init", "--dir", t.TempDir(), "--nodes", ","}} {
		if code, _, errOut := steerctl(t, args...); code != 2 {
			t.Errorf("%v: exit %d (%q), want 2", args, code, errOut)
		}
	}
}

func TestInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	code, out, errOut := steerctl(t, "init", "--dir", dir, "--nodes", "n0,n1")
	if code != 0 || !strings.Contains(out, "created cluster CA") || !strings.Contains(out, "issued "+dir+"/n1.crt") {
		t.Fatalf("init: %d %q %q", code, out, errOut)
	}
	code, out, _ = steerctl(t, "init", "--dir", dir, "--nodes", "n1,n2", "-o", "json")
	var res struct {
		CACreated    bool
		Issued, Kept []string
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.CACreated || len(res.Issued) != 1 || res.Issued[0] != "n2" || res.Kept[0] != "n1" {
		t.Fatalf("second init: %d %s", code, out)
	}
	roots, err := pki.LoadRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	n2, err := pki.LoadNode(dir, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Verify(roots, [][]byte{n2.Cert.Raw}, n2.Cert.NotBefore.Add(3600e9)); err != nil {
		t.Fatalf("n2 not issued by the existing CA: %v", err)
	}
}

// TestAgainstDaemon runs the commands against a daemon without datapath or engine.
func TestAgainstDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	cfg := &daemon.Config{Node: "a", NoDatapath: true, IPv4: netip.MustParseAddr("198.18.20.2"), PKIDir: t.TempDir(),
		StateDir: t.TempDir(), PodNSPrefix: "stdr-ctltest-",
		Services: []daemon.ServiceDef{{Name: "kv", Port: 4433, Instance: 7, PodIPv4: netip.MustParseAddr("198.19.0.1")}},
		Peers:    []daemon.PeerDef{{Name: "b", Address: netip.MustParseAddr("198.18.21.2")}}}
	d, err := daemon.New(cfg, daemon.Deps{Engine: daemon.NoEngine{}, Control: daemon.QuicextControl{},
		Dial:   func(string) (daemon.Peer, error) { return nil, os.ErrNotExist },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cs, err := d.ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	code, out, errOut := steerctl(t, "--socket", sock, "status")
	if code != 0 || !strings.Contains(out, "node a") || !strings.Contains(out, "kv") || !strings.Contains(out, "stopped") {
		t.Fatalf("status: %d %q %q", code, out, errOut)
	}
	code, out, _ = steerctl(t, "--socket", sock, "status", "-o", "json")
	var st struct{ Node string }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Node != "a" {
		t.Fatalf("status json: %d %q", code, out)
	}
	code, out, _ = steerctl(t, "--socket", sock, "routes")
	if code != 0 || strings.TrimSpace(out) != "(no routes)" {
		t.Fatalf("routes: %d %q", code, out)
	}
	code, _, errOut = steerctl(t, "--socket", sock, "migrate", "kv", "--to", "b")
	if code != 1 || !strings.Contains(errOut, "node a: phase validate:") || !strings.Contains(errOut, "not running") {
		t.Fatalf("migrate a stopped service: %d %q", code, errOut)
	}
	code, _, errOut = steerctl(t, "--socket", sock, "migrate", "kv", "--to", "zz")
	if code != 1 || !strings.Contains(errOut, "unknown peer") {
		t.Fatalf("migrate to unknown peer: %d %q", code, errOut)
	}
	code, _, errOut = steerctl(t, "--socket", sock, "events", "nope")
	if code != 1 || !strings.Contains(errOut, "unknown migration") {
		t.Fatalf("events of unknown migration: %d %q", code, errOut)
	}
	if os.Geteuid() != 0 {
		return // run needs a pod namespace
	}
}

// TestFollower: 30 image files print as progress lines plus one summary (not 60 lines), engine
// rows come in time order, a destination event repeated in a later poll prints once, and a
// multi-line detail stays on one line.
func TestFollower(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	dest := api.Event{Node: "n1", Phase: api.PhaseDest, Kind: api.Start, Time: at(1), Detail: "from n0"}
	poll1 := []api.Event{{Node: "n0", Phase: api.PhaseDest, Kind: api.Start, Time: at(0)}, dest,
		{Node: "n0", Phase: api.PhaseCheckpt, Kind: api.Start, Time: at(10)}}
	var poll2 []api.Event
	for i := range 30 {
		name := fmt.Sprintf("pages-%d.img", i)
		poll2 = append(poll2,
			api.Event{Node: "n0", Phase: api.PhaseTransfer, Kind: api.Start, Time: at(100 + 10*i), Detail: name, Total: 300 << 10},
			api.Event{Node: "n0", Phase: api.PhaseTransfer, Kind: api.End, Time: at(105 + 10*i), Detail: name, Bytes: 300 << 10, Total: 300 << 10})
	}
	poll2 = append(poll2,
		api.Event{Node: "n0", Phase: api.PhaseCheckpt, Kind: api.End, Time: at(500), Duration: 490 * time.Millisecond},
		api.Event{Node: "n0", Phase: "dump", Kind: api.End, Time: at(90), Detail: "engine"}, // reported after the fact
		api.Event{Node: "n0", Phase: "pause", Kind: api.End, Time: at(20), Detail: "engine"},
		dest, // the destination's timeline again
		api.Event{Node: "n1", Phase: api.PhaseRestore, Kind: api.Fail, Time: at(600), Detail: "restore kv:\n\tcriu failed\n"})
	var b strings.Builder
	f := &follower{w: &b}
	f.add(poll1)
	f.add(poll2)
	f.flush()
	out := b.String()
	t.Logf("follow output:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if strings.Count(out, "prepare-dest  start from n0") != 1 {
		t.Errorf("destination row not printed once:\n%s", out)
	}
	if strings.Count(out, "pages-") != 0 || len(lines) > 12 {
		t.Errorf("per-file rows or too many lines (%d):\n%s", len(lines), out)
	}
	if !strings.Contains(out, "done  30 files, 8.8MiB in") {
		t.Errorf("no transfer summary:\n%s", out)
	}
	if !strings.Contains(out, "FAILED restore kv: | criu failed") {
		t.Errorf("multi-line detail:\n%s", out)
	}
	var last string
	for _, l := range lines {
		ts := strings.Fields(l)[0]
		if ts < last {
			t.Errorf("rows out of time order at %q:\n%s", l, out)
		}
		last = ts
	}
}
