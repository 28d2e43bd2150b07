/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* structs.h: map keys and values. Every struct has a Go mirror in datapath/
 * (named in the comment); datapath/layout_test.go checks sizes and offsets
 * against the BTF of the compiled object. Addresses are 16 bytes in network
 * order, IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d); ports are in HOST order. */
#ifndef STEER_STRUCTS_H
#define STEER_STRUCTS_H

#include <linux/types.h>
#include "consts.h"

/* services key (Go: datapath.ServiceKey). */
struct svc_key {
	__u8 addr[16];
	__u16 port;
	__u8 family; /* FAM_V4 / FAM_V6 */
	__u8 pad;
};

/* services value (Go: datapath.ServiceValue). */
struct svc_val {
	__u64 default_instance; /* local instance for unknown Initial/0-RTT DCIDs */
	__u32 fallback_peer;    /* peer for them when no local instance exists */
	__u32 flags;            /* SVC_HAS_DEFAULT | SVC_HAS_FALLBACK */
};

/* instances value, key is the server ID as a big-endian u64 (Go: datapath.InstanceValue). */
struct instance_val {
	enum instance_kind kind; /* 4 bytes */
	__u32 host_ifindex; /* host-side veth of the pod (LOCAL) */
	__u32 peer_id;      /* peers key (REMOTE) */
	__u16 pod_port;     /* pod UDP port (LOCAL) */
	__u16 flags;        /* INST_HAS_POD4 | INST_HAS_POD6 */
	__u8 pod4[4];
	__u8 pod6[16];
	__u32 pad;
	__u64 packets;      /* packets steered with this instance (atomic add) */
	__u64 last_seen_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last one */
};

/* clients key (Go: datapath.ClientKey): the client's address and port. */
struct client_key {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* clients value (Go: datapath.ClientValue): the service address the client sent to. */
struct client_val {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* peers value, key is the peer id u32 (Go: datapath.PeerValue). */
struct peer_val {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* peer_addrs key (Go: datapath.AddrKey); value is the peer id u32. */
struct addr_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* egress key (Go: datapath.EgressKey): which pod socket sends, on which veth. */
struct egress_key {
	__u32 ifindex; /* host-side veth of the pod */
	__u16 pod_port;
	__u8 family;
	__u8 pad;
};

/* egress value (Go: datapath.EgressValue): node's public address of the service. */
struct egress_val {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

#endif /* STEER_STRUCTS_H */
