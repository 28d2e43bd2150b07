// Package dpbench measures how many packets per second node A forwards to a service on node B,
// for each forwarder, with one traffic generator: a UDP blaster in client 0's namespace sends
// QUIC short-header packets (RFC 9000 section 17.3.1; DCID from connid, naming an instance on
// node B) to node A's public address for a bounded time, and a sink in pod 0 of node 1 counts
// what arrives. Forwarders:
//
//   - "go-relay": a userspace Go UDP relay in node A (recvmmsg/sendmmsg batches of 64).
//   - "nft-dnat": an nftables prerouting DNAT rule in node A (kernel forwarding path).
//   - "xdp": steerd's XDP datapath (xdp_steer on node A's uplink encapsulates to node B, which
//     decapsulates and delivers to the pod): the hook is XDPForwarder in xdp.go.
//
// Every loop is bounded by the case duration; only testbed addresses are used.
package dpbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/tests/netns"
)

// ErrNotReady is wrapped when a forwarder cannot run on this checkout/machine; the message says why.
var ErrNotReady = errors.New("not ready")

// Ports of the measurement: the public port on node A and the sink port in the pod on node B.
const (
	PublicPort = 9000
	SinkPort   = 9001
	// PayloadLen is the UDP payload size in bytes of every generated packet.
	PayloadLen = 64
	// Batch is the sendmmsg/recvmmsg batch size.
	Batch = 64
)

// Setup is the testbed side of one case: where the blaster sends.
type Setup struct {
	TB *netns.Testbed
	// Public is node A's public service address (blaster destination).
	Public netip.AddrPort
	// Sink is the pod address on node B where packets must arrive.
	Sink netip.AddrPort
	// DCID is the connection ID put in every packet; it names instance SinkInstance.
	DCID         []byte
	SinkInstance connid.InstanceID
	CID          connid.Config
	// GenNote says why the generator is not the live-frame one ("" when it is).
	GenNote string

	gen generator
}

// Generator names the traffic generator of every case.
func (s *Setup) Generator() string { return s.gen.name() }

// Close removes the generator (its XDP programs).
func (s *Setup) Close() { s.gen.close() }

// Forwarder installs one way of forwarding Public -> Sink on node A (and B) and removes it.
type Forwarder interface {
	Name() string
	// Ready returns nil, or an error wrapping ErrNotReady that says why the case cannot run.
	Ready() error
	// Start installs the forwarder; stop removes it.
	Start(s *Setup) (stop func(), err error)
}

// Result is one case.
type Result struct {
	Forwarder, Generator string
	// Duration is the measured sending time.
	Duration time.Duration
	// Sent is what the generator handed to the network; Arrived what the pod's eth0 received
	// (its rx_packets counter: the forwarder's output); Received what the sink socket read.
	Sent, Arrived, Received uint64
	// Offered is the requested load in packets per second (RateUnpaced: as fast as the
	// generator goes).
	Offered float64
	// SentPPS, ArrivedPPS and PPS are the same per second of Duration.
	SentPPS, ArrivedPPS, PPS float64
	Status                   string // "ok", "error: ...", "not run: ..."
}

