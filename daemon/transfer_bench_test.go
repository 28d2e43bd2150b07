package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pki"
)

// benchImage is a checkpoint image shaped like the one CRIU writes for the kvservice container
// with a 100 MiB ballast (bench/results: cold, 100 MB): one large pages-1.img and the small
// descriptor files next to it (sizes in bytes, as seen in a real dump).
var benchImage = []struct {
	name string
	size int64
}{
	{"pages-1.img", 100 << 20},
	{"core-1.img", 10 << 10}, {"core-7.img", 1300}, {"core-8.img", 1300}, {"core-9.img", 1300},
	{"descriptors.json", 300}, {"fdinfo-2.img", 120}, {"files.img", 783}, {"fs-1.img", 18},
	{"ids-1.img", 36}, {"inventory.img", 86}, {"ipcns-var-11.img", 82}, {"mm-1.img", 1186},
	{"mountpoints-13.img", 530}, {"netns-10.img", 26}, {"pagemap-1.img", 2098}, {"pstree.img", 36},
	{"seccomp.img", 12}, {"spec.json", 292}, {"stats-dump", 53}, {"timens-0.img", 34},
	{"tmpfs-dev-40.tar.gz.img", 323}, {"tmpfs-dev-42.tar.gz.img", 415}, {"utsns-12.img", 29},
}

// writeBenchImage writes benchImage (random bytes) under a new directory and returns it and the
// total size in bytes.
func writeBenchImage(tb testing.TB) (string, int64) {
	tb.Helper()
	dir := tb.TempDir()
	var total int64
	for _, f := range benchImage {
		b := make([]byte, f.size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o600); err != nil {
			tb.Fatal(err)
		}
		total += f.size
	}
	return dir, total
}

// benchPair is a source and a destination daemon (fakes for everything but the image store) and
// a PeerClient of the source connected to the destination's real QUIC peer channel on loopback.
type benchPair struct {
	a, b *Daemon
	srv  *PeerServer
	pc   *PeerClient
	cl   *cluster
	n    int
}

func newBenchPair(tb testing.TB) *benchPair {
	tb.Helper()
	c, f := &calls{}, &fail{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mk := func(name, peer string, subnet, peerSubnet int) *Daemon {
		cfg := &Config{
			Node: name, Uplink: "eth0",
			IPv4:          netip.AddrFrom4([4]byte{198, 18, byte(subnet), 2}),
			IPv6:          netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::2", subnet)),
			PKIDir:        tb.TempDir(),
			StateDir:      tb.TempDir(),
			ControlSocket: filepath.Join(tb.TempDir(), "control.sock"),
			PodNSPrefix:   "stdr-bench-" + name + "-",
			PeerListen:    "127.0.0.1:0",
			Services: []ServiceDef{{Name: testSvc, Port: 4433, Instance: 7,
				PodIPv4: netip.MustParseAddr("198.19.0.1"), PodIPv6: netip.MustParseAddr("2001:2:0:ff::1")}},
			Peers: []PeerDef{{Name: peer, Address: netip.AddrFrom4([4]byte{198, 18, byte(peerSubnet), 2}),
				IPv6: netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::2", peerSubnet))}},
		}
		d, err := New(cfg, Deps{Datapath: newFakeDP(name, c, f), Engine: newFakeEngine(name, c, f),
			Control: &fakeCtl{node: name, c: c, f: f}, Pods: &fakePods{node: name, c: c, live: map[string]bool{}}, Logger: log,
			Dial: func(string) (Peer, error) { return nil, ErrUnknownPeer }})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { d.Close() })
		return d
	}
	p := &benchPair{a: mk("a", "b", 20, 21), b: mk("b", "a", 21, 20), cl: newCluster(tb, "a", "b")}
	var err error
	p.srv, err = p.b.ListenPeers(p.cl.certs["b"].TLSCertificate(), p.cl.ca.Pool())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.srv.Close() })
	p.pc = NewPeerClient("b", p.srv.Addr().String(), p.cl.certs["a"].TLSCertificate(), p.cl.ca.Pool())
	tb.Cleanup(func() { p.pc.Close() })
	return p
}

