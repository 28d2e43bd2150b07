package dpbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/loader"
)

// Generator names.
const (
	// GenXDPLive generates packets in the kernel: BPF_PROG_TEST_RUN in live-frame mode
	// (BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18; Documentation/bpf/bpf_prog_run.rst) runs a
	// one-instruction XDP_TX program Repeat times on client 0's uplink, and every frame leaves
	// through that veth toward the router, without a socket or an skb on the client side (the
	// xdp-trafficgen method). The router's client-facing veth runs xdp_pass, because XDP frames
	// sent into a veth are dropped unless its peer runs an XDP program.
	GenXDPLive = "xdp-live-frames"
	// GenSendmmsg is the fallback: GenSockets UDP sockets in client 0, one goroutine each,
	// sendmmsg batches of Batch (golang.org/x/net/ipv4 PacketConn.WriteBatch).
	GenSendmmsg = "sendmmsg"
	// GenSockets is the number of sockets/goroutines of the sendmmsg generator.
	GenSockets = 2
	// liveRepeat is the number of frames per BPF_PROG_TEST_RUN call of the live generator.
	liveRepeat = 1 << 15
)

// generator sends the measurement packets from client 0 to Setup.Public for a bounded time.
type generator interface {
	name() string
	// blast sends for d at rate packets per second (RateUnpaced: as fast as it can) and returns
	// the number of packets it handed to the network.
	blast(ctx context.Context, s *Setup, d time.Duration, rate float64) (uint64, error)
	close()
}

// newGenerator returns the live-frame generator when the kernel runs it, the sendmmsg one
// otherwise; note says why the fallback was taken.
func newGenerator(s *Setup) (g generator, note string) {
	lg, err := newLiveGen(s)
	if err == nil {
		return lg, ""
	}
	return mmsgGen{}, fmt.Sprintf("%s generator unavailable (%v): sendmmsg fallback", GenXDPLive, err)
}

// mmsgGen is the socket generator.
type mmsgGen struct{}

func (mmsgGen) name() string { return fmt.Sprintf("%s x%d sockets", GenSendmmsg, GenSockets) }
func (mmsgGen) close()       {}

func (mmsgGen) blast(ctx context.Context, s *Setup, d time.Duration, rate float64) (uint64, error) {
	var total atomic.Uint64
	var wg sync.WaitGroup
	errs := make([]error, GenSockets)
	end := time.Now().Add(d)
	for i := 0; i < GenSockets; i++ {
		wg.Go(func() {
			n, err := blastSocket(ctx, s, end, rate/GenSockets)
			total.Add(n)
			errs[i] = err
		})
	}
	wg.Wait()
	return total.Load(), errors.Join(errs...)
}

// blastSocket sends from one socket in client 0 until end, at rate packets per second (0: as
// fast as it can).
func blastSocket(ctx context.Context, s *Setup, end time.Time, rate float64) (uint64, error) {
	var c *net.UDPConn
	err := nsutil.Do(s.TB.Clients[0].NS, func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.Public))
		if err == nil {
			err = c.SetWriteBuffer(4 << 20)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	pkt := connid.AppendShortHeaderPacket(nil, s.DCID, make([]byte, PayloadLen-1-len(s.DCID)))
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, Batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{pkt}
	}
	var sent uint64
	start := time.Now()
	for time.Now().Before(end) && ctx.Err() == nil {
		pace(start, sent, rate)
		k, err := pc.WriteBatch(msgs, 0)
		sent += uint64(max(k, 0))
		if err != nil && !isNoBuf(err) && !errors.Is(err, unix.ECONNREFUSED) {
			return sent, err
		}
	}
	return sent, nil
}

// liveGen is the kernel generator.
type liveGen struct {
	prog    *ebpf.Program
	pass    *ebpf.Program
	detach  func()
	frame   []byte
	ifindex int
	ns      string
}

func (g *liveGen) name() string { return GenXDPLive }

func (g *liveGen) close() {
	g.detach()
	g.prog.Close()
	g.pass.Close()
}

// newLiveGen loads the XDP_TX program, attaches xdp_pass to the router's veth toward client 0,
// builds the frame (client MAC -> router MAC, IPv4/UDP with checksums) and checks with one short
// run that the kernel accepts live-frame mode.
func newLiveGen(s *Setup) (_ *liveGen, err error) {
	cl := s.TB.Clients[0]
	g := &liveGen{ns: cl.NS}
	g.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "gen_tx", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3 /* XDP_TX */), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load generator program: %w", err)
	}
	defer func() {
		if err != nil {
			g.prog.Close()
			if g.pass != nil {
				g.pass.Close()
			}
			if g.detach != nil {
				g.detach()
			}
		}
	}()
	var clientMAC, routerMAC net.HardwareAddr
	err = cl.Do(func() error {
		l, err := netlink.LinkByName(cl.Link)
		if err != nil {
			return err
		}
		g.ifindex, clientMAC = l.Attrs().Index, l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client link: %w", err)
	}
	if g.pass, err = loader.LoadPass(); err != nil {
		return nil, err
	}
	err = s.TB.Router.Do(func() error {
		rl, err := linkWithAddr(cl.Gateway4)
		if err != nil {
			return err
		}
		routerMAC = rl.Attrs().HardwareAddr
		l, _, err := loader.AttachXDP(g.pass, rl.Attrs().Index)
		if err != nil {
			return err
		}
		g.detach = func() { _ = l.Close() }
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("attach xdp_pass on the router's client link: %w", err)
	}
	quic := connid.AppendShortHeaderPacket(nil, s.DCID, make([]byte, PayloadLen-1-len(s.DCID)))
	g.frame = ipv4UDPFrame(routerMAC, clientMAC, netip.AddrPortFrom(cl.IPv4, 40000), s.Public, quic)
	if err := nsutil.Do(g.ns, func() error { _, err := g.run(64); return err }); err != nil {
		return nil, err
	}
	return g, nil
}

// linkWithAddr returns the link of the calling namespace that holds address a.
func linkWithAddr(a netip.Addr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if x, ok := netip.AddrFromSlice(ad.IP); ok && x.Unmap() == a {
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("no link with address %s", a)
}

type liveMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run sends n frames with one live-frame test run; the caller is inside client 0's namespace.
func (g *liveGen) run(n uint32) (uint64, error) {
	_, err := g.prog.Run(&ebpf.RunOptions{
		Data: g.frame, Repeat: n, Flags: unix.BPF_F_TEST_XDP_LIVE_FRAMES, BatchSize: Batch,
		Context: liveMd{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(g.ifindex)},
	})
	if err != nil {
		return 0, fmt.Errorf("live-frame test run: %w", err)
	}
	return uint64(n), nil
}

// blast runs in client 0's namespace for d; paced, every call sends about 2 ms of frames.
func (g *liveGen) blast(ctx context.Context, s *Setup, d time.Duration, rate float64) (uint64, error) {
	var sent uint64
	chunk := uint32(liveRepeat)
	if rate != RateUnpaced {
		chunk = uint32(max(32, min(liveRepeat, rate/500)))
	}
	err := nsutil.Do(g.ns, func() error {
		start := time.Now()
		for end := start.Add(d); time.Now().Before(end) && ctx.Err() == nil; {
			pace(start, sent, rate)
			n, err := g.run(chunk)
			sent += n
			if err != nil {
				return err
			}
		}
		return nil
	})
	return sent, err
}

// pace sleeps until sent packets are due at rate packets per second since start (no sleep for
// RateUnpaced).
func pace(start time.Time, sent uint64, rate float64) {
	if rate == RateUnpaced {
		return
	}
	due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}
