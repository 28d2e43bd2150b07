package dpbench

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/datapath"
	"github.com/steerd/steerd/internal/nsutil"
)

// MapSizes are the numbers of instances (and clients-LRU entries) for the per-packet cost table.
var MapSizes = []int{1_000, 100_000, 1_000_000}

// Cost is the in-kernel per-packet cost of xdp_steer with N instances and N clients in its maps,
// from single BPF_PROG_TEST_RUN calls (repeat 1: xdp_steer rewrites its packet, so it is never
// repeated on its own output; datapath.RunXDP) with ingress_ifindex set to the node uplink.
type Cost struct {
	N int
	// Runs is the number of timed runs of each program; every run uses the next of Packets
	// distinct packets (random instances and clients among the N), so lookups are not all
	// served from one cache line.
	Runs, Packets int
	// Bare is xdp_parse (Ethernet/IP/UDP/QUIC DCID parse, no map access, XDP_PASS); Local is
	// xdp_steer delivering to a local pod (service + instance + clients lookups, DNAT, FIB,
	// XDP_REDIRECT); Forward is xdp_steer encapsulating to a peer (instance lookup, IPv4 outer
	// header, FIB, XDP_TX). Mean and median ns per packet.
	BareMean, LocalMean, ForwardMean       float64
	BareMedian, LocalMedian, ForwardMedian float64
	// FillTime is how long writing the 2N map entries took (batched updates).
	FillTime time.Duration
	// ServerIDLen is the server-ID length in bytes of the CIDs (3: up to 16M instances).
	ServerIDLen int
}

// LocalRatio and ForwardRatio are the mean cost relative to the bare parse program.
func (c Cost) LocalRatio() float64 { return c.LocalMean / c.BareMean }

// ForwardRatio is ForwardMean / BareMean.
func (c Cost) ForwardRatio() float64 { return c.ForwardMean / c.BareMean }

// Per-packet cost topology, inside one namespace of its own (the datapath tests' layout):
//
//	up0 (uplink 198.18.20.2/24, MTU 1600) <-> rt0; gateway 198.18.20.1 = costMACRouter (static)
//	hv0 (pod host veth) <-> pv0; 198.19.0.1 = costMACPod (static), 198.19.0.0/16 via hv0
var (
	costMACRouter = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	costMACUplink = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	costMACPod    = net.HardwareAddr{2, 0, 0, 0, 0, 0x99}
	costNode4     = netip.MustParseAddr("198.18.20.2")
	costGW4       = netip.MustParseAddr("198.18.20.1")
	costPod4      = netip.MustParseAddr("198.19.0.1")
	costPeer4     = netip.MustParseAddr("198.18.21.2")
)

const (
	costSvcPort  = 443
	costPodPort  = 4433
	costTunnel   = 6081
	costSIDLen   = 3
	costNonceLen = 5
	costPayload  = 1200 // bytes after the DCID, as datapath's BenchmarkXDP
)

var costSeq atomic.Int32

