package datapath

// Exported helpers for benchmarks outside this package (bench/internal/dpbench): load the
// datapath with chosen map sizes, fill its maps in bulk, and run an XDP program once through
// BPF_PROG_TEST_RUN with a chosen ingress_ifindex, returning the kernel's own run time. The
// package's tests keep their own copies (bench_test.go kernelRun); these exist because
// cilium/ebpf's Program.Benchmark takes no context (no ingress_ifindex, which xdp_steer's
// bpf_fib_lookup and redirect checks need) and Program.Run does not return the duration.

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/steerd/steerd/loader"
)

// XDP verdicts (enum xdp_action in include/uapi/linux/bpf.h), as RunXDP returns them.
const (
	VerdictAborted  uint32 = 0
	VerdictDrop     uint32 = 1
	VerdictPass     uint32 = 2
	VerdictTX       uint32 = 3
	VerdictRedirect uint32 = 4
)

// ErrBenchRun wraps a failed BPF_PROG_TEST_RUN in RunXDP.
var ErrBenchRun = errors.New("bpf prog test run failed")

// BenchMapSizes overrides the max_entries of the instances (BPF_MAP_TYPE_HASH) and clients
// (BPF_MAP_TYPE_LRU_HASH) maps, whose compiled defaults are MAX_INSTANCES (65536) and
// MAX_CLIENTS (262144) in bpf/consts.h. 0 keeps the default.
type BenchMapSizes struct {
	Instances, Clients int
}

// OpenSized loads the datapath like Open with cfg.Uplink empty (nothing is attached) and cfg.
// PinDir empty (nothing is pinned), but with the instances and clients maps sized by sizes, so
// that a benchmark can hold more entries than a node's compiled limits. Objects().Parse and
// Objects().Pod are nil: load a default Datapath with Open for the bare parse program. Errors
// wrap ErrConfig for an invalid cfg, or carry the verifier log.
func OpenSized(cfg Config, sizes BenchMapSizes) (*Datapath, error) {
	if cfg.Uplink != "" || cfg.PinDir != "" {
		return nil, fmt.Errorf("open sized datapath: %w: Uplink and PinDir must be empty", ErrConfig)
	}
	if err := cfg.CID.Validate(); err != nil {
		return nil, fmt.Errorf("open sized datapath: %w: %w", ErrConfig, err)
	}
	if cfg.CID.Key != nil || !cfg.CID.LengthSelfEncoding {
		return nil, fmt.Errorf("open sized datapath: %w: XDP needs plaintext CIDs with length self-encoding", ErrConfig)
	}
	mtu := cfg.UplinkMTU
	if mtu == 0 {
		mtu = 1500
	}
	if cfg.MaxUDPPayload == 0 {
		cfg.MaxUDPPayload = DefaultMaxUDPPayload
	}
	spec, err := loader.SteerSpec()
	if err != nil {
		return nil, fmt.Errorf("open sized datapath: %w", err)
	}
	// The same load-time constants as loader.Load (bpf/consts.h const volatile globals).
	consts := map[string]any{
		"sid_len":         uint32(cfg.CID.ServerIDLen),
		"cid_len":         uint32(cfg.CID.CIDLen()),
		"config_rotation": uint32(cfg.CID.ConfigRotation),
		"tunnel_port":     cfg.TunnelPort,
		"uplink_mtu":      uint32(mtu),
	}
	var has4, has6 bool
	for _, a := range cfg.NodeAddrs {
		a = a.Unmap()
		switch {
		case a.Is4() && !has4:
			b := a.As4()
			consts["node4"] = uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
			consts["has_node4"] = uint8(1)
			has4 = true
		case a.Is6() && !has6:
			consts["node6"] = a.As16()
			consts["has_node6"] = uint8(1)
			has6 = true
		default:
			return nil, fmt.Errorf("open sized datapath: %w: node address %s duplicates a family", ErrConfig, a)
		}
	}
	for name, v := range consts {
		if vs, ok := spec.Variables[name]; ok {
			if err := vs.Set(v); err != nil {
				return nil, fmt.Errorf("open sized datapath: set constant %s: %w", name, err)
			}
		}
	}
	if sizes.Instances > 0 {
		spec.Maps["instances"].MaxEntries = uint32(sizes.Instances)
	}
	if sizes.Clients > 0 {
		spec.Maps["clients"].MaxEntries = uint32(sizes.Clients)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("open sized datapath: %w\nverifier log:\n%+v", err, ve)
		}
		return nil, fmt.Errorf("open sized datapath: %w", err)
	}
	objs := &loader.Objects{
		Steer: coll.DetachProgram("xdp_steer"),
		Maps: loader.Maps{
			Services: coll.DetachMap("services"), Instances: coll.DetachMap("instances"),
			Clients: coll.DetachMap("clients"), Peers: coll.DetachMap("peers"),
			PeerAddrs: coll.DetachMap("peer_addrs"), Egress: coll.DetachMap("egress"),
			Fenced: coll.DetachMap("fenced"), Counters: coll.DetachMap("counters"),
		},
	}
	coll.Close()
	d := &Datapath{cfg: cfg, objs: objs, mtu: mtu, pods: map[int]*podLinks{}}
	d.maps = Maps{
		Services:  NewMap[ServiceKey, ServiceValue](objs.Maps.Services, "services"),
		Instances: NewMap[uint64, InstanceValue](objs.Maps.Instances, "instances"),
		Clients:   NewMap[ClientKey, ClientValue](objs.Maps.Clients, "clients"),
		Peers:     NewMap[uint32, PeerValue](objs.Maps.Peers, "peers"),
		PeerAddrs: NewMap[AddrKey, uint32](objs.Maps.PeerAddrs, "peer_addrs"),
		Egress:    NewMap[EgressKey, EgressValue](objs.Maps.Egress, "egress"),
		Fenced:    NewMap[uint32, uint32](objs.Maps.Fenced, "fenced"),
		Counters:  Counters{objs.Maps.Counters},
	}
	return d, nil
}

