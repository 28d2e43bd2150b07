// Package loader loads the steerd XDP objects (bpf/steer.c, bpf/pod.c,
// bpf/pass.c, compiled by bpf2go and committed), sets their load-time
// constants, shares the maps between them, pins the maps per network
// namespace and attaches programs to interfaces.
//
// Pinning follows cloudflare/tubular: state for the network namespace with
// inode N lives in <root>/<N>/ (root defaults to /sys/fs/bpf/steerd); a fresh
// set of maps is pinned into a temporary directory next to it and renamed
// into place, so a reader never sees a half-populated directory. The XDP
// links are pinned there too (pin.go), so programs stay attached when the
// daemon exits; the directory records its namespace's cookie, so a directory
// left by a deleted namespace whose inode number was reused is discarded.
package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultPinRoot is where per-netns pin directories are created.
const DefaultPinRoot = "/sys/fs/bpf/steerd"

// MaxServerIDLen is the longest server ID the XDP parser reads (bytes;
// QUIC-LB draft-21 section 3 allows 1..15, steerd uses 1..6).
const MaxServerIDLen = 6

// Sentinel errors.
var (
	// ErrOptions reports an invalid Options field.
	ErrOptions = errors.New("invalid loader options")
	// ErrNotBPFFS reports a pin directory that is not on a bpf filesystem.
	ErrNotBPFFS = errors.New("not on a bpf filesystem")
	// ErrPinIncompatible reports a pinned map whose type, key, value or size
	// differs from the compiled object's (a pin directory of another version).
	ErrPinIncompatible = errors.New("pinned map incompatible with the program")
)

// Options are the load-time constants (const volatile globals in bpf/*.c)
// and the pinning location.
type Options struct {
	// ServerIDLen is the QUIC-LB server ID length in bytes (1..6), the
	// bytes after the first DCID octet that name an instance (sid_len).
	ServerIDLen int
	// CIDLen is the length in bytes of this deployment's CIDs (cid_len):
	// 1 + ServerIDLen + nonce length, 8..20 (connid.Config.CIDLen). Only
	// DCIDs of this length, with this config rotation and a matching
	// self-encoded length, are routed by server ID (connid.Codec.Check).
	CIDLen int
	// ConfigRotation is the config rotation of the CIDs, 0..6 (config_rotation).
	ConfigRotation uint8
	// TunnelPort is the UDP port of the node-to-node tunnel (tunnel_port);
	// 0 disables encapsulation and decapsulation.
	TunnelPort uint16
	// UplinkMTU is the uplink MTU in bytes (uplink_mtu): an encapsulated
	// packet longer than this is dropped and counted drop_too_big.
	// 0 means 1500.
	UplinkMTU int
	// Node4 and Node6 are this node's addresses used as the outer source
	// of encapsulated packets (node4/node6); either may be invalid (unset).
	Node4, Node6 netip.Addr
	// PinDir, when set, is the directory the maps are pinned in (usually
	// PinDirFor(DefaultPinRoot)). Maps already pinned there are reused, so
	// routing state survives a daemon restart.
	PinDir string
}

// Maps are the maps shared by the steer and pod programs (bpf/maps.h).
type Maps struct {
	Services  *ebpf.Map // services: struct svc_key -> struct svc_val
	Instances *ebpf.Map // instances: u64 server ID -> struct instance_val
	Clients   *ebpf.Map // clients (LRU): struct client_key -> struct client_val
	Peers     *ebpf.Map // peers: u32 peer id -> struct peer_val
	PeerAddrs *ebpf.Map // peer_addrs: struct addr_key -> u32 peer id
	Egress    *ebpf.Map // egress: struct egress_key -> struct egress_val
	Fenced    *ebpf.Map // fenced: u32 host veth ifindex -> u32 1
	Counters  *ebpf.Map // counters (per-CPU array): enum steer_reason -> u64
}

// Objects are the loaded programs and maps. Close releases the file
// descriptors; pinned maps stay pinned.
type Objects struct {
	Steer *ebpf.Program // xdp_steer, for the uplink
	Pod   *ebpf.Program // xdp_pod, for pod host-side veths
	Pass  *ebpf.Program // xdp_pass, for veth peers that receive redirected frames
	Parse *ebpf.Program // xdp_parse, bare parse-and-pass (benchmark baseline)
	Maps  Maps
}

// Close closes all programs and maps.
func (o *Objects) Close() error {
	var errs []error
	for _, c := range []interface{ Close() error }{o.Steer, o.Pod, o.Pass, o.Parse,
		o.Maps.Services, o.Maps.Instances, o.Maps.Clients, o.Maps.Peers,
		o.Maps.PeerAddrs, o.Maps.Egress, o.Maps.Fenced, o.Maps.Counters} {
		switch v := c.(type) {
		case *ebpf.Program:
			if v != nil {
				errs = append(errs, v.Close())
			}
		case *ebpf.Map:
			if v != nil {
				errs = append(errs, v.Close())
			}
		}
	}
	return errors.Join(errs...)
}

