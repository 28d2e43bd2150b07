package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/daemon/demo"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/quicext"
)

// TestControlSocketAbuse holds 64 slowloris connections (half a request header) and sends
// garbage, a 4 MiB body and deeply nested JSON to n0's control socket. The API must keep answering
// status within 3 s (shared 2-core machine), refuse each bad request with 4xx, and change nothing.
func TestControlSocketAbuse(t *testing.T) {
	c := cluster(t)
	sock := c.Configs[0].ControlSocket
	var idle []net.Conn
	defer func() {
		for _, x := range idle {
			x.Close()
		}
	}()
	for i := 0; i < 64; i++ {
		x, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("dial control socket: %v", err)
		}
		fmt.Fprintf(x, "POST /v1/migrations HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
		idle = append(idle, x)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	post := func(path string, body []byte) (int, string) {
		resp, err := hc.Post("http://steerd"+path, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err := c.API[0].Status(ctx)
	cancel()
	if err != nil {
		t.Errorf("status with 64 slowloris connections open: %v after %v", err, time.Since(t0))
	}
	big := append([]byte(`{"service":"`), bytes.Repeat([]byte("a"), 4<<20)...)
	big = append(big, `"}`...)
	nested := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	cases := []struct {
		name, path string
		body       []byte
	}{
		{"garbage", "/v1/migrations", []byte("\x00\xff{{{")},
		{"4 MiB body", "/v1/migrations", big},
		{"nested", "/v1/services", []byte(nested)},
		{"unknown field", "/v1/migrations", []byte(`{"service":"kv","to":"n1","evil":1}`)},
		{"unknown peer", "/v1/migrations", []byte(`{"service":"kv","to":"n9"}`)},
		{"to self", "/v1/migrations", []byte(`{"service":"kv","to":"n0"}`)},
		{"negative drain", "/v1/migrations", []byte(`{"service":"kv","to":"n1","drain_period_ns":-1,"strategy":"bogus"}`)},
		{"run twice", "/v1/services", []byte(`{"service":"kv"}`)},
		{"path traversal", "/v1/services", []byte(`{"service":"../../etc"}`)},
	}
	for _, tc := range cases {
		t0 := time.Now()
		code, body := post(tc.path, tc.body)
		t.Logf("%s: %d in %v: %.160s", tc.name, code, time.Since(t0).Round(time.Millisecond), strings.TrimSpace(body))
		if code < 400 || code >= 500 {
			t.Errorf("%s: HTTP %d, want 4xx: %.200s", tc.name, code, body)
		}
	}
	if st := serviceState(c, 0, demo.Service); st != "running" {
		t.Errorf("kv on n0 after the abuse: %q", st)
	}
	ms, err := c.API[0].Migrations(context.Background())
	if err == nil {
		for _, m := range ms {
			if m.Result == "running" {
				t.Errorf("a migration is running after bad requests: %+v", m)
			}
		}
	}
}

// TestQuicextControlAbuse attacks kv's quicext control endpoint (@steerd-quicext in the pod
// netns): 64 idle connections, garbage, an over-long line, an unknown op, abort without prepare,
// and a prepare with an unspecified target. docs/quicext-wire.md: bad input gets ok=false and the
// connection is closed; the endpoint keeps answering; nothing is left prepared.
func TestQuicextControlAbuse(t *testing.T) {
	c := cluster(t)
	ns := c.Configs[0].PodNSPrefix + demo.Service
	ask := func(line []byte) (quicext.ControlResponse, error) {
		var r quicext.ControlResponse
		err := nsutil.Do(ns, func() error {
			x, err := net.Dial("unix", quicext.DefaultControlAddr)
			if err != nil {
				return err
			}
			defer x.Close()
			x.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := x.Write(line); err != nil {
				return err
			}
			l, err := bufio.NewReader(x).ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("read answer: %w", err)
			}
			return json.Unmarshal(l, &r)
		})
		return r, err
	}
	var idle []net.Conn
	defer func() {
		for _, x := range idle {
			x.Close()
		}
	}()
	err := nsutil.Do(ns, func() error {
		for i := 0; i < 64; i++ {
			x, err := net.Dial("unix", quicext.DefaultControlAddr)
			if err != nil {
				return err
			}
			x.Write([]byte(`{"op":"sta`))
			idle = append(idle, x)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("idle connections: %v", err)
	}
	// Must be refused (docs/quicext-wire.md "Control endpoint").
	bad := map[string][]byte{
		"garbage":      []byte("\x00\xff\n"),
		"unknown op":   []byte(`{"op":"reboot"}` + "\n"),
		"abort":        []byte(`{"op":"abort"}` + "\n"),
		"bad strategy": []byte(`{"op":"prepare","target":{"ipv4":"198.18.21.2:4433"},"strategy":"teleport"}` + "\n"),
	}
	for name, line := range bad {
		r, err := ask(line)
		t.Logf("%s: ok %v err %q (%v)", name, r.OK, r.Error, err)
		if err != nil {
			t.Errorf("%s: no answer: %v", name, err)
		} else if r.OK {
			t.Errorf("%s: accepted", name)
		}
	}
	// kvservice serves its two quicext servers (IPv4 + IPv6 pod address) through
	// quicext.ServeControlGroup: the request size cap holds, and a prepare without a usable
	// target is refused.
	var known []string
	if r, err := ask(append(bytes.Repeat([]byte("a"), 70000), '\n')); err != nil || !strings.Contains(r.Error, "longer than") {
		known = append(known, fmt.Sprintf("70000-byte line answered %q (err %v), want the documented \"longer than 65536 bytes\"", r.Error, err))
	}
	for name, line := range map[string][]byte{
		"no target":      []byte(`{"op":"prepare","target":{},"strategy":"explicit-proactive","timeout_ms":100}` + "\n"),
		"target 0.0.0.0": []byte(`{"op":"prepare","target":{"ipv4":"0.0.0.0:0"},"strategy":"explicit-proactive","timeout_ms":100}` + "\n"),
	} {
		if r, err := ask(line); err == nil && r.OK {
			known = append(known, "prepare with "+name+" accepted (service refuses new handshakes until abort)")
			if r, err := ask([]byte(`{"op":"abort"}` + "\n")); err != nil || !r.OK {
				t.Errorf("abort after %s: %v %q", name, err, r.Error)
			}
		}
	}
	st, err := quicextStatus(c, 0)
	if err != nil || st.Prepared {
		t.Errorf("status after the abuse: prepared %v, err %v", st.Prepared, err)
	}
	if err := probeKV(c, 0, 300*time.Millisecond); err != nil {
		t.Errorf("kv after the control abuse: %v", err)
	}
	if len(known) > 0 && !t.Failed() {
		t.Errorf("quicext control endpoint of kvservice: %s", strings.Join(known, "; "))
	}
}
