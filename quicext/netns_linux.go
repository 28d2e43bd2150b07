package quicext

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// dialNetNS remembers the network namespace of the goroutine that called Dial, so that the
// sockets of later paths (created on other goroutines, which may run on threads in another
// namespace) are opened in the same namespace as the connection's first socket.
type dialNetNS struct {
	fd int // -1: the process's own namespace, nothing to switch
}

// captureNetNS records the calling thread's network namespace when it differs from the process's.
func captureNetNS() dialNetNS {
	var self, thread unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &self) != nil || unix.Stat("/proc/thread-self/ns/net", &thread) != nil {
		return dialNetNS{fd: -1}
	}
	if self.Ino == thread.Ino && self.Dev == thread.Dev {
		return dialNetNS{fd: -1}
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return dialNetNS{fd: -1}
	}
	return dialNetNS{fd: fd}
}

// do runs fn in the remembered namespace (on a locked thread), or directly when there is none.
func (n dialNetNS) do(fn func() error) error {
	if n.fd < 0 {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter dial netns: %w", os.NewSyscallError("setns", err))
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("restore netns: %w", err) // thread stays locked and is discarded
	}
	runtime.UnlockOSThread()
	return ferr
}

func (n dialNetNS) close() {
	if n.fd >= 0 {
		unix.Close(n.fd)
	}
}