// SteerSpec returns the collection spec of bpf/steer.c (for BTF checks).
func SteerSpec() (*ebpf.CollectionSpec, error) { return loadSteer() }

// mapNames lists the shared maps by their C names.
var mapNames = []string{"services", "instances", "clients", "peers", "peer_addrs", "egress", "fenced", "counters"}

func (o Options) validate() error {
	if o.ServerIDLen < 1 || o.ServerIDLen > MaxServerIDLen {
		return fmt.Errorf("%w: server ID length %d not in 1..%d", ErrOptions, o.ServerIDLen, MaxServerIDLen)
	}
	if o.CIDLen < 1+o.ServerIDLen+4 || o.CIDLen > 20 || o.CIDLen < 8 {
		return fmt.Errorf("%w: CID length %d (want 8..20 and >= server ID length + 5)", ErrOptions, o.CIDLen)
	}
	if o.ConfigRotation > 6 {
		return fmt.Errorf("%w: config rotation %d not in 0..6", ErrOptions, o.ConfigRotation)
	}
	if o.UplinkMTU < 0 || o.UplinkMTU > 65535 {
		return fmt.Errorf("%w: uplink MTU %d", ErrOptions, o.UplinkMTU)
	}
	if o.Node4.IsValid() && !o.Node4.Is4() {
		return fmt.Errorf("%w: Node4 %s is not IPv4", ErrOptions, o.Node4)
	}
	if o.Node6.IsValid() && (!o.Node6.Is6() || o.Node6.Is4In6()) {
		return fmt.Errorf("%w: Node6 %s is not IPv6", ErrOptions, o.Node6)
	}
	return nil
}

// Load loads all programs with the constants from opts. With opts.PinDir
// set, maps pinned there are reused, otherwise new maps are pinned there
// (temp directory + rename). Verifier errors carry the full verifier log.
func Load(opts Options) (*Objects, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	mtu := opts.UplinkMTU
	if mtu == 0 {
		mtu = 1500
	}
	spec, err := loadSteer()
	if err != nil {
		return nil, fmt.Errorf("load steer spec: %w", err)
	}
	consts := map[string]any{
		"sid_len":         uint32(opts.ServerIDLen),
		"cid_len":         uint32(opts.CIDLen),
		"config_rotation": uint32(opts.ConfigRotation),
		"tunnel_port":     opts.TunnelPort,
		"uplink_mtu":      uint32(mtu),
	}
	if opts.Node4.IsValid() {
		a := opts.Node4.As4()
		consts["node4"] = uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24 // network order in memory (bpfel)
		consts["has_node4"] = uint8(1)
	}
	if opts.Node6.IsValid() {
		consts["node6"] = opts.Node6.As16()
		consts["has_node6"] = uint8(1)
	}
	if err := setConsts(spec, consts); err != nil {
		return nil, err
	}

	var (
		pinned  map[string]*ebpf.Map
		missing []string
	)
	if opts.PinDir != "" {
		if err := checkOwner(opts.PinDir); err != nil {
			return nil, fmt.Errorf("check pin dir: %w", err)
		}
		pinned, missing, err = loadPinned(opts.PinDir, spec)
		if err != nil {
			return nil, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: pinned})
	closePinned(pinned)
	if err != nil {
		return nil, verifierError("load steer", err)
	}
	o := &Objects{
		Steer: coll.DetachProgram("xdp_steer"),
		Maps: Maps{
			Services:  coll.DetachMap("services"),
			Instances: coll.DetachMap("instances"),
			Clients:   coll.DetachMap("clients"),
			Peers:     coll.DetachMap("peers"),
			PeerAddrs: coll.DetachMap("peer_addrs"),
			Egress:    coll.DetachMap("egress"),
			Fenced:    coll.DetachMap("fenced"),
			Counters:  coll.DetachMap("counters"),
		},
	}
	coll.Close()

	shared := map[string]*ebpf.Map{
		"services": o.Maps.Services, "instances": o.Maps.Instances, "clients": o.Maps.Clients,
		"peers": o.Maps.Peers, "peer_addrs": o.Maps.PeerAddrs, "egress": o.Maps.Egress,
		"fenced": o.Maps.Fenced, "counters": o.Maps.Counters,
	}
	podSpec, err := loadPod()
	if err != nil {
		o.Close()
		return nil, fmt.Errorf("load pod spec: %w", err)
	}
	if err := setConsts(podSpec, consts); err != nil {
		o.Close()
		return nil, err
	}
	podColl, err := ebpf.NewCollectionWithOptions(podSpec, ebpf.CollectionOptions{MapReplacements: shared})
	if err != nil {
		o.Close()
		return nil, verifierError("load pod", err)
	}
	o.Pod = podColl.DetachProgram("xdp_pod")
	podColl.Close()

	passSpec, err := loadPass()
	if err != nil {
		o.Close()
		return nil, fmt.Errorf("load pass spec: %w", err)
	}
	if err := setConsts(passSpec, consts); err != nil {
		o.Close()
		return nil, err
	}
	passColl, err := ebpf.NewCollection(passSpec)
	if err != nil {
		o.Close()
		return nil, verifierError("load pass", err)
	}
	o.Pass = passColl.DetachProgram("xdp_pass")
	o.Parse = passColl.DetachProgram("xdp_parse")
	passColl.Close()

	if opts.PinDir != "" && pinned == nil {
		if err := pinAll(opts.PinDir, shared); err != nil {
			o.Close()
			return nil, err
		}
	} else if opts.PinDir != "" {
		// An existing directory lacked these maps (added by a newer
		// version, or replaced because their layout changed).
		for _, n := range missing {
			if err := shared[n].Pin(filepath.Join(opts.PinDir, n)); err != nil {
				o.Close()
				return nil, fmt.Errorf("pin map %s: %w", n, err)
			}
		}
	}
	return o, nil
}