// NewSetup prepares the shared addresses, the DCID and the generator: GenXDPLive (falls back to
// GenSendmmsg when the kernel refuses it) or GenSendmmsg.
func NewSetup(tb *netns.Testbed, gen string) (*Setup, error) {
	cfg := connid.DefaultConfig(2, 5)
	codec, err := connid.NewCodec(cfg)
	if err != nil {
		return nil, fmt.Errorf("new setup: %w", err)
	}
	const inst = 0x0101
	dcid, err := codec.Encode(inst, []byte{1, 2, 3, 4, 5})
	if err != nil {
		return nil, fmt.Errorf("new setup: %w", err)
	}
	// Node A forwards packets back out of the link they came in on: no ICMP redirects.
	for _, k := range []string{"net.ipv4.conf.all.send_redirects", "net.ipv4.conf.eth0.send_redirects"} {
		if err := nsutil.Sysctl(tb.Nodes[0].NS, k, "0"); err != nil {
			return nil, err
		}
	}
	if err := nsutil.Sysctl(tb.Nodes[0].NS, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	s := &Setup{
		TB:     tb,
		Public: netip.AddrPortFrom(tb.Nodes[0].IPv4, PublicPort),
		Sink:   netip.AddrPortFrom(tb.Nodes[1].Pods[0].IPv4, SinkPort),
		DCID:   dcid, SinkInstance: inst, CID: cfg,
	}
	if gen == GenSendmmsg {
		s.gen = mmsgGen{}
	} else {
		s.gen, s.GenNote = newGenerator(s)
	}
	return s, nil
}

// Rates are the offered loads (packets per second) of a sweep: each case is measured at every
// rate in turn, up to the first two rates at which less than 90% of the offered load arrived,
// and at RateUnpaced (the generator as fast as it goes) at the end.
var Rates = []float64{50e3, 100e3, 200e3, 400e3, 800e3, 1.6e6, 3.2e6}

// RateUnpaced asks the generator for its full speed.
const RateUnpaced = 0

// Measure runs one case: it starts the sink and the forwarder once, then offers each load of
// Rates for d and records one Result per load (Result.Offered).
func Measure(ctx context.Context, s *Setup, f Forwarder, d time.Duration) []Result {
	base := Result{Forwarder: f.Name(), Generator: s.gen.name(), Duration: d}
	fail := func(status string) []Result { base.Status = status; return []Result{base} }
	if err := f.Ready(); err != nil {
		return fail("not run: " + err.Error())
	}
	var sinkConn *net.UDPConn
	err := nsutil.Do(s.TB.Nodes[1].Pods[0].NetNS, func() (err error) {
		sinkConn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(s.Sink))
		if err == nil {
			err = sinkConn.SetReadBuffer(8 << 20)
		}
		return err
	})
	if err != nil {
		return fail("error: sink: " + err.Error())
	}
	defer sinkConn.Close()
	stop, err := f.Start(s)
	if err != nil {
		return fail("error: " + err.Error())
	}
	defer stop()

	var received atomic.Uint64
	var wg sync.WaitGroup
	sinkDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		drain(sinkConn, sinkDone, &received)
	}()
	defer func() {
		close(sinkDone)
		sinkConn.SetReadDeadline(time.Now())
		wg.Wait()
	}()
	// Let the forwarder settle (nft rules, relay sockets) before the clock starts.
	time.Sleep(50 * time.Millisecond)
	var out []Result
	short := 0
	for _, rate := range append(append([]float64(nil), Rates...), RateUnpaced) {
		if short >= 2 && rate != RateUnpaced {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		res := base
		res.Offered = rate
		rx0, rxErr := s.podRx()
		got0 := received.Load()
		t0 := time.Now()
		sent, err := s.gen.blast(ctx, s, d, rate)
		res.Duration = time.Since(t0)
		// Packets in flight: give the path 200 ms to deliver them, then read the counters.
		time.Sleep(200 * time.Millisecond)
		rx1, rxErr1 := s.podRx()
		switch {
		case err != nil:
			res.Status = "error: generator: " + err.Error()
		case rxErr != nil || rxErr1 != nil:
			res.Status = "error: pod rx counter: " + errors.Join(rxErr, rxErr1).Error()
		default:
			res.Sent, res.Received, res.Arrived = sent, received.Load()-got0, rx1-rx0
			res.SentPPS = float64(sent) / res.Duration.Seconds()
			res.ArrivedPPS = float64(res.Arrived) / res.Duration.Seconds()
			res.PPS = float64(res.Received) / res.Duration.Seconds()
			res.Status = "ok"
			if res.Arrived == 0 {
				res.Status = "error: nothing arrived in the pod"
			}
		}
		if res.Arrived < res.Sent*9/10 {
			short++
		}
		out = append(out, res)
	}
	return out
}

