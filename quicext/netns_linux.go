package quicext

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// dialNetNS remembers the network namespace of the thread that called Dial, so that the sockets
// of later paths (created on other goroutines, which may run on threads in another namespace) are
// opened in the same namespace as the connection's first socket. A client that runs inside a
// network namespace on a locked thread (as in steerd's netns tests) would otherwise open its
// probe socket in whatever namespace the runtime's other threads are in, and send its
// PATH_CHALLENGE from there.
type dialNetNS struct {
	mu  sync.Mutex // held while fd is in use, so close cannot free it under a setns
	fd  int        // -1: unknown, sockets are opened wherever the calling thread is
	ino uint64
	dev uint64
}

// captureNetNS records the calling thread's network namespace.
func captureNetNS() *dialNetNS {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &dialNetNS{fd: -1}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &dialNetNS{fd: -1}
	}
	return &dialNetNS{fd: fd, ino: st.Ino, dev: st.Dev}
}

// do runs fn on a locked thread in the remembered namespace, entering it only when the thread is
// elsewhere (entering needs CAP_SYS_ADMIN; an unprivileged client never has to).
func (n *dialNetNS) do(fn func() error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fd == closedFD {
		return errNetNSClosed
	}
	if n.fd < 0 {
		return fn()
	}
	runtime.LockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil && st.Ino == n.ino && st.Dev == n.dev {
		err := fn()
		runtime.UnlockOSThread()
		return err
	}
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

func (n *dialNetNS) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fd >= 0 {
		unix.Close(n.fd)
	}
	n.fd = closedFD
}

// closedFD marks a dialNetNS whose connection has ended.
const closedFD = -2

// errNetNSClosed is returned when a path is added after the connection ended.
var errNetNSClosed = errors.New("connection closed: no namespace to open a path socket in")
