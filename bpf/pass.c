//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* pass.c: xdp_pass returns XDP_PASS. A veth drops XDP_REDIRECTed/XDP_TXed
 * frames unless its PEER has an XDP program (or GRO/NAPI), so the loader
 * attaches this to the pod-side veth and to peers of veth uplinks.
 * xdp_parse is the "bare" program for benchmarks: the same parse up to the
 * DCID server ID as xdp_steer, then XDP_PASS, no maps. */
#include "parsing.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

volatile __u64 parse_sink;

SEC("xdp")
int xdp_parse(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct quic_info q;
	struct pkt p = {};

	if (parse_l3l4(ctx, &p) != PARSE_OK)
		return XDP_PASS;
	if (parse_quic(&p, data_end, &q) == 0 && q.has_id)
		parse_sink = q.id;
	return XDP_PASS;
}
