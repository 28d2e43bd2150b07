/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parsing.h: header cursor parsing of Ethernet/IPv4/IPv6/UDP and of the QUIC
 * DCID (after xdp-tools headers/xdp/parsing_helpers.h). Every access is
 * preceded by a `ptr + 1 > data_end` check. */
#ifndef STEER_PARSING_H
#define STEER_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"

/* Server ID length in bytes (QUIC-LB draft-21 section 3), 1..SID_MAX_LEN; set by the loader. */
const volatile __u32 sid_len = 2;

#define PARSE_OK 0xff

/* pkt: result of parse_l3l4. Pointers are packet pointers valid until the
 * next bpf_xdp_adjust_head/tail. */
struct pkt {
	struct ethhdr *eth;
	void *l3;
	struct udphdr *udp;
	__u32 l3_len; /* IPv4 tot_len, or 40 + IPv6 payload_len */
	__u32 family; /* FAM_V4 / FAM_V6 */
};

struct ip6_opt_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
	__u8 type;     /* routing header: routing type */
	__u8 segleft;  /* routing header: segments left */
};

/* parse_l3l4 parses up to the UDP header. It returns PARSE_OK or the
 * steer_reason for which the packet is not ours (always an XDP_PASS reason). */
static __always_inline int parse_l3l4(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 ulen;

	if ((void *)(eth + 1) > data_end)
		return R_PASS_NOT_IP;
	p->eth = eth;
	p->l3 = eth + 1;

	if (eth->h_proto == bpf_htons(ETH_P_IP_)) {
		struct iphdr *iph = p->l3;
		__u32 hlen;

		if ((void *)(iph + 1) > data_end)
			return R_PASS_MALFORMED;
		if (iph->version != 4 || iph->ihl < 5)
			return R_PASS_MALFORMED;
		hlen = iph->ihl * 4;
		p->l3_len = bpf_ntohs(iph->tot_len);
		if (p->l3_len < hlen || (void *)iph + p->l3_len > data_end)
			return R_PASS_MALFORMED;
		/* RFC 791: MF flag or a non-zero fragment offset. */
		if (iph->frag_off & bpf_htons(0x3fff))
			return R_PASS_FRAGMENT;
		if (iph->protocol != IPPROTO_UDP_)
			return R_PASS_NOT_UDP;
		p->family = FAM_V4;
		udp = (void *)iph + hlen;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6_)) {
		struct ipv6hdr *ip6h = p->l3;
		void *cur;
		__u8 nh;
		int done = 0;

		if ((void *)(ip6h + 1) > data_end)
			return R_PASS_MALFORMED;
		if (ip6h->version != 6)
			return R_PASS_MALFORMED;
		p->l3_len = 40 + bpf_ntohs(ip6h->payload_len);
		if ((void *)ip6h + p->l3_len > data_end)
			return R_PASS_MALFORMED;
		nh = ip6h->nexthdr;
		cur = ip6h + 1;
		/* RFC 8200 section 4: walk only the extension headers we know,
		 * a bounded number of times. */
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			struct ip6_opt_hdr *oh = cur;

			if (nh == IPPROTO_UDP_) {
				done = 1;
				break;
			}
			if (nh == 44) /* Fragment */
				return R_PASS_FRAGMENT;
			if (nh != 0 && nh != 43 && nh != 60 && nh != 51)
				return R_PASS_NOT_UDP;
			if ((void *)(oh + 1) > data_end)
				return R_PASS_MALFORMED;
			/* Routing header with segments left: the destination is not final. */
			if (nh == 43 && oh->segleft != 0)
				return R_PASS_NOT_SERVICE;
			if (nh == 51) /* AH: RFC 4302 length in 4-octet units minus 2 */
				cur += ((__u32)oh->hdrlen + 2) * 4;
			else
				cur += ((__u32)oh->hdrlen + 1) * 8;
			nh = oh->nexthdr;
		}
		if (!done) {
			if (nh != IPPROTO_UDP_)
				return R_PASS_NOT_UDP;
		}
		p->family = FAM_V6;
		udp = cur;
	} else {
		return R_PASS_NOT_IP;
	}

	if ((void *)(udp + 1) > data_end)
		return R_PASS_MALFORMED;
	ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) || (void *)udp + ulen > p->l3 + p->l3_len)
		return R_PASS_MALFORMED;
	p->udp = udp;
	return PARSE_OK;
}

