package migrate

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/vishvananda/netlink"

	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/pod"
	"github.com/steerd/steerd/tests/netns"
)

// serviceBin is examples/udpcounter, built static once by TestMain (root only).
var serviceBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "steerd-migrate-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			serviceBin = filepath.Join(dir, "udpcounter")
			cmd := exec.Command("go", "build", "-o", serviceBin, "github.com/steerd/steerd/examples/udpcounter")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build udpcounter: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

const (
	echoALPN = "steerd-echo" // examples/udpcounter EchoALPN
	svcPort  = 4433
)

var (
	podIPv4 = netip.MustParseAddr("198.19.0.1")
	podIPv6 = netip.MustParseAddr("2001:2:0:ff::1")
)

// env is a testbed with one client and two nodes, each with a migration engine. The router routes
// the pod address (198.19.0.1/32, 2001:2:0:ff::1/128) to the node that hosts the pod: routeTo
// replaces that route. This is test-only routing; in production the XDP datapath steers packets.
type env struct {
	tb  *netns.Testbed
	eng [2]*Engine
}

func requireTools(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skip: missing capability: root is needed for runc, CRIU and network namespaces")
	}
	for _, bin := range []string{"runc", "criu"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Skipf("skip: missing capability: %s is not installed (scripts/install-deps.sh)", bin)
		}
	}
}

// newEnv builds the testbed and the engines; runc[i] overrides node i's runc binary.
func newEnv(tb testing.TB, runc ...string) *env {
	tb.Helper()
	requireTools(tb)
	e := &env{tb: netns.New(tb, netns.Topology{Clients: 1, Nodes: 2})}
	for i := range e.eng {
		cfg := Config{
			Node:      fmt.Sprintf("t%s-n%d", e.tb.ID, i),
			NodeNS:    e.tb.Nodes[i].NS,
			StateDir:  filepath.Join(tb.TempDir(), "state"),
			PodPrefix: fmt.Sprintf("%st%s-n%d-p-", pod.NSPrefix, e.tb.ID, i),
		}
		if i < len(runc) {
			cfg.Runc = runc[i]
		}
		eng, err := NewEngine(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if err := eng.Close(); err != nil {
				tb.Errorf("close engine %s: %v", cfg.Node, err)
			}
		})
		e.eng[i] = eng
	}
	return e
}

func (e *env) routeTo(node int) error {
	h, err := nsutil.Handle(e.tb.Router.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	n := e.tb.Nodes[node]
	l, err := h.LinkByName(n.RouterLink)
	if err != nil {
		return err
	}
	for _, r := range []struct {
		dst netip.Addr
		gw  netip.Addr
	}{{podIPv4, n.IPv4}, {podIPv6, n.IPv6}} {
		bits := r.dst.BitLen()
		dst := &net.IPNet{IP: r.dst.AsSlice(), Mask: net.CIDRMask(bits, bits)}
		if err := h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: r.gw.AsSlice()}); err != nil {
			return fmt.Errorf("route %s via %s: %w", r.dst, r.gw, err)
		}
	}
	return nil
}

// transport listens in node to's namespace and sends from node from's.
func (e *env) transport(tb testing.TB, from, to int) *TCPTransport {
	tb.Helper()
	tr, err := ListenTCP(e.tb.Nodes[to].NS, netip.AddrPortFrom(e.tb.Nodes[to].IPv4, 0))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	tr.SenderNS = e.tb.Nodes[from].NS
	return tr
}

// pageServer returns an address of node from with a free TCP port, for CRIU's lazy page server.
func (e *env) pageServer(tb testing.TB, from int) netip.AddrPort {
	tb.Helper()
	var port int
	if err := nsutil.Do(e.tb.Nodes[from].NS, func() error {
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(e.tb.Nodes[from].IPv4, 0).String())
		if err != nil {
			return err
		}
		port = ln.Addr().(*net.TCPAddr).Port
		return ln.Close()
	}); err != nil {
		tb.Fatal(err)
	}
	return netip.AddrPortFrom(e.tb.Nodes[from].IPv4, uint16(port))
}

