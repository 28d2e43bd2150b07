//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* steer.c: XDP program for the node's uplink. Steers QUIC packets to the
 * instance named by the server ID in their DCID: local pod (DNAT + redirect),
 * peer node (encapsulate + XDP_TX/redirect), or XDP_PASS. Decapsulates tunnel
 * packets from known peers. See docs/datapath.md. */
#include "encap.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int verdict(__u32 reason, int action)
{
	count(reason);
	return action;
}

/* deliver_local DNATs the packet to the instance's pod address and port,
 * remembers which public address the client used, and sends it to the pod. */
static __always_inline int deliver_local(struct xdp_md *ctx, struct pkt *p,
					 struct instance_val *inst)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct client_key ck = {};
	struct client_val cv = {};
	struct client_val *old;
	__u8 pod[16];
	__u32 reason = R_LOCAL;
	__u32 hix = inst->host_ifindex;
	int rc;

	/* A fenced pod (restored copy of an uncommitted migration) gets
	 * nothing: dropped, not passed (the kernel has no socket on the
	 * public port and would answer ICMP port unreachable). */
	if (bpf_map_lookup_elem(&fenced, &hix))
		return verdict(R_DROP_FENCED, XDP_DROP);
	if (p->family == FAM_V4) {
		if (!(inst->flags & INST_HAS_POD4))
			return verdict(R_DROP_NO_FAMILY, XDP_DROP);
		__builtin_memset(pod, 0, 10);
		pod[10] = 0xff;
		pod[11] = 0xff;
		__builtin_memcpy(pod + 12, inst->pod4, 4);
	} else {
		if (!(inst->flags & INST_HAS_POD6))
			return verdict(R_DROP_NO_FAMILY, XDP_DROP);
		__builtin_memcpy(pod, inst->pod6, 16);
	}
	if (pkt_addrs(p, data_end, ck.addr, cv.addr) || (void *)(p->udp + 1) > data_end)
		return verdict(R_DROP_ERROR, XDP_DROP);
	ck.port = bpf_ntohs(p->udp->source);
	ck.family = p->family;
	cv.port = bpf_ntohs(p->udp->dest);
	cv.family = p->family;
	old = bpf_map_lookup_elem(&clients, &ck);
	if (!old || __builtin_memcmp(old, &cv, sizeof(cv)) != 0)
		bpf_map_update_elem(&clients, &ck, &cv, BPF_ANY);

	if (rewrite_addr(p, data_end, 1, pod, inst->pod_port))
		return verdict(R_DROP_ERROR, XDP_DROP);
	rc = fib_xmit(ctx, p, data_end, R_LOCAL, &reason);
	if (rc < 0)
		return verdict(R_DROP_ERROR, XDP_DROP);
	return verdict(reason, rc);
}

/* steer_quic routes a parsed UDP packet by its DCID. from_tunnel forbids
 * forwarding again (a decapsulated packet is delivered here or dropped). */
static __always_inline int steer_quic(struct xdp_md *ctx, struct pkt *p, int from_tunnel)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u32 undeliverable = from_tunnel ? R_DROP_DECAP_UNDELIVERABLE : 0;
	struct svc_key sk = {};
	struct svc_val *svc;
	struct instance_val *inst = NULL;
	struct quic_info q;
	__u8 src[16];
	__u32 reason = 0;
	int rc;

	if (pkt_addrs(p, data_end, src, sk.addr) || (void *)(p->udp + 1) > data_end)
		return verdict(R_DROP_ERROR, XDP_DROP);
	sk.port = bpf_ntohs(p->udp->dest);
	sk.family = p->family;
	svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc) {
		/* A decapsulated packet is delivered only to a service address
		 * of the cluster (this node's or a peer's public address, which
		 * the daemon installs): the tunnel carries no authentication, so
		 * a spoofed peer source must not make this node answer from an
		 * arbitrary address (xdp_pod SNATs replies to the clients entry
		 * written below). See docs/datapath.md "Tunnel trust". */
		if (from_tunnel)
			return verdict(R_DROP_DECAP_NOT_SERVICE, XDP_DROP);
		return verdict(R_PASS_NOT_SERVICE, XDP_PASS);
	}

	if (parse_quic(p, data_end, &q))
		return verdict(from_tunnel ? undeliverable : R_DROP_MALFORMED, XDP_DROP);
	if (q.has_id) {
		inst = bpf_map_lookup_elem(&instances, &q.id);
		if (inst && inst->kind == INSTANCE_NONE)
			inst = NULL;
	}
	if (!inst && q.initial) {
		if (svc->flags & SVC_HAS_DEFAULT) {
			__u64 id = svc->default_instance;

			inst = bpf_map_lookup_elem(&instances, &id);
		} else if ((svc->flags & SVC_HAS_FALLBACK) && !from_tunnel) {
			rc = encap_forward(ctx, p, svc->fallback_peer, &reason);
			return verdict(reason, rc);
		}
	}
	if (!inst || inst->kind == INSTANCE_NONE)
		return from_tunnel ? verdict(undeliverable, XDP_DROP)
				   : verdict(R_PASS_UNKNOWN_INSTANCE, XDP_PASS);

	__sync_fetch_and_add(&inst->packets, 1);
	inst->last_seen_ns = bpf_ktime_get_ns();

	if (inst->kind == INSTANCE_LOCAL)
		return deliver_local(ctx, p, inst);
	if (from_tunnel)
		return verdict(undeliverable, XDP_DROP);
	rc = encap_forward(ctx, p, inst->peer_id, &reason);
	return verdict(reason, rc);
}

SEC("xdp")
int xdp_steer(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct addr_key pk = {};
	__u8 dst[16];
	struct pkt p = {};
	int r;

	r = parse_l3l4(ctx, &p);
	if (r != PARSE_OK)
		return verdict(r, XDP_PASS);

	if (tunnel_port != 0 && p.udp->dest == bpf_htons(tunnel_port)) {
		if (pkt_addrs(&p, data_end, pk.addr, dst))
			return verdict(R_DROP_ERROR, XDP_DROP);
		pk.family = p.family;
		if (bpf_map_lookup_elem(&peer_addrs, &pk)) {
			if (decap(ctx, &p))
				return verdict(R_DROP_MALFORMED, XDP_DROP);
			count(R_DECAPSULATED);
			r = parse_l3l4(ctx, &p);
			if (r != PARSE_OK)
				return verdict(R_DROP_DECAP_UNDELIVERABLE, XDP_DROP);
			return steer_quic(ctx, &p, 1);
		}
	}
	return steer_quic(ctx, &p, 0);
}
