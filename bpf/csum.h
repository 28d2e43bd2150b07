/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: Internet checksum helpers (RFC 1071, incremental update RFC 1624
 * eqn. 3: HC' = ~(~HC + ~m + m')). All 16/32-bit values are taken in memory
 * (network) byte order, which the one's complement sum does not care about as
 * long as every operand uses the same order. Layout after katran csum_helpers.h. */
#ifndef STEER_CSUM_H
#define STEER_CSUM_H

#include <linux/types.h>
#include <linux/bpf.h>
#include "consts.h"

/* csum_fold folds a 64-bit one's complement accumulator to 16 bits (not complemented). */
static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* csum_diff32/16 return the accumulator contribution of replacing old by new. */
static __always_inline __u64 csum_diff32(__u32 old, __u32 new)
{
	return (__u64)(__u32)~old + new;
}

static __always_inline __u64 csum_diff16(__u16 old, __u16 new)
{
	return (__u64)(__u16)~old + new;
}

static __always_inline __u64 csum_diff128(const __u32 *old, const __u32 *new)
{
	return csum_diff32(old[0], new[0]) + csum_diff32(old[1], new[1]) +
	       csum_diff32(old[2], new[2]) + csum_diff32(old[3], new[3]);
}

/* csum_apply updates the checksum at *csum by the accumulated diff. For UDP
 * (udp != 0) a result of 0 is sent as 0xFFFF (RFC 768, RFC 8200 section 8.1). */
static __always_inline void csum_apply(__u16 *csum, __u64 diff, int udp)
{
	__u64 s = (__u16)~(*csum);
	__u16 r;

	s += diff;
	r = (__u16)~csum_fold(s);
	if (udp && r == 0)
		r = 0xffff;
	*csum = r;
}

/* csum_bytes returns the one's complement sum (unfolded) of len bytes at
 * start, or (__u64)-1 when the region leaves the packet or is longer than
 * MAX_CSUM_BYTES. The bounded loop is what the verifier needs. */
static __always_inline __u64 csum_bytes(void *start, __u64 len, void *data_end)
{
	__u16 *p = start;
	__u64 sum = 0;
	__u64 words = len / 2;

	if (len > MAX_CSUM_BYTES)
		return (__u64)-1;
	for (__u64 i = 0; i < MAX_CSUM_BYTES / 2; i++) {
		if (i >= words)
			break;
		if ((void *)(p + 1) > data_end)
			return (__u64)-1;
		sum += *p;
		p++;
	}
	if (len & 1) {
		__u8 *b = (__u8 *)p;
		__u16 w = 0;

		if ((void *)(b + 1) > data_end)
			return (__u64)-1;
		*(__u8 *)&w = *b; /* odd byte padded with a zero byte (RFC 1071) */
		sum += w;
	}
	return sum;
}

/* csum_pkt sums len bytes at offset off from ctx->data. It is a global
 * (non-static, noinline) function so the verifier checks its loop once
 * instead of at every inlined call site; it may only take ctx and scalars. */
__attribute__((noinline)) __u64 csum_pkt(struct xdp_md *ctx, __u64 off, __u64 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	/* The barrier keeps clang from dropping the bound check, which it
	 * could prove from the call sites but the verifier cannot. */
	asm volatile("" : "+r"(off));
	/* Keep off + len below MAX_PACKET_OFF (0xffff) so the verifier can
	 * propagate packet ranges. */
	if (off > 0x3fff)
		return (__u64)-1;
	return csum_bytes(data + off, len, data_end);
}

#endif /* STEER_CSUM_H */
