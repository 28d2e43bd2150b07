package daemon

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordTransport is an ImageTransport that reads every file it is given and can fail one.
type recordTransport struct {
	mu       sync.Mutex
	got      map[string]string
	inFlight int
	maxIn    int
	fail     string
	// block is a file whose transfer lasts until its context ends (at most 5 s).
	block    string
	canceled int
}

func (r *recordTransport) SendFile(ctx context.Context, name string, rd io.Reader, size int64) error {
	r.mu.Lock()
	r.inFlight++
	r.maxIn = max(r.maxIn, r.inFlight)
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.inFlight--; r.mu.Unlock() }()
	b, err := io.ReadAll(io.LimitReader(rd, size))
	if err != nil {
		return err
	}
	if name == r.fail {
		return errors.New("destination refused " + name)
	}
	if name == r.block {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
	if ctx.Err() != nil {
		r.mu.Lock()
		r.canceled++
		r.mu.Unlock()
		return ctx.Err()
	}
	r.mu.Lock()
	r.got[name] = string(b)
	r.mu.Unlock()
	return nil
}

func writeImageDir(t *testing.T) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	want := map[string]string{
		"pages-1.img":     strings.Repeat("p", 1<<20),
		"core-1.img":      "core",
		"inventory.img":   "inv",
		"sub/pagemap.img": "map",
		"spec.json":       "{}",
		"empty.img":       "",
	}
	for n, c := range want {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, want
}

func TestSendDirSendsEveryFileConcurrently(t *testing.T) {
	dir, want := writeImageDir(t)
	tr := &recordTransport{got: map[string]string{}}
	if err := sendDir(context.Background(), dir, tr); err != nil {
		t.Fatal(err)
	}
	if len(tr.got) != len(want) {
		t.Fatalf("sent %d files, want %d", len(tr.got), len(want))
	}
	for n, c := range want {
		if tr.got[n] != c {
			t.Errorf("%s: sent %d bytes, want %d", n, len(tr.got[n]), len(c))
		}
	}
	if tr.maxIn > sendWorkers {
		t.Errorf("%d files in flight, at most %d wanted", tr.maxIn, sendWorkers)
	}
}

func TestSendDirFailure(t *testing.T) {
	dir, want := writeImageDir(t)
	// The large file is in flight when a small one fails: its transfer is canceled, and the
	// small file's error is the one returned.
	tr := &recordTransport{got: map[string]string{}, fail: "spec.json", block: "pages-1.img"}
	start := time.Now()
	err := sendDir(context.Background(), dir, tr)
	if err == nil || !strings.Contains(err.Error(), "refused spec.json") {
		t.Fatalf("err %v, want the failed file's error", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("sendDir returned after %v: the file in flight was not canceled", d)
	}
	if tr.canceled == 0 {
		t.Fatal("no transfer saw its context canceled")
	}
	if _, ok := tr.got["pages-1.img"]; ok || len(tr.got) == len(want) {
		t.Fatalf("files reported sent despite the failure: %d of %d", len(tr.got), len(want))
	}
	if err := sendDir(context.Background(), dir, nil); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("no transport: %v", err)
	}
	if err := sendDir(context.Background(), filepath.Join(dir, "missing"), tr); err == nil {
		t.Fatal("missing image directory accepted")
	}
}