func setConsts(spec *ebpf.CollectionSpec, consts map[string]any) error {
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			continue
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set constant %s: %w", name, err)
		}
	}
	return nil
}

// verifierError wraps err and appends the full verifier log (%+v).
func verifierError(what string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%s: %w\nverifier log:\n%+v", what, err, ve)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// PinDirFor returns <root>/<inode of the calling thread's network namespace>.
func PinDirFor(root string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("stat network namespace: %w", err)
	}
	return filepath.Join(root, strconv.FormatUint(st.Ino, 10)), nil
}

// EnsureBPFFS mounts a bpf filesystem at mountpoint unless one is there.
func EnsureBPFFS(mountpoint string) error {
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fmt.Errorf("create bpffs mountpoint: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mountpoint, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", mountpoint, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", mountpoint, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mountpoint, err)
	}
	return nil
}

// loadPinned returns the maps pinned in dir that are compatible with spec
// (nil when dir does not exist) and the names of the maps the loader must
// create and pin there. A map missing from dir (added by a newer version) is
// created. The counters map is recreated when its size changed (a new
// enum steer_reason value; the old counts are lost, a warning is logged);
// any other incompatible map fails with an error wrapping ErrPinIncompatible,
// since its entries are routing state (remove the directory with Unpin).
func loadPinned(dir string, spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, []string, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	out := make(map[string]*ebpf.Map, len(mapNames))
	var missing []string
	for _, n := range mapNames {
		path := filepath.Join(dir, n)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			missing = append(missing, n)
			continue
		}
		if err != nil {
			closePinned(out)
			return nil, nil, fmt.Errorf("load pinned map %s: %w", n, err)
		}
		if cerr := spec.Maps[n].Compatible(m); cerr != nil {
			m.Close()
			if n != "counters" {
				closePinned(out)
				return nil, nil, fmt.Errorf("load pinned map %s: %w: %w", n, ErrPinIncompatible, cerr)
			}
			slog.Warn("loader: pinned counters map has another size, recreating it (counts reset)", "dir", dir, "err", cerr)
			if err := os.Remove(path); err != nil {
				closePinned(out)
				return nil, nil, fmt.Errorf("replace pinned map %s: %w", n, err)
			}
			missing = append(missing, n)
			continue
		}
		out[n] = m
	}
	return out, missing, nil
}

func closePinned(m map[string]*ebpf.Map) {
	for _, v := range m {
		v.Close()
	}
}

// pinAll pins maps into a temporary directory beside dir and renames it to
// dir (tubular style). dir's parent must be on a bpf filesystem.
func pinAll(dir string, maps map[string]*ebpf.Map) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create pin parent: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(parent, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", parent, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin maps in %s: %w", parent, ErrNotBPFFS)
	}
	tmp, err := os.MkdirTemp(parent, "tmp-") // bpffs forbids "." in names
	if err != nil {
		return fmt.Errorf("create temp pin dir: %w", err)
	}
	for name, m := range maps {
		if err := m.Pin(filepath.Join(tmp, name)); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if err := recordOwner(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("rename pin dir into place: %w", err)
	}
	return nil
}

// Unpin removes a pin directory created by Load: its maps and XDP link pins (a link whose
// last file descriptor is closed is then detached).
func Unpin(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pin dir: %w", err)
	}
	return nil
}

// LoadPass loads only xdp_pass, the pass-through program for veth peers (XDP_REDIRECT or XDP_TX
// into a veth is dropped unless the peer runs an XDP program), for hosts that run no steerd
// datapath, such as a test router. The caller closes the program.
func LoadPass() (*ebpf.Program, error) {
	spec, err := loadPass()
	if err != nil {
		return nil, fmt.Errorf("load pass spec: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, verifierError("load pass", err)
	}
	defer coll.Close()
	return coll.DetachProgram("xdp_pass"), nil
}
