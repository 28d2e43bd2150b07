package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pki"
)

// DefaultPeerPort is the UDP port of the peer channel (QUIC) when a config gives none.
const DefaultPeerPort = 7443

// ServiceDef defines a service a node may run or receive.
type ServiceDef struct {
	// Name is the service (and container) name, a DNS label.
	Name string `json:"name"`
	// Port is the public UDP port clients reach the service on, on every node.
	Port uint16 `json:"port"`
	// PodPort is the UDP port inside the pod (0: Port).
	PodPort uint16 `json:"pod_port,omitempty"`
	// PodIPv4, PodIPv6 are the stable pod addresses (the same on every node).
	PodIPv4 netip.Addr `json:"pod_ipv4,omitzero"`
	PodIPv6 netip.Addr `json:"pod_ipv6,omitzero"`
	// Instance is the QUIC-LB server ID of the service's connections (connid.InstanceID).
	Instance uint64 `json:"instance"`
	// Bundle is the OCI bundle directory of the container on this node.
	Bundle string `json:"bundle,omitempty"`
	// Args override the bundle's process arguments.
	Args []string `json:"args,omitempty"`
}

// PeerDef is another node of the cluster.
type PeerDef struct {
	// Name is the node name, which its certificate must carry.
	Name string `json:"name"`
	// Address is the peer's node address (IPv4 or IPv6) for the peer channel and tunnels.
	Address netip.Addr `json:"address"`
	// Port is its peer-channel UDP port (0: DefaultPeerPort).
	Port uint16 `json:"port,omitempty"`
	// IPv4, IPv6 are the peer's public addresses clients use (the migration target); when empty,
	// Address stands for the family it belongs to.
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

// AddrPort returns the peer-channel address of the peer.
func (p PeerDef) AddrPort() netip.AddrPort {
	port := p.Port
	if port == 0 {
		port = DefaultPeerPort
	}
	return netip.AddrPortFrom(p.Address, port)
}

// Public returns the peer's public addresses (IPv4, IPv6).
func (p PeerDef) Public() (v4, v6 netip.Addr) {
	v4, v6 = p.IPv4, p.IPv6
	if !v4.IsValid() && p.Address.Is4() {
		v4 = p.Address
	}
	if !v6.IsValid() && p.Address.Is6() && !p.Address.Is4In6() {
		v6 = p.Address
	}
	return v4, v6
}

// Config is a node's configuration (a JSON file; flags override single fields).
type Config struct {
	// Node is this node's name (a DNS label; its certificate must carry it).
	Node string `json:"node"`
	// Uplink is the interface clients' packets arrive on (the XDP attach point; with DatapathNFT
	// the output interface of the SNAT rules).
	Uplink string `json:"uplink"`
	// IPv4, IPv6 are the node's public addresses.
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	// PeerListen is the UDP address of the peer channel (default: IPv4 or IPv6, DefaultPeerPort).
	PeerListen string `json:"peer_listen,omitempty"`
	// PKIDir holds ca.crt, <node>.crt and <node>.key (package pki).
	PKIDir string `json:"pki_dir"`
	// StateDir holds images and container state (default /var/lib/steerd/<node>).
	StateDir string `json:"state_dir,omitempty"`
	// ControlSocket is the control API socket (default api.DefaultSocket(Node)).
	ControlSocket string `json:"control_socket,omitempty"`
	// MetricsListen is the TCP address of the Prometheus endpoint ("" disables it).
	MetricsListen string `json:"metrics_listen,omitempty"`
	// PodNSPrefix prefixes pod namespace names (default "stdr-<node>-"); must start with "stdr-".
	PodNSPrefix string       `json:"pod_ns_prefix,omitempty"`
	Services    []ServiceDef `json:"services"`
	Peers       []PeerDef    `json:"peers"`
	// NoDatapath runs without the XDP datapath (control plane only; for tests and dry runs).
	NoDatapath bool `json:"no_datapath,omitempty"`
	// Datapath selects how client packets reach the pods (ignored with NoDatapath):
	// DatapathXDP "xdp" (default: XDP steering by the DCID's QUIC-LB server ID, forwarding of
	// in-flight packets to the node the service moved to) or DatapathNFT "nftables" (XDP off:
	// the kernel's nftables DNAT/SNAT and conntrack deliver the public port to the local pod; no
	// DCID steering, no forwarding of in-flight packets, conntrack state per client flow; type
	// NFT).
	Datapath string `json:"datapath,omitempty"`
	// PinRoot is the bpf filesystem directory under which the datapath pins its maps and XDP
	// links, one directory per network namespace (loader.PinDirFor), so that packets keep being
	// steered while steerd restarts or after it crashed; default loader.DefaultPinRoot
	// (/sys/fs/bpf/steerd); "none" pins nothing (the programs detach when steerd exits).
	PinRoot string `json:"pin_root,omitempty"`
	// DetachOnExit detaches the XDP programs and removes the pins when steerd exits (a node being
	// taken out of service, test clusters); by default they stay and the next steerd adopts them.
	DetachOnExit bool `json:"detach_on_exit,omitempty"`
	// TunnelPort is the UDP port of the node-to-node encapsulation (0: DefaultTunnelPort); every
	// node of a cluster uses the same.
	TunnelPort uint16 `json:"tunnel_port,omitempty"`
	// ServerIDLen and NonceLen are the QUIC-LB CID layout of every service (bytes; 0: 2 and 8,
	// kvservice's defaults): CID = 1 + ServerIDLen + NonceLen bytes (docs/architecture.md).
	ServerIDLen int `json:"server_id_len,omitempty"`
	NonceLen    int `json:"nonce_len,omitempty"`
	// Runtime selects the container engine: "runc" (package migrate: runc + CRIU) or "none" (no
	// containers: steerd only steers; Run and Migrate fail in the engine phases). Default: "runc"
	// when runc and criu are in PATH, else "none".
	Runtime string `json:"runtime,omitempty"`
	// MaxUDPPayload is the largest UDP payload the services send (bytes; their QUIC packet size,
	// quic-go Config.InitialPacketSize with DisablePathMTUDiscovery); 0: 1452
	// (datapath.DefaultMaxUDPPayload, a 1500-byte IPv4 path). Forwarded packets carry it inside
	// an inner IPv6 header (40 bytes) plus UDP (8) and the node-to-node encapsulation (28 bytes
	// over IPv4, 48 over IPv6), so the uplink MTU must be at least MaxUDPPayload + 76 (IPv4
	// peers) or + 96 (IPv6 peers); steerd refuses to start otherwise (docs/operations.md, "MTU").
	MaxUDPPayload int `json:"max_udp_payload,omitempty"`
}

// DefaultTunnelPort is the UDP port of the node-to-node tunnel when a config gives none.
const DefaultTunnelPort = 7444

// LoadConfig reads a JSON config file; unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("load config %s%s: %w", path, jsonPosition(b, err), err)
	}
	return &c, nil
}

