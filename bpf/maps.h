/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: BTF map definitions shared by steer.c and pod.c. The loader loads
 * steer.o first and hands its maps to pod.o (MapReplacements), so both
 * programs see the same maps. */
#ifndef STEER_MAPS_H
#define STEER_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INSTANCES);
	__type(key, __u64);
	__type(value, struct instance_val);
} instances SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CLIENTS);
	__type(key, struct client_key);
	__type(value, struct client_val);
} clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PEERS);
	__type(key, __u32);
	__type(value, struct peer_val);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PEERS);
	__type(key, struct addr_key);
	__type(value, __u32);
} peer_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EGRESS);
	__type(key, struct egress_key);
	__type(value, struct egress_val);
} egress SEC(".maps");

/* fenced: host-side veth ifindex of a pod -> 1. While present, xdp_pod drops
 * every packet the pod sends and xdp_steer drops packets for instances whose
 * local target is that veth (R_DROP_FENCED): a restored copy whose migration
 * is not committed must not talk to clients (Go: Datapath.SetFenced). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u32);
	__type(value, __u32);
} fenced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX);
	__type(key, enum steer_reason); /* 4 bytes; keeps the enum in BTF for Go */
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);
	if (c)
		*c += 1; /* per-CPU: no atomic needed */
}

#endif /* STEER_MAPS_H */
