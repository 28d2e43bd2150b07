//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* pod.c: XDP program for a pod's host-side veth; it sees packets leaving the
 * pod. UDP from a service's pod port is SNATed to the address the client
 * sent to (clients LRU, else the node's service address from the egress map)
 * and redirected to the uplink. Everything else is XDP_PASS, uncounted.
 * A fenced pod (fenced map) sends nothing: every frame is dropped. */
#include "encap.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xdp_pod(struct xdp_md *ctx)
{
	void *data_end;
	struct egress_key ek = {};
	struct egress_val *ev;
	struct client_key ck = {};
	struct client_val *cv;
	__u8 src[16];
	__u8 *pub;
	__u16 pub_port;
	__u32 reason = R_SNAT;
	__u32 ix = ctx->ingress_ifindex;
	struct pkt p = {};
	int rc;

	if (bpf_map_lookup_elem(&fenced, &ix)) {
		count(R_DROP_FENCED);
		return XDP_DROP;
	}
	if (parse_l3l4(ctx, &p) != PARSE_OK)
		return XDP_PASS;
	data_end = (void *)(long)ctx->data_end;
	ek.ifindex = ctx->ingress_ifindex;
	ek.pod_port = bpf_ntohs(p.udp->source);
	ek.family = p.family;
	ev = bpf_map_lookup_elem(&egress, &ek);
	if (!ev)
		return XDP_PASS;
	if (pkt_addrs(&p, data_end, src, ck.addr) || (void *)(p.udp + 1) > data_end)
		return XDP_PASS;
	ck.port = bpf_ntohs(p.udp->dest);
	ck.family = p.family;
	cv = bpf_map_lookup_elem(&clients, &ck);
	if (cv && cv->family == p.family) {
		pub = cv->addr;
		pub_port = cv->port;
	} else {
		pub = ev->addr;
		pub_port = ev->port;
		reason = R_SNAT_DEFAULT;
	}
	if (rewrite_addr(&p, data_end, 0, pub, pub_port)) {
		count(R_DROP_ERROR);
		return XDP_DROP;
	}
	count(reason);
	rc = fib_xmit(ctx, &p, data_end, reason, &reason);
	if (rc < 0) {
		count(R_DROP_ERROR);
		return XDP_DROP;
	}
	if (rc == XDP_PASS)
		count(reason);
	return rc;
}
