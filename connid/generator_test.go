package connid

import (
	"errors"
	"sync"
	"testing"
)

func TestGenerator(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		cfg := DefaultConfig(2, 8)
		cfg.ConfigRotation = 1
		cfg.Key = key
		c, err := NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		g, err := NewGenerator(c, 0x0203)
		if err != nil {
			t.Fatal(err)
		}
		if g.ConnectionIDLen() != 11 {
			t.Fatalf("ConnectionIDLen = %d, want 11", g.ConnectionIDLen())
		}
		seen := map[string]bool{}
		for range 1000 {
			cid, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := cid.Bytes()
			if len(b) != 11 || b[0] != 1<<5|10 {
				t.Fatalf("generated CID %x: wrong length or octet 0", b)
			}
			id, err := c.Decode(b)
			if err != nil || id != 0x0203 {
				t.Fatalf("Decode(%x) = %#x, %v; want 0x0203", b, id, err)
			}
			if seen[string(b)] {
				t.Fatalf("duplicate CID %x", b)
			}
			seen[string(b)] = true
		}
	}
}

func TestGeneratorRange(t *testing.T) {
	c, err := NewCodec(DefaultConfig(1, 7))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewGenerator(c, 256); !errors.Is(err, ErrServerIDRange) {
		t.Fatalf("NewGenerator(256) with 1-byte server ID: %v, want ErrServerIDRange", err)
	}
	g, err := NewGenerator(c, 255)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetInstance(300); !errors.Is(err, ErrServerIDRange) {
		t.Fatalf("SetInstance(300): %v, want ErrServerIDRange", err)
	}
	if g.Instance() != 255 {
		t.Fatalf("failed SetInstance changed the instance to %d", g.Instance())
	}
}

// TestGeneratorSetInstanceConcurrent generates CIDs from several goroutines
// while the instance changes (run with -race): every CID must decode to one
// of the two instances, and after SetInstance returns, new CIDs carry the
// new instance.
func TestGeneratorSetInstanceConcurrent(t *testing.T) {
	c, err := NewCodec(DefaultConfig(3, 8))
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGenerator(c, 10)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for range 500 {
				cid, err := g.GenerateConnectionID()
				if err != nil {
					errs <- err
					return
				}
				id, err := c.Decode(cid.Bytes())
				if err != nil {
					errs <- err
					return
				}
				if id != 10 && id != 20 {
					errs <- errors.New("CID decodes to an instance never set")
					return
				}
			}
		})
	}
	if err := g.SetInstance(20); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cid, err := g.GenerateConnectionID()
	if err != nil {
		t.Fatal(err)
	}
	if id, err := c.Decode(cid.Bytes()); err != nil || id != 20 {
		t.Fatalf("after SetInstance(20): Decode = %d, %v", id, err)
	}
}
