package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/steerd/steerd/daemon/demo"
)

// startCluster starts a two-node steerd cluster with the binaries TestMain built (o's binary
// paths are set here), starts demo.Service on n0, and tears the cluster down when t ends,
// logging both daemons' log tails first if t failed.
func startCluster(t *testing.T, o demo.ClusterOptions) *demo.Cluster {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	o.Steerd, o.Steerctl, o.KVService = filepath.Join(bin, "steerd"), filepath.Join(bin, "steerctl"), filepath.Join(bin, "kvservice")
	if o.WorkDir == "" {
		o.WorkDir = t.TempDir()
	}
	c, err := demo.StartCluster(ctx, o)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range c.Names {
				t.Logf("steerd %s log tail:\n%s", c.Names[i], logTail(c.LogPath(i), 15))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("tear down cluster: %v", err)
		}
	})
	if _, err := c.Steerctl(ctx, 0, "run", demo.Service); err != nil {
		t.Fatalf("run %s on n0: %v", demo.Service, err)
	}
	t.Logf("cluster (datapath %q) up and %s running on n0 in %v", o.Datapath, demo.Service, time.Since(start).Round(time.Millisecond))
	return c
}
