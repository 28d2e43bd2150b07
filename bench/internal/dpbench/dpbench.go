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
}

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
	Forwarder string
	Duration  time.Duration
	Sent      uint64
	Received  uint64
	// SentPPS and PPS are packets per second sent by the blaster and received at the sink.
	SentPPS, PPS float64
	Status       string // "ok", "error: ...", "not run: ..."
}

// NewSetup prepares the shared addresses and DCID.
func NewSetup(tb *netns.Testbed) (*Setup, error) {
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
	return &Setup{
		TB:     tb,
		Public: netip.AddrPortFrom(tb.Nodes[0].IPv4, PublicPort),
		Sink:   netip.AddrPortFrom(tb.Nodes[1].Pods[0].IPv4, SinkPort),
		DCID:   dcid, SinkInstance: inst, CID: cfg,
	}, nil
}

// Measure runs one case for d: it starts the sink, the forwarder and the blaster, and counts.
func Measure(ctx context.Context, s *Setup, f Forwarder, d time.Duration) Result {
	res := Result{Forwarder: f.Name(), Duration: d}
	if err := f.Ready(); err != nil {
		res.Status = "not run: " + err.Error()
		return res
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
		res.Status = "error: sink: " + err.Error()
		return res
	}
	defer sinkConn.Close()
	stop, err := f.Start(s)
	if err != nil {
		res.Status = "error: " + err.Error()
		return res
	}
	defer stop()

	var received atomic.Uint64
	var wg sync.WaitGroup
	sinkDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		received.Store(drain(sinkConn, sinkDone))
	}()
	// Let the forwarder settle (nft rules, relay sockets) before the clock starts.
	time.Sleep(50 * time.Millisecond)
	sent, err := blast(ctx, s, d)
	// Packets in flight: give the path 200 ms to deliver them, then stop counting.
	time.Sleep(200 * time.Millisecond)
	close(sinkDone)
	sinkConn.SetReadDeadline(time.Now())
	wg.Wait()
	if err != nil {
		res.Status = "error: blaster: " + err.Error()
		return res
	}
	res.Sent, res.Received = sent, received.Load()
	res.SentPPS = float64(sent) / d.Seconds()
	res.PPS = float64(res.Received) / d.Seconds()
	res.Status = "ok"
	if res.Received == 0 {
		res.Status = "error: nothing arrived at the sink"
	}
	return res
}

// drain counts datagrams on c until done is closed (the caller also sets a past read deadline).
func drain(c *net.UDPConn, done chan struct{}) uint64 {
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, Batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	var n uint64
	for {
		select {
		case <-done:
			return n
		default:
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, err := pc.ReadBatch(msgs, 0)
		n += uint64(max(k, 0))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return n
		}
	}
}

// blast sends packets in batches from client 0 to s.Public for d and returns how many it sent.
func blast(ctx context.Context, s *Setup, d time.Duration) (uint64, error) {
	var c *net.UDPConn
	cl := s.TB.Clients[0]
	err := nsutil.Do(cl.NS, func() (err error) {
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
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		k, err := pc.WriteBatch(msgs, 0)
		sent += uint64(max(k, 0))
		if err != nil && !isNoBuf(err) {
			// ECONNREFUSED from a previous ICMP port unreachable: keep going.
			if !strings.Contains(err.Error(), "refused") {
				return sent, err
			}
		}
	}
	return sent, nil
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
