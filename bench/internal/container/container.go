// Package container runs the benchmark service as a runc container in a pod network namespace
// and moves it with `runc checkpoint` / `runc restore` (CRIU underneath), for the baselines that do
// not use steerd's migration engine.
//
// A bundle is a directory with config.json (from `runc spec`, then edited: process args, no
// terminal, writable root, the pod's network namespace by path) and rootfs/ holding one static
// binary and its files. Restoring the same image with config.json pointing at another network
// namespace puts the process in that namespace: runc marks a network namespace given by path as
// external on checkpoint and hands the new one to CRIU on restore (runc libcontainer
// handleCheckpointingExternalNamespaces / handleRestoringExternalNamespaces; CRIU --external
// net[ino]:key, --inherit-fd). Extra CRIU options (tcp-close) go in a per-container CRIU
// configuration file named by the org.criu.config annotation (runc checkpoint/restore docs).
package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ErrRunc is wrapped by every error from a runc command; the message carries runc's output and
// the tail of CRIU's log when there is one.
var ErrRunc = errors.New("runc failed")

// Bundle is a runc bundle directory.
type Bundle struct {
	Dir    string
	Rootfs string
}

// Spec describes the container of a bundle.
type Spec struct {
	// Binary is copied to /<base name> in the root filesystem; Args[0] should name it.
	Binary string
	Args   []string
	// Files are written into the root filesystem (path relative to it -> content).
	Files map[string][]byte
	// NetNS is the path of the network namespace to join (/var/run/netns/<name>).
	NetNS string
	// CRIUOptions are lines of a CRIU configuration file used for this container's checkpoint and
	// restore (e.g. "tcp-close"); empty means none.
	CRIUOptions []string
}

// NewBundle creates a bundle in dir, removing whatever was there.
func NewBundle(dir string, s Spec) (*Bundle, error) {
	b := &Bundle{Dir: dir, Rootfs: filepath.Join(dir, "rootfs")}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	for _, d := range []string{"proc", "dev", "sys", "tmp", "state"} {
		if err := os.MkdirAll(filepath.Join(b.Rootfs, d), 0o755); err != nil {
			return nil, fmt.Errorf("create bundle: %w", err)
		}
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.Rootfs, filepath.Base(s.Binary)), bin, 0o755); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	for p, c := range s.Files {
		if err := os.WriteFile(filepath.Join(b.Rootfs, p), c, 0o644); err != nil {
			return nil, fmt.Errorf("create bundle: %w", err)
		}
	}
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create bundle: runc spec: %s: %w", out, ErrRunc)
	}
	var criuConf string
	if len(s.CRIUOptions) > 0 {
		criuConf = filepath.Join(dir, "criu.conf")
		if err := os.WriteFile(criuConf, []byte(strings.Join(s.CRIUOptions, "\n")+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("create bundle: %w", err)
		}
	}
	err = b.edit(func(cfg map[string]any) {
		proc := cfg["process"].(map[string]any)
		proc["terminal"] = false
		proc["args"] = s.Args
		cfg["root"].(map[string]any)["readonly"] = false
		if criuConf != "" {
			cfg["annotations"] = map[string]any{"org.criu.config": criuConf}
		}
	})
	if err != nil {
		return nil, err
	}
	return b, b.SetNetNS(s.NetNS)
}

// SetNetNS points the container's network namespace at path (takes effect at the next run or
// restore).
func (b *Bundle) SetNetNS(path string) error {
	return b.edit(func(cfg map[string]any) {
		linux := cfg["linux"].(map[string]any)
		nss, _ := linux["namespaces"].([]any)
		var out []any
		for _, n := range nss {
			if m, ok := n.(map[string]any); ok && m["type"] == "network" {
				continue
			}
			out = append(out, n)
		}
		linux["namespaces"] = append(out, map[string]any{"type": "network", "path": path})
	})
}

func (b *Bundle) edit(fn func(map[string]any)) error {
	p := filepath.Join(b.Dir, "config.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("edit bundle config: %w", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("edit bundle config: %w", err)
	}
	fn(cfg)
	raw, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("edit bundle config: %w", err)
	}
	return os.WriteFile(p, raw, 0o644)
}

