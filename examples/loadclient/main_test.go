package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/steerd/steerd/examples/kvservice/service"
	"github.com/steerd/steerd/examples/loadclient/load"
)

func TestFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "-addr is required"},
		{[]string{"-addr", "127.0.0.2:1"}, "exactly one of -pin, -ca, -insecure"},
		{[]string{"-addr", "127.0.0.2:1", "-insecure", "-pin", "ab"}, "exactly one of"},
		{[]string{"-addr", "127.0.0.2:1", "-pin", "abcd"}, "want 64 hex digits"},
		{[]string{"-addr", "127.0.0.2:1", "-insecure", "-op", "del"}, "want incr, get or ping"},
		{[]string{"-addr", "127.0.0.2:1", "-insecure", "-strategies", "teleport"}, "unknown strategy"},
		{[]string{"-addr", "127.0.0.2:1", "-insecure", "-bind", "host"}, "not an IP address"},
	} {
		var out, errb bytes.Buffer
		if code := run(tt.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tt.args, code, errb.String(), tt.want)
		}
	}
}

// TestRunBinary runs the command in-process against an in-process service: event lines, then
// the report as the last line, the same report in -report-file, exit status 0.
func TestRunBinary(t *testing.T) {
	cert, fp, err := service.SelfSigned(nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Config{Listen: []string{"127.0.0.2:0"}, Instance: 3,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx) }()
	defer func() { cancel(); <-done }()

	reportFile := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := run([]string{"-addr", svc.Addrs()[0].(*net.UDPAddr).String(), "-pin", strings.ToUpper(fp), "-conns", "3",
		"-duration", "400ms", "-interval", "5ms", "-strategies", "symmetric,pool", "-report-file", reportFile}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	var lines []map[string]any
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stdout line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	evs := map[string]int{}
	for _, m := range lines[:len(lines)-1] {
		evs[m["ev"].(string)]++
	}
	if evs["connected"] != 3 || evs["negotiated"] != 3 || evs["report"] != 0 {
		t.Errorf("events %v, want 3 connected, 3 negotiated before the report", evs)
	}
	last := lines[len(lines)-1]
	if last["ev"] != "report" {
		t.Fatalf("last line %v is not the report", last)
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep load.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || len(rep.Conns) != 3 || rep.Sent < 3*40 || float64(rep.Sent) != last["sent"].(float64) {
		t.Errorf("report: ok=%v conns=%d sent=%d (stdout %v)", rep.OK(), len(rep.Conns), rep.Sent, last["sent"])
	}
	for _, c := range rep.Conns {
		if c.Negotiated != "pool|symmetric" {
			t.Errorf("conn %d negotiated %q, want pool|symmetric", c.Conn, c.Negotiated)
		}
	}
	if rep.IntervalMS != 5 || rep.GapThresholdMS != 15 {
		t.Errorf("interval %v ms, threshold %v ms", rep.IntervalMS, rep.GapThresholdMS)
	}
}
