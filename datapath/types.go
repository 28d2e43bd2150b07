package datapath

import (
	"fmt"
	"net/netip"
)

// Map key and value structs. Each mirrors a C struct of bpf/structs.h byte
// for byte (little-endian host, natural alignment); layout_test.go checks
// sizes and field offsets against the BTF of the compiled object.
// Addresses are 16 bytes in network order, IPv4 as v4-mapped IPv6
// (::ffff:a.b.c.d); ports are in host order; Family is 4 or 6.

// Family tags stored in keys (FAM_V4/FAM_V6 in bpf/consts.h).
const (
	FamilyV4 uint8 = 4
	FamilyV6 uint8 = 6
)

// ServiceKey mirrors struct svc_key: a service's public address and UDP port.
type ServiceKey struct {
	Addr   [16]byte
	Port   uint16
	Family uint8
	Pad    uint8
}

// Service value flags (SVC_HAS_* in bpf/consts.h).
const (
	ServiceHasDefault  uint32 = 0x1
	ServiceHasFallback uint32 = 0x2
)

// ServiceValue mirrors struct svc_val.
type ServiceValue struct {
	DefaultInstance uint64 // local instance for Initial/0-RTT packets with an unknown DCID
	FallbackPeer    uint32 // peer for them when the service has no instance here
	Flags           uint32 // ServiceHasDefault | ServiceHasFallback
}

// InstanceKind mirrors enum instance_kind.
type InstanceKind uint32

// Instance kinds.
const (
	InstanceNone   InstanceKind = 0
	InstanceLocal  InstanceKind = 1 // served by a pod on this node
	InstanceRemote InstanceKind = 2 // served by a peer node
)

// Instance value flags (INST_HAS_* in bpf/consts.h).
const (
	InstanceHasPod4 uint16 = 0x1
	InstanceHasPod6 uint16 = 0x2
)

// InstanceValue mirrors struct instance_val; the key is the server ID as a
// uint64 (connid.InstanceID).
type InstanceValue struct {
	Kind        InstanceKind
	HostIfindex uint32 // pod's host-side veth (local)
	PeerID      uint32 // peers key (remote)
	PodPort     uint16 // pod UDP port (local)
	Flags       uint16 // InstanceHasPod4 | InstanceHasPod6
	Pod4        [4]byte
	Pod6        [16]byte
	Pad         uint32
	Packets     uint64 // packets steered with this instance
	LastSeenNs  uint64 // CLOCK_MONOTONIC ns of the last one (bpf_ktime_get_ns)
}

// ClientKey mirrors struct client_key: a client's address and port.
type ClientKey struct {
	Addr   [16]byte
	Port   uint16
	Family uint8
	Pad    uint8
}

// ClientValue mirrors struct client_val: the service address the client sent to.
type ClientValue struct {
	Addr   [16]byte
	Port   uint16
	Family uint8
	Pad    uint8
}

// PeerValue mirrors struct peer_val; the key is the PeerID.
type PeerValue struct {
	Addr   [16]byte
	Family uint8
	Pad    [3]byte
}

// AddrKey mirrors struct addr_key (peer_addrs key; the value is the PeerID).
type AddrKey struct {
	Addr   [16]byte
	Family uint8
	Pad    [3]byte
}

// EgressKey mirrors struct egress_key: a pod socket on a host-side veth.
type EgressKey struct {
	Ifindex uint32
	PodPort uint16
	Family  uint8
	Pad     uint8
}

// EgressValue mirrors struct egress_val: this node's public address of the service.
type EgressValue struct {
	Addr   [16]byte
	Port   uint16
	Family uint8
	Pad    uint8
}

// addr16 returns a's 16-byte form (v4-mapped for IPv4) and its family tag.
func addr16(a netip.Addr) ([16]byte, uint8) {
	if a.Is4() || a.Is4In6() {
		return netip.AddrFrom4(a.Unmap().As4()).As16(), FamilyV4
	}
	return a.As16(), FamilyV6
}

// addrFrom16 is the inverse of addr16.
func addrFrom16(b [16]byte, family uint8) netip.Addr {
	a := netip.AddrFrom16(b)
	if family == FamilyV4 {
		return a.Unmap()
	}
	return a
}

