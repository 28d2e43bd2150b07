/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* consts.h: sizes, limits and the enums shared with Go (datapath.Reason,
 * datapath.InstanceKind). Every limit can be overridden with -D at build time.
 * Layout follows katran's balancer_consts.h. */
#ifndef STEER_CONSTS_H
#define STEER_CONSTS_H

#ifndef MAX_SERVICES
#define MAX_SERVICES 1024
#endif
#ifndef MAX_INSTANCES
#define MAX_INSTANCES 65536
#endif
#ifndef MAX_CLIENTS
#define MAX_CLIENTS 262144
#endif
#ifndef MAX_PEERS
#define MAX_PEERS 256
#endif
#ifndef MAX_EGRESS
#define MAX_EGRESS 4096
#endif
#ifndef MAX_PODS
#define MAX_PODS 4096
#endif
/* IPv6 extension headers walked before giving up (XDP_PASS, pass_not_udp). */
#ifndef MAX_IPV6_EXT
#define MAX_IPV6_EXT 6
#endif
/* Longest region the slow-path checksum loop sums (bytes). */
#ifndef MAX_CSUM_BYTES
#define MAX_CSUM_BYTES 4096
#endif

#define ETH_HLEN_ 14
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define IPPROTO_UDP_ 17
#define AF_INET_ 2
#define AF_INET6_ 10

/* Address family tags stored in map keys (not AF_*). */
#define FAM_V4 4
#define FAM_V6 6

/* Encapsulation overhead: outer IPv4 (20) + UDP (8); outer IPv6 (40) + UDP (8). */
#define ENCAP4_OVERHEAD 28
#define ENCAP6_OVERHEAD 48

/* QUIC (RFC 9000 section 17.2): a v1 DCID is at most 20 bytes. */
#define QUIC_MAX_CID_LEN 20
/* QUIC-LB draft-21 section 3: server ID is 1..15 bytes; steerd uses 1..6. */
#define SID_MAX_LEN 6
/* QUIC-LB draft-21 section 3.1: config rotation 0b111 marks an unroutable CID. */
#define CR_UNROUTABLE 0x7
#define QUIC_V1 0x00000001
#define QUIC_V2 0x6b3343cf /* RFC 9369 */

/* steer_reason indexes the per-CPU counters map. The Go mirror is
 * datapath.Reason; datapath/layout_test.go (TestReasonsMatchC) checks both stay in sync through BTF.
 * Append only: the numbers are an ABI with pinned maps. */
enum steer_reason {
	R_LOCAL = 0,               /* delivered (redirected) to a local pod veth */
	R_FORWARDED,               /* encapsulated to the peer that hosts the instance */
	R_DECAPSULATED,            /* tunnel packet from a known peer, outer header removed */
	R_SNAT,                    /* pod reply rewritten to the address the client used */
	R_SNAT_DEFAULT,            /* pod reply with no client entry: node's service address */
	R_PASS_NOT_IP,             /* not IPv4/IPv6 (ARP, VLAN, ...) */
	R_PASS_NOT_UDP,            /* IP but not UDP, or extension header chain too long */
	R_PASS_NOT_SERVICE,        /* UDP not addressed to a configured service */
	R_PASS_FRAGMENT,           /* IPv4 MF/offset or IPv6 fragment header */
	R_PASS_UNKNOWN_INSTANCE,   /* DCID names no instance and no default applies */
	R_PASS_NO_NEIGH,           /* rewritten, bpf_fib_lookup had no neighbour: kernel routes */
	R_PASS_FIB,                /* rewritten, bpf_fib_lookup failed otherwise: kernel routes */
	R_PASS_MALFORMED,          /* truncated/inconsistent IP or UDP header: kernel decides */
	R_DROP_MALFORMED,          /* UDP to a service whose QUIC header is malformed */
	R_DROP_TOO_BIG,            /* encapsulated packet would exceed the uplink MTU */
	R_DROP_DECAP_UNDELIVERABLE,/* decapsulated packet whose instance is not local here */
	R_DROP_NO_FAMILY,          /* instance or node has no address of the needed family */
	R_DROP_PEER_UNREACHABLE,   /* outer packet: peer unknown, no route or no neighbour */
	R_DROP_ERROR,              /* helper failure (bpf_xdp_adjust_head/tail) */
	R_DROP_DECAP_NOT_SERVICE,  /* decapsulated packet whose inner destination is no service address */
	R_DROP_FENCED,             /* from or to a fenced pod (uncommitted migration copy) */
	R_MAX,
};

/* instance_kind is instance_val.kind (Go: datapath.InstanceKind). */
enum instance_kind {
	INSTANCE_NONE = 0,
	INSTANCE_LOCAL = 1,  /* served by a pod on this node */
	INSTANCE_REMOTE = 2, /* served on peer node instance_val.peer_id */
};

/* svc_val.flags */
#define SVC_HAS_DEFAULT 0x1
#define SVC_HAS_FALLBACK 0x2
/* instance_val.flags */
#define INST_HAS_POD4 0x1
#define INST_HAS_POD6 0x2

#endif /* STEER_CONSTS_H */