// runc runs one runc command with a timeout. Its output goes to a temporary file, not a pipe: a
// detached container inherits runc's stdio, and a pipe would then never reach EOF. For run and
// restore (detached) stdio is /dev/null and runc's own log (--log) is read instead.
func runc(timeout time.Duration, args ...string) (time.Duration, error) {
	logf, err := os.CreateTemp("", "stdr-bench-runc-*.log")
	if err != nil {
		return 0, fmt.Errorf("runc %s: %w", args[0], err)
	}
	defer os.Remove(logf.Name())
	defer logf.Close()
	detached := args[0] == "run" || args[0] == "restore"
	var cmd *exec.Cmd
	if detached {
		cmd = exec.Command("runc", append([]string{"--log", logf.Name()}, args...)...)
	} else {
		cmd = exec.Command("runc", args...)
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("runc %s: %w", args[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	output := func() string {
		b, _ := os.ReadFile(logf.Name())
		return tailString(string(b), 4)
	}
	select {
	case err := <-done:
		if err != nil {
			return time.Since(start), fmt.Errorf("runc %s: %s: %w", strings.Join(args, " "), output(), ErrRunc)
		}
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return time.Since(start), fmt.Errorf("runc %s: timed out after %s: %w", args[0], timeout, ErrRunc)
	}
	return time.Since(start), nil
}

// Run starts the container id from bundle b, detached, with stdio on /dev/null.
func Run(id string, b *Bundle) error {
	_, err := runc(30*time.Second, "run", "-d", "--bundle", b.Dir, id)
	return err
}

// Checkpoint dumps container id into imageDir (CRIU work files and dump.log in workDir) and stops
// it. extra are further `runc checkpoint` flags. It returns the wall time of the command; on a
// CRIU failure the error carries the last lines of dump.log.
func Checkpoint(id, imageDir, workDir string, extra ...string) (time.Duration, error) {
	for _, d := range []string{imageDir, workDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, fmt.Errorf("checkpoint %s: %w", id, err)
		}
	}
	args := append([]string{"checkpoint", "--image-path", imageDir, "--work-path", workDir}, extra...)
	d, err := runc(60*time.Second, append(args, id)...)
	if err != nil {
		return d, fmt.Errorf("%w; dump.log: %s", err, criuErrors(filepath.Join(workDir, "dump.log")))
	}
	return d, nil
}

// Restore restores container id from imageDir with bundle b (its current network namespace),
// detached. It returns the wall time of the command.
func Restore(id string, b *Bundle, imageDir, workDir string) (time.Duration, error) {
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return 0, fmt.Errorf("restore %s: %w", id, err)
	}
	d, err := runc(60*time.Second, "restore", "-d", "--image-path", imageDir, "--work-path", workDir, "--bundle", b.Dir, id)
	if err != nil {
		return d, fmt.Errorf("%w; restore.log: %s", err, criuErrors(filepath.Join(workDir, "restore.log")))
	}
	return d, nil
}

// Kill sends sig ("TERM", "KILL") to the container's init process.
func Kill(id, sig string) error {
	_, err := runc(10*time.Second, "kill", id, sig)
	return err
}

// Delete removes container id, killing it first; a missing container is not an error.
func Delete(id string) {
	_, _ = runc(15*time.Second, "delete", "-f", id)
}

// State returns the container's status ("running", "stopped", ...) or "" when runc does not know it.
func State(id string) string {
	out, err := exec.Command("runc", "state", id).Output()
	if err != nil {
		return ""
	}
	var st struct{ Status string }
	if json.Unmarshal(out, &st) != nil {
		return ""
	}
	return st.Status
}

// ImageSize returns the total size in bytes of the files in an image directory.
func ImageSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// criuErrors returns the first four "Error" lines of a CRIU log (the cause comes first; the
// rest is the unwinding), joined with " | ", or its last lines when it has none, or "(none)".
func criuErrors(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(none)"
	}
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Error") && len(errs) < 4 {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) == 0 {
		return tailString(string(b), 4)
	}
	return strings.Join(errs, " | ")
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