// Best returns the result with the highest arrived rate among the ok ones (false if none).
func Best(rs []Result) (Result, bool) {
	var best Result
	ok := false
	for _, r := range rs {
		if r.Status == "ok" && (!ok || r.ArrivedPPS > best.ArrivedPPS) {
			best, ok = r, true
		}
	}
	return best, ok
}

// drain counts datagrams on c into n until done is closed (the caller also sets a past read
// deadline).
func drain(c *net.UDPConn, done chan struct{}, n *atomic.Uint64) {
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, Batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	for {
		select {
		case <-done:
			return
		default:
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, err := pc.ReadBatch(msgs, 0)
		n.Add(uint64(max(k, 0)))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
	}
}

func isNoBuf(err error) bool { return strings.Contains(err.Error(), "no buffer space") }

// Relay is the userspace Go UDP relay on node A.
type Relay struct{}

// Name implements Forwarder.
func (Relay) Name() string { return "go-relay" }

// Ready implements Forwarder.
func (Relay) Ready() error { return nil }

// Start implements Forwarder: a socket on node A's public address whose datagrams are re-sent,
// in batches, to the sink.
func (Relay) Start(s *Setup) (func(), error) {
	var in, out *net.UDPConn
	err := nsutil.Do(s.TB.Nodes[0].NS, func() (err error) {
		if in, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(s.Public)); err != nil {
			return err
		}
		_ = in.SetReadBuffer(8 << 20)
		out, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.Sink))
		return err
	})
	if err != nil {
		if in != nil {
			in.Close()
		}
		return nil, fmt.Errorf("start relay: %w", err)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		rp, wp := ipv4.NewPacketConn(in), ipv4.NewPacketConn(out)
		msgs := make([]ipv4.Message, Batch)
		outs := make([]ipv4.Message, Batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			select {
			case <-done:
				return
			default:
			}
			_ = in.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			k, err := rp.ReadBatch(msgs, 0)
			if k > 0 {
				for i := 0; i < k; i++ {
					outs[i].Buffers = [][]byte{msgs[i].Buffers[0][:msgs[i].N]}
				}
				_, _ = wp.WriteBatch(outs[:k], 0)
			}
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		in.SetReadDeadline(time.Now())
		<-finished
		in.Close()
		out.Close()
	}, nil
}

// NFTDNAT is an nftables DNAT rule on node A.
type NFTDNAT struct{}

// Name implements Forwarder.
func (NFTDNAT) Name() string { return "nft-dnat" }

// Ready implements Forwarder.
func (NFTDNAT) Ready() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("%w: nft not installed", ErrNotReady)
	}
	return nil
}

// Start implements Forwarder: table ip stdrbench, prerouting DNAT of UDP to the public port onto
// the sink; the kernel then forwards it out of eth0 toward node B.
func (NFTDNAT) Start(s *Setup) (func(), error) {
	ns := s.TB.Nodes[0].NS
	rules := fmt.Sprintf(`table ip stdrbench {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s udp dport %d dnat to %s
	}
}
`, s.Public.Addr(), s.Public.Port(), s.Sink)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start nft dnat: %s: %w", strings.TrimSpace(string(out)), err)
	}
	return func() {
		_ = exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "stdrbench").Run()
	}, nil
}

// podRx returns the rx_packets counter of eth0 in the sink's pod.
func (s *Setup) podRx() (uint64, error) {
	p := s.TB.Nodes[1].Pods[0]
	h, err := nsutil.Handle(p.NetNS)
	if err != nil {
		return 0, err
	}
	defer h.Delete()
	l, err := h.LinkByIndex(p.PodIndex)
	if err != nil {
		return 0, err
	}
	if st := l.Attrs().Statistics; st != nil {
		return st.RxPackets, nil
	}
	return 0, fmt.Errorf("no statistics on %s", l.Attrs().Name)
}
