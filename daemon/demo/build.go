package demo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries are the packages a cluster runs, as BuildBinaries builds them: steerd on the nodes,
// steerctl for init/run, kvservice in the container.
var Binaries = []string{
	"github.com/steerd/steerd/cmd/steerd",
	"github.com/steerd/steerd/cmd/steerctl",
	"github.com/steerd/steerd/examples/kvservice",
}

// BuildBinaries builds Binaries static (CGO_ENABLED=0: kvservice runs alone in the container's
// root) into a new temporary directory named after prefix and returns it; the caller removes it.
// The error carries the go build output.
func BuildBinaries(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", fmt.Errorf("build binaries: %w", err)
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, Binaries...)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build binaries: %w\n%s", err, out)
	}
	return dir, nil
}

// MissingCapability returns why a cluster cannot run on this machine ("" when it can): root is
// needed for network namespaces, XDP, runc and CRIU, and runc, criu and nsenter must be
// installed (make deps).
func MissingCapability() string {
	if os.Geteuid() != 0 {
		return "root is needed for network namespaces, XDP, runc and CRIU"
	}
	for _, b := range []string{"runc", "criu", "nsenter"} {
		if _, err := exec.LookPath(b); err != nil {
			return b + " is not installed (make deps)"
		}
	}
	return ""
}
