package daemon

import (
	"net"
	"os"
	"sync"
	"syscall"
)

var umaskMu sync.Mutex

// listenUnix0600 listens on a unix socket created with mode 0600 (umask 0177 during bind(2)).
func listenUnix0600(path string) (net.Listener, error) {
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
