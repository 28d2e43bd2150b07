package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeEndpoint serves the quicext control protocol on a fresh abstract socket in the current
// netns. answer returns the response line for a request line ("" = never answer).
func fakeEndpoint(t *testing.T, answer func(req map[string]any) string) string {
	t.Helper()
	addr := fmt.Sprintf("@steerd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadBytes('\n')
				if err != nil {
					return
				}
				var req map[string]any
				json.Unmarshal(line, &req)
				a := answer(req)
				if a == "" {
					time.Sleep(10 * time.Second)
					return
				}
				c.Write([]byte(a + "\n"))
			}()
		}
	}()
	return addr
}

func TestQuicextControl(t *testing.T) {
	var got map[string]any
	addr := fakeEndpoint(t, func(req map[string]any) string {
		got = req
		switch req["op"] {
		case "prepare":
			return `{"ok":true,"readiness":{"strategy":"symmetric","ready":[{"remote":"x"},{"remote":"y"}],"not_ready":[],"unsupported":[{"remote":"z"}],"elapsed_ms":12.5}}`
		case "restored":
			return `{"ok":true}`
		}
		return `{"ok":false,"error":"quicext: no migration prepared"}`
	})
	q := QuicextControl{Addr: addr}
	tgt := Target{IPv4: netip.MustParseAddrPort("198.18.21.2:4433"), IPv6: netip.MustParseAddrPort("[2001:2:0:21::2]:4433")}
	r, err := q.Prepare(context.Background(), "", tgt, "symmetric", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready != 2 || r.Unsupported != 1 || r.Elapsed != 12500*time.Microsecond {
		t.Fatalf("readiness %+v", r)
	}
	tg := got["target"].(map[string]any)
	if got["strategy"] != "symmetric" || got["timeout_ms"] != float64(500) || tg["ipv4"] != "198.18.21.2:4433" || tg["ipv6"] != "[2001:2:0:21::2]:4433" {
		t.Fatalf("request %v", got)
	}
	if dl, ok := got["deadline_unix_ms"].(float64); !ok || dl <= float64(time.Now().UnixMilli()) {
		t.Fatalf("prepare request without a future deadline: %v", got)
	}
	if err := q.Restored(context.Background(), "", tgt); err != nil {
		t.Fatal(err)
	}
	// "no migration prepared" leaves the service accepting: the abort is done.
	if err := q.Abort(context.Background(), ""); err != nil {
		t.Fatalf("abort of an unprepared service: %v", err)
	}
}

// TestQuicextControlAbortLatePrepare: the service answers the abort with "no migration prepared"
// but a late prepare then prepares it (status prepared): Abort repeats until the status says the
// service accepts again; a service that stays prepared is an error.
func TestQuicextControlAbortLatePrepare(t *testing.T) {
	for _, stuck := range []bool{false, true} {
		var aborts, statuses atomic.Int32
		prepared := atomic.Bool{}
		addr := fakeEndpoint(t, func(req map[string]any) string {
			switch req["op"] {
			case "abort":
				n := aborts.Add(1)
				if n == 1 {
					prepared.Store(true) // the late prepare arrives right after the first abort
					return `{"ok":false,"error":"quicext: no migration prepared"}`
				}
				if !stuck {
					prepared.Store(false)
				}
				return `{"ok":true}`
			case "status":
				statuses.Add(1)
				return fmt.Sprintf(`{"ok":true,"status":{"prepared":%v}}`, prepared.Load())
			}
			return `{"ok":false,"error":"unexpected"}`
		})
		err := QuicextControl{Addr: addr}.Abort(context.Background(), "")
		switch {
		case !stuck && (err != nil || aborts.Load() != 2 || prepared.Load()):
			t.Fatalf("late prepare: err %v, aborts %d, still prepared %v", err, aborts.Load(), prepared.Load())
		case stuck && (err == nil || aborts.Load() != abortTries || !strings.Contains(err.Error(), "still has a prepared migration")):
			t.Fatalf("stuck service: err %v, aborts %d, want an error after %d", err, aborts.Load(), abortTries)
		}
		if statuses.Load() != aborts.Load() {
			t.Fatalf("status checked %d times after %d aborts", statuses.Load(), aborts.Load())
		}
	}
}

func TestQuicextControlNeverAnswers(t *testing.T) {
	addr := fakeEndpoint(t, func(map[string]any) string { return "" })
	q := QuicextControl{Addr: addr, Grace: 100 * time.Millisecond}
	start := time.Now()
	_, err := q.Prepare(context.Background(), "", Target{}, "symmetric", 200*time.Millisecond)
	el := time.Since(start)
	if !errors.Is(err, ErrPrepareTimeout) {
		t.Fatalf("err %v, want ErrPrepareTimeout", err)
	}
	if el < 300*time.Millisecond || el > 2*time.Second {
		t.Fatalf("gave up after %v, want about 300ms", el)
	}
	// No endpoint at all: a dial error, not a timeout.
	q = QuicextControl{Addr: "@steerd-test-none-" + fmt.Sprint(time.Now().UnixNano())}
	if _, err := q.Prepare(context.Background(), "", Target{}, "symmetric", 100*time.Millisecond); err == nil || errors.Is(err, ErrPrepareTimeout) {
		t.Fatalf("missing endpoint: %v", err)
	}
}

// TestQuicextControlWaitsForListener: a service that starts listening shortly after the request
// (just started or restarted) is reached within ConnectRetry; one that never listens fails with
// the refused connection once ConnectRetry has passed.
func TestQuicextControlWaitsForListener(t *testing.T) {
	addr := fmt.Sprintf("@steerd-test-late-%d-%d", os.Getpid(), time.Now().UnixNano())
	go func() {
		time.Sleep(200 * time.Millisecond)
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return
		}
		t.Cleanup(func() { ln.Close() })
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadBytes('\n')
		c.Write([]byte(`{"ok":true}` + "\n"))
	}()
	q := QuicextControl{Addr: addr, ConnectRetry: 2 * time.Second}
	tgt := Target{IPv4: netip.MustParseAddrPort("198.18.21.2:4433")}
	if err := q.Restored(context.Background(), "", tgt); err != nil {
		t.Fatalf("restored to a service listening 200 ms late: %v", err)
	}
	q = QuicextControl{Addr: fmt.Sprintf("@steerd-test-never-%d", time.Now().UnixNano()), ConnectRetry: 300 * time.Millisecond}
	start := time.Now()
	err := q.Restored(context.Background(), "", tgt)
	if el := time.Since(start); err == nil || !strings.Contains(err.Error(), "connection refused") || el < 300*time.Millisecond || el > 2*time.Second {
		t.Fatalf("restored to no listener: %v after %v, want connection refused after ~300 ms", err, el)
	}
}