/* CID layout (QUIC-LB draft-21 section 3, connid.Config): total CID length
 * in bytes (1 + server ID + nonce, 8..20) and the config rotation (0..6)
 * of this node's CIDs; set by the loader. Length self-encoding is required. */
const volatile __u32 cid_len = 8;
const volatile __u32 config_rotation = 0;

/* quic_info: what steering needs from a QUIC header (RFC 9000 section 17). */
struct quic_info {
	__u64 id;       /* server ID as big-endian integer (QUIC-LB draft-21 section 3) */
	__u32 has_id;   /* DCID is one of our routable CIDs */
	__u32 initial;  /* v1/v2 Initial or 0-RTT, or a long header of an unknown version */
};

#define QUIC_MALFORMED (-1)

/* cid_ours checks octet 0 of a DCID of cid_len bytes (connid.Codec.Check):
 * config rotation not 0b111 (draft-21 section 3.1) and equal to ours, and
 * the self-encoded length (section 3.3) equal to cid_len - 1. */
static __always_inline int cid_ours(__u8 d0)
{
	return (d0 >> 5) != CR_UNROUTABLE && (d0 >> 5) == config_rotation &&
	       (__u32)(d0 & 0x1f) + 1 == cid_len;
}

/* sid_read reads the server ID that follows the first DCID octet at dcid. */
static __always_inline int sid_read(__u8 *dcid, void *data_end, __u64 *id)
{
	__u64 v = 0;

	for (int i = 0; i < SID_MAX_LEN; i++) {
		__u8 *b = dcid + 1 + i;

		if (i >= sid_len)
			break;
		if ((void *)(b + 1) > data_end)
			return QUIC_MALFORMED;
		v = (v << 8) | *b;
	}
	*id = v;
	return 0;
}

/* parse_quic reads the DCID of the UDP payload at p->udp with the rules of
 * connid.RouteInfo. Returns 0 or QUIC_MALFORMED (RouteInfo's KindInvalid:
 * the payload ends before the DCID, or a v1/v2 DCID longer than 20 bytes).
 *
 * Long header (RFC 9000 17.2, RFC 8999 5.1): flags(1) version(4)
 * dcid_len(1) dcid. Short header (RFC 9000 17.3): flags(1) dcid of cid_len
 * bytes. A server ID is read only when the DCID is cid_len bytes long and
 * cid_ours() accepts its first octet. */
static __always_inline int parse_quic(struct pkt *p, void *data_end, struct quic_info *q)
{
	__u8 *pl = (__u8 *)(p->udp + 1);
	__u32 plen = bpf_ntohs(p->udp->len) - sizeof(struct udphdr);
	__u8 *dcid;
	__u32 dlen;

	q->has_id = 0;
	q->initial = 0;
	q->id = 0;
	if (plen < 1 || (void *)(pl + 1) > data_end)
		return QUIC_MALFORMED;

	if (pl[0] & 0x80) {
		__u32 version, type;

		if (plen < 6 || (void *)(pl + 6) > data_end)
			return QUIC_MALFORMED;
		version = ((__u32)pl[1] << 24) | ((__u32)pl[2] << 16) |
			  ((__u32)pl[3] << 8) | pl[4];
		dlen = pl[5];
		type = (pl[0] >> 4) & 0x3;
		if (version == QUIC_V1)
			q->initial = type == 0 || type == 1; /* Initial, 0-RTT */
		else if (version == QUIC_V2)
			q->initial = type == 1 || type == 2; /* RFC 9369 section 3.2 */
		else if (version != 0)
			q->initial = 1; /* unknown version: answered by version negotiation */
		if ((version == QUIC_V1 || version == QUIC_V2) && dlen > QUIC_MAX_CID_LEN)
			return QUIC_MALFORMED;
		if (6 + dlen > plen)
			return QUIC_MALFORMED;
		if (dlen != cid_len)
			return 0;
		dcid = pl + 6;
	} else {
		if (1 + cid_len > plen)
			return QUIC_MALFORMED;
		dcid = pl + 1;
	}
	if ((void *)(dcid + 1) > data_end)
		return QUIC_MALFORMED;
	if (!cid_ours(dcid[0]))
		return 0;
	if (sid_read(dcid, data_end, &q->id))
		return QUIC_MALFORMED;
	q->has_id = 1;
	return 0;
}

#endif /* STEER_PARSING_H */
