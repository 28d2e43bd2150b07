package datapath

import (
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/internal/nsutil"
)

// testRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr
// (include/uapi/linux/bpf.h, struct "test").
type testRunAttr struct {
	ProgFD      uint32
	Retval      uint32
	DataSizeIn  uint32
	DataSizeOut uint32
	DataIn      uint64
	DataOut     uint64
	Repeat      uint32
	Duration    uint32
	CtxSizeIn   uint32
	CtxSizeOut  uint32
	CtxIn       uint64
	CtxOut      uint64
	Flags       uint32
	CPU         uint32
	BatchSize   uint32
	_           uint32
}

// kernelRun runs prog once on a fresh copy of pkt (Repeat 1: never repeat a
// program that rewrites its packet) received on ifindex, and returns the
// verdict and the kernel's measured run time in ns (attr.test.duration),
// which cilium/ebpf's Program.Run does not expose.
func kernelRun(prog *ebpf.Program, pkt, out []byte, ifindex int) (uint32, uint32, error) {
	ctx := xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)}
	attr := testRunAttr{
		ProgFD: uint32(prog.FD()), DataSizeIn: uint32(len(pkt)), DataSizeOut: uint32(len(out)),
		DataIn: uint64(uintptr(unsafe.Pointer(&pkt[0]))), DataOut: uint64(uintptr(unsafe.Pointer(&out[0]))),
		Repeat: 1, CtxSizeIn: uint32(unsafe.Sizeof(ctx)), CtxIn: uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return 0, 0, errno
	}
	return attr.Retval, attr.Duration, nil
}

// perPacket returns the mean in-kernel ns per packet over n single runs.
func perPacket(b *testing.B, e *env, prog *ebpf.Program, pkt []byte, want uint32, n int) float64 {
	b.Helper()
	var total uint64
	err := nsutil.Do(e.ns, func() error {
		out := make([]byte, len(pkt)+256)
		for i := 0; i < n; i++ {
			v, d, err := kernelRun(prog, pkt, out, e.upIx)
			if err != nil {
				return err
			}
			if v != want {
				b.Fatalf("verdict %d, want %d", v, want)
			}
			total += uint64(d)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return float64(total) / float64(n)
}

// BenchmarkXDP reports in-kernel ns/packet of the bare parse-and-pass
// program (xdp_parse: Ethernet/IP/UDP/QUIC DCID, no maps), of local
// delivery (service + instance lookups, DNAT, clients LRU, FIB, redirect)
// and of forwarding (encapsulation in IPv4 or IPv6 outer headers, FIB,
// XDP_TX), each as the mean of single BPF_PROG_RUN calls on 1250-byte
// packets, with the ratio of each to the bare program in the same process.
// Smoke-run in CI with -benchtime=1x.
func BenchmarkXDP(b *testing.B) {
	e := newEnv(b)
	objs := e.dp.Objects()
	local := fromClient(client4, node4, svcPort, shortHdr(cid(0, instLocal), make([]byte, 1200)...))
	fwd4 := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote4), make([]byte, 1200)...))
	fwd6 := fromClient(client4, node4, svcPort, shortHdr(cid(0, instRemote6), make([]byte, 1200)...))
	n := max(b.N, 2000)
	// Warm up (first runs pay for static key and page faults).
	perPacket(b, e, objs.Steer, local, xdpRedirect, 100)
	bare := perPacket(b, e, objs.Parse, local, xdpPass, n)
	loc := perPacket(b, e, objs.Steer, local, xdpRedirect, n)
	f4 := perPacket(b, e, objs.Steer, fwd4, xdpTX, n)
	f6 := perPacket(b, e, objs.Steer, fwd6, xdpTX, n)
	b.ReportMetric(bare, "bare-ns/pkt")
	b.ReportMetric(loc, "local-ns/pkt")
	b.ReportMetric(f4, "fwd4-ns/pkt")
	b.ReportMetric(f6, "fwd6-ns/pkt")
	b.ReportMetric(loc/bare, "local/bare")
	b.ReportMetric(f4/bare, "fwd4/bare")
	b.ReportMetric(f6/bare, "fwd6/bare")
	b.ReportMetric(0, "ns/op")
}
