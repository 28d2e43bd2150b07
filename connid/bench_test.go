package connid

import (
	"fmt"
	"testing"
)

// benchConfigs covers the three modes at steerd-like sizes.
func benchConfigs() []struct {
	name string
	cfg  Config
} {
	plain := DefaultConfig(4, 8)
	single := DefaultConfig(6, 10)
	single.Key = testKey
	four := DefaultConfig(4, 8)
	four.Key = testKey
	fourOdd := DefaultConfig(6, 7)
	fourOdd.Key = testKey
	return []struct {
		name string
		cfg  Config
	}{
		{"plaintext-4+8", plain},
		{"single-pass-6+10", single},
		{"four-pass-4+8", four},
		{"four-pass-6+7", fourOdd},
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, bc := range benchConfigs() {
		b.Run(bc.name, func(b *testing.B) {
			c, err := NewCodec(bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			nonce := make([]byte, bc.cfg.NonceLen)
			cid := make([]byte, c.CIDLen())
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				nonce[0] = byte(i)
				if err := c.encodeInstance(cid, InstanceID(i)&c.MaxInstanceID(), nonce); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, bc := range benchConfigs() {
		b.Run(bc.name, func(b *testing.B) {
			c, err := NewCodec(bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			cid, err := c.Encode(0x1234, make([]byte, bc.cfg.NonceLen))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if id, err := c.Decode(cid); err != nil || id != 0x1234 {
					b.Fatal(id, err)
				}
			}
		})
	}
}

func BenchmarkGenerateConnectionID(b *testing.B) {
	c, err := NewCodec(DefaultConfig(4, 8))
	if err != nil {
		b.Fatal(err)
	}
	g, err := NewGenerator(c, 7)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.GenerateConnectionID(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDCID(b *testing.B) {
	cid := make([]byte, 13)
	cid[0] = 12
	pkts := []struct {
		name     string
		pkt      []byte
		shortLen int
	}{
		{"short", AppendShortHeaderPacket(nil, cid, make([]byte, 1200)), len(cid)},
		{"short-self-encoded", AppendShortHeaderPacket(nil, cid, make([]byte, 1200)), DCIDLenFromFirstOctet},
		{"initial-v1", AppendLongHeaderPacket(nil, Version1, TypeInitial, cid, cid, nil, make([]byte, 1200)), 0},
		{"handshake-v2", AppendLongHeaderPacket(nil, Version2, TypeHandshake, cid, cid, nil, make([]byte, 1200)), 0},
	}
	for _, p := range pkts {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(p.pkt)))
			for b.Loop() {
				if _, err := ParseDCID(p.pkt, p.shortLen); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRouteInfo(b *testing.B) {
	for _, bc := range benchConfigs() {
		b.Run(bc.name, func(b *testing.B) {
			c, err := NewCodec(bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			cid, _ := c.Encode(5, make([]byte, bc.cfg.NonceLen))
			pkt := AppendShortHeaderPacket(nil, cid, make([]byte, 1200))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := RouteInfo(pkt, c); err != nil {
					b.Fatal(fmt.Errorf("route: %w", err))
				}
			}
		})
	}
}
