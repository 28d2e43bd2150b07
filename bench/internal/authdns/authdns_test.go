package authdns

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// TestServeAndCache runs the server on loopback (namespace "" = the test's own) and checks that
// the resolver caches an answer for its TTL and sees the update after it.
func TestServeAndCache(t *testing.T) {
	s, err := Start("", "127.0.0.1:0", "bench.test.", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a1, a2 := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.1.1")
	s.Set("svc.bench.test", a1)
	r := &Resolver{Server: s.Addr}
	ctx := context.Background()
	got, err := r.Lookup(ctx, "svc.bench.test")
	if err != nil || got != a1 {
		t.Fatalf("Lookup = %v, %v; want %v", got, err, a1)
	}
	s.Set("svc.bench.test", a2)
	if got, _ := r.Lookup(ctx, "svc.bench.test"); got != a1 {
		t.Errorf("within the TTL Lookup = %v, want cached %v", got, a1)
	}
	if r.Queries != 1 || s.Queries() != 1 {
		t.Errorf("queries: resolver %d server %d, want 1 and 1", r.Queries, s.Queries())
	}
	time.Sleep(s.TTL() + 50*time.Millisecond)
	if got, _ := r.Lookup(ctx, "svc.bench.test"); got != a2 {
		t.Errorf("after the TTL Lookup = %v, want %v", got, a2)
	}
	if _, err := r.Lookup(ctx, "nope.bench.test"); !errors.Is(err, ErrNoRecord) {
		t.Errorf("unknown name: %v, want ErrNoRecord", err)
	}
}
