package kv

import (
	"errors"
	"fmt"
	"sync"
)

// ErrBallastCorrupt is returned by BallastMem.Verify when a page does not hold the pattern
// written at allocation (a restore that lost or mixed up pages).
var ErrBallastCorrupt = errors.New("kv: ballast page corrupt")

// PageSize is the stride, in bytes, at which the ballast pattern is written: one word per 4 KiB
// page, so that every page is resident, dirty and distinct from the zero page.
const PageSize = 4096

// BallastMem is memory held only to make the process image larger: CRIU dumps (and pre-dumps,
// and serves as lazy pages) every page of it. Each page starts with a word that encodes its
// index, so Verify can check after a restore that every page came back in place.
type BallastMem struct {
	buf []byte
}

var (
	ballastMu   sync.Mutex
	ballastKeep []*BallastMem // reachable for the life of the process
)

// Ballast allocates mb MiB (0 allocates nothing and returns an empty BallastMem), writes the page
// pattern into every 4 KiB page and keeps the memory reachable for the life of the process, so
// that neither the garbage collector nor the kernel (zero-page sharing) shrinks the image. It
// returns an error for a negative size.
func Ballast(mb int) (*BallastMem, error) {
	if mb < 0 {
		return nil, fmt.Errorf("allocate ballast: negative size %d MiB", mb)
	}
	b := &BallastMem{buf: make([]byte, mb<<20)}
	for i := 0; i < len(b.buf); i += PageSize {
		putPageWord(b.buf[i:], uint64(i/PageSize))
	}
	ballastMu.Lock()
	ballastKeep = append(ballastKeep, b)
	ballastMu.Unlock()
	return b, nil
}

// pageWord is the 8-byte pattern of page i: never zero.
func pageWord(i uint64) uint64 { return (i+1)*0x9e3779b97f4a7c15 | 1 }

func putPageWord(p []byte, i uint64) {
	w := pageWord(i)
	for k := 0; k < 8; k++ {
		p[k] = byte(w >> (8 * k))
	}
}

// Size returns the ballast size in bytes.
func (b *BallastMem) Size() int { return len(b.buf) }

// Verify reads every page and checks its pattern. The error wraps ErrBallastCorrupt and names
// the first bad page.
func (b *BallastMem) Verify() error {
	for i := 0; i < len(b.buf); i += PageSize {
		w := pageWord(uint64(i / PageSize))
		for k := 0; k < 8; k++ {
			if b.buf[i+k] != byte(w>>(8*k)) {
				return fmt.Errorf("verify ballast: page %d of %d: %w", i/PageSize, len(b.buf)/PageSize, ErrBallastCorrupt)
			}
		}
	}
	return nil
}
