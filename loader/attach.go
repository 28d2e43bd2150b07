package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
)

// AttachXDP attaches prog to the interface with ifindex in the calling
// thread's network namespace, in native (driver) mode; when the driver has
// no native XDP it falls back to generic mode and logs a warning. It
// returns the link and whether the native mode was used.
func AttachXDP(prog *ebpf.Program, ifindex int) (link.Link, bool, error) {
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err == nil {
		return l, true, nil
	}
	nativeErr := err
	l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, false, fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, errors.Join(nativeErr, err))
	}
	slog.Warn("xdp: native mode unavailable, attached in generic mode", "ifindex", ifindex, "native_error", nativeErr)
	return l, false, nil
}

// AttachXDPAt is AttachXDP inside the network namespace at nsPath (for
// example /var/run/netns/stdr-pod-1 or /proc/<pid>/ns/net). The link is
// bound to the interface, not to the namespace, so it may be used and
// closed from any thread.
func AttachXDPAt(prog *ebpf.Program, nsPath string, ifindex int) (link.Link, bool, error) {
	var (
		l      link.Link
		native bool
	)
	err := Do(nsPath, func() error {
		var err error
		l, native, err = AttachXDP(prog, ifindex)
		return err
	})
	return l, native, err
}

// Do runs fn on a locked OS thread inside the network namespace at nsPath
// and returns the thread to its namespace afterwards.
func Do(nsPath string, fn func() error) error {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return // thread stays locked and dies with the goroutine
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it exits with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