// Reason mirrors enum steer_reason (bpf/consts.h): the index of a counter.
type Reason uint32

// Counter reasons. The values are an ABI with the C enum (append only);
// layout_test.go (TestReasonsMatchC) checks both through BTF.
const (
	ReasonLocal                  Reason = iota // delivered (redirected) to a local pod veth
	ReasonForwarded                            // encapsulated to the peer that hosts the instance
	ReasonDecapsulated                         // tunnel packet from a known peer, outer header removed
	ReasonSNAT                                 // pod reply rewritten to the address the client used
	ReasonSNATDefault                          // pod reply with no client entry: node's service address
	ReasonPassNotIP                            // not IPv4/IPv6
	ReasonPassNotUDP                           // IP but not UDP, or extension header chain too long
	ReasonPassNotService                       // UDP not addressed to a configured service
	ReasonPassFragment                         // IPv4 MF/offset or IPv6 fragment header
	ReasonPassUnknownInstance                  // DCID names no instance and no default applies
	ReasonPassNoNeigh                          // rewritten, no neighbour entry: the kernel routes it
	ReasonPassFIB                              // rewritten, FIB lookup failed otherwise: the kernel routes it
	ReasonPassMalformed                        // truncated/inconsistent IP or UDP header
	ReasonDropMalformed                        // UDP to a service with a malformed QUIC header
	ReasonDropTooBig                           // encapsulated packet would exceed the uplink MTU
	ReasonDropDecapUndeliverable               // decapsulated packet whose instance is not local
	ReasonDropNoFamily                         // instance or node lacks an address of the family
	ReasonDropPeerUnreachable                  // peer unknown, or no route/neighbour to it
	ReasonDropError                            // helper failure
	ReasonDropDecapNotService                  // decapsulated packet whose inner destination is no service address
	ReasonDropFenced                           // from or to a fenced pod (Datapath.SetFenced)
	reasonMax
)

// reasonNames maps each Reason to its C enumerator name.
var reasonNames = [...]string{
	ReasonLocal:                  "R_LOCAL",
	ReasonForwarded:              "R_FORWARDED",
	ReasonDecapsulated:           "R_DECAPSULATED",
	ReasonSNAT:                   "R_SNAT",
	ReasonSNATDefault:            "R_SNAT_DEFAULT",
	ReasonPassNotIP:              "R_PASS_NOT_IP",
	ReasonPassNotUDP:             "R_PASS_NOT_UDP",
	ReasonPassNotService:         "R_PASS_NOT_SERVICE",
	ReasonPassFragment:           "R_PASS_FRAGMENT",
	ReasonPassUnknownInstance:    "R_PASS_UNKNOWN_INSTANCE",
	ReasonPassNoNeigh:            "R_PASS_NO_NEIGH",
	ReasonPassFIB:                "R_PASS_FIB",
	ReasonPassMalformed:          "R_PASS_MALFORMED",
	ReasonDropMalformed:          "R_DROP_MALFORMED",
	ReasonDropTooBig:             "R_DROP_TOO_BIG",
	ReasonDropDecapUndeliverable: "R_DROP_DECAP_UNDELIVERABLE",
	ReasonDropNoFamily:           "R_DROP_NO_FAMILY",
	ReasonDropPeerUnreachable:    "R_DROP_PEER_UNREACHABLE",
	ReasonDropError:              "R_DROP_ERROR",
	ReasonDropDecapNotService:    "R_DROP_DECAP_NOT_SERVICE",
	ReasonDropFenced:             "R_DROP_FENCED",
}

// Reasons returns all counter reasons in order.
func Reasons() []Reason {
	r := make([]Reason, reasonMax)
	for i := range r {
		r[i] = Reason(i)
	}
	return r
}

// String returns the metric-style name, e.g. "pass_not_service".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		n := reasonNames[r][2:]
		b := []byte(n)
		for i, c := range b {
			if c >= 'A' && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	return fmt.Sprintf("Reason(%d)", uint32(r))
}
