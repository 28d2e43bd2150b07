package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/quicext"
)

var binPath string

// TestMain builds the static kvservice binary once (CGO_ENABLED=0, as for the container).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvservice-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "kvservice")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	cmd := exec.Command(gobin, "build", "-o", binPath, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build kvservice: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no listen", nil, "-listen is required"},
		{"ipv4 wildcard", []string{"-listen", "0.0.0.0:4433"}, "stale IP_PKTINFO source"},
		{"ipv6 wildcard", []string{"-listen", "127.0.0.2:1,[::]:4433"}, "wildcard listen address"},
		{"empty host", []string{"-listen", ":4433"}, "bind the pod address"},
		{"host name", []string{"-listen", "localhost:4433"}, "want an IP literal"},
		{"cert without key", []string{"-listen", "127.0.0.2:1", "-cert", "c.pem"}, "-cert and -key go together"},
		{"log format", []string{"-listen", "127.0.0.2:1", "-log-format", "xml"}, "want text or json"},
		{"extra args", []string{"-listen", "127.0.0.2:1", "serve"}, "unexpected arguments"},
		{"payload below QUIC's minimum", []string{"-listen", "127.0.0.2:1", "-max-udp-payload", "1199"}, "want 0 or 1200..1452"},
		{"payload above quic-go's maximum", []string{"-listen", "127.0.0.2:1", "-max-udp-payload", "1500"}, "want 0 or 1200..1452"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, errb.String())
			}
			if !strings.Contains(errb.String(), tt.want) {
				t.Errorf("stderr %q does not contain %q", errb.String(), tt.want)
			}
		})
	}
	// Runtime errors exit 1: a CID layout connid refuses, an unknown strategy.
	for _, args := range [][]string{
		{"-listen", "127.0.0.2:0", "-cid-len", "21", "-control", "none"},
		{"-listen", "127.0.0.2:0", "-instance", "70000", "-control", "none"},
		{"-listen", "127.0.0.2:0", "-strategies", "teleport", "-control", "none"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 1 {
			t.Errorf("%v: exit %d, want 1 (stderr %q)", args, code, errb.String())
		}
	}
}

// proc is a running kvservice binary.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	addrs   []string
	fp      string
	exited  chan error
}

// startBinary runs prefix + kvservice + args with a JSON log file and waits for its
// "kvservice listening" line.
func startBinary(t *testing.T, prefix []string, args ...string) *proc {
	t.Helper()
	p := &proc{logPath: filepath.Join(t.TempDir(), "kvservice.log"), exited: make(chan error, 1)}
	argv := append(append(append([]string{}, prefix...), binPath), args...)
	argv = append(argv, "-log-format", "json", "-log-file", p.logPath)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	var stdout bytes.Buffer
	p.cmd.Stdout = &stdout
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start kvservice: %v", err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		var line struct {
			Msg   string   `json:"msg"`
			Addrs []string `json:"addrs"`
			FP    string   `json:"cert_sha256"`
		}
		for _, l := range readLog(t, p.logPath) {
			if json.Unmarshal(l, &line) == nil && line.Msg == "kvservice listening" {
				p.addrs, p.fp = line.Addrs, line.FP
			}
		}
		if p.fp != "" {
			break
		}
		select {
		case err := <-p.exited:
			t.Fatalf("kvservice exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("kvservice did not log its listen addresses")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

func readLog(t *testing.T, path string) [][]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, append([]byte(nil), sc.Bytes()...))
	}
	return out
}

// stop sends SIGTERM and checks the exit status and the last log line.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("kvservice exit after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("kvservice did not exit after SIGTERM")
	}
	lines := readLog(t, p.logPath)
	if len(lines) == 0 || !bytes.Contains(lines[len(lines)-1], []byte(`"msg":"kvservice stopped"`)) {
		t.Errorf("last log line %q, want kvservice stopped", lines[len(lines)-1])
	}
}

