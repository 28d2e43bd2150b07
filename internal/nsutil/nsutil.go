// Package nsutil runs code inside Linux network namespaces and manages named namespaces
// (the files under /var/run/netns that `ip netns` uses).
//
// Every function that enters a namespace does so on a locked OS thread and restores the thread's
// original namespace before unlocking it; when the restore fails the thread is left locked so the
// Go runtime discards it instead of reusing a thread in the wrong namespace. Goroutines started
// inside fn do not inherit the namespace.
package nsutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RunDir is where named network namespaces are bind-mounted (iproute2's convention).
const RunDir = "/var/run/netns"

// ErrNotFound is returned when a named namespace does not exist.
var ErrNotFound = errors.New("network namespace not found")

// Path returns the bind-mount path of a namespace given by name or by absolute path.
// The empty name means the calling process's own namespace and returns "".
func Path(name string) string {
	if name == "" || strings.HasPrefix(name, "/") {
		return name
	}
	return filepath.Join(RunDir, name)
}

// Open returns a handle to the namespace name (a name under RunDir or an absolute path); the empty
// name opens the current thread's namespace. The caller closes the handle.
func Open(name string) (netns.NsHandle, error) {
	if name == "" {
		return netns.Get()
	}
	h, err := netns.GetFromPath(Path(name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), fmt.Errorf("open netns %s: %w", name, ErrNotFound)
		}
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}

// Do runs fn on a locked OS thread inside the namespace name ("" = the current one).
func Do(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	target, err := Open(name)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime terminates it when this goroutine exits.
		return errors.Join(ferr, fmt.Errorf("restore netns after %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Create makes a new named network namespace without moving the caller into it. It fails when
// the name exists already.
func Create(name string) error {
	if strings.Contains(name, "/") || name == "" {
		return fmt.Errorf("create netns %q: invalid name", name)
	}
	if _, err := os.Stat(Path(name)); err == nil {
		return fmt.Errorf("create netns %s: %w", name, os.ErrExist)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have switched the thread already: restore before returning.
			if serr := netns.Set(orig); serr == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns after creating %s: %w", name, err)
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// Delete removes a named namespace (unmount and remove its file). Links inside it go with it once
// no process holds the namespace. A missing namespace is not an error.
func Delete(name string) error {
	if _, err := os.Stat(Path(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// List returns the names of the named namespaces under RunDir that start with prefix.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", RunDir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Handle returns a netlink handle bound to the namespace name ("" = current). The caller deletes it.
func Handle(name string) (*netlink.Handle, error) {
	if name == "" {
		return netlink.NewHandle()
	}
	ns, err := Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, nil
}

// Sysctl writes value to the sysctl key (dotted, e.g. "net.ipv4.ip_forward") inside namespace name.
func Sysctl(name, key, value string) error {
	return Do(name, func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, name, err)
		}
		return nil
	})
}
