package connid

import (
	"bytes"
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"testing"
)

var testKey = []byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig(2, 8)
	tests := []struct {
		name string
		mod  func(*Config)
		want error
	}{
		{"default", func(*Config) {}, nil},
		{"rotation 6", func(c *Config) { c.ConfigRotation = 6 }, nil},
		{"rotation 7 unroutable", func(c *Config) { c.ConfigRotation = 7 }, ErrBadConfigRotation},
		{"rotation 8", func(c *Config) { c.ConfigRotation = 8 }, ErrBadConfigRotation},
		{"server ID 0", func(c *Config) { c.ServerIDLen = 0 }, ErrBadServerIDLen},
		{"server ID 6", func(c *Config) { c.ServerIDLen = 6 }, nil},
		{"server ID 7", func(c *Config) { c.ServerIDLen = 7 }, ErrBadServerIDLen},
		{"nonce 3", func(c *Config) { c.NonceLen = 3 }, ErrBadNonceLen},
		{"total 7", func(c *Config) { c.ServerIDLen, c.NonceLen = 2, 4 }, ErrBadCIDLen},
		{"total 8", func(c *Config) { c.ServerIDLen, c.NonceLen = 3, 4 }, nil},
		{"total 20", func(c *Config) { c.ServerIDLen, c.NonceLen = 6, 13 }, nil},
		{"total 21", func(c *Config) { c.ServerIDLen, c.NonceLen = 6, 14 }, ErrBadCIDLen},
		{"key 16", func(c *Config) { c.Key = testKey }, nil},
		{"key 15", func(c *Config) { c.Key = testKey[:15] }, ErrBadKeyLen},
		{"key empty not nil", func(c *Config) { c.Key = []byte{} }, ErrBadKeyLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.Validate()
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Validate(%+v) = %v, want %v", c, err, tt.want)
			}
			_, nerr := NewCodec(c)
			if (nerr == nil) != (err == nil) || (err != nil && !errors.Is(nerr, tt.want)) {
				t.Fatalf("NewCodec(%+v) = %v, want %v", c, nerr, tt.want)
			}
		})
	}
}

func TestEncodeLayoutPlaintext(t *testing.T) {
	c, err := NewCodec(Config{ConfigRotation: 5, ServerIDLen: 3, NonceLen: 5, LengthSelfEncoding: true})
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte{1, 2, 3, 4, 5}
	cid, err := c.Encode(0x0a0b0c, nonce)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{5<<5 | 8, 0x0a, 0x0b, 0x0c, 1, 2, 3, 4, 5}
	if !bytes.Equal(cid, want) {
		t.Fatalf("Encode = %x, want %x", cid, want)
	}
	if c.FirstOctet() != want[0] {
		t.Fatalf("FirstOctet = %#x, want %#x", c.FirstOctet(), want[0])
	}
}

func TestEncodeRandomLengthBits(t *testing.T) {
	cfg := DefaultConfig(2, 6)
	cfg.ConfigRotation = 3
	cfg.LengthSelfEncoding = false
	c, err := NewCodec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[byte]bool{}
	for range 200 {
		cid, err := c.Encode(0x1234, make([]byte, 6))
		if err != nil {
			t.Fatal(err)
		}
		if cid[0]>>5 != 3 {
			t.Fatalf("config rotation bits %d, want 3", cid[0]>>5)
		}
		seen[cid[0]&0x1f] = true
		id, err := c.Decode(cid)
		if err != nil || id != 0x1234 {
			t.Fatalf("Decode(%x) = %#x, %v; want 0x1234", cid, id, err)
		}
	}
	// 200 draws of 5 random bits: fewer than 10 distinct values has
	// probability far below 1e-9.
	if len(seen) < 10 {
		t.Fatalf("low 5 bits took only %d values over 200 CIDs", len(seen))
	}
}

func TestEncodeErrors(t *testing.T) {
	c, err := NewCodec(DefaultConfig(2, 6))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Encode(0x10000, make([]byte, 6)); !errors.Is(err, ErrServerIDRange) {
		t.Fatalf("Encode(0x10000) with 2-byte server ID: %v, want ErrServerIDRange", err)
	}
	if _, err := c.Encode(0xffff, make([]byte, 6)); err != nil {
		t.Fatalf("Encode(0xffff): %v", err)
	}
	if c.MaxInstanceID() != 0xffff {
		t.Fatalf("MaxInstanceID = %#x, want 0xffff", c.MaxInstanceID())
	}
	if _, err := c.Encode(1, make([]byte, 5)); !errors.Is(err, ErrBadNonce) {
		t.Fatalf("Encode with 5-byte nonce: %v, want ErrBadNonce", err)
	}
	if _, err := c.EncodeServerID([]byte{1}, make([]byte, 6)); !errors.Is(err, ErrBadServerID) {
		t.Fatalf("EncodeServerID with 1-byte server ID: %v, want ErrBadServerID", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	c, err := NewCodec(Config{ConfigRotation: 2, ServerIDLen: 2, NonceLen: 6, LengthSelfEncoding: true})
	if err != nil {
		t.Fatal(err)
	}
	good, err := c.Encode(0x0102, []byte{9, 9, 9, 9, 9, 9})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		cid  []byte
		want error
	}{
		{"empty", nil, ErrCIDLen},
		{"short", good[:8], ErrCIDLen},
		{"long", append(append([]byte(nil), good...), 0), ErrCIDLen},
		{"unroutable", mod(func(b []byte) []byte { b[0] = 7<<5 | 8; return b }), ErrUnroutable},
		{"other config", mod(func(b []byte) []byte { b[0] = 1<<5 | 8; return b }), ErrConfigMismatch},
		{"bad self-encoded length", mod(func(b []byte) []byte { b[0] = 2<<5 | 7; return b }), ErrLengthMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Decode(tt.cid); !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%x) = %v, want %v", tt.cid, err, tt.want)
			}
			if _, err := c.DecodeServerID(tt.cid); !errors.Is(err, tt.want) {
				t.Fatalf("DecodeServerID(%x) = %v, want %v", tt.cid, err, tt.want)
			}
		})
	}
	if id, err := c.Decode(good); err != nil || id != 0x0102 {
		t.Fatalf("Decode(%x) = %#x, %v; want 0x0102", good, id, err)
	}
}

