package quicext

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func threadNetNS(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestPathSocketNamespace checks that a path socket is opened in the namespace Dial ran in, even
// when the goroutine that adds the path runs on a thread in another namespace (a client inside a
// netns must never send its PATH_CHALLENGE from the host's namespace).
func TestPathSocketNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root is needed to create a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	origIno := threadNetNS(t)
	scratch, err := netns.New() // moves this thread into a new, unnamed namespace
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Close()
	defer netns.Set(orig)
	scratchIno := threadNetNS(t)
	if scratchIno == origIno {
		t.Fatal("netns.New did not change the thread's namespace")
	}
	n := captureNetNS()
	defer n.close()
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}

	got := make(chan uint64, 1)
	go func() { // another goroutine, on a thread in the original namespace
		var ino uint64
		n.do(func() error { ino = threadNetNS(t); return nil })
		got <- ino
	}()
	if ino := <-got; ino != scratchIno {
		t.Fatalf("path socket would open in netns %d, want the dial namespace %d (caller's is %d)", ino, scratchIno, origIno)
	}
	// Same namespace: no switch needed (and no privilege).
	var ino uint64
	n2 := captureNetNS()
	defer n2.close()
	n2.do(func() error { ino = threadNetNS(t); return nil })
	if ino != origIno {
		t.Fatalf("same-namespace do ran in %d, want %d", ino, origIno)
	}
	n.close()
	if err := n.do(func() error { return nil }); err == nil {
		t.Fatal("do after close succeeded")
	}
}