// waitLog waits up to 5 s for a log line that match accepts.
func waitLog(t *testing.T, p *proc, match func([]byte) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range readLog(t, p.logPath) {
			if match(l) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("log line not found")
}

func runLoad(t *testing.T, addr, fp string, conns int, d time.Duration) *load.Report {
	t.Helper()
	ctls, err := load.PinnedTLS(fp, service.DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := load.Run(context.Background(), load.Options{Addr: addr, Conns: conns, Duration: d, TLS: ctls})
	if err != nil {
		t.Fatalf("load on %s: %v", addr, err)
	}
	return rep
}

func checkClean(t *testing.T, rep *load.Report, minSent uint64) {
	t.Helper()
	if !rep.OK() || rep.Sent < minSent || rep.Received != rep.Sent {
		t.Errorf("report on %s: sent %d received %d lost %d ooo %d wrong %d failed %d", rep.Addr, rep.Sent, rep.Received, rep.Lost, rep.OutOfOrder, rep.Wrong, rep.Failed)
	}
	for _, c := range rep.Conns {
		if c.FirstValue != 1 || c.LastValue != c.Received {
			t.Errorf("conn %d: values %d..%d for %d responses", c.Conn, c.FirstValue, c.LastValue, c.Received)
		}
	}
}

// TestBinaryDualStack runs the built binary on 127.0.0.2 and [::1], drives both with the load
// client while asking the control endpoint (a test-only abstract socket) for status, prepares a
// migration over both listeners (the readiness report must list the connections of both) and
// aborts it, then stops the service with SIGTERM.
func TestBinaryDualStack(t *testing.T) {
	ctrl := fmt.Sprintf("@stdr-kvservice-test-%d", os.Getpid())
	p := startBinary(t, nil, "-listen", "127.0.0.2:0", "-listen", "[::1]:0", "-control", ctrl, "-ballast-mb", "4", "-instance", "513")
	if len(p.addrs) != 2 {
		t.Fatalf("listening on %v, want 2 addresses", p.addrs)
	}
	cc := quicext.NewControlClient(ctrl)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	results := make(chan *load.Report, 2)
	for _, a := range p.addrs {
		go func() { results <- runLoad(t, a, p.fp, 2, 1200*time.Millisecond) }()
	}
	// While the load runs: status and a prepared-then-aborted migration over both families.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := cc.Status(ctx)
		if err != nil {
			t.Fatalf("control status: %v", err)
		}
		if st.Negotiated == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v: want 4 negotiated connections", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	target := quicext.Target{}
	r, err := cc.Prepare(ctx, target, "symmetric", time.Second, false)
	if err != nil {
		t.Fatalf("control prepare: %v", err)
	}
	if len(r.Ready) != 4 || !r.AllReady() || r.Strategy != quicext.StrategySymmetric {
		t.Errorf("readiness %+v: want 4 ready connections, symmetric", r)
	}
	if _, err := cc.Prepare(ctx, target, "symmetric", time.Second, false); err == nil {
		t.Error("second prepare succeeded")
	}
	if err := cc.Abort(ctx); err != nil {
		t.Fatalf("control abort: %v", err)
	}
	if err := cc.Abort(ctx); err == nil {
		t.Error("abort without a prepared migration succeeded")
	}
	var sent uint64
	for range p.addrs {
		rep := <-results
		checkClean(t, rep, 150)
		sent += rep.Sent
	}
	// SIGUSR1 logs the statistics and checks the ballast.
	p.cmd.Process.Signal(syscall.SIGUSR1)
	var stats struct {
		Msg       string `json:"msg"`
		Requests  uint64 `json:"requests"`
		Keys      int    `json:"keys"`
		BallastOK bool   `json:"ballast_ok"`
	}
	waitLog(t, p, func(l []byte) bool { return json.Unmarshal(l, &stats) == nil && stats.Msg == "kvservice stats" })
	if !stats.BallastOK || stats.Keys != 4 || stats.Requests != sent {
		t.Errorf("stats %+v: want ballast ok, 4 keys, %d requests (what the clients sent)", stats, sent)
	}
	p.stop(t)
}

// sizeConn records the largest datagram read.
type sizeConn struct {
	net.PacketConn
	max atomic.Int64
}

func (c *sizeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := c.PacketConn.ReadFrom(b)
	if int64(n) > c.max.Load() {
		c.max.Store(int64(n))
	}
	return n, a, err
}

// largestServerPacket connects to addr, sends PINGs for d and returns the largest UDP payload the
// server sent.
func largestServerPacket(t *testing.T, addr string, d time.Duration) int64 {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sc := &sizeConn{PacketConn: pc}
	tr := &quic.Transport{Conn: sc}
	defer tr.Close()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, ua, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{kv.ALPN}}, &quic.Config{})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.CloseWithError(0, "")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(st)
	for i, end := 0, time.Now().Add(d); time.Now().Before(end); i++ {
		if _, err := fmt.Fprintf(st, "PING %d\n", i); err != nil {
			t.Fatal(err)
		}
		if l, err := r.ReadString('\n'); err != nil || l != fmt.Sprintf("PONG %d\n", i) {
			t.Fatalf("PING %d: %q %v", i, l, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return sc.max.Load()
}

// TestMaxUDPPayload: with -max-udp-payload 1250 no packet from the service exceeds 1250 bytes of
// UDP payload (its Initial datagrams are padded to at least 1200, RFC 9000 section 14.1), while
// without it quic-go's path MTU discovery on loopback sends probes above 1250.
func TestMaxUDPPayload(t *testing.T) {
	// sizeConn is no *net.UDPConn: quic-go cannot size its receive buffer (irrelevant here).
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	measure := func(args ...string) int64 {
		p := startBinary(t, nil, append([]string{"-listen", "127.0.0.2:0", "-control", "none"}, args...)...)
		n := largestServerPacket(t, p.addrs[0], time.Second)
		// The service has logged the client's close before it stops (stop wants its last line).
		waitLog(t, p, func(l []byte) bool { return bytes.Contains(l, []byte(`"msg":"connection closed"`)) })
		p.stop(t)
		return n
	}
	defMax := measure()
	capMax := measure("-max-udp-payload", "1250")
	t.Logf("largest server packet: default %d bytes, -max-udp-payload 1250: %d bytes", defMax, capMax)
	if capMax > 1250 || capMax < 1200 {
		t.Errorf("with -max-udp-payload 1250 the largest server packet is %d bytes, want 1200..1250", capMax)
	}
	if defMax <= 1250 {
		t.Errorf("without -max-udp-payload the largest server packet is %d bytes: PMTUD did not probe beyond 1250, so the cap is untested", defMax)
	}
}