// roundTripConfigs spans every mode: plaintext, single pass (S+N == 16),
// four-pass with even and odd S+N, and S > N (fourth decryption pass).
func roundTripConfigs() []Config {
	var cfgs []Config
	for sid := 1; sid <= MaxServerIDLen; sid++ {
		for nonce := MinNonceLen; sid+nonce <= MaxCIDLen-1; nonce++ {
			cfg := DefaultConfig(sid, nonce)
			cfg.ConfigRotation = uint8((sid + nonce) % 7)
			if cfg.Validate() != nil {
				continue
			}
			cfgs = append(cfgs, cfg)
			cfg.Key = testKey
			cfgs = append(cfgs, cfg)
		}
	}
	return cfgs
}

// TestRoundTrip is a property test: for every valid configuration and random
// instance IDs and nonces, Decode(Encode(id, nonce)) == id, the CID has the
// configured length and octet 0, and an encrypted CID differs from the
// plaintext one.
func TestRoundTrip(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	for _, cfg := range roundTripConfigs() {
		c, err := NewCodec(cfg)
		if err != nil {
			t.Fatalf("NewCodec(%+v): %v", cfg, err)
		}
		plain := cfg
		plain.Key = nil
		pc, _ := NewCodec(plain)
		nonce := make([]byte, cfg.NonceLen)
		for range 50 {
			id := InstanceID(rng.Uint64()) & c.MaxInstanceID()
			rand.Read(nonce)
			cid, err := c.Encode(id, nonce)
			if err != nil {
				t.Fatalf("Encode(%+v, %#x): %v", cfg, id, err)
			}
			if len(cid) != cfg.CIDLen() || cid[0] != cfg.ConfigRotation<<5|byte(cfg.CIDLen()-1) {
				t.Fatalf("Encode(%+v) = %x: wrong length or octet 0", cfg, cid)
			}
			got, err := c.Decode(cid)
			if err != nil || got != id {
				t.Fatalf("cfg %+v: Decode(Encode(%#x)) = %#x, %v", cfg, id, got, err)
			}
			if cfg.Key == nil {
				continue
			}
			pcid, _ := pc.Encode(id, nonce)
			if bytes.Equal(cid, pcid) {
				t.Fatalf("cfg %+v: encrypted CID equals plaintext CID %x", cfg, cid)
			}
			body := append([]byte(nil), cid[1:]...)
			if c.plainLen == 16 {
				c.block.Decrypt(body, body)
			} else {
				c.fourPassDecrypt(body)
			}
			if !bytes.Equal(body, pcid[1:]) {
				t.Fatalf("cfg %+v: full decryption = %x, want %x", cfg, body, pcid[1:])
			}
		}
	}
}

// TestEncryptedServerIDHidden checks that changing one nonce bit changes the
// encrypted server ID bytes too (plaintext CIDs keep them), so that observers
// cannot link CIDs of one instance.
func TestEncryptedServerIDHidden(t *testing.T) {
	for _, lens := range [][2]int{{2, 6}, {3, 4}, {6, 10}, {4, 13}} {
		cfg := DefaultConfig(lens[0], lens[1])
		cfg.Key = testKey
		c, err := NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n1 := make([]byte, cfg.NonceLen)
		n2 := append([]byte(nil), n1...)
		n2[len(n2)-1] ^= 1
		a, _ := c.Encode(7, n1)
		b, _ := c.Encode(7, n2)
		if bytes.Equal(a[1:1+cfg.ServerIDLen], b[1:1+cfg.ServerIDLen]) {
			t.Fatalf("cfg %d+%d: server ID bytes equal across nonces: %x %x", lens[0], lens[1], a, b)
		}
	}
}

func TestCodecKeyCopied(t *testing.T) {
	key := append([]byte(nil), testKey...)
	cfg := DefaultConfig(3, 4)
	cfg.Key = key
	c, err := NewCodec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := c.Encode(1, []byte{1, 2, 3, 4})
	key[0] ^= 0xff
	c.Config().Key[1] ^= 0xff
	after, _ := c.Encode(1, []byte{1, 2, 3, 4})
	if !bytes.Equal(before, after) {
		t.Fatal("codec output changed after the caller modified the key")
	}
}
