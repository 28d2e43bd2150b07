package kv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// rw joins a reader of requests and a buffer of responses into an io.ReadWriter.
type rw struct {
	io.Reader
	strings.Builder
}

func serveString(t *testing.T, s *Store, in string) (string, error) {
	t.Helper()
	var c rw
	c.Reader = strings.NewReader(in)
	err := s.Serve(&c)
	return c.String(), err
}

func TestServeRequests(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"incr", "INCR a 1\nINCR a 2\nINCR b 3\n", "a 1 1\na 2 2\nb 1 3\n"},
		{"get unknown and known", "GET x 7\nINCR x 8\nGET x 9\n", "x 0 7\nx 1 8\nx 1 9\n"},
		{"ping", "PING 42\n", "PONG 42\n"},
		{"crlf", "INCR k 5\r\nPING 6\r\n", "k 1 5\nPONG 6\n"},
		{"last line without newline", "INCR k 1\nPING 2", "k 1 1\nPONG 2\n"},
		{"max seq", "PING 18446744073709551615\n", "PONG 18446744073709551615\n"},
		{"unknown verb keeps stream", "DEL a 1\nPING 2\n", "ERR 1 unknown verb \"DEL\"\nPONG 2\n"},
		{"lower case verb", "incr a 1\n", "ERR 1 unknown verb \"incr\"\n"},
		{"missing seq", "INCR a\n", "ERR - INCR wants 2 arguments (key, seq), got 1\n"},
		{"bad seq", "INCR a x1\n", "ERR - invalid sequence number \"x1\"\n"},
		{"seq overflow", "PING 18446744073709551616\n", "ERR - invalid sequence number \"18446744073709551616\"\n"},
		{"extra field", "GET a b 3\n", "ERR 3 GET wants 2 arguments (key, seq), got 3\n"},
		{"empty line", "\nPING 1\n", "ERR - empty request\nPONG 1\n"},
		{"double space", "INCR  a 1\n", "ERR 1 INCR wants 2 arguments (key, seq), got 3\n"},
		{"control char key", "INCR a\x01 1\n", "ERR 1 invalid key \"a\\x01\" (want 1..200 printable non-space bytes)\n"},
		{"ping with key", "PING a 1\n", "ERR 1 PING wants 1 argument (seq), got 2\n"},
		{"long key", "GET " + strings.Repeat("k", MaxKeyLen+1) + " 4\n", "ERR 4 invalid key \"" + strings.Repeat("k", MaxKeyLen+1) + "\" (want 1..200 printable non-space bytes)\n"},
		{"empty input", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := serveString(t, NewStore(), tt.in)
			if err != nil {
				t.Fatalf("serve: %v", err)
			}
			if got != tt.want {
				t.Errorf("responses:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestServeLineTooLong(t *testing.T) {
	s := NewStore()
	in := "INCR a 1\nGET " + strings.Repeat("a", MaxLine) + " 2\nINCR a 3\n"
	got, err := serveString(t, s, in)
	if !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("serve error = %v, want ErrLineTooLong", err)
	}
	if want := "a 1 1\nERR - line too long\n"; got != want {
		t.Errorf("responses %q, want %q", got, want)
	}
	if st := s.Stats(); st.Requests != 1 || st.Errors != 1 {
		t.Errorf("stats = %+v, want 1 request and 1 error", st)
	}
	// A line of exactly MaxLine bytes with its newline is accepted.
	key := strings.Repeat("b", MaxKeyLen)
	line := "GET " + key + " " + strings.Repeat("0", MaxLine-len("GET  \n")-len(key)-1) + "9\n"
	if len(line) != MaxLine {
		t.Fatalf("test line is %d bytes", len(line))
	}
	got, err = serveString(t, s, line)
	if err != nil || got != key+" 0 9\n" {
		t.Errorf("max-length line: got %q, %v", got, err)
	}
}

func TestParseRoundTrip(t *testing.T) {
	for _, r := range []Request{{Op: OpIncr, Key: "k", Seq: 1}, {Op: OpGet, Key: "~!", Seq: 1 << 63}, {Op: OpPing, Seq: 0}} {
		line := string(AppendRequest(nil, r))
		got, ok, err := ParseRequest(line)
		if err != nil || !ok || got != r {
			t.Errorf("ParseRequest(%q) = %+v, %v, %v; want %+v", line, got, ok, err, r)
		}
	}
	for _, r := range []Response{{Key: "k", Value: 5, Seq: 9}, {Pong: true, Seq: 3}} {
		line := string(AppendResponse(nil, r))
		got, err := ParseResponse(line)
		if err != nil || got != r {
			t.Errorf("ParseResponse(%q) = %+v, %v; want %+v", line, got, err, r)
		}
	}
	r, err := ParseResponse("ERR 12 unknown verb \"X\"\n")
	if !errors.Is(err, ErrServer) || r.Seq != 12 || !strings.Contains(err.Error(), "unknown verb") {
		t.Errorf("ERR response: %+v, %v", r, err)
	}
	for _, bad := range []string{"", "k 1", "k x 1", "k 1 -1", "PONG", "PONG x", "a b c d", "k\x7f 1 2"} {
		if _, err := ParseResponse(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseResponse(%q) error = %v, want ErrMalformed", bad, err)
		}
	}
}

// TestConcurrentStreams runs many streams over net.Pipe against one store: every INCR of a
// shared key must be counted exactly once, and each stream must see its own values increase.
func TestConcurrentStreams(t *testing.T) {
	s := NewStore()
	const streams, reqs = 16, 200
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			cli, srv := net.Pipe()
			defer cli.Close()
			go func() {
				s.Serve(srv)
				srv.Close()
			}()
			go func() {
				var b []byte
				for n := range reqs {
					b = AppendRequest(b[:0], Request{Op: OpIncr, Key: "shared", Seq: uint64(n)})
					b = AppendRequest(b, Request{Op: OpIncr, Key: fmt.Sprintf("own%d", i), Seq: uint64(n)})
					if _, err := cli.Write(b); err != nil {
						return
					}
				}
			}()
			br := bufio.NewReader(cli)
			var lastShared uint64
			for n := range reqs {
				for k := range 2 {
					line, err := br.ReadString('\n')
					if err != nil {
						errs <- fmt.Errorf("stream %d: read: %w", i, err)
						return
					}
					r, err := ParseResponse(line)
					if err != nil || r.Seq != uint64(n) {
						errs <- fmt.Errorf("stream %d: response %q: %v", i, line, err)
						return
					}
					switch k {
					case 0:
						if r.Value <= lastShared {
							errs <- fmt.Errorf("stream %d: shared counter went from %d to %d", i, lastShared, r.Value)
							return
						}
						lastShared = r.Value
					case 1:
						if r.Value != uint64(n+1) {
							errs <- fmt.Errorf("stream %d: own counter %d at request %d", i, r.Value, n)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.Get("shared"); got != streams*reqs {
		t.Errorf("shared = %d, want %d", got, streams*reqs)
	}
	if st := s.Stats(); st.Keys != streams+1 || st.Requests != 2*streams*reqs || st.Errors != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestBallast(t *testing.T) {
	if _, err := Ballast(-1); err == nil {
		t.Error("Ballast(-1) succeeded")
	}
	b0, err := Ballast(0)
	if err != nil || b0.Size() != 0 || b0.Verify() != nil {
		t.Fatalf("Ballast(0) = %v, %v", b0, err)
	}
	b, err := Ballast(2)
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != 2<<20 {
		t.Errorf("size %d", b.Size())
	}
	if err := b.Verify(); err != nil {
		t.Fatalf("verify fresh ballast: %v", err)
	}
	for i := 0; i < b.Size(); i += PageSize {
		if b.buf[i] == 0 && b.buf[i+1] == 0 {
			t.Fatalf("page %d not touched", i/PageSize)
		}
	}
	// Swap two pages, as a restore that mapped them in the wrong place would.
	copy(b.buf[PageSize*3:PageSize*3+8], b.buf[PageSize*7:PageSize*7+8])
	if err := b.Verify(); !errors.Is(err, ErrBallastCorrupt) || !strings.Contains(err.Error(), "page 3 ") {
		t.Errorf("verify corrupt ballast: %v", err)
	}
}
