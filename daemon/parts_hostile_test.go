package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImagePartsHostile sends image parts a buggy or hostile source could send: offsets that
// wrap int64, a file length that changes between parts, a part of a file whose other part
// failed, names that leave the image directory, and a part that arrives after an abort removed
// the image directory. Each must be refused without touching anything outside the migration's
// image directory, and must not bring that directory back.
func TestImagePartsHostile(t *testing.T) {
	_, b, _, _ := pair(t)
	base := t.TempDir()
	dir := filepath.Join(base, "m")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	in := &incoming{id: "m", dir: dir, tl: newTimeline("m", "b", nil)}
	b.d.incoming["m"] = in
	part := func(name, data string, off, fileSize int64) error {
		_, err := b.d.receiveImagePart("m", name, strings.NewReader(data), off, int64(len(data)), fileSize, nil)
		return err
	}

	// Offsets and lengths whose sum wraps past 2^63 - 1, and negative file lengths.
	for _, c := range []struct{ off, size, file int64 }{
		{math.MaxInt64 - 1, 2, 4}, {math.MaxInt64, 1, 4}, {2, math.MaxInt64, 4}, {0, 0, -1}, {1, 1, -4},
	} {
		_, err := b.d.receiveImagePart("m", "w.img", strings.NewReader("ab"), c.off, c.size, c.file, nil)
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("part [%d, +%d) of %d: %v, want ErrBadRequest", c.off, c.size, c.file, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "w.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused parts left w.img: %v", err)
	}

	// A file announced larger than the image directory's free space is refused before anything
	// is allocated (a huge sparse file would otherwise pass until the disk fills).
	if err := part("big.img", "ab", 0, math.MaxInt64/2); !errors.Is(err, ErrNoSpace) {
		t.Errorf("file of 2^62 bytes: %v, want ErrNoSpace", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "big.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused big.img left a file: %v", err)
	}

	// A part that announces another file length than the first part of the file.
	if err := part("x.img", "cd", 2, 4); err != nil {
		t.Fatal(err)
	}
	if err := part("x.img", "ab", 0, 6); !errors.Is(err, ErrBadRequest) {
		t.Errorf("part with a changed file length: %v, want ErrBadRequest", err)
	}
	if err := part("x.img", "ab", 0, 4); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "x.img")); err != nil || string(got) != "abcd" {
		t.Fatalf("x.img %q, %v; want \"abcd\"", got, err)
	}

	// A part of a file whose other part failed: the file is gone, a later part must not make a
	// file with a hole of zeros where the failed part was.
	if _, err := b.d.receiveImagePart("m", "y.img", strings.NewReader("ab"), 0, 2, 4,
		func([32]byte) error { return ErrChecksum }); !errors.Is(err, ErrChecksum) {
		t.Fatalf("failed part: %v", err)
	}
	if err := part("y.img", "cd", 2, 4); err == nil {
		got, _ := os.ReadFile(filepath.Join(dir, "y.img"))
		t.Errorf("part of a file whose other part failed accepted: y.img is %q", got)
	}
	// A whole resend of the file is fine.
	if err := part("y.img", "wxyz", 0, 4); err != nil {
		t.Errorf("whole resend after a failed part: %v", err)
	}

	// Names that leave the image directory, also through a symlink inside it.
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"../outside/p.img", "a/../../outside/p.img", "/tmp/p.img", "..", "link/p.img"} {
		if err := part(name, "ab", 0, 4); err == nil {
			t.Errorf("part named %q accepted", name)
		}
		if err := part(name, "abcd", 0, 4); err == nil {
			t.Errorf("whole file named %q accepted", name)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) > 0 {
		t.Errorf("parts wrote outside the image directory: %v", ents)
	}

	// An abort removed the image directory while a part was on its way (getIncoming passed):
	// the part fails and the directory stays gone.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := part("sub/z.img", "ab", 0, 4); err == nil {
		t.Error("part into a removed image directory accepted")
	}
	if err := part("z.img", "abcd", 0, 4); err == nil {
		t.Error("whole file into a removed image directory accepted")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a part after the abort brought the image directory back: %v", err)
	}
}

// TestIncomingOpsOnlyFromSource: another configured node than a migration's source must not
// restore it, tell its service it was restored, abort it, or send it image files.
func TestIncomingOpsOnlyFromSource(t *testing.T) {
	_, b, _, _ := pair(t)
	dir := t.TempDir()
	b.d.incoming["m"] = &incoming{id: "m", source: "a", dir: dir, tl: newTimeline("m", "b", nil)}
	ctx := context.Background()
	for _, op := range []string{opRestore, opRestored, opAbort} {
		body, _ := json.Marshal(abortReq{Migration: "m", Service: testSvc})
		r := b.d.servePeer(ctx, "c", op, body)
		if r.Error == nil || !strings.Contains(r.Error.Cause, `not "c"`) {
			t.Errorf("%s of a's migration from c: %+v, want refused", op, r.Error)
		}
	}
	if _, err := b.d.getIncoming("m"); err != nil {
		t.Fatalf("c's abort removed a's migration: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("c's abort removed a's image directory: %v", err)
	}
	if err := b.d.checkSource("c", "m"); !errors.Is(err, ErrBadRequest) {
		t.Errorf("image from c for a's migration: %v, want ErrBadRequest", err)
	}
	if err := b.d.checkSource("a", "m"); err != nil {
		t.Errorf("image from the source: %v", err)
	}
	body, _ := json.Marshal(abortReq{Migration: "m", Service: testSvc})
	if r := b.d.servePeer(ctx, "a", opAbort, body); r.Error != nil {
		t.Fatalf("abort from the source: %v", r.Error)
	}
	if _, err := b.d.getIncoming("m"); !errors.Is(err, ErrUnknownMig) {
		t.Errorf("after the source's abort: %v, want ErrUnknownMig", err)
	}
}
