package daemon

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestLockNetNS: a second lock of the same network namespace fails with ErrNodeLocked naming the
// holder's pid; after release it can be taken again.
func TestLockNetNS(t *testing.T) {
	dir := t.TempDir()
	release, err := LockNetNS(dir)
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	_, err = LockNetNS(dir) // a new open file description: flock conflicts even in one process
	if !errors.Is(err, ErrNodeLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v, want ErrNodeLocked naming pid %d", err, os.Getpid())
	}
	release()
	release2, err := LockNetNS(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
}
