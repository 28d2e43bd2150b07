package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/daemon"
	"github.com/steerd/steerd/pki"
)

// syncBuf is a bytes.Buffer safe for the daemon's logger and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func steerd(ctx context.Context, args ...string) (int, string, string) {
	var o, e syncBuf
	code := run(ctx, args, &o, &e)
	return code, o.String(), e.String()
}

func TestHelp(t *testing.T) {
	code, out, _ := steerd(context.Background(), "--help")
	for _, w := range []string{"Examples:", "steerd --config /etc/steerd/n0.json", "--service", "--peer", "demo", "nsenter --net=/var/run/netns/", "--max-udp-payload"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("steerd --help (exit %d) lacks %q", code, w)
		}
	}
	if strings.Contains(out, "ip netns exec stdr") {
		t.Errorf("steerd --help recommends ip netns exec (hides /sys/fs/cgroup from runc)")
	}
	code, out, _ = steerd(context.Background(), "demo", "--help")
	for _, w := range []string{"Examples:", "make demo", "Explicit-reactive", "--technique"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("steerd demo --help (exit %d) lacks %q", code, w)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{}, "give --config FILE"},
		{[]string{"--config", "/nonexistent/x.json"}, "load config"},
		{[]string{"--node", "n0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x", "--service", "name=kv,port=x"}, `port: strconv.ParseUint`},
		{[]string{"--node", "n0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x", "--service", "name=kv,colour=red"}, `unknown key "colour"`},
		{[]string{"--node", "n0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x", "--peer", "name=n1"}, "peer n1: address is required"},
		{[]string{"--node", "N0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x"}, "invalid node name"},
		{[]string{"--node", "n0", "--uplink", "eth0", "--pki-dir", "/x"}, "no public address"},
		{[]string{"--node", "n0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x", "--log-format", "xml"}, "--log-format"},
		{[]string{"demo", "--technique", "warp"}, "--technique"},
		{[]string{"--node", "n0", "--no-datapath", "--ipv4", "1.2.3.4", "--pki-dir", "/x", "--max-udp-payload", "900"}, "max_udp_payload 900: want 1200..65527"},
	} {
		code, _, errOut := steerd(context.Background(), tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
}

func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// TestServe runs steerd (no datapath, no container engine) with a config file and flags on
// loopback, reaches it through the control socket, and stops it.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("t", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	nc, _ := ca.Issue("n0", 0)
	if err := nc.Save(dir); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "n0.sock")
	cfg := &daemon.Config{Node: "n0", NoDatapath: true, Runtime: "none", IPv4: netip.MustParseAddr("198.18.20.2"),
		PeerListen: freeUDP(t), PKIDir: dir, StateDir: filepath.Join(dir, "state"), ControlSocket: sock,
		Peers: []daemon.PeerDef{{Name: "n1", Address: netip.MustParseAddr("127.0.0.1")}}}
	path := filepath.Join(dir, "n0.json")
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	var errOut string
	go func() {
		var code int
		code, _, errOut = steerd(ctx, "--config", path, "--log-format", "json",
			"--service", "name=kv,port=4433,instance=7,pod4=198.19.0.1,pod6=2001:2:0:ff::1")
		done <- code
	}()
	c := api.NewClient(sock)
	defer c.Close()
	var st *api.Status
	for i := 0; i < 100; i++ {
		if st, err = c.Status(context.Background()); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		cancel()
		<-done
		t.Fatalf("status: %v (stderr %s)", err, errOut)
	}
	if st.Node != "n0" || len(st.Services) != 1 || st.Services[0].Name != "kv" || st.Datapath != "off" || len(st.Peers) != 1 {
		t.Fatalf("status %+v", st)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("steerd did not stop")
	}
	if !strings.Contains(errOut, `"msg":"steerd ready"`) {
		t.Fatalf("no JSON ready log: %s", errOut)
	}
}