// prepare opens a new incoming migration on the destination and returns the transport the
// source's engine would get for it.
func (p *benchPair) prepare(tb testing.TB, ctx context.Context) (*peerTransport, string) {
	tb.Helper()
	p.n++
	id := fmt.Sprintf("bench-%d", p.n)
	if _, err := p.pc.Call(ctx, opPrepareRestore, prepareRestoreReq{Migration: id, Source: "a", Service: p.b.cfg.Services[0], Technique: api.Cold}); err != nil {
		tb.Fatal(err)
	}
	tl := newTimeline(id, "a", nil)
	return &peerTransport{d: p.a, peer: p.pc, migration: id, tl: tl, mg: &migration{tl: tl}}, id
}

// abort removes the destination's copy of migration id.
func (p *benchPair) abort(tb testing.TB, ctx context.Context, id string) {
	tb.Helper()
	if _, err := p.pc.Call(ctx, opAbort, abortReq{Migration: id, Service: testSvc}); err != nil {
		tb.Fatal(err)
	}
}

// legacyTransport is the transfer as steerd did it before the parallel sendDir: one file at a
// time, in lexical order, whole on one stream, through io.Copy into an io.MultiWriter of the
// stream and the hash (32 KiB copies), each file waiting for the destination's checksum reply
// (read through a new 1 MiB bufio.Reader) before the next starts. The destination's side is
// today's.
type legacyTransport struct {
	pc        *PeerClient
	migration string
}

func (t legacyTransport) SendFile(ctx context.Context, name string, r io.Reader, size int64) error {
	str, err := t.pc.open(ctx, 0)
	if err != nil {
		return err
	}
	if err := writeLine(str, peerRequest{Op: opImage, Migration: t.migration, Name: name, Size: size}); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(str, h), io.LimitReader(r, size)); err != nil {
		str.CancelWrite(3)
		return err
	}
	sum := h.Sum(nil)
	if _, err := str.Write(sum); err != nil {
		return err
	}
	str.Close()
	var rep PeerReply // read as before: a new reader of maxHeader bytes for every reply
	if err := readLine(bufio.NewReaderSize(str, maxHeader), &rep); err != nil {
		return err
	}
	if rep.Error != nil {
		return rep.Error
	}
	if rep.SHA256 != fmt.Sprintf("%x", sum) {
		return ErrChecksum
	}
	return nil
}

