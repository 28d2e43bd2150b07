package migrate

import (
	"errors"
	"strings"
	"testing"
)

// TestSupportsPreCopyAdvice: the pre-copy refusal names the techniques the node can run instead
// (post-copy only when lazy pages work here).
func TestSupportsPreCopyAdvice(t *testing.T) {
	lazyOK := Capabilities{UffdNonCoop: true, SysResource: true}
	err := lazyOK.Supports(PreCopy)
	if !errors.Is(err, ErrTechniqueUnsupported) || !strings.Contains(err.Error(), "soft-dirty") || !strings.Contains(err.Error(), "use --technique cold or post-copy") {
		t.Fatalf("pre-copy without soft-dirty, lazy pages ok: %v", err)
	}
	noLazy := Capabilities{}
	err = noLazy.Supports(PreCopy)
	if err == nil || !strings.Contains(err.Error(), "use --technique cold") || strings.Contains(err.Error(), "or post-copy") {
		t.Fatalf("pre-copy without soft-dirty and lazy pages: %v", err)
	}
	if err := (Capabilities{MemDirtyTrack: true}).Supports(PreCopy); err != nil {
		t.Fatalf("pre-copy with soft-dirty: %v", err)
	}
	if err := lazyOK.Supports(PostCopy); err != nil {
		t.Fatalf("post-copy: %v", err)
	}
}
