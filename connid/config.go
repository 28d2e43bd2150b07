package connid

import (
	"errors"
	"fmt"
)

// Limits of the CID format (draft-ietf-quic-load-balancers-21 sections 3 and 5,
// RFC 9000 section 17.2) and of steerd's profile of it (docs/architecture.md).
const (
	// MinCIDLen and MaxCIDLen bound the total CID length in bytes, first octet
	// included. 20 is the QUIC v1/v2 maximum (RFC 9000 section 17.2); 8 is
	// steerd's minimum, which also meets QUIC-LB section 3.2's advice of at
	// least 7 bytes of entropy after the first octet.
	MinCIDLen = 8
	MaxCIDLen = 20

	// MaxServerIDLen is steerd's largest server ID in bytes: an InstanceID must
	// fit the XDP instances map key. The draft itself only requires >= 1 byte.
	MaxServerIDLen = 6

	// MinNonceLen is the smallest nonce in bytes (QUIC-LB section 5.3).
	MinNonceLen = 4

	// KeyLen is the AES-128-ECB key length in bytes (QUIC-LB section 5.4).
	KeyLen = 16

	// UnroutableConfigRotation is the reserved config rotation codepoint 0b111
	// (QUIC-LB section 3.2): a CID that carries it is never routable, and no
	// Config may use it.
	UnroutableConfigRotation = 7

	// draftMaxServerIDLen is the largest server ID the draft's own limits
	// permit (nonce >= 4 and server ID + nonce <= 19). The draft's test
	// vectors use server IDs of up to 10 bytes; the package tests decode them
	// with a codec built against this limit.
	draftMaxServerIDLen = MaxCIDLen - 1 - MinNonceLen
)

// Sentinel errors of Config.Validate (and so of NewCodec).
var (
	ErrBadConfigRotation = errors.New("config rotation out of range 0..6")
	ErrBadServerIDLen    = errors.New("server ID length out of range")
	ErrBadNonceLen       = errors.New("nonce length below 4 bytes")
	ErrBadCIDLen         = errors.New("CID length out of range 8..20 bytes")
	ErrBadKeyLen         = errors.New("key length is neither 0 nor 16 bytes")
)

// Config is one QUIC-LB configuration (draft-ietf-quic-load-balancers-21
// section 5): the layout of every CID that a Codec encodes or decodes.
//
// The CID is 1 + ServerIDLen + NonceLen bytes long: first octet, server ID,
// nonce (see the package documentation for the byte layout).
//
// The zero value has LengthSelfEncoding off; steerd's contract
// (docs/architecture.md) has it on, so start from DefaultConfig.
type Config struct {
	// ConfigRotation is the config ID in the 3 high bits of octet 0, 0..6
	// (QUIC-LB section 3.1). 7 is reserved for unroutable CIDs.
	ConfigRotation uint8
	// ServerIDLen is the server ID length in bytes, 1..MaxServerIDLen.
	ServerIDLen int
	// NonceLen is the nonce length in bytes, >= MinNonceLen.
	NonceLen int
	// Key is nil for plaintext CIDs, or a 16-byte AES-128 key for encrypted
	// CIDs (QUIC-LB section 5.4: single pass when ServerIDLen+NonceLen == 16,
	// four-pass Feistel network otherwise).
	Key []byte
	// LengthSelfEncoding writes CID length - 1 into the 5 low bits of octet 0
	// (QUIC-LB section 3.3) and makes decoders check it. When false those
	// bits are random.
	LengthSelfEncoding bool
}

// DefaultConfig returns a plaintext Config with config rotation 0 and
// LengthSelfEncoding on, the layout steerd's XDP datapath decodes.
func DefaultConfig(serverIDLen, nonceLen int) Config {
	return Config{ServerIDLen: serverIDLen, NonceLen: nonceLen, LengthSelfEncoding: true}
}

// CIDLen returns the length in bytes of the CIDs of c: 1 + ServerIDLen + NonceLen.
func (c Config) CIDLen() int { return 1 + c.ServerIDLen + c.NonceLen }

// Encrypted reports whether c has a key.
func (c Config) Encrypted() bool { return c.Key != nil }

// Validate checks c against steerd's profile of QUIC-LB: config rotation
// 0..6, server ID 1..6 bytes, nonce >= 4 bytes, total CID length 8..20 bytes,
// key nil or 16 bytes. The returned error wraps one of ErrBadConfigRotation,
// ErrBadServerIDLen, ErrBadNonceLen, ErrBadCIDLen, ErrBadKeyLen.
func (c Config) Validate() error { return c.validate(MaxServerIDLen) }

func (c Config) validate(maxServerIDLen int) error {
	switch {
	case c.ConfigRotation >= UnroutableConfigRotation:
		return fmt.Errorf("validate config: rotation %d: %w", c.ConfigRotation, ErrBadConfigRotation)
	case c.ServerIDLen < 1 || c.ServerIDLen > maxServerIDLen:
		return fmt.Errorf("validate config: server ID length %d (want 1..%d): %w", c.ServerIDLen, maxServerIDLen, ErrBadServerIDLen)
	case c.NonceLen < MinNonceLen:
		return fmt.Errorf("validate config: nonce length %d: %w", c.NonceLen, ErrBadNonceLen)
	case c.CIDLen() < MinCIDLen || c.CIDLen() > MaxCIDLen:
		return fmt.Errorf("validate config: CID length %d: %w", c.CIDLen(), ErrBadCIDLen)
	case c.Key != nil && len(c.Key) != KeyLen:
		return fmt.Errorf("validate config: key length %d: %w", len(c.Key), ErrBadKeyLen)
	}
	return nil
}
