// Package install checks that `make deps` left a working toolchain: CRIU through the project's
// wrapper, runc, clang-19 and bpftool.
package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const counterEnv = "STEERD_TEST_COUNTER_FILE"

// TestMain turns the test binary into the process that TestCheckpointRestoreProcess dumps and
// restores: with counterEnv set it writes an increasing counter (kept in memory) every 20 ms.
func TestMain(m *testing.M) {
	if file := os.Getenv(counterEnv); file != "" {
		for i := 1; ; i++ {
			os.WriteFile(file, []byte(strconv.Itoa(i)), 0o644)
			time.Sleep(20 * time.Millisecond)
		}
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skip: missing capability: root is needed for CRIU")
	}
}

func criuPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("criu")
	if err != nil {
		t.Fatalf("criu not on PATH: run 'make deps' (scripts/install-deps.sh): %v", err)
	}
	return p
}

func TestCriuCheck(t *testing.T) {
	needRoot(t)
	out, err := exec.Command(criuPath(t), "check").CombinedOutput()
	if err != nil {
		t.Fatalf("criu check: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Looks good") {
		t.Fatalf("criu check did not say it looks good:\n%s", out)
	}
	v, err := exec.Command(criuPath(t), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", strings.TrimSpace(string(v)))
}

func TestToolchain(t *testing.T) {
	for _, tool := range []string{"runc", "clang-19", "bpftool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Errorf("%s not on PATH: run 'make deps': %v", tool, err)
		}
	}
	if b, err := os.ReadFile("/etc/criu/runc.conf"); err != nil || !strings.Contains(string(b), "network-lock skip") {
		t.Errorf("/etc/criu/runc.conf lacks 'network-lock skip' (err=%v): run 'make deps'", err)
	}
}

// readCounter reads the integer a shell loop writes to file.
func readCounter(t *testing.T, file string) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		b, err := os.ReadFile(file)
		if err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no counter in %s", file)
	return 0
}

// TestCheckpointRestoreProcess dumps a counting shell loop with CRIU, restores it, and checks that
// it goes on counting from where it was (its memory came back) instead of starting over.
func TestCheckpointRestoreProcess(t *testing.T) {
	needRoot(t)
	criu := criuPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.Mkdir(img, 0o700); err != nil {
		t.Fatal(err)
	}
	counter := filepath.Join(dir, "counter")
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	// The test binary itself, re-executed as a counter that does not fork (see TestMain): a
	// forking shell would leave children whose PIDs the restore needs while PID 1 reaps them.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), counterEnv+"="+counter)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }() // reaps it when CRIU kills it after the dump
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	if out, err := exec.Command(criu, "dump", "-t", strconv.Itoa(pid), "-D", img, "-o", "dump.log", "-v4").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(img, "dump.log"))
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("criu dump: %v\n%s\n%s", err, out, tail(log))
	}
	dumpTime := time.Since(start)
	select { // the PID must be free again before CRIU can restore the process with it
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatalf("process %d still alive 5 s after criu dump", pid)
	}
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); os.IsNotExist(err) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	atDump := readCounter(t, counter)
	time.Sleep(100 * time.Millisecond)
	if n := readCounter(t, counter); n != atDump {
		t.Fatalf("process still counting after dump (%d -> %d): CRIU did not stop it", atDump, n)
	}

	start = time.Now()
	if out, err := exec.Command(criu, "restore", "-D", img, "-d", "-o", "restore.log", "-v4").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(img, "restore.log"))
		t.Fatalf("criu restore: %v\n%s\n%s", err, out, tail(log))
	}
	restoreTime := time.Since(start)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	time.Sleep(200 * time.Millisecond)
	after := readCounter(t, counter)
	if after <= atDump {
		t.Fatalf("restored process did not go on counting: %d at dump, %d after restore", atDump, after)
	}
	if after > atDump+50 {
		t.Fatalf("counter jumped from %d to %d: looks like a fresh process, not a restored one", atDump, after)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("restored process %d is not running: %v", pid, err)
	}
	t.Logf("criu dump %v, restore %v; counter %d at dump, %d after restore", dumpTime, restoreTime, atDump, after)
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 3000 {
		s = s[len(s)-3000:]
	}
	return s
}
