// Package connid makes QUIC connection IDs that route: the CID format of
// QUIC-LB (draft-ietf-quic-load-balancers-21), with the server ID naming a
// steerd service instance, and the QUIC header parsing that finds a packet's
// Destination Connection ID (DCID).
//
// # Byte layout
//
// A CID is 1 + S + N bytes, 8..20 in all (draft sections 3 and 5.2):
//
//	octet 0      bits 7-5: config rotation, 0..6 (0b111 = unroutable, section 3.2)
//	             bits 4-0: CID length - 1 ("self-encoded length", section 3.3),
//	                       or random bits when Config.LengthSelfEncoding is off
//	octets 1..S  server ID, S = Config.ServerIDLen = 1..6 bytes, big-endian;
//	             InstanceID is this value as a uint64
//	octets S+1.. nonce, N = Config.NonceLen >= 4 bytes, random (Generator)
//
// Example (draft Appendix B.1): config rotation 0, server ID c4605e, nonce
// 4504cc4f gives the 8-byte CID 07 c4605e 4504cc4f.
//
// With Config.Key set, octets 1..S+N are encrypted with AES-128-ECB and
// octet 0 stays in the clear (section 5.4): when S+N == 16 the 16 bytes are
// one AES block (single pass); otherwise they go through a four-round
// Feistel network whose round function is AES over the expanded half
// (half || zeros || S+N || pass), the halves sharing a nibble when S+N is
// odd. Decoding needs three AES operations, four when S > N.
//
// # Parsing
//
// ParseDCID reads QUIC v1 (RFC 9000 section 17) and v2 (RFC 9369) long
// headers, Version Negotiation packets (version 0), other versions by the
// invariants of RFC 8999, and short headers, whose DCID length is not on the
// wire: the caller gives it, or asks for the QUIC-LB self-encoded length
// (DCIDLenFromFirstOctet). ParseCoalesced walks the packets of one datagram
// by their Length fields. RouteInfo is the reference for the XDP datapath: the
// packet kind and the instance ID a packet routes to.
//
// # The XDP datapath
//
// The BPF program in bpf/ decodes plaintext CIDs only: it checks octet 0
// (config rotation and self-encoded length) and reads the server ID bytes,
// exactly as RouteInfo does. BPF has no AES instruction or helper, and a
// software AES with bounded loops per packet is beyond a sensible XDP budget.
// Decoding encrypted CIDs in XDP would need one of:
//   - the bpf_crypto kfuncs (kernel/bpf/crypto.c, Linux 6.10+, callable from
//     XDP; present on the 6.18 kernels steerd runs on): an "ecb(aes)"
//     skcipher context created by bpf_crypto_ctx_create from a
//     BPF_PROG_TYPE_SYSCALL program, kept as a kptr in a map, and
//     bpf_crypto_encrypt over dynptrs, three or four calls per packet for
//     four-pass (each pass is one AES encryption of expand(half, pass)), one
//     bpf_crypto_decrypt for single pass; it depends on kernel crypto config;
//   - precomputed tables per key: the four-pass decoder only ever encrypts
//     expand(half, pass), so one table per pass indexed by the half could
//     replace AES; with 3-byte halves that is 2^24 entries (48 MiB) per
//     pass, but steerd's shortest CID (8 bytes) already has 4-byte halves,
//     2^32 entries per pass, which no map can hold.
//
// So steerd's datapath uses plaintext CIDs, and the encrypted modes here
// serve Go-side consumers (a user-space load balancer, interoperability
// tests against other QUIC-LB implementations).
//
// Test vectors shared with the datapath's tests are in TestVectors, and the
// Append* builders lay out packets byte by byte for both sides.
package connid
