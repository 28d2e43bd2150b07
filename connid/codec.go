package connid

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
)

// InstanceID names a service instance: the QUIC-LB server ID read as a
// big-endian unsigned integer. With a server ID of S bytes it ranges over
// 0 .. 2^(8*S)-1.
type InstanceID uint64

// Sentinel errors of Codec.Encode and Codec.Decode.
var (
	// ErrServerIDRange: the instance ID does not fit ServerIDLen bytes, or
	// a decoded server ID is wider than 8 bytes.
	ErrServerIDRange = errors.New("server ID out of range")
	// ErrBadServerID: a server ID byte slice is not ServerIDLen bytes long.
	ErrBadServerID = errors.New("server ID length mismatch")
	// ErrBadNonce: the nonce is not NonceLen bytes long.
	ErrBadNonce = errors.New("nonce length mismatch")
	// ErrCIDLen: the CID is not Config.CIDLen() bytes long.
	ErrCIDLen = errors.New("CID length mismatch")
	// ErrUnroutable: the CID carries config rotation 0b111 (QUIC-LB
	// section 3.2).
	ErrUnroutable = errors.New("unroutable CID")
	// ErrConfigMismatch: the CID's config rotation bits name another config.
	ErrConfigMismatch = errors.New("config rotation mismatch")
	// ErrLengthMismatch: the CID's self-encoded length (QUIC-LB section 3.3)
	// is not its length - 1.
	ErrLengthMismatch = errors.New("self-encoded length mismatch")
)

// Codec encodes and decodes the CIDs of one Config. It is safe for
// concurrent use.
type Codec struct {
	cfg   Config
	block cipher.Block // nil for plaintext
	// plainLen is ServerIDLen + NonceLen (the draft's plaintext_len).
	plainLen int
}

// NewCodec returns a Codec for cfg after cfg.Validate(). It copies cfg.Key.
func NewCodec(cfg Config) (*Codec, error) { return newCodec(cfg, MaxServerIDLen) }

func newCodec(cfg Config, maxServerIDLen int) (*Codec, error) {
	if err := cfg.validate(maxServerIDLen); err != nil {
		return nil, fmt.Errorf("new codec: %w", err)
	}
	c := &Codec{cfg: cfg, plainLen: cfg.ServerIDLen + cfg.NonceLen}
	if cfg.Key != nil {
		c.cfg.Key = append([]byte(nil), cfg.Key...)
		block, err := aes.NewCipher(c.cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("new codec: %w", err)
		}
		c.block = block
	}
	return c, nil
}

// Config returns the codec's configuration (with a copy of its key).
func (c *Codec) Config() Config {
	cfg := c.cfg
	if cfg.Key != nil {
		cfg.Key = append([]byte(nil), cfg.Key...)
	}
	return cfg
}

// CIDLen returns the length in bytes of every CID of this codec.
func (c *Codec) CIDLen() int { return 1 + c.plainLen }

// FirstOctet returns octet 0 of this codec's CIDs when LengthSelfEncoding is
// on: ConfigRotation<<5 | (CIDLen()-1). With it off, only the 3 high bits
// are fixed.
func (c *Codec) FirstOctet() byte {
	return c.cfg.ConfigRotation<<5 | byte(c.CIDLen()-1)
}

// MaxInstanceID returns the largest InstanceID that fits ServerIDLen bytes.
func (c *Codec) MaxInstanceID() InstanceID {
	if c.cfg.ServerIDLen >= 8 {
		return ^InstanceID(0)
	}
	return InstanceID(1)<<(8*c.cfg.ServerIDLen) - 1
}

// Encode returns the CID for instance id with the given nonce (NonceLen
// bytes; the caller picks it, see Generator for random nonces). The server ID
// is id written big-endian in ServerIDLen bytes. Errors wrap
// ErrServerIDRange or ErrBadNonce.
func (c *Codec) Encode(id InstanceID, nonce []byte) ([]byte, error) {
	cid := make([]byte, c.CIDLen())
	if err := c.encodeInstance(cid, id, nonce); err != nil {
		return nil, err
	}
	return cid, nil
}

// EncodeServerID is Encode with the server ID given as ServerIDLen raw bytes
// (QUIC-LB section 5.3). Errors wrap ErrBadServerID or ErrBadNonce.
func (c *Codec) EncodeServerID(serverID, nonce []byte) ([]byte, error) {
	if len(serverID) != c.cfg.ServerIDLen {
		return nil, fmt.Errorf("encode CID: server ID of %d bytes, want %d: %w", len(serverID), c.cfg.ServerIDLen, ErrBadServerID)
	}
	cid := make([]byte, c.CIDLen())
	if err := c.encodeInto(cid, serverID, nonce); err != nil {
		return nil, err
	}
	return cid, nil
}

