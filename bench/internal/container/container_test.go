package container

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestNewBundleConfig checks the edits NewBundle makes to `runc spec`'s config.json and that
// SetNetNS replaces the network namespace path.
func TestNewBundleConfig(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("skip: missing capability: runc is not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "svc")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := NewBundle(filepath.Join(dir, "b"), Spec{Binary: bin, Args: []string{"/svc", "-x"},
		Files: map[string][]byte{"cert.pem": []byte("c")}, NetNS: "/var/run/netns/a", CRIUOptions: []string{"tcp-close"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetNetNS("/var/run/netns/b"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(b.Dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Process struct {
			Terminal bool
			Args     []string
		}
		Annotations map[string]string
		Linux       struct{ Namespaces []struct{ Type, Path string } }
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Process.Terminal || len(cfg.Process.Args) != 2 || cfg.Process.Args[1] != "-x" {
		t.Errorf("process = %+v", cfg.Process)
	}
	nets := 0
	for _, n := range cfg.Linux.Namespaces {
		if n.Type == "network" {
			nets++
			if n.Path != "/var/run/netns/b" {
				t.Errorf("network namespace path %q, want /var/run/netns/b", n.Path)
			}
		}
	}
	if nets != 1 {
		t.Errorf("%d network namespaces, want 1", nets)
	}
	conf, err := os.ReadFile(cfg.Annotations["org.criu.config"])
	if err != nil || string(conf) != "tcp-close\n" {
		t.Errorf("CRIU config %q, %v", conf, err)
	}
	for _, f := range []string{"svc", "cert.pem", "proc"} {
		if _, err := os.Stat(filepath.Join(b.Rootfs, f)); err != nil {
			t.Errorf("rootfs: %v", err)
		}
	}
}