func (e *env) run(tb testing.TB, node int, quicMode bool, ballastMB int) ContainerSpec {
	tb.Helper()
	args := []string{"-listen", netip.AddrPortFrom(podIPv4, svcPort).String()}
	if quicMode {
		args = append(args, "-quic")
	}
	spec := ContainerSpec{ID: "svc", Binary: serviceBin, Args: args, BallastMB: ballastMB, IPv4: podIPv4, IPv6: podIPv6}
	if _, err := e.eng[node].Run(context.Background(), spec); err != nil {
		tb.Fatalf("run service: %v", err)
	}
	if err := e.routeTo(node); err != nil {
		tb.Fatal(err)
	}
	return spec
}

// udpClient talks to the counter service from the client namespace.
type udpClient struct {
	c   *net.UDPConn
	dst netip.AddrPort
}

func newUDPClient(tb testing.TB, e *env) *udpClient {
	tb.Helper()
	var c *net.UDPConn
	if err := nsutil.Do(e.tb.Clients[0].NS, func() (err error) {
		c, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &udpClient{c: c, dst: netip.AddrPortFrom(podIPv4, svcPort)}
}

// ask sends req until a reply arrives or timeout passes (100 ms per try).
func (u *udpClient) ask(req string, timeout time.Duration) (string, error) {
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if _, err := u.c.WriteToUDPAddrPort([]byte(req), u.dst); err != nil {
			last = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		u.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, _, err := u.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			last = err
			continue
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("ask %q: no reply in %s: %v", req, timeout, last)
}

func (u *udpClient) count(tb testing.TB, req string) uint64 {
	tb.Helper()
	r, err := u.ask(req, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.ParseUint(r, 10, 64)
	if err != nil {
		tb.Fatalf("%s: reply %q: %v", req, r, err)
	}
	return n
}

// assertClean checks that node holds nothing of container id: no engine entry, runc state,
// bundle, image directory, pod namespace or host-side veth.
func assertClean(tb testing.TB, e *Engine, id string) {
	tb.Helper()
	if _, err := e.Container(id); !errors.Is(err, ErrNotFound) {
		tb.Errorf("%s: container %s still known: %v", e.Node(), id, err)
	}
	for _, p := range []string{
		filepath.Join(e.cfg.StateDir, "runc", id), e.bundleDir(id), e.ImageDir(id), nsutil.Path(e.PodNS(id)),
	} {
		if _, err := os.Stat(p); err == nil {
			tb.Errorf("%s: %s left behind", e.Node(), p)
		}
	}
	if h, err := nsutil.Handle(e.NodeNS()); err == nil {
		if _, err := h.LinkByName(pod.HostVethName(e.PodNS(id))); err == nil {
			tb.Errorf("%s: veth %s left behind", e.Node(), pod.HostVethName(e.PodNS(id)))
		}
		h.Close()
	}
}

func sizes(tb testing.TB) []int {
	if testing.Short() {
		return []int{0, 10}
	}
	return []int{0, 10, 100}
}

func requireTechnique(tb testing.TB, e *env, t Technique) {
	tb.Helper()
	caps, err := e.eng[0].Capabilities(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	if err := caps.Supports(t); err != nil {
		tb.Skipf("skip: missing capability: %v", err)
	}
}

func supported(tb testing.TB, e *env) []Technique {
	caps, err := e.eng[0].Capabilities(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	var out []Technique
	for _, t := range Techniques {
		if caps.Supports(t) == nil {
			out = append(out, t)
		}
	}
	return out
}

func TestMigrateUDPCounter(t *testing.T) {
	requireTools(t)
	for _, mb := range sizes(t) {
		t.Run(fmt.Sprintf("%dMiB", mb), func(t *testing.T) {
			e := newEnv(t)
			for _, tech := range supported(t, e) {
				t.Run(tech.String(), func(t *testing.T) {
					e.run(t, 0, false, mb)
					defer e.eng[1].Delete(context.Background(), "svc")
					cl := newUDPClient(t, e)
					var last uint64
					for i := 0; i < 3; i++ {
						last = cl.count(t, "inc")
					}
					var progressCalls, progressDone, progressTotal atomic.Int64
					rep, err := Migrate(context.Background(), e.eng[0], e.eng[1], "svc", Options{
						Technique:  tech,
						Transport:  e.transport(t, 0, 1),
						PageServer: e.pageServer(t, 0),
						Progress: func(done, total int64) {
							progressCalls.Add(1)
							progressDone.Store(done)
							progressTotal.Store(total)
						},
						AfterRestore: func(context.Context) error { return e.routeTo(1) },
					})
					if err != nil {
						t.Fatalf("migrate: %v", err)
					}
					t.Logf("%v", rep)
					if rep.Freeze <= 0 || rep.Dump <= 0 || rep.Restore <= 0 || rep.Freeze < rep.Dump+rep.Restore {
						t.Errorf("implausible phase times: %v", rep)
					}
					if tech == PostCopy {
						// The image holds no private anonymous memory: the ballast is pulled lazily.
						if rep.ImageBytes >= 4<<20 || rep.TransferBytes < rep.ImageBytes || rep.LazyPages <= 0 {
							t.Errorf("post-copy image %d B, sent %d B, lazy pages %v: want < 4 MiB sent whole, pages pulled after", rep.ImageBytes, rep.TransferBytes, rep.LazyPages)
						}
					} else if min := int64(mb) << 20; rep.ImageBytes < min || rep.TransferBytes < rep.ImageBytes {
						t.Errorf("image %d B, sent %d B, want >= %d B", rep.ImageBytes, rep.TransferBytes, min)
					}
					if progressCalls.Load() == 0 || progressDone.Load() != progressTotal.Load() || progressTotal.Load() != rep.ImageBytes {
						t.Errorf("progress: %d calls, last %d/%d, image %d", progressCalls.Load(), progressDone.Load(), progressTotal.Load(), rep.ImageBytes)
					}
					if got := cl.count(t, "get"); got != last {
						t.Errorf("counter after migration = %d, want %d", got, last)
					}
					if got := cl.count(t, "inc"); got != last+1 {
						t.Errorf("inc after migration = %d, want %d", got, last+1)
					}
					if r, err := cl.ask("check", 5*time.Second); err != nil || !strings.HasPrefix(r, "ok ") {
						t.Errorf("ballast check after migration: %q, %v", r, err)
					}
					assertClean(t, e.eng[0], "svc")
					if _, err := e.eng[1].Container("svc"); err != nil {
						t.Errorf("destination: %v", err)
					}
				})
			}
		})
	}
}

// quicClient is a quic-go client with one long-lived stream, in the client namespace.
type quicClient struct {
	conn   *quic.Conn
	stream *quic.Stream
}

func newQUICClient(tb testing.TB, e *env) *quicClient {
	tb.Helper()
	var udp *net.UDPConn
	if err := nsutil.Do(e.tb.Clients[0].NS, func() (err error) {
		udp, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	tb.Cleanup(func() { tr.Close(); udp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn *quic.Conn
	var err error
	for ctx.Err() == nil { // the service may still be starting (ballast)
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		conn, err = tr.Dial(dctx, net.UDPAddrFromAddrPort(netip.AddrPortFrom(podIPv4, svcPort)),
			&tls.Config{InsecureSkipVerify: true, NextProtos: []string{echoALPN}},
			&quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 2 * time.Second})
		dcancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("dial quic: %v", err)
	}
	tb.Cleanup(func() { conn.CloseWithError(0, "") })
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return &quicClient{conn: conn, stream: s}
}

func echo(s *quic.Stream, msg string, timeout time.Duration) error {
	s.SetDeadline(time.Now().Add(timeout))
	if _, err := s.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(s, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(buf, []byte(msg)) {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

func TestMigrateQUIC(t *testing.T) {
	requireTools(t)
	for _, mb := range sizes(t) {
		t.Run(fmt.Sprintf("%dMiB", mb), func(t *testing.T) {
			e := newEnv(t)
			for _, tech := range supported(t, e) {
				t.Run(tech.String(), func(t *testing.T) {
					e.run(t, 0, true, mb)
					defer e.eng[1].Delete(context.Background(), "svc")
					cl := newQUICClient(t, e)
					if err := echo(cl.stream, "before migration", 5*time.Second); err != nil {
						t.Fatal(err)
					}
					rep, err := Migrate(context.Background(), e.eng[0], e.eng[1], "svc", Options{
						Technique:    tech,
						Transport:    e.transport(t, 0, 1),
						PageServer:   e.pageServer(t, 0),
						AfterRestore: func(context.Context) error { return e.routeTo(1) },
					})
					if err != nil {
						t.Fatalf("migrate: %v", err)
					}
					t.Logf("%v", rep)
					if err := echo(cl.stream, "same stream after migration", 10*time.Second); err != nil {
						t.Fatalf("old stream after migration: %v", err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					s2, err := cl.conn.OpenStreamSync(ctx)
					if err != nil {
						t.Fatalf("new stream after migration: %v", err)
					}
					if err := echo(s2, "new stream after migration", 5*time.Second); err != nil {
						t.Fatalf("new stream after migration: %v", err)
					}
					if err := cl.conn.Context().Err(); err != nil {
						t.Fatalf("connection closed: %v", context.Cause(cl.conn.Context()))
					}
					assertClean(t, e.eng[0], "svc")
				})
			}
		})
	}
}

// TestUnsupportedTechniquesFailAtOnce: a technique the machine cannot do fails before the service
// is touched (it keeps its counter and never pauses).
func TestUnsupportedTechniquesFailAtOnce(t *testing.T) {
	e := newEnv(t)
	caps, err := e.eng[0].Capabilities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capabilities: %+v", caps)
	e.run(t, 0, false, 0)
	cl := newUDPClient(t, e)
	last := cl.count(t, "inc")
	ran := 0
	for _, tech := range Techniques {
		if caps.Supports(tech) == nil {
			continue
		}
		ran++
		start := time.Now()
		_, err := Migrate(context.Background(), e.eng[0], e.eng[1], "svc", Options{
			Technique: tech, Transport: e.transport(t, 0, 1),
			BeforeFreeze: func(context.Context) error { t.Errorf("%s: BeforeFreeze ran", tech); return nil },
		})
		if !errors.Is(err, ErrTechniqueUnsupported) {
			t.Fatalf("%s: err = %v, want ErrTechniqueUnsupported", tech, err)
		}
		var pe *PhaseError
		if !errors.As(err, &pe) || pe.Phase != PhaseCheck {
			t.Errorf("%s: err = %v, want a PhaseError in phase check", tech, err)
		}
		t.Logf("%s refused in %s: %v", tech, time.Since(start).Round(time.Microsecond), err)
		if st, err := e.eng[0].Status(context.Background(), "svc"); err != nil || st != "running" {
			t.Errorf("%s: source status %q, %v", tech, st, err)
		}
		if got := cl.count(t, "inc"); got != last+1 {
			t.Errorf("%s: counter %d, want %d", tech, got, last+1)
		}
		last++
		assertClean(t, e.eng[1], "svc")
	}
	if caps.MemDirtyTrack != (ran == 0) { // pre-copy and hybrid need soft-dirty tracking
		t.Errorf("refused %d techniques with capabilities %+v", ran, caps)
	}
}

// faultCase runs the counter service on node 0, migrates it with opts, and checks that the
// migration fails in one of phases, rolls back, and leaves the service counting on node 0 and
// nothing on node 1.
func faultCase(t *testing.T, e *env, mb int, opts Options, phases ...Phase) error {
	t.Helper()
	e.run(t, 0, false, mb)
	cl := newUDPClient(t, e)
	last := cl.count(t, "inc")
	if opts.Transport == nil {
		opts.Transport = e.transport(t, 0, 1)
	}
	if opts.Technique == PostCopy {
		opts.PageServer = e.pageServer(t, 0)
	}
	opts.AfterRestore = func(context.Context) error { return e.routeTo(1) }
	rep, err := Migrate(context.Background(), e.eng[0], e.eng[1], "svc", opts)
	var pe *PhaseError
	if !errors.As(err, &pe) {
		t.Fatalf("migrate: err = %v, want a PhaseError", err)
	}
	t.Logf("failed as expected: %v", err)
	t.Logf("phases until the failure: %v", rep)
	ok := false
	for _, p := range phases {
		ok = ok || pe.Phase == p
	}
	if !ok || !pe.RolledBack {
		t.Errorf("phase %s rolled back %v, want one of %v and rolled back", pe.Phase, pe.RolledBack, phases)
	}
	if err := e.routeTo(0); err != nil {
		t.Fatal(err)
	}
	if got := cl.count(t, "get"); got != last {
		t.Errorf("counter on source after rollback = %d, want %d", got, last)
	}
	if got := cl.count(t, "inc"); got != last+1 {
		t.Errorf("inc on source after rollback = %d, want %d", got, last+1)
	}
	if st, err := e.eng[0].Status(context.Background(), "svc"); err != nil || st != "running" {
		t.Errorf("source status %q, %v", st, err)
	}
	assertClean(t, e.eng[1], "svc")
	return err
}

func TestFaultRestoreFails(t *testing.T) {
	requireTools(t)
	// Node 1's runc fails every restore, as a broken destination would.
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(t.TempDir(), "runc-no-restore")
	// Like runc, it reports the error in its --log file.
	script := `#!/bin/sh
log=/dev/null; prev=
for a; do [ "$prev" = --log ] && log=$a; prev=$a; done
for a; do if [ "$a" = restore ]; then echo 'level=error msg="injected restore failure"' >>"$log"; exit 1; fi; done
exec ` + runc + ` "$@"
`
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tech := range []Technique{Cold, PostCopy} {
		t.Run(tech.String(), func(t *testing.T) {
			e := newEnv(t, "", wrapper)
			if tech == PostCopy {
				requireTechnique(t, e, tech)
			}
			// Post-copy: the destination's lazy-pages daemon never connects, so the source's page
			// server waits until the rollback kills it; the frozen source is then thawed.
			err := faultCase(t, e, 10, Options{Technique: tech}, PhaseRestore)
			if err != nil && !strings.Contains(err.Error(), "injected restore failure") {
				t.Errorf("error does not carry runc's message: %v", err)
			}
		})
	}
}

func TestFaultDestinationNamespaceGone(t *testing.T) {
	e := newEnv(t)
	var deleted atomic.Bool
	// Delete node 1's namespace when half of the image is sent: the transfer's sockets keep the
	// namespace alive, but the destination can no longer create the pod (restore fails).
	faultCase(t, e, 10, Options{Technique: Cold, Progress: func(done, total int64) {
		if done*2 >= total && !deleted.Swap(true) {
			if err := nsutil.Delete(e.tb.Nodes[1].NS); err != nil {
				t.Errorf("delete node namespace: %v", err)
			}
		}
	}}, PhaseTransfer, PhaseRestore)
	if !deleted.Load() {
		t.Error("the node namespace was never deleted")
	}
}

// flipWriter flips one bit of the byte at offset at.
type flipWriter struct {
	w   io.Writer
	off int64
	at  int64
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if f.at >= f.off && f.at < f.off+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[f.at-f.off] ^= 0x10
		p = q
	}
	f.off += int64(len(p))
	return f.w.Write(p)
}

func TestFaultImageCorrupted(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, 0, 1)
	tr.Filter = func(w io.Writer) io.Writer { return &flipWriter{w: w, at: 5 << 20} } // inside the ballast pages
	err := faultCase(t, e, 10, Options{Technique: Cold, Transport: tr}, PhaseTransfer)
	if !errors.Is(err, ErrChecksum) {
		t.Errorf("err = %v, want ErrChecksum", err)
	}
}

func TestFaultImageHeaderCorrupted(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, 0, 1)
	tr.Filter = func(w io.Writer) io.Writer { return &flipWriter{w: w, at: 16 + 100} } // first tar header
	err := faultCase(t, e, 0, Options{Technique: Cold, Transport: tr}, PhaseTransfer)
	if !errors.Is(err, ErrChecksum) {
		t.Errorf("err = %v, want ErrChecksum", err)
	}
}

func BenchmarkFreeze(b *testing.B) {
	requireTools(b)
	for _, tech := range Techniques {
		for _, mb := range []int{0, 10, 100} {
			b.Run(fmt.Sprintf("%s/%dMiB", tech, mb), func(b *testing.B) {
				e := newEnv(b)
				caps, err := e.eng[0].Capabilities(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if err := caps.Supports(tech); err != nil {
					b.Skipf("skip: missing capability: %v", err)
				}
				e.run(b, 0, false, mb)
				defer func() {
					for _, eng := range e.eng {
						eng.Delete(context.Background(), "svc")
					}
				}()
				cl := newUDPClient(b, e)
				cl.count(b, "inc")
				var freeze, dump, restore, transfer time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					from, to := i%2, (i+1)%2
					rep, err := Migrate(context.Background(), e.eng[from], e.eng[to], "svc", Options{
						Technique: tech, Transport: e.transport(b, from, to), PageServer: e.pageServer(b, from),
						AfterRestore: func(context.Context) error { return e.routeTo(to) },
					})
					if err != nil {
						b.Fatal(err)
					}
					freeze += rep.Freeze
					dump += rep.Dump
					restore += rep.Restore
					transfer += rep.Transfer
				}
				b.StopTimer()
				cl.count(b, "inc")
				n := float64(b.N)
				b.ReportMetric(float64(freeze.Microseconds())/1000/n, "freeze-ms")
				b.ReportMetric(float64(dump.Microseconds())/1000/n, "dump-ms")
				b.ReportMetric(float64(transfer.Microseconds())/1000/n, "transfer-ms")
				b.ReportMetric(float64(restore.Microseconds())/1000/n, "restore-ms")
			})
		}
	}
}

// TestRecoverFrozenAfterRestart: a container left paused by a process that died mid-migration is
// removed (with its pod namespace and bundle) when the node's engine starts again.
func TestRecoverFrozenAfterRestart(t *testing.T) {
	e := newEnv(t)
	e.run(t, 0, false, 0)
	cl := newUDPClient(t, e)
	cl.count(t, "inc")
	if err := e.eng[0].Pause(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	// Simulate the restart: a second engine over the same state directory.
	again, err := NewEngine(e.eng[0].cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.state(context.Background(), "svc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("runc state after restart: %v, want ErrNotFound", err)
	}
	for _, p := range []string{e.eng[0].bundleDir("svc"), nsutil.Path(e.eng[0].PodNS("svc"))} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	// A running container is left alone.
	e2 := newEnv(t)
	e2.run(t, 0, false, 0)
	if _, err := NewEngine(e2.eng[0].cfg); err != nil {
		t.Fatal(err)
	}
	if st, err := e2.eng[0].Status(context.Background(), "svc"); err != nil || st != "running" {
		t.Errorf("running container after restart: %q, %v", st, err)
	}
	// The first engine's record is stale now: forget it so Close does not complain.
	e.eng[0].mu.Lock()
	delete(e.eng[0].ctrs, "svc")
	e.eng[0].mu.Unlock()
}

// TestPreparedPodIsTakenByRestore: PreparePod's pod (same veth) is the one the restored container
// joins; an unused prepared pod is removed by Delete.
func TestPreparedPodIsTakenByRestore(t *testing.T) {
	e := newEnv(t)
	e.run(t, 0, false, 10)
	defer e.eng[1].Delete(context.Background(), "svc")
	cl := newUDPClient(t, e)
	last := cl.count(t, "inc")
	p, err := e.eng[1].PreparePod("svc", podIPv4, podIPv6)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.eng[1].PreparePod("svc", podIPv4, podIPv6); !errors.Is(err, ErrExists) {
		t.Errorf("second PreparePod: %v, want ErrExists", err)
	}
	rep, err := Migrate(context.Background(), e.eng[0], e.eng[1], "svc", Options{
		Technique: Cold, Transport: e.transport(t, 0, 1),
		AfterRestore: func(context.Context) error { return e.routeTo(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", rep)
	c, err := e.eng[1].Container("svc")
	if err != nil {
		t.Fatal(err)
	}
	if c.Pod.HostIndex != p.HostIndex || c.Pod.NetNS != p.NetNS {
		t.Errorf("restored into pod %s (veth %d), prepared %s (veth %d)", c.Pod.NetNS, c.Pod.HostIndex, p.NetNS, p.HostIndex)
	}
	if _, ok := e.eng[1].PreparedPod("svc"); ok {
		t.Error("prepared pod still pending after the restore took it")
	}
	if got := cl.count(t, "inc"); got != last+1 {
		t.Errorf("inc after migration = %d, want %d", got, last+1)
	}
	// Unused prepared pod: Delete removes it.
	if _, err := e.eng[0].PreparePod("svc", podIPv4, podIPv6); err != nil {
		t.Fatal(err)
	}
	if err := e.eng[0].Delete(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, e.eng[0], "svc")
}

// logBuffer is a slog handler target that tests can search.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAdoptAfterRestart: with KeepLeftovers a second engine over the same state directory (a
// restarted daemon) leaves a paused container alone, lists it, adopts it with the same spec, PID
// and pod (veth indices from netlink), resumes it (the service answers with its counter intact)
// and deletes it cleanly, without the "container not paused" warning of a kill + resume.
func TestAdoptAfterRestart(t *testing.T) {
	e := newEnv(t)
	spec := e.run(t, 0, false, 0)
	cl := newUDPClient(t, e)
	cl.count(t, "inc")
	last := cl.count(t, "inc")
	orig, err := e.eng[0].Container("svc")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.eng[0].Pause(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	cfg := e.eng[0].cfg
	cfg.KeepLeftovers = true
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	again, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The first engine's record is stale now: forget it so its Close leaves the container.
	e.eng[0].mu.Lock()
	delete(e.eng[0].ctrs, "svc")
	e.eng[0].mu.Unlock()
	list, err := again.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != (Listed{ID: "svc", Status: "paused"}) {
		t.Fatalf("List after restart = %v, want [svc paused]", list)
	}
	if _, err := again.Container("svc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Container before Adopt: %v, want ErrNotFound", err)
	}
	c, err := again.Adopt(ctx, "svc")
	if err != nil {
		t.Fatal(err)
	}
	if c.PID != orig.PID || c.Pod.HostIndex != orig.Pod.HostIndex || c.Pod.PodIndex != orig.Pod.PodIndex ||
		c.Pod.HostVeth != orig.Pod.HostVeth || c.Pod.NetNS != orig.Pod.NetNS || c.Pod.MTU != orig.Pod.MTU ||
		c.Pod.HostMAC.String() != orig.Pod.HostMAC.String() || c.Pod.PodMAC.String() != orig.Pod.PodMAC.String() {
		t.Errorf("adopted %+v pod %+v, want pid %d pod %+v", c, *c.Pod, orig.PID, *orig.Pod)
	}
	if c.Spec.ID != spec.ID || c.Spec.IPv4 != spec.IPv4 || c.Spec.IPv6 != spec.IPv6 || c.Spec.Binary != spec.Binary ||
		strings.Join(c.Spec.Args, " ") != strings.Join(spec.Args, " ") {
		t.Errorf("adopted spec %+v, want %+v", c.Spec, spec)
	}
	if _, err := again.Adopt(ctx, "svc"); !errors.Is(err, ErrExists) {
		t.Errorf("second Adopt: %v, want ErrExists", err)
	}
	if _, err := again.Adopt(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Adopt of an unknown container: %v, want ErrNotFound", err)
	}
	if err := again.Resume(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if got := cl.count(t, "inc"); got != last+1 {
		t.Errorf("inc after adopt + resume = %d, want %d", got, last+1)
	}
	// A paused adopted container is deleted (kill while frozen) without a failed runc resume.
	if err := again.Pause(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if err := again.Delete(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, again, "svc")
	if l := logs.String(); strings.Contains(l, "level=WARN") {
		t.Errorf("engine warnings while deleting a paused container:\n%s", l)
	}
}