// PutInstances writes ids[i] -> vals[i] into the instances map in batches
// (BPF_MAP_UPDATE_BATCH, one syscall per 4096 entries; per-entry updates where the kernel has no
// batch support). It does not check ids against the server-ID length: the caller fills a
// benchmark map. It returns the number written.
func (d *Datapath) PutInstances(ids []uint64, vals []InstanceValue) (int, error) {
	return putBatched(d.objs.Maps.Instances, ids, vals)
}

// PutClients writes keys[i] -> vals[i] into the clients LRU map like PutInstances.
func (d *Datapath) PutClients(keys []ClientKey, vals []ClientValue) (int, error) {
	return putBatched(d.objs.Maps.Clients, keys, vals)
}

func putBatched[K, V any](m *ebpf.Map, keys []K, vals []V) (int, error) {
	if len(keys) != len(vals) {
		return 0, fmt.Errorf("put batch: %w: %d keys, %d values", ErrConfig, len(keys), len(vals))
	}
	const chunk = 4096
	n := 0
	for i := 0; i < len(keys); i += chunk {
		j := min(i+chunk, len(keys))
		k, err := m.BatchUpdate(keys[i:j], vals[i:j], nil)
		n += k
		if errors.Is(err, ebpf.ErrNotSupported) {
			for x := i + k; x < j; x++ {
				if err := m.Put(keys[x], vals[x]); err != nil {
					return n, fmt.Errorf("put batch: %w", err)
				}
				n++
			}
			continue
		}
		if err != nil {
			return n, fmt.Errorf("put batch: %w", err)
		}
	}
	return n, nil
}

// ClientKeyFor returns the clients-map key of a client address and UDP port.
func ClientKeyFor(ap netip.AddrPort) ClientKey {
	a, f := addr16(ap.Addr())
	return ClientKey{Addr: a, Port: ap.Port(), Family: f}
}

// ClientValueFor returns the clients-map value recording the service address ap.
func ClientValueFor(ap netip.AddrPort) ClientValue {
	a, f := addr16(ap.Addr())
	return ClientValue{Addr: a, Port: ap.Port(), Family: f}
}

// XDPRun is the result of one RunXDP call.
type XDPRun struct {
	// Verdict is the program's return value (VerdictPass, VerdictTX, ...).
	Verdict uint32
	// Duration is the kernel's measured run time of the one run (bpf_attr.test.duration, ns
	// resolution; it includes the kernel's per-run overhead of the test harness).
	Duration time.Duration
	// Out is the packet after the run (encapsulated, rewritten), a prefix of the out buffer.
	Out []byte
}

// benchRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr (include/uapi/linux/bpf.h,
// struct "test").
type benchRunAttr struct {
	ProgFD, Retval, DataSizeIn, DataSizeOut uint32
	DataIn, DataOut                         uint64
	Repeat, Duration, CtxSizeIn, CtxSizeOut uint32
	CtxIn, CtxOut                           uint64
	Flags, CPU, BatchSize, _                uint32
}

// benchXDPMd mirrors struct xdp_md, the XDP test-run context.
type benchXDPMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// RunXDP runs prog once (repeat 1: the kernel copies pkt in afresh, so a program that rewrites
// its packet is never run on its own output) as if pkt arrived on ingressIfindex, which must
// exist in the calling thread's network namespace (lock the thread and enter it first). out
// receives the resulting packet; it must be at least len(pkt)+256 bytes (encapsulation grows the
// packet). Errors wrap ErrBenchRun with the errno.
func RunXDP(prog *ebpf.Program, pkt, out []byte, ingressIfindex int) (XDPRun, error) {
	if len(pkt) < 14 || len(out) < len(pkt)+256 {
		return XDPRun{}, fmt.Errorf("run xdp: %w: packet %d bytes, out buffer %d bytes", ErrConfig, len(pkt), len(out))
	}
	ctx := benchXDPMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ingressIfindex)}
	attr := benchRunAttr{
		ProgFD: uint32(prog.FD()), DataSizeIn: uint32(len(pkt)), DataSizeOut: uint32(len(out)),
		DataIn: uint64(uintptr(unsafe.Pointer(&pkt[0]))), DataOut: uint64(uintptr(unsafe.Pointer(&out[0]))),
		Repeat: 1, CtxSizeIn: uint32(unsafe.Sizeof(ctx)), CtxIn: uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(pkt)
	runtime.KeepAlive(out)
	runtime.KeepAlive(&ctx)
	if errno != 0 {
		return XDPRun{}, fmt.Errorf("run xdp: %w: %w", ErrBenchRun, errno)
	}
	n := min(int(attr.DataSizeOut), len(out))
	return XDPRun{Verdict: attr.Retval, Duration: time.Duration(attr.Duration), Out: out[:n]}, nil
}