// encodeInstance writes the CID for id into cid (CIDLen bytes).
func (c *Codec) encodeInstance(cid []byte, id InstanceID, nonce []byte) error {
	if id > c.MaxInstanceID() {
		return fmt.Errorf("encode CID: instance %d does not fit %d bytes: %w", id, c.cfg.ServerIDLen, ErrServerIDRange)
	}
	var sid [8]byte
	s := sid[:c.cfg.ServerIDLen]
	for i := len(s) - 1; i >= 0; i-- {
		s[i] = byte(id)
		id >>= 8
	}
	return c.encodeInto(cid, s, nonce)
}

// encodeInto writes first octet, server ID and nonce into cid (CIDLen bytes)
// and encrypts the server ID and nonce when the config has a key.
func (c *Codec) encodeInto(cid, serverID, nonce []byte) error {
	if len(nonce) != c.cfg.NonceLen {
		return fmt.Errorf("encode CID: nonce of %d bytes, want %d: %w", len(nonce), c.cfg.NonceLen, ErrBadNonce)
	}
	cid[0] = c.FirstOctet()
	if !c.cfg.LengthSelfEncoding {
		// QUIC-LB section 3.3: random bits with no observable relationship
		// to previous CIDs.
		var r [1]byte
		if _, err := rand.Read(r[:]); err != nil {
			return fmt.Errorf("encode CID: read random bits: %w", err)
		}
		cid[0] = c.cfg.ConfigRotation<<5 | r[0]&0x1f
	}
	body := cid[1:]
	copy(body, serverID)
	copy(body[len(serverID):], nonce)
	switch {
	case c.block == nil:
	case c.plainLen == aes.BlockSize:
		c.block.Encrypt(body, body) // QUIC-LB section 5.4.1, single pass
	default:
		c.fourPassEncrypt(body)
	}
	return nil
}

// Decode returns the instance named by cid. It checks, in order: length
// (ErrCIDLen), config rotation 0b111 (ErrUnroutable), the config rotation
// bits (ErrConfigMismatch), the self-encoded length when LengthSelfEncoding
// is on (ErrLengthMismatch); then it decrypts the server ID if the config
// has a key (QUIC-LB section 5.5) and reads it big-endian. A server ID wider
// than 8 bytes yields ErrServerIDRange (only possible outside steerd's
// profile).
func (c *Codec) Decode(cid []byte) (InstanceID, error) {
	var sid [MaxCIDLen]byte
	n, err := c.decodeInto(sid[:], cid)
	if err != nil {
		return 0, err
	}
	if n > 8 {
		return 0, fmt.Errorf("decode CID: server ID of %d bytes: %w", n, ErrServerIDRange)
	}
	var id InstanceID
	for _, b := range sid[:n] {
		id = id<<8 | InstanceID(b)
	}
	return id, nil
}

// DecodeServerID is Decode returning the raw ServerIDLen server ID bytes.
func (c *Codec) DecodeServerID(cid []byte) ([]byte, error) {
	var sid [MaxCIDLen]byte
	n, err := c.decodeInto(sid[:], cid)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), sid[:n]...), nil
}

// Check reports whether cid is well-formed for this codec (length, config
// rotation and self-encoded length) without decrypting it. The error wraps
// ErrCIDLen, ErrUnroutable, ErrConfigMismatch or ErrLengthMismatch.
func (c *Codec) Check(cid []byte) error {
	if len(cid) != c.CIDLen() {
		return fmt.Errorf("decode CID: %d bytes, want %d: %w", len(cid), c.CIDLen(), ErrCIDLen)
	}
	rot := cid[0] >> 5
	switch {
	case rot == UnroutableConfigRotation:
		return fmt.Errorf("decode CID: config rotation 0b111: %w", ErrUnroutable)
	case rot != c.cfg.ConfigRotation:
		return fmt.Errorf("decode CID: config rotation %d, want %d: %w", rot, c.cfg.ConfigRotation, ErrConfigMismatch)
	case c.cfg.LengthSelfEncoding && int(cid[0]&0x1f) != len(cid)-1:
		return fmt.Errorf("decode CID: self-encoded length %d, want %d: %w", cid[0]&0x1f, len(cid)-1, ErrLengthMismatch)
	}
	return nil
}

// decodeInto checks cid and writes its plaintext server ID to sid, returning
// the server ID length.
func (c *Codec) decodeInto(sid, cid []byte) (int, error) {
	if err := c.Check(cid); err != nil {
		return 0, err
	}
	n := c.cfg.ServerIDLen
	body := cid[1:]
	switch {
	case c.block == nil:
		copy(sid, body[:n])
	case c.plainLen == aes.BlockSize:
		sc := scratchPool.Get().(*scratch)
		c.block.Decrypt(sc[:aes.BlockSize], body)
		copy(sid, sc[:n])
		scratchPool.Put(sc)
	default:
		c.fourPassDecryptServerID(sid[:n], body)
	}
	return n, nil
}