func sequentialSend(ctx context.Context, dir string, tr ImageTransport) error {
	for _, f := range benchImageSorted() {
		in, err := os.Open(filepath.Join(dir, f.name))
		if err != nil {
			return err
		}
		err = tr.SendFile(ctx, f.name, in, f.size)
		in.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func benchImageSorted() []struct {
	name string
	size int64
} {
	s := append(benchImage[:0:0], benchImage...)
	sort.Slice(s, func(i, j int) bool { return s[i].name < s[j].name })
	return s
}

// BenchmarkImageTransfer sends a 100 MiB checkpoint image (benchImage) from a source to a
// destination daemon over the real mutual-TLS QUIC peer channel on loopback, into the
// destination's image directory with the SHA-256 check of every file, and reports MiB/s.
// Sub-benchmarks: tls-tcp is the reference (the same files over one TLS 1.3 connection on
// loopback TCP, plain io.Copy, no checksum); sendDir is the engine's path now (MiB/s), each
// iteration preceded by the old sequential path (one file at a time, whole, each waiting for
// its checksum reply; seq-MiB/s). x-sequential is sendDir's throughput over the old path's,
// x-tls-tcp over the reference's (best of three, measured first); cpu-s/GiB is the CPU time of
// both ends (one process) per GiB moved. STEERD_BENCH_STATS=1 logs quic-go's connection
// statistics (loss, congestion window, RTT).
func BenchmarkImageTransfer(b *testing.B) {
	dir, total := writeBenchImage(b)
	p := newBenchPair(b)
	ctx := context.Background()
	mib := float64(total) / (1 << 20)
	// The reference first (best of three), so the others can report their ratio to it.
	var ref time.Duration
	for range 3 {
		out := b.TempDir()
		if d := baselineTLSTCP(b, p.cl, dir, out); ref == 0 || d < ref {
			ref = d
		}
		os.RemoveAll(out)
	}
	refRate := mib / ref.Seconds()
	b.Run("tls-tcp", func(b *testing.B) {
		var el time.Duration
		for b.Loop() {
			out := b.TempDir()
			el += baselineTLSTCP(b, p.cl, dir, out)
			os.RemoveAll(out)
		}
		b.ReportMetric(mib*float64(b.N)/el.Seconds(), "MiB/s")
	})
	// once sends the image one way and returns the elapsed and CPU time.
	once := func(b *testing.B, legacy bool) (el, cpu time.Duration) {
		tr, id := p.prepare(b, ctx)
		time.Sleep(20 * time.Millisecond) // the bulk connections' handshakes, before the freeze in a migration
		c0, start := cpuTime(), time.Now()
		var err error
		if legacy {
			err = sequentialSend(ctx, dir, legacyTransport{pc: p.pc, migration: id})
		} else {
			err = sendDir(ctx, dir, tr)
		}
		if err != nil {
			b.Fatal(err)
		}
		el, cpu = time.Since(start), cpuTime()-c0
		p.abort(b, ctx, id)
		return el, cpu
	}
	// Each iteration sends the image both ways, the old way first, so that the machine's load
	// (shared, 2 cores) weighs on both alike and x-sequential compares like with like.
	b.Run("sendDir", func(b *testing.B) {
		var el, cpu, seqEl, seqCPU time.Duration
		for b.Loop() {
			e, c := once(b, true)
			seqEl, seqCPU = seqEl+e, seqCPU+c
			e, c = once(b, false)
			el, cpu = el+e, cpu+c
		}
		gib := mib * float64(b.N) / 1024
		rate, seqRate := mib*float64(b.N)/el.Seconds(), mib*float64(b.N)/seqEl.Seconds()
		b.ReportMetric(rate, "MiB/s")
		b.ReportMetric(seqRate, "seq-MiB/s")
		b.ReportMetric(rate/seqRate, "x-sequential")
		b.ReportMetric(rate/refRate, "x-tls-tcp")
		// CPU seconds of both ends (one process) per GiB moved.
		b.ReportMetric(cpu.Seconds()/gib, "cpu-s/GiB")
		b.ReportMetric(seqCPU.Seconds()/gib, "seq-cpu-s/GiB")
		if os.Getenv("STEERD_BENCH_STATS") != "" {
			for i := range p.pc.conns {
				if c := p.pc.conns[i].conn; c != nil {
					st := c.ConnectionStats()
					b.Logf("quic conn %d: sent %d pkts, lost %d pkts (%d bytes), cwnd %d B, srtt %v, min RTT %v", i, st.PacketsSent, st.PacketsLost, st.BytesLost, st.CongestionWindow, st.SmoothedRTT, st.MinRTT)
				}
			}
		}
	})
}

// cpuTime returns the CPU time (user + system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// baselineTLSTCP sends the files of dir over one TLS 1.3 connection on loopback TCP (mutual
// authentication with the same node certificates), with io.Copy into a file on the receiving
// side, and returns the elapsed time. It is the reference of what the machine does without QUIC.
func baselineTLSTCP(tb testing.TB, cl *cluster, dir, outDir string) time.Duration {
	tb.Helper()
	srvCfg := pki.ServerConfig(cl.certs["b"].TLSCertificate(), cl.ca.Pool(), func(string) bool { return true })
	srvCfg.NextProtos = nil
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	var rerr error
	go func() {
		defer wg.Done()
		conn, err := ln.Accept()
		if err != nil {
			rerr = err
			return
		}
		defer conn.Close()
		for _, f := range benchImage {
			out, err := os.Create(filepath.Join(outDir, f.name))
			if err != nil {
				rerr = err
				return
			}
			_, err = io.CopyN(out, conn, f.size)
			out.Close()
			if err != nil {
				rerr = err
				return
			}
		}
		conn.Write([]byte{1})
	}()
	start := time.Now()
	cliCfg := pki.ClientConfig(cl.certs["a"].TLSCertificate(), cl.ca.Pool(), "b")
	cliCfg.NextProtos = nil
	conn, err := tls.Dial("tcp", ln.Addr().String(), cliCfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	for _, f := range benchImage {
		in, err := os.Open(filepath.Join(dir, f.name))
		if err != nil {
			tb.Fatal(err)
		}
		_, err = io.Copy(conn, in)
		in.Close()
		if err != nil {
			tb.Fatal(err)
		}
	}
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		tb.Fatal(err)
	}
	d := time.Since(start)
	wg.Wait()
	if rerr != nil {
		tb.Fatal(rerr)
	}
	return d
}
