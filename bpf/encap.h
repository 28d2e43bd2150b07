/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* encap.h: address rewrites (DNAT/SNAT), outer IPv4/UDP and IPv6/UDP
 * encapsulation and decapsulation, and the FIB-based transmit (after katran
 * pckt_encap.h). */
#ifndef STEER_ENCAP_H
#define STEER_ENCAP_H

#include "parsing.h"
#include "csum.h"
#include "maps.h"

/* Tunnel UDP port (host order); 0 disables encapsulation and decapsulation. */
const volatile __u16 tunnel_port = 0;
/* Largest L3 packet the uplink carries (its MTU), checked before encapsulating. */
const volatile __u32 uplink_mtu = 1500;
/* This node's addresses used as outer source (network order); has_node4/6 say if set. */
const volatile __u32 node4 = 0;
const volatile __u8 node6[16] = {};
const volatile __u8 has_node4 = 0;
const volatile __u8 has_node6 = 0;

static __always_inline void addr_mapped4(__u8 *dst, __u32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

/* pkt_addrs copies source and destination address (v4-mapped for IPv4). */
static __always_inline int pkt_addrs(struct pkt *p, void *data_end, __u8 *src, __u8 *dst)
{
	if (p->family == FAM_V4) {
		struct iphdr *iph = p->l3;

		if ((void *)(iph + 1) > data_end)
			return -1;
		addr_mapped4(src, iph->saddr);
		addr_mapped4(dst, iph->daddr);
	} else {
		struct ipv6hdr *ip6h = p->l3;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__builtin_memcpy(src, &ip6h->saddr, 16);
		__builtin_memcpy(dst, &ip6h->daddr, 16);
	}
	return 0;
}

/* rewrite_addr replaces the source (which == 0) or destination (which == 1)
 * address and port, updating the IPv4 header and UDP checksums incrementally.
 * addr16 is v4-mapped for IPv4. An IPv4 UDP checksum of 0 (none) stays 0. */
static __always_inline int rewrite_addr(struct pkt *p, void *data_end, int which,
					const __u8 *addr16, __u16 port_host)
{
	struct udphdr *udp = p->udp;
	__u16 nport = bpf_htons(port_host);
	__u64 diff;

	if ((void *)(udp + 1) > data_end)
		return -1;
	if (p->family == FAM_V4) {
		struct iphdr *iph = p->l3;
		__u32 na, oa;

		if ((void *)(iph + 1) > data_end)
			return -1;
		__builtin_memcpy(&na, addr16 + 12, 4);
		oa = which ? iph->daddr : iph->saddr;
		diff = csum_diff32(oa, na);
		csum_apply(&iph->check, diff, 0);
		if (which)
			iph->daddr = na;
		else
			iph->saddr = na;
		if (udp->check) {
			diff += csum_diff16(which ? udp->dest : udp->source, nport);
			csum_apply(&udp->check, diff, 1);
		}
	} else {
		struct ipv6hdr *ip6h = p->l3;
		__u32 na[4], oa[4];

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__builtin_memcpy(na, addr16, 16);
		__builtin_memcpy(oa, which ? (void *)&ip6h->daddr : (void *)&ip6h->saddr, 16);
		diff = csum_diff128(oa, na) + csum_diff16(which ? udp->dest : udp->source, nport);
		csum_apply(&udp->check, diff, 1);
		if (which)
			__builtin_memcpy(&ip6h->daddr, na, 16);
		else
			__builtin_memcpy(&ip6h->saddr, na, 16);
	}
	if (which)
		udp->dest = nport;
	else
		udp->source = nport;
	return 0;
}

/* fib_xmit looks up the route for the packet at p (already rewritten) and
 * sends it: XDP_TX when the egress is the ingress device, else
 * bpf_redirect. *reason is set to ok_reason, R_PASS_NO_NEIGH or R_PASS_FIB. */
static __always_inline int fib_xmit(struct xdp_md *ctx, struct pkt *p, void *data_end,
				    __u32 ok_reason, __u32 *reason)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	if ((void *)(p->eth + 1) > data_end || (void *)(p->udp + 1) > data_end)
		return -1;
	fib.l4_protocol = IPPROTO_UDP_;
	fib.sport = p->udp->source;
	fib.dport = p->udp->dest;
	fib.tot_len = p->l3_len;
	fib.ifindex = ctx->ingress_ifindex;
	if (p->family == FAM_V4) {
		struct iphdr *iph = p->l3;

		if ((void *)(iph + 1) > data_end)
			return -1;
		fib.family = AF_INET_;
		fib.tos = iph->tos;
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
	} else {
		struct ipv6hdr *ip6h = p->l3;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		fib.family = AF_INET6_;
		__builtin_memcpy(fib.ipv6_src, &ip6h->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6h->daddr, 16);
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(p->eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(p->eth->h_source, fib.smac, ETH_ALEN);
		*reason = ok_reason;
		if (fib.ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(fib.ifindex, 0);
	}
	*reason = rc == BPF_FIB_LKUP_RET_NO_NEIGH ? R_PASS_NO_NEIGH : R_PASS_FIB;
	return XDP_PASS;
}

/* inner_sum returns the one's complement sum over the whole IP packet at p
 * (from its IP header, p->l3_len bytes), used for the outer IPv6 UDP checksum.
 * Fast path (Linux "local checksum offload" identity): a UDP segment with a
 * valid non-zero checksum sums to ~pseudo-header, so only the IP header
 * (and IPv6 extension headers) needs summing. An IPv4 UDP checksum of 0
 * forces a sum over the whole packet. Returns (__u64)-1 on failure. */
static __always_inline __u64 inner_sum(struct xdp_md *ctx, struct pkt *p, void *data_end)
{
	void *data = (void *)(long)ctx->data;
	struct udphdr *udp = p->udp;
	__u32 l3_off = p->l3 - data;
	__u32 hlen = (void *)udp - p->l3;
	__u64 pseudo, h;

	if ((void *)(udp + 1) > data_end)
		return (__u64)-1;
	if (udp->check == 0)
		return csum_pkt(ctx, l3_off, p->l3_len);
	h = csum_pkt(ctx, l3_off, hlen);
	if (h == (__u64)-1)
		return h;
	pseudo = (__u64)udp->len + bpf_htons(IPPROTO_UDP_);
	if (p->family == FAM_V4) {
		struct iphdr *iph = p->l3;

		if ((void *)(iph + 1) > data_end)
			return (__u64)-1;
		pseudo += (__u64)iph->saddr + iph->daddr;
	} else {
		struct ipv6hdr *ip6h = p->l3;
		__u32 a[8];

		if ((void *)(ip6h + 1) > data_end)
			return (__u64)-1;
		__builtin_memcpy(a, &ip6h->saddr, 32);
		pseudo += (__u64)a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
	}
	return h + (__u16)~csum_fold(pseudo);
}

/* encap_forward encapsulates the packet (from its IP header on, unchanged)
 * in outer IPv4/UDP or IPv6/UDP to the peer's tunnel_port and transmits it.
 * Sets *reason; returns the XDP verdict. */
static __always_inline int encap_forward(struct xdp_md *ctx, struct pkt *p, __u32 peer_id,
					 __u32 *reason)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct peer_val *peer = bpf_map_lookup_elem(&peers, &peer_id);
	__u32 inner_len = p->l3_len, frame_l3, overhead, h;
	__u64 isum = 0;
	__u16 sport;
	struct pkt o;
	int rc;

	if (!peer || tunnel_port == 0) {
		*reason = R_DROP_PEER_UNREACHABLE;
		return XDP_DROP;
	}
	if ((peer->family == FAM_V4 && !has_node4) || (peer->family == FAM_V6 && !has_node6)) {
		*reason = R_DROP_NO_FAMILY;
		return XDP_DROP;
	}
	overhead = peer->family == FAM_V4 ? ENCAP4_OVERHEAD : ENCAP6_OVERHEAD;
	if (inner_len + overhead > uplink_mtu) {
		*reason = R_DROP_TOO_BIG;
		return XDP_DROP;
	}
	if ((void *)(p->udp + 1) > data_end) {
		*reason = R_DROP_ERROR;
		return XDP_DROP;
	}
	/* Outer source port: flow entropy for RSS/ECMP on the path (RFC 8085 5.1.1). */
	h = ((__u32)p->udp->source << 16 | p->udp->dest) ^ inner_len;
	if (p->family == FAM_V4) {
		struct iphdr *iph = p->l3;

		if ((void *)(iph + 1) > data_end) {
			*reason = R_DROP_ERROR;
			return XDP_DROP;
		}
		h ^= iph->saddr;
	}
	h *= 0x9E3779B1u;
	sport = 0xC000 | ((h >> 16) & 0x3fff);
	if (peer->family == FAM_V6) {
		isum = inner_sum(ctx, p, data_end);
		if (isum == (__u64)-1) {
			*reason = R_DROP_TOO_BIG;
			return XDP_DROP;
		}
	}
	/* Trim Ethernet padding so the outer length is exactly the inner IP length. */
	frame_l3 = data_end - data - ETH_HLEN_;
	if (frame_l3 > inner_len && bpf_xdp_adjust_tail(ctx, -(int)(frame_l3 - inner_len))) {
		*reason = R_DROP_ERROR;
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)overhead)) {
		*reason = R_DROP_ERROR;
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN_ + ENCAP6_OVERHEAD > data_end ||
	    data + ETH_HLEN_ + overhead + ETH_HLEN_ > data_end) {
		*reason = R_DROP_ERROR;
		return XDP_DROP;
	}
	__builtin_memmove(data, data + overhead, ETH_HLEN_);
	o.eth = data;
	o.l3 = data + ETH_HLEN_;
	o.l3_len = inner_len + overhead;
	if (peer->family == FAM_V4) {
		struct iphdr *oh = o.l3;
		__u32 w[5];
		__u32 dst;

		o.eth->h_proto = bpf_htons(ETH_P_IP_);
		o.family = FAM_V4;
		__builtin_memcpy(&dst, peer->addr + 12, 4);
		oh->version = 4;
		oh->ihl = 5;
		oh->tos = 0;
		oh->tot_len = bpf_htons(inner_len + ENCAP4_OVERHEAD);
		oh->id = 0;
		oh->frag_off = bpf_htons(0x4000); /* DF: CheckMTU guarantees the fit */
		oh->ttl = 64;
		oh->protocol = IPPROTO_UDP_;
		oh->check = 0;
		oh->saddr = node4;
		oh->daddr = dst;
		__builtin_memcpy(w, oh, 20);
		oh->check = ~csum_fold((__u64)w[0] + w[1] + w[2] + w[3] + w[4]);
		o.udp = (void *)(oh + 1);
		o.udp->source = bpf_htons(sport);
		o.udp->dest = bpf_htons(tunnel_port);
		o.udp->len = bpf_htons(inner_len + 8);
		o.udp->check = 0; /* RFC 768: none over IPv4 */
	} else {
		struct ipv6hdr *oh = o.l3;
		__u32 a[8];
		__u64 s;
		__u16 c;

		o.eth->h_proto = bpf_htons(ETH_P_IPV6_);
		o.family = FAM_V6;
		*(__u32 *)oh = bpf_htonl(0x60000000);
		oh->payload_len = bpf_htons(inner_len + 8);
		oh->nexthdr = IPPROTO_UDP_;
		oh->hop_limit = 64;
		/* Byte-wise volatile reads: a memcpy from the const global
		 * would be folded to its zero initializer by clang. */
		for (int i = 0; i < 16; i++)
			((__u8 *)&oh->saddr)[i] = node6[i];
		__builtin_memcpy(&oh->daddr, peer->addr, 16);
		o.udp = (void *)(oh + 1);
		o.udp->source = bpf_htons(sport);
		o.udp->dest = bpf_htons(tunnel_port);
		o.udp->len = bpf_htons(inner_len + 8);
		__builtin_memcpy(a, &oh->saddr, 32);
		/* RFC 8200 8.1 pseudo-header + UDP header + inner packet. */
		s = (__u64)a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
		s += (__u64)o.udp->len + bpf_htons(IPPROTO_UDP_);
		s += (__u64)o.udp->source + o.udp->dest + o.udp->len;
		s += isum;
		c = ~csum_fold(s);
		o.udp->check = c ? c : 0xffff;
	}
	rc = fib_xmit(ctx, &o, data_end, R_FORWARDED, reason);
	if (rc < 0) {
		*reason = R_DROP_ERROR;
		return XDP_DROP;
	}
	if (rc == XDP_PASS) {
		/* The kernel would drop an outer packet with our own source as
		 * martian: drop and count instead (the Go side warms neighbours). */
		*reason = R_DROP_PEER_UNREACHABLE;
		return XDP_DROP;
	}
	return rc;
}

/* decap strips the outer IP/UDP header of a tunnel packet (outer IPv4
 * without options or IPv6 without extension headers). Returns 0 or -1 with
 * the packet unchanged. */
static __always_inline int decap(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 overhead = p->family == FAM_V4 ? ENCAP4_OVERHEAD : ENCAP6_OVERHEAD;
	__u8 *inner = (__u8 *)(p->udp + 1);
	struct ethhdr *eth;
	__u16 proto;

	if ((void *)p->udp != p->l3 + overhead - 8)
		return -1;
	if ((void *)(inner + 1) > data_end)
		return -1;
	if ((inner[0] >> 4) == 4)
		proto = bpf_htons(ETH_P_IP_);
	else if ((inner[0] >> 4) == 6)
		proto = bpf_htons(ETH_P_IPV6_);
	else
		return -1;
	if (data + ETH_HLEN_ + overhead + ETH_HLEN_ > data_end)
		return -1;
	__builtin_memmove(data + overhead, data, ETH_HLEN_);
	eth = data + overhead;
	eth->h_proto = proto;
	if (bpf_xdp_adjust_head(ctx, (int)overhead))
		return -1;
	return 0;
}

#endif /* STEER_ENCAP_H */