// PerPacketCost measures xdp_steer with n instances (half local, half on a peer) and n clients
// (an LRU sized 5/4 n so that all n stay) in its maps, and xdp_parse, in a namespace it creates
// (stdr-bpc-<pid>-<seq>) and deletes. runs is the number of timed runs per program (0 means
// 20000). The datapath's compiled map limits (MAX_INSTANCES 65536, MAX_CLIENTS 262144 in
// bpf/consts.h) are overridden with datapath.OpenSized: the code path is the shipped one, the
// tables are larger. Errors wrap ErrNotReady when BPF cannot be used (not root, memlock).
func PerPacketCost(n, runs int) (Cost, error) {
	c := Cost{N: n, Runs: runs, ServerIDLen: costSIDLen}
	if c.Runs <= 0 {
		c.Runs = 20000
	}
	if n < 2 {
		return c, fmt.Errorf("per-packet cost: need at least 2 instances, got %d", n)
	}
	if os.Geteuid() != 0 {
		return c, fmt.Errorf("%w: per-packet cost needs root (BPF, network namespaces)", ErrNotReady)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return c, fmt.Errorf("%w: remove memlock rlimit: %v", ErrNotReady, err)
	}
	ns := fmt.Sprintf("stdr-bpc-%d-%d", os.Getpid(), costSeq.Add(1))
	if err := nsutil.Create(ns); err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	defer nsutil.Delete(ns)
	upIx, hvIx, err := costTopology(ns)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	cidCfg := connid.DefaultConfig(costSIDLen, costNonceLen)
	cfg := datapath.Config{NodeAddrs: []netip.Addr{costNode4}, CID: cidCfg, TunnelPort: costTunnel, UplinkMTU: 1600}
	bare, err := datapath.Open(cfg)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	defer bare.Close()
	dp, err := datapath.OpenSized(cfg, datapath.BenchMapSizes{Instances: n, Clients: n + n/4})
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	defer dp.Close()

	pub := netip.AddrPortFrom(costNode4, costSvcPort)
	target := datapath.LocalTarget{HostIfindex: hvIx, Pod4: costPod4, PodPort: costPodPort, Public: []netip.AddrPort{pub}}
	err = nsutil.Do(ns, func() error {
		if err := dp.AddPeer(1, datapath.Peer{Addr: costPeer4}); err != nil {
			return err
		}
		if err := dp.SetLocal(0, target); err != nil { // egress entry + one instance the API way
			return err
		}
		if err := dp.SetRemote(1, 1); err != nil {
			return err
		}
		return dp.AddService(datapath.Service{Public: pub})
	})
	if err != nil {
		return c, fmt.Errorf("per-packet cost: program maps: %w", err)
	}
	local, err := dp.Maps().Instances.Lookup(0)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	remote, err := dp.Maps().Instances.Lookup(1)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	// Instance i is local for even i, remote for odd i; client j is 198.18.64.0 + j/1024,
	// port 1024 + j%1024 (map keys only: no traffic is sent), and recorded as talking to pub,
	// so that a lookup hits and xdp_steer does not rewrite the entry.
	fillStart := time.Now()
	ids := make([]uint64, n)
	vals := make([]datapath.InstanceValue, n)
	for i := range ids {
		ids[i] = uint64(i)
		if i%2 == 0 {
			vals[i] = local
		} else {
			vals[i] = remote
		}
	}
	if k, err := dp.PutInstances(ids, vals); err != nil || k != n {
		return c, fmt.Errorf("per-packet cost: fill instances: %d of %d: %v", k, n, err)
	}
	ids, vals = nil, nil
	ckeys := make([]datapath.ClientKey, n)
	cvals := make([]datapath.ClientValue, n)
	cv := datapath.ClientValueFor(pub)
	for j := range ckeys {
		ckeys[j] = datapath.ClientKeyFor(costClient(j))
		cvals[j] = cv
	}
	if k, err := dp.PutClients(ckeys, cvals); err != nil || k != n {
		return c, fmt.Errorf("per-packet cost: fill clients: %d of %d: %v", k, n, err)
	}
	ckeys, cvals = nil, nil
	c.FillTime = time.Since(fillStart)

	codec, err := connid.NewCodec(cidCfg)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	c.Packets = 4096 // the same for every n: only the table size changes
	mk := func(parity int) ([][]byte, error) {
		out := make([][]byte, c.Packets)
		for i := range out {
			inst := uint64(rng.IntN(n/2))*2 + uint64(parity)
			if inst >= uint64(n) {
				inst -= 2
			}
			dcid, err := codec.Encode(connid.InstanceID(inst), []byte{1, 2, 3, 4, 5})
			if err != nil {
				return nil, err
			}
			quic := connid.AppendShortHeaderPacket(nil, dcid, make([]byte, costPayload))
			out[i] = ipv4UDPFrame(costMACUplink, costMACRouter, costClient(rng.IntN(n)), pub, quic)
		}
		return out, nil
	}
	localPkts, err := mk(0)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	fwdPkts, err := mk(1)
	if err != nil {
		return c, fmt.Errorf("per-packet cost: %w", err)
	}
	err = nsutil.Do(ns, func() error {
		out := make([]byte, 2048)
		measure := func(prog *ebpf.Program, pkts [][]byte, want uint32, runs int) ([]float64, error) {
			d := make([]float64, 0, runs)
			for i := 0; i < runs; i++ {
				r, err := datapath.RunXDP(prog, pkts[i%len(pkts)], out, upIx)
				if err != nil {
					return nil, err
				}
				if r.Verdict != want {
					return nil, fmt.Errorf("verdict %d, want %d (packet %d)", r.Verdict, want, i%len(pkts))
				}
				d = append(d, float64(r.Duration.Nanoseconds()))
			}
			return d, nil
		}
		steer, parse := dp.Objects().Steer, bare.Objects().Parse
		// Warm-up: the first runs pay for page faults and cold caches.
		if _, err := measure(steer, localPkts, datapath.VerdictRedirect, 1000); err != nil {
			return fmt.Errorf("local warm-up: %w", err)
		}
		b, err := measure(parse, localPkts, datapath.VerdictPass, c.Runs)
		if err != nil {
			return fmt.Errorf("bare: %w", err)
		}
		l, err := measure(steer, localPkts, datapath.VerdictRedirect, c.Runs)
		if err != nil {
			return fmt.Errorf("local: %w", err)
		}
		f, err := measure(steer, fwdPkts, datapath.VerdictTX, c.Runs)
		if err != nil {
			return fmt.Errorf("forward: %w", err)
		}
		c.BareMean, c.BareMedian = meanMedian(b)
		c.LocalMean, c.LocalMedian = meanMedian(l)
		c.ForwardMean, c.ForwardMedian = meanMedian(f)
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("per-packet cost with %d entries: %w", n, err)
	}
	return c, nil
}

func costClient(j int) netip.AddrPort {
	a := netip.AddrFrom4([4]byte{198, 18, byte(64 + (j>>10)>>8), byte(j >> 10)})
	return netip.AddrPortFrom(a, uint16(1024+j%1024))
}

func meanMedian(x []float64) (mean, median float64) {
	s := slices.Clone(x)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return sum / float64(len(s)), s[len(s)/2]
}

// costTopology builds the per-packet cost links in ns and returns the uplink and pod host veth
// ifindexes.
func costTopology(ns string) (upIx, hvIx int, err error) {
	h, err := nsutil.Handle(ns)
	if err != nil {
		return 0, 0, err
	}
	defer h.Delete()
	mk := func(name, peer string, hw net.HardwareAddr, mtu int) (netlink.Link, error) {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.HardwareAddr = name, mtu, hw
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
			return nil, fmt.Errorf("add veth %s: %w", name, err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			return nil, err
		}
		p, err := h.LinkByName(peer)
		if err != nil {
			return nil, err
		}
		if err := h.LinkSetUp(l); err != nil {
			return nil, err
		}
		return l, h.LinkSetUp(p)
	}
	up, err := mk("up0", "rt0", costMACUplink, 1600)
	if err != nil {
		return 0, 0, err
	}
	hv, err := mk("hv0", "pv0", net.HardwareAddr{2, 0, 0, 0, 0, 0x10}, 1500)
	if err != nil {
		return 0, 0, err
	}
	upIx, hvIx = up.Attrs().Index, hv.Attrs().Index
	if err := nsutil.Sysctl(ns, "net.ipv4.ip_forward", "1"); err != nil {
		return 0, 0, err
	}
	ad, _ := netlink.ParseAddr("198.18.20.2/24")
	ad.Flags = unix.IFA_F_NODAD
	steps := []error{
		h.AddrAdd(up, ad),
		h.RouteAdd(&netlink.Route{LinkIndex: upIx, Gw: net.IP(costGW4.AsSlice())}),
		h.NeighAdd(&netlink.Neigh{LinkIndex: upIx, IP: net.IP(costGW4.AsSlice()), HardwareAddr: costMACRouter, State: netlink.NUD_PERMANENT}),
		h.RouteAdd(&netlink.Route{LinkIndex: hvIx, Dst: &net.IPNet{IP: net.IP{198, 19, 0, 0}, Mask: net.CIDRMask(16, 32)}}),
		h.NeighAdd(&netlink.Neigh{LinkIndex: hvIx, IP: net.IP(costPod4.AsSlice()), HardwareAddr: costMACPod, State: netlink.NUD_PERMANENT}),
	}
	for _, e := range steps {
		if e != nil {
			return 0, 0, fmt.Errorf("build cost topology: %w", e)
		}
	}
	return upIx, hvIx, nil
}

// ipv4UDPFrame builds an Ethernet + IPv4 (TTL 64, header checksum) + UDP (checksum over the
// pseudo-header, RFC 768) frame from src to dst carrying payload.
func ipv4UDPFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ulen := 8 + len(payload)
	b := make([]byte, 14+20+ulen)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+ulen))
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^csumFold(csumAdd(0, ip)))
	u := b[34:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(ulen))
	copy(u[8:], payload)
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(ulen))
	sum := ^csumFold(csumAdd(csumAdd(0, pseudo), u))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], sum)
	return b
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
