package quicext

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// rawControl sends raw bytes to the endpoint at sock and returns the decoded response and how
// long it took to arrive.
func rawControl(t *testing.T, sock string, send []byte) (ControlResponse, time.Duration) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if len(send) > 0 {
		if _, err := c.Write(send); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read response to %.40q: %v", send, err)
	}
	var resp ControlResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("decode response %q: %v", line, err)
	}
	return resp, time.Since(start)
}

// TestControlBadInput: malformed, incomplete, oversized and unknown requests get a clear error
// response, and a client that connects and never sends is answered with an error after
// ReadTimeout while other requests are served meanwhile.
func TestControlBadInput(t *testing.T) {
	tb := newTestbed(t, false, ServerConfig{})
	sock := fmt.Sprintf("@steerd-quicext-bad-%d", os.Getpid())
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const readTimeout = 300 * time.Millisecond
	go ServeControlWith(l, tb.srv, ControlOptions{ReadTimeout: readTimeout, MaxRequestBytes: 1024})

	for _, tc := range []struct {
		name, send, want string
	}{
		{"not json", "{op: prepare}\n", "decode control request"},
		{"truncated json", `{"op":"status"` + "\n", "decode control request"},
		{"wrong type", `{"op":"prepare","timeout_ms":"soon"}` + "\n", "decode control request"},
		{"missing op", "{}\n", `missing "op"`},
		{"unknown op", `{"op":"migrate"}` + "\n", "unknown op"},
		{"bad strategy", `{"op":"prepare","strategy":"warp"}` + "\n", "unknown strategy"},
		{"bad target", `{"op":"prepare","target":{"ipv4":"198.18.21.2"}}` + "\n", "decode control request"},
		{"no newline", `{"op":"status"}`, "closed before a newline"},
		{"too long", strings.Repeat(" ", 2000) + "\n", "longer than 1024 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp ControlResponse
			if tc.name == "no newline" {
				// half-close so the endpoint sees EOF without a newline
				c, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write([]byte(tc.send))
				c.(*net.UnixConn).CloseWrite()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadBytes('\n')
				if err != nil {
					t.Fatal(err)
				}
				json.Unmarshal(line, &resp)
			} else {
				resp, _ = rawControl(t, sock, []byte(tc.send))
			}
			if resp.OK || !strings.Contains(resp.Error, tc.want) {
				t.Fatalf("response %+v, want an error containing %q", resp, tc.want)
			}
		})
	}
	if st := tb.srv.Status(); st.Prepared {
		t.Fatal("a bad request prepared a migration")
	}

	// A silent client: other requests go on, and it gets an error after ReadTimeout.
	silent, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	resp, _ := rawControl(t, sock, []byte(`{"op":"status"}`+"\n"))
	if !resp.OK || resp.Status == nil {
		t.Fatalf("status while a client is silent: %+v", resp)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(silent).ReadBytes('\n')
	waited := time.Since(start)
	if err != nil {
		t.Fatalf("silent client got no answer: %v", err)
	}
	var sresp ControlResponse
	json.Unmarshal(line, &sresp)
	if sresp.OK || !strings.Contains(sresp.Error, "no request line") || waited < readTimeout || waited > readTimeout+2*time.Second {
		t.Fatalf("silent client: %+v after %v", sresp, waited)
	}
	// and the endpoint closed it
	if _, err := bufio.NewReader(silent).ReadByte(); err == nil {
		t.Fatal("silent connection still open")
	}

	// ControlClient reports endpoint errors as ErrControl
	cc := NewControlClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cc.Do(ctx, ControlRequest{Op: "warp"}); !errors.Is(err, ErrControl) || !strings.Contains(err.Error(), "unknown op") {
		t.Fatalf("unknown op via client: %v", err)
	}
	if err := cc.Restored(ctx, Target{}); !errors.Is(err, ErrControl) || !strings.Contains(err.Error(), ErrNotPrepared.Error()) {
		t.Fatalf("restored without prepare via client: %v", err)
	}
}
