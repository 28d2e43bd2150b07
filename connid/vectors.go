package connid

import "encoding/hex"

// Vector is one CID test vector: the inputs of QUIC-LB encoding and the CID
// they must produce. The Go tests of this package and the XDP tests in
// datapath/ share this table, so that the Go codec and the C parser are
// checked against the same bytes.
type Vector struct {
	// Name identifies the vector and where it comes from.
	Name string
	// ConfigRotation is the config ID in the 3 high bits of CID octet 0.
	ConfigRotation uint8
	// ServerID is the plaintext server ID, big-endian.
	ServerID []byte
	// Nonce is the plaintext nonce.
	Nonce []byte
	// Key is nil for plaintext CIDs, else the AES-128 key.
	Key []byte
	// CID is the full connection ID on the wire, octet 0 included. Every
	// vector self-encodes its length (octet 0 low 5 bits = len(CID) - 1).
	CID []byte
	// Note records where a vector deviates from the draft's printed text.
	Note string
}

// Config returns the Config that produces v.CID (LengthSelfEncoding on).
func (v Vector) Config() Config {
	return Config{
		ConfigRotation:     v.ConfigRotation,
		ServerIDLen:        len(v.ServerID),
		NonceLen:           len(v.Nonce),
		Key:                v.Key,
		LengthSelfEncoding: true,
	}
}

// InProfile reports whether NewCodec accepts v.Config(): the draft's vectors
// with server IDs longer than MaxServerIDLen bytes are outside steerd's
// profile and only this package's own tests decode them.
func (v Vector) InProfile() bool { return v.Config().Validate() == nil }

// InstanceID returns the server ID read big-endian. It is meaningful only
// for vectors with server IDs of at most 8 bytes.
func (v Vector) InstanceID() InstanceID {
	var id InstanceID
	for _, b := range v.ServerID {
		id = id<<8 | InstanceID(b)
	}
	return id
}

// draftKey is the key of all encrypted vectors of
// draft-ietf-quic-load-balancers-21 Appendix B.2.
const draftKey = "8f95f09245765f80256934e50c66207f"

type hexVector struct {
	name, sid, nonce, key, cid, note string
	rot                              uint8
}

var hexVectors = []hexVector{
	// draft-ietf-quic-load-balancers-21 Appendix B.1, unencrypted CIDs.
	{name: "B.1 plaintext 3+4", rot: 0, sid: "c4605e", nonce: "4504cc4f", cid: "07c4605e4504cc4f"},
	{
		name: "B.1 plaintext 5+5", rot: 1, sid: "350d28b420", nonce: "3487d9700b", cid: "2a350d28b4203487d9700b",
		note: "the draft prints nonce 3487d970b (9 hex digits) and cid 20a350d28b4203487d970b; " +
			"read as 5-byte nonce 3487d9700b with octet 0 = 1<<5 | 10 = 0x2a",
	},
	// draft-ietf-quic-load-balancers-21 Appendix B.2, encrypted CIDs.
	{name: "B.2 four-pass 3+4", rot: 0, sid: "ed793a", nonce: "ee080dbf", key: draftKey, cid: "0720b1d07b359d3c"},
	{name: "B.2 four-pass 10+5 (fourth decryption pass)", rot: 1, sid: "ed793a51d49b8f5fab65", nonce: "ee080dbf48", key: draftKey, cid: "2fcc381bc74cb4fbad2823a3d1f8fed2"},
	{name: "B.2 single-pass 8+8", rot: 2, sid: "ed793a51d49b8f5f", nonce: "ee080dbf48c0d1e5", key: draftKey, cid: "504dd2d05a7b0de9b2b9907afb5ecf8cc3"},
	{
		name: "B.2 four-pass 9+9", rot: 0, sid: "ed793a51d49b8f5fab", nonce: "ee080dbf48c0d1e55d", key: draftKey, cid: "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
		note: "the draft's table says cr_bits 3, but its octet 0 is 0x12 = config rotation 0, length 18",
	},
	// draft-ietf-quic-load-balancers-21 section 5.4.2.4, encryption example
	// (odd plaintext length, the middle byte split between the halves).
	{name: "5.4.2.4 example four-pass 3+4", rot: 0, sid: "31441a", nonce: "9c69c275", key: "fdf726a9893ec05c0632d3956680baf0", cid: "0767947d29be054a"},
}

// TestVectors returns the CID test vectors of draft-ietf-quic-load-balancers-21
// (Appendix B.1 plaintext, Appendix B.2 encrypted, and the section 5.4.2.4
// encryption example). Each call returns fresh slices.
func TestVectors() []Vector {
	out := make([]Vector, 0, len(hexVectors))
	for _, h := range hexVectors {
		v := Vector{
			Name:           h.name,
			ConfigRotation: h.rot,
			ServerID:       mustHex(h.sid),
			Nonce:          mustHex(h.nonce),
			CID:            mustHex(h.cid),
			Note:           h.note,
		}
		if h.key != "" {
			v.Key = mustHex(h.key)
		}
		out = append(out, v)
	}
	return out
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic("connid: bad hex in test vector table: " + s)
	}
	return b
}
