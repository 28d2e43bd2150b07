package connid

import (
	"crypto/rand"
	"fmt"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// Generator issues QUIC-LB CIDs for one instance with random nonces. It
// implements quic-go's quic.ConnectionIDGenerator (set it as
// quic.Transport.ConnectionIDGenerator) and is safe for concurrent use.
//
// Nonces come from crypto/rand, as QUIC-LB section 5.3 requires for
// plaintext CIDs. Two CIDs collide only if their nonces do: with a nonce of
// N bytes, expect a first collision after about 2^(4N) CIDs (65536 for
// N = 4), so steerd's configurations should use N >= 8.
type Generator struct {
	codec    *Codec
	instance atomic.Uint64
}

var _ quic.ConnectionIDGenerator = (*Generator)(nil)

// NewGenerator returns a Generator of codec's CIDs for instance id. The error
// wraps ErrServerIDRange if id does not fit the codec's server ID length.
func NewGenerator(codec *Codec, id InstanceID) (*Generator, error) {
	g := &Generator{codec: codec}
	if err := g.SetInstance(id); err != nil {
		return nil, fmt.Errorf("new generator: %w", err)
	}
	return g, nil
}

// SetInstance makes every CID generated from now on carry instance id. A
// restored instance calls it to keep its old ID or take a new one; CIDs
// already issued keep the ID they were generated with. The error wraps
// ErrServerIDRange if id does not fit the codec's server ID length.
func (g *Generator) SetInstance(id InstanceID) error {
	if id > g.codec.MaxInstanceID() {
		return fmt.Errorf("set instance %d: does not fit %d bytes: %w", id, g.codec.cfg.ServerIDLen, ErrServerIDRange)
	}
	g.instance.Store(uint64(id))
	return nil
}

// Instance returns the instance ID that new CIDs carry.
func (g *Generator) Instance() InstanceID { return InstanceID(g.instance.Load()) }

// Codec returns the codec the generator encodes with.
func (g *Generator) Codec() *Codec { return g.codec }

// GenerateConnectionID returns a new CID for the current instance with a
// fresh random nonce.
func (g *Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	var buf [MaxCIDLen]byte
	cid := buf[:g.codec.CIDLen()]
	var nbuf [MaxCIDLen]byte
	nonce := nbuf[:g.codec.cfg.NonceLen]
	if _, err := rand.Read(nonce); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("generate CID: read nonce: %w", err)
	}
	if err := g.codec.encodeInstance(cid, g.Instance(), nonce); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("generate CID: %w", err)
	}
	return quic.ConnectionIDFromBytes(cid), nil
}

// ConnectionIDLen returns the length in bytes of the generated CIDs.
func (g *Generator) ConnectionIDLen() int { return g.codec.CIDLen() }