// Four-pass Feistel network of QUIC-LB section 5.4.2. The plaintext
// (server ID || nonce, plainLen bytes) is split into halves left and right of
// halfLen = ceil(plainLen/2) bytes; with an odd plainLen the middle byte's
// high nibble belongs to left and its low nibble to right, the other nibble
// of that byte being kept zero in each half.

const maxHalf = (MaxCIDLen - 1 + 1) / 2 // 10 bytes

type half [maxHalf]byte

// round XORs into dst the first halfLen bytes of
// AES-ECB(key, expand(plainLen, pass, src)), where expand yields
// src[:halfLen] || zeros || plainLen (octet 14) || pass (octet 15).
//
// scratch holds the AES input and output blocks; it is passed in because
// buffers handed to cipher.Block escape to the heap, so each four-pass
// operation pays for one scratch buffer rather than one per round.
func (c *Codec) round(scratch *scratch, dst, src *half, pass byte) {
	h := (c.plainLen + 1) / 2
	in, out := scratch[:aes.BlockSize], scratch[aes.BlockSize:]
	clear(in)
	copy(in[:h], src[:h])
	in[14] = byte(c.plainLen)
	in[15] = pass
	c.block.Encrypt(out, in)
	for i := 0; i < h; i++ {
		dst[i] ^= out[i]
	}
}

// scratch is the AES input block followed by the output block.
type scratch [2 * aes.BlockSize]byte

// scratchPool recycles scratch buffers so that four-pass operations do not
// allocate.
var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// split loads b (plainLen bytes) into left and right halves, clearing the
// nibbles that belong to the other half when plainLen is odd.
func (c *Codec) split(b []byte) (l, r half) {
	h := (c.plainLen + 1) / 2
	copy(l[:h], b[:h])
	copy(r[:h], b[c.plainLen-h:])
	c.clearLeft(&l)
	c.clearRight(&r)
	return l, r
}

// clearLeft clears the last 4 bits of a left half when plainLen is odd.
func (c *Codec) clearLeft(l *half) {
	if c.plainLen&1 == 1 {
		l[(c.plainLen+1)/2-1] &= 0xf0
	}
}

// clearRight clears the first 4 bits of a right half when plainLen is odd.
func (c *Codec) clearRight(r *half) {
	if c.plainLen&1 == 1 {
		r[0] &= 0x0f
	}
}

// join writes left || right into b (plainLen bytes), merging the shared
// middle byte when plainLen is odd.
func (c *Codec) join(b []byte, l, r *half) {
	h := (c.plainLen + 1) / 2
	copy(b, l[:h])
	if c.plainLen&1 == 1 {
		b[h-1] |= r[0]
		copy(b[h:], r[1:h])
		return
	}
	copy(b[h:], r[:h])
}

// fourPassEncrypt encrypts body (plainLen bytes) in place, steps 1-12 of
// QUIC-LB section 5.4.2.
func (c *Codec) fourPassEncrypt(body []byte) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	l, r := c.split(body)
	c.round(sc, &r, &l, 1)
	c.clearRight(&r)
	c.round(sc, &l, &r, 2)
	c.clearLeft(&l)
	c.round(sc, &r, &l, 3)
	c.clearRight(&r)
	c.round(sc, &l, &r, 4)
	c.clearLeft(&l)
	c.join(body, &l, &r)
}

// fourPassDecryptServerID recovers the server ID (len(sid) bytes) from body
// (plainLen bytes): three passes, and a fourth only when the server ID is
// longer than the nonce (QUIC-LB section 5.5.2).
func (c *Codec) fourPassDecryptServerID(sid, body []byte) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	l, r := c.split(body)
	c.round(sc, &l, &r, 4)
	c.clearLeft(&l)
	c.round(sc, &r, &l, 3)
	c.clearRight(&r)
	c.round(sc, &l, &r, 2)
	c.clearLeft(&l)
	if len(sid) <= c.plainLen/2 {
		copy(sid, l[:len(sid)])
		return
	}
	c.round(sc, &r, &l, 1)
	c.clearRight(&r)
	var pt [MaxCIDLen]byte
	c.join(pt[:c.plainLen], &l, &r)
	copy(sid, pt[:len(sid)])
}

// fourPassDecrypt decrypts body (plainLen bytes) in place, all four passes;
// the tests use it to recover the nonce too.
func (c *Codec) fourPassDecrypt(body []byte) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	l, r := c.split(body)
	c.round(sc, &l, &r, 4)
	c.clearLeft(&l)
	c.round(sc, &r, &l, 3)
	c.clearRight(&r)
	c.round(sc, &l, &r, 2)
	c.clearLeft(&l)
	c.round(sc, &r, &l, 1)
	c.clearRight(&r)
	c.join(body, &l, &r)
}
