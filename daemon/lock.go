package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNodeLocked is returned by LockNetNS when another steerd holds the datapath of this network
// namespace: two daemons would fight over the uplink's XDP program or the nftables table.
var ErrNodeLocked = errors.New("another steerd owns the datapath of this network namespace")

// NetNSLockDir holds one lock file per network namespace a steerd with a datapath runs in:
// netns-<inode of /proc/self/ns/net>.lock, containing the holder's pid.
const NetNSLockDir = "/run/steerd"

// LockNetNS takes the exclusive flock(2) of this process's network namespace in dir
// (NetNSLockDir when empty) and writes the pid into the file. The lock lives as long as the
// process (the kernel drops it when the process dies, also on SIGKILL), or until release. When
// another process holds it, the error wraps ErrNodeLocked and names that pid.
func LockNetNS(dir string) (release func(), err error) {
	if dir == "" {
		dir = NetNSLockDir
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("lock network namespace: stat /proc/self/ns/net: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock network namespace: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("netns-%d.lock", st.Ino))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock network namespace: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: pid %s holds %s (stop it first, or run this one in another namespace)",
				ErrNodeLocked, strings.TrimSpace(string(holder)), path)
		}
		return nil, fmt.Errorf("lock network namespace: flock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
