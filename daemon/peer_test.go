package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pki"
)

type cluster struct {
	ca    *pki.CA
	certs map[string]*pki.NodeCert
}

func newCluster(t testing.TB, nodes ...string) *cluster {
	t.Helper()
	ca, err := pki.NewCA("test", 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{ca: ca, certs: map[string]*pki.NodeCert{}}
	for _, n := range nodes {
		nc, err := ca.Issue(n, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.certs[n] = nc
	}
	return c
}

// serve starts a peer server for d on loopback.
func serve(t *testing.T, d *Daemon, c *cluster, node string) *PeerServer {
	t.Helper()
	d.cfg.PeerListen = "127.0.0.1:0"
	s, err := d.ListenPeers(c.certs[node].TLSCertificate(), c.ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func client(t *testing.T, c *cluster, from, to string, addr string) *PeerClient {
	t.Helper()
	pc := NewPeerClient(to, addr, c.certs[from].TLSCertificate(), c.ca.Pool())
	t.Cleanup(func() { pc.Close() })
	return pc
}

// TestPeerChannelMigration runs a whole migration a -> b over the real QUIC peer channel.
func TestPeerChannelMigration(t *testing.T) {
	a, b, _, _ := pair(t)
	cl := newCluster(t, "a", "b")
	srv := serve(t, b.d, cl, "b")
	pc := client(t, cl, "a", "b", srv.Addr().String())
	a.d.dial = func(string) (Peer, error) { return pc, nil }
	m := migrate(t, a, api.MigrateRequest{Technique: api.PreCopy})
	if m.Result != api.Succeeded {
		t.Fatalf("%s %v", m.Result, m.Error)
	}
	if got := b.eng.restoredFiles["final/core.img"]; got != "image of kv" {
		t.Fatalf("destination image %q", got)
	}
	if srv.Ops() < 5 {
		t.Fatalf("peer served %d operations", srv.Ops())
	}
	// The destination's events came back over the channel.
	var destEvents int
	for _, e := range m.Events {
		if e.Node == "b" {
			destEvents++
		}
	}
	if destEvents == 0 {
		t.Fatal("no destination events in the timeline")
	}
}

func TestPeerChannelRefusesOtherCA(t *testing.T) {
	_, b, _, _ := pair(t)
	cl := newCluster(t, "a", "b", "c")
	srv := serve(t, b.d, cl, "b")
	evil := newCluster(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// A certificate from another CA, claiming to be the configured peer "a".
	pc := NewPeerClient("b", srv.Addr().String(), evil.certs["a"].TLSCertificate(), cl.ca.Pool())
	defer pc.Close()
	_, err := pc.Call(ctx, opPrepareRestore, prepareRestoreReq{Migration: "x", Source: "a", Service: ServiceDef{Name: "kv"}})
	if err == nil {
		t.Fatal("peer with a certificate from another CA was accepted")
	}
	if err := pc.SendImage(ctx, "x", "core.img", strings.NewReader("evil"), 4, nil); err == nil {
		t.Fatal("image pushed by a peer with a certificate from another CA")
	}
	// A valid certificate of a node that is not a configured peer of b.
	pc2 := client(t, cl, "c", "b", srv.Addr().String())
	if _, err := pc2.Call(ctx, opRoute, routeReq{Instance: 7, Kind: api.Remote, Peer: "a"}); err == nil {
		t.Fatal("unconfigured node c was accepted")
	}
	if srv.Ops() != 0 {
		t.Fatalf("refused peers reached %d operations", srv.Ops())
	}
	if got := b.dp.entry(7); got != "none" {
		t.Fatalf("route pushed by a refused peer: %s", got)
	}
	// The expected node name is enforced by the client: b's server is not "c".
	pc3 := client(t, cl, "a", "c", srv.Addr().String())
	if _, err := pc3.Call(ctx, opAbort, abortReq{Migration: "x"}); err == nil || !strings.Contains(err.Error(), "another node") {
		t.Fatalf("dial c but reach b: %v, want a wrong-node error", err)
	}
	// The genuine peer works.
	pc4 := client(t, cl, "a", "b", srv.Addr().String())
	if _, err := pc4.Call(ctx, opAbort, abortReq{Migration: "x"}); err != nil {
		t.Fatal(err)
	}
	if srv.Ops() != 1 {
		t.Fatalf("ops %d, want 1", srv.Ops())
	}
}

func TestPeerImageChecksumAndPaths(t *testing.T) {
	_, b, _, _ := pair(t)
	cl := newCluster(t, "a", "b")
	srv := serve(t, b.d, cl, "b")
	pc := client(t, cl, "a", "b", srv.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pc.Call(ctx, opPrepareRestore, prepareRestoreReq{Migration: "m1", Source: "a", Service: b.d.cfg.Services[0], Technique: api.Cold}); err != nil {
		t.Fatal(err)
	}
	dir := b.d.imageDir("incoming", "m1")
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	var last int64
	if err := pc.SendImage(ctx, "m1", "pages-1.img", strings.NewReader(big), int64(len(big)), func(n int64) { last = n }); err != nil {
		t.Fatal(err)
	}
	if last != int64(len(big)) {
		t.Fatalf("progress ended at %d", last)
	}
	got, err := os.ReadFile(filepath.Join(dir, "pages-1.img"))
	if err != nil || string(got) != big {
		t.Fatalf("received file: %d bytes, %v", len(got), err)
	}
	// A short reader: the sender fails, the destination keeps nothing.
	err = pc.SendImage(ctx, "m1", "short.img", io.LimitReader(strings.NewReader(big), 10), 100, nil)
	if err == nil {
		t.Fatal("short image accepted")
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(dir, "short.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("short file kept: %v", err)
	}
	for _, bad := range []string{"../escape.img", "/etc/passwd", ".."} {
		if err := pc.SendImage(ctx, "m1", bad, strings.NewReader("x"), 1, nil); err == nil {
			t.Fatalf("image name %q accepted", bad)
		}
	}
	if err := pc.SendImage(ctx, "nope", "a.img", strings.NewReader("x"), 1, nil); err == nil {
		t.Fatal("image for an unknown migration accepted")
	}
	if _, err := pc.Call(ctx, opAbort, abortReq{Migration: "m1", Service: "kv"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image dir after abort: %v", err)
	}
}

func TestPeerChecksumMismatch(t *testing.T) {
	_, b, _, _ := pair(t)
	in := &incoming{id: "m", dir: t.TempDir(), tl: newTimeline("m", "b", nil)}
	b.d.incoming["m"] = in
	_, err := b.d.receiveImage("m", "x.img", strings.NewReader("abc"), 3, func([32]byte) error { return ErrChecksum })
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(filepath.Join(in.dir, "x.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("file with a bad checksum kept")
	}
}

// corruptHandler is the destination daemon with a bit flipped in flight in the image part that
// starts at offset at.
type corruptHandler struct {
	*Daemon
	at int64
}

func (h corruptHandler) receiveImagePart(migration, name string, r io.Reader, off, size, fileSize int64, verify func([32]byte) error) ([32]byte, error) {
	if off == h.at && size > 0 {
		r = io.MultiReader(&flipFirst{r: io.LimitReader(r, 1)}, r)
	}
	return h.Daemon.receiveImagePart(migration, name, r, off, size, fileSize, verify)
}

type flipFirst struct{ r io.Reader }

func (f *flipFirst) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 {
		p[0] ^= 0x40
	}
	return n, err
}

// TestPeerImageParts sends a file large enough to go in parts over several connections and checks
// the destination's copy byte for byte, the progress, and that a part corrupted in flight fails
// the file with a checksum mismatch and leaves nothing behind.
func TestPeerImageParts(t *testing.T) {
	_, b, _, _ := pair(t)
	cl := newCluster(t, "a", "b")
	srv := serve(t, b.d, cl, "b")
	pc := client(t, cl, "a", "b", srv.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := pc.Call(ctx, opPrepareRestore, prepareRestoreReq{Migration: "m1", Source: "a", Service: b.d.cfg.Services[0], Technique: api.Cold}); err != nil {
		t.Fatal(err)
	}
	const size = partMin + 3<<20 + 17 // two parts of unequal length
	data := make([]byte, size)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "pages-1.img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last int64
	var calls int
	err = pc.SendImage(ctx, "m1", "sub/pages-1.img", f, size, func(n int64) {
		if n < last || n > size {
			t.Errorf("progress %d after %d (size %d)", n, last, size)
		}
		last = n
		calls++
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != size || calls < 2 {
		t.Fatalf("progress ended at %d after %d calls, want %d", last, calls, int64(size))
	}
	got, err := os.ReadFile(filepath.Join(b.d.imageDir("incoming", "m1"), "sub", "pages-1.img"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("received file: %d bytes (want %d), equal %v, %v", len(got), size, bytes.Equal(got, data), err)
	}
	conns := 0
	for i := range pc.conns {
		if pc.conns[i].conn != nil {
			conns++
		}
	}
	if conns < 2 {
		t.Fatalf("file of %d bytes went over %d connection(s)", int64(size), conns)
	}
	in, err := b.d.getIncoming("m1")
	if err != nil {
		t.Fatal(err)
	}
	b.d.mu.Lock()
	counted := in.bytes
	b.d.mu.Unlock()
	if counted != size {
		t.Fatalf("destination counted %d bytes, want %d", counted, int64(size))
	}

	// The same file to a destination that corrupts the second part in flight.
	_, b2, _, _ := pair(t)
	b2.d.cfg.PeerListen = "127.0.0.1:0"
	allowed := func(n string) bool { _, ok := b2.d.cfg.Peer(n); return ok }
	srv2, err := ListenPeers(b2.d.cfg.PeerListen, cl.certs["b"].TLSCertificate(), cl.ca.Pool(), allowed, corruptHandler{b2.d, size / 2}, b2.d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	pc2 := client(t, cl, "a", "b", srv2.Addr().String())
	if _, err := pc2.Call(ctx, opPrepareRestore, prepareRestoreReq{Migration: "m2", Source: "a", Service: b2.d.cfg.Services[0], Technique: api.Cold}); err != nil {
		t.Fatal(err)
	}
	err = pc2.SendImage(ctx, "m2", "pages-1.img", io.NewSectionReader(f, 0, size), size, nil)
	if err == nil || !strings.Contains(err.Error(), ErrChecksum.Error()) {
		t.Fatalf("corrupted part: %v, want %q", err, ErrChecksum)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(b2.d.imageDir("incoming", "m2"), "pages-1.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file with a corrupted part kept: %v", err)
	}
}

func TestPeerImagePartBounds(t *testing.T) {
	_, b, _, _ := pair(t)
	in := &incoming{id: "m", dir: t.TempDir(), tl: newTimeline("m", "b", nil)}
	b.d.incoming["m"] = in
	for _, c := range []struct{ off, size, file int64 }{{-1, 2, 4}, {3, 2, 4}, {0, 5, 4}} {
		_, err := b.d.receiveImagePart("m", "x.img", strings.NewReader("abcde"), c.off, c.size, c.file, nil)
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("part [%d, +%d) of %d: %v, want ErrBadRequest", c.off, c.size, c.file, err)
		}
	}
	// Two parts in either order make the file; a failed part removes it.
	if _, err := b.d.receiveImagePart("m", "x.img", strings.NewReader("cd"), 2, 2, 4, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.d.receiveImagePart("m", "x.img", strings.NewReader("ab"), 0, 2, 4, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(in.dir, "x.img")); err != nil || string(got) != "abcd" {
		t.Fatalf("file %q, %v", got, err)
	}
	_, err := b.d.receiveImagePart("m", "x.img", strings.NewReader("zz"), 2, 2, 4, func([32]byte) error { return ErrChecksum })
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(filepath.Join(in.dir, "x.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("file with a bad part kept")
	}
}