// jsonPosition returns ":LINE:COLUMN" (1-based, column in bytes) of a JSON syntax or type error
// in b, or "" when err carries no offset.
func jsonPosition(b []byte, err error) string {
	var off int64
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	default:
		return ""
	}
	off = min(max(off, 1), int64(len(b)))
	line := 1 + bytes.Count(b[:off-1], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(b[:off-1], '\n')+1)
	return fmt.Sprintf(":%d:%d", line, col)
}

// Save writes the config as indented JSON (mode 0644).
func (c *Config) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	return nil
}

// Normalize fills defaults and validates the config.
func (c *Config) Normalize() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("config: %w: %s", ErrBadRequest, fmt.Sprintf(f, a...))
	}
	if err := pki.ValidateName(c.Node); err != nil {
		return fmt.Errorf("config: node: %w", err)
	}
	if c.Datapath == "" {
		c.Datapath = DatapathXDP
	}
	if c.Datapath != DatapathXDP && c.Datapath != DatapathNFT {
		return bad("datapath %q: want %s or %s", c.Datapath, DatapathXDP, DatapathNFT)
	}
	if c.NoDatapath && c.Datapath == DatapathNFT {
		return bad("no_datapath (--no-datapath, control plane only) and datapath %q exclude each other: for XDP off give only --datapath %s", DatapathNFT, DatapathNFT)
	}
	if c.Uplink == "" && !c.NoDatapath {
		return bad("uplink is required (\"uplink\", --uplink: the node's interface toward clients and peers), or no_datapath (--no-datapath) for a control plane only")
	}
	if c.IPv4.IsValid() && !c.IPv4.Is4() {
		return bad("ipv4 %s is not IPv4", c.IPv4)
	}
	if c.IPv6.IsValid() && (!c.IPv6.Is6() || c.IPv6.Is4In6()) {
		return bad("ipv6 %s is not IPv6", c.IPv6)
	}
	if !c.IPv4.IsValid() && !c.IPv6.IsValid() {
		return bad("node %s has no public address (ipv4/ipv6)", c.Node)
	}
	if c.PeerListen == "" {
		a := c.IPv4
		if !a.IsValid() {
			a = c.IPv6
		}
		c.PeerListen = netip.AddrPortFrom(a, DefaultPeerPort).String()
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join("/var/lib/steerd", c.Node)
	}
	if c.ControlSocket == "" {
		c.ControlSocket = api.DefaultSocket(c.Node)
	}
	if c.PodNSPrefix == "" {
		c.PodNSPrefix = "stdr-" + c.Node + "-"
	}
	if len(c.PodNSPrefix) < 5 || c.PodNSPrefix[:5] != "stdr-" {
		return bad("pod_ns_prefix %q must start with stdr-", c.PodNSPrefix)
	}
	if c.TunnelPort == 0 {
		c.TunnelPort = DefaultTunnelPort
	}
	if c.ServerIDLen == 0 {
		c.ServerIDLen = 2
	}
	if c.NonceLen == 0 {
		c.NonceLen = 8
	}
	if c.Runtime == "" {
		c.Runtime = "none"
		if RuntimeAvailable() {
			c.Runtime = "runc"
		}
	}
	if c.Runtime != "runc" && c.Runtime != "none" {
		return bad("runtime %q: want runc or none", c.Runtime)
	}
	if c.PKIDir == "" {
		return bad("pki_dir is required")
	}
	if c.MaxUDPPayload != 0 && (c.MaxUDPPayload < 1200 || c.MaxUDPPayload > 65527) {
		return bad("max_udp_payload %d: want 1200..65527 bytes (QUIC needs 1200, RFC 9000 section 14)", c.MaxUDPPayload)
	}
	seen := map[string]bool{}
	inst := map[uint64]string{}
	for i := range c.Services {
		s := &c.Services[i]
		if err := pki.ValidateName(s.Name); err != nil {
			return fmt.Errorf("config: service %d: %w", i, err)
		}
		if seen[s.Name] {
			return bad("service %s defined twice", s.Name)
		}
		seen[s.Name] = true
		if s.Port == 0 {
			return bad("service %s: port is required", s.Name)
		}
		if s.PodPort == 0 {
			s.PodPort = s.Port
		}
		if !s.PodIPv4.IsValid() && !s.PodIPv6.IsValid() {
			return bad("service %s: pod_ipv4 or pod_ipv6 is required", s.Name)
		}
		if s.Instance == 0 {
			return bad("service %s: instance (QUIC-LB server ID) must be > 0", s.Name)
		}
		if o, ok := inst[s.Instance]; ok {
			return bad("services %s and %s share instance %d", o, s.Name, s.Instance)
		}
		inst[s.Instance] = s.Name
	}
	peers := map[string]bool{}
	for i := range c.Peers {
		p := &c.Peers[i]
		if err := pki.ValidateName(p.Name); err != nil {
			return fmt.Errorf("config: peer %d: %w", i, err)
		}
		if p.Name == c.Node || peers[p.Name] {
			return bad("peer %s is this node or listed twice", p.Name)
		}
		peers[p.Name] = true
		if !p.Address.IsValid() {
			return bad("peer %s: address is required", p.Name)
		}
		if p.Port == 0 {
			p.Port = DefaultPeerPort
		}
	}
	return nil
}

// Service returns the definition of a service.
func (c *Config) Service(name string) (ServiceDef, bool) {
	for _, s := range c.Services {
		if s.Name == name {
			return s, true
		}
	}
	return ServiceDef{}, false
}

// Peer returns the definition of a peer.
func (c *Config) Peer(name string) (PeerDef, bool) {
	for _, p := range c.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return PeerDef{}, false
}

// PodNS returns the pod namespace name of a service on this node.
func (c *Config) PodNS(service string) string { return c.PodNSPrefix + service }

// target returns the public target of a service at addresses v4/v6.
func target(v4, v6 netip.Addr, port uint16) Target {
	var t Target
	if v4.IsValid() {
		t.IPv4 = netip.AddrPortFrom(v4, port)
	}
	if v6.IsValid() {
		t.IPv6 = netip.AddrPortFrom(v6, port)
	}
	return t
}

func itoa(u uint64) string { return strconv.FormatUint(u, 10) }
