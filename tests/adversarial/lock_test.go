package adversarial

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/internal/nsutil"
)

// TestSecondSteerdRefused: a second steerd started in a node's network namespace (same config)
// stops at once with the netns lock error naming the running one, and the running steerd keeps
// serving.
func TestSecondSteerdRefused(t *testing.T) {
	c := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsutil.Path(c.TB.Nodes[0].NS), "--",
		filepath.Join(bin, "steerd"), "--config", filepath.Join(c.WorkDir, c.Names[0]+".json")).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("second steerd on %s still running after 20 s: %s", c.Names[0], out)
	}
	if err == nil || !strings.Contains(string(out), "another steerd owns the datapath of this network namespace") {
		t.Fatalf("second steerd on %s: %v, output:\n%s\nwant it refused by the netns lock", c.Names[0], err, out)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	if _, err := c.API[0].Status(sctx); err != nil {
		t.Fatalf("the running steerd on %s after the refused second one: %v", c.Names[0], err)
	}
}
