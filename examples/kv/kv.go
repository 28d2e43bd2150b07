// Package kv is the logic of steerd's example stateful service: a concurrency-safe counter store
// served over any bidirectional byte stream (a QUIC stream in examples/kvservice, a TLS-over-TCP
// connection in the benchmark baseline) with a line protocol, and a memory ballast that sets the
// size of the process image a checkpoint (CRIU) has to dump.
//
// # Protocol
//
// Every request and every response is one line of printable ASCII ending in '\n' (a preceding
// '\r' is ignored), at most MaxLine bytes with the newline. The client numbers its requests with
// a sequence number <seq> (decimal uint64) that the server echoes, so a client can match
// responses to requests and detect loss or reordering:
//
//	INCR <key> <seq>   ->  <key> <value> <seq>     value after adding 1 (the first INCR gives 1)
//	GET <key> <seq>    ->  <key> <value> <seq>     value without change (0 for an unknown key)
//	PING <seq>         ->  PONG <seq>
//	anything else      ->  ERR <seq> <reason>      <seq> is "-" when the request had none
//
// A key is 1..MaxKeyLen bytes of printable ASCII without spaces (0x21..0x7e). Verbs are upper
// case. A malformed request gets an ERR line and the stream goes on; a line longer than MaxLine
// gets "ERR - line too long" and the stream is closed (the server cannot resynchronise).
// Responses come in request order; the server flushes when it has no more buffered input, so
// pipelined requests share packets.
package kv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Limits of the protocol, in bytes.
const (
	// MaxLine is the longest request or response line, '\n' included.
	MaxLine = 1024
	// MaxKeyLen is the longest key.
	MaxKeyLen = 200
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrMalformed is returned by ParseRequest and ParseResponse for a line that is not a valid
	// request or response.
	ErrMalformed = errors.New("kv: malformed line")
	// ErrLineTooLong is returned by Serve after a line longer than MaxLine (the stream is
	// abandoned after the ERR response).
	ErrLineTooLong = errors.New("kv: line too long")
	// ErrServer is wrapped by ParseResponse for an "ERR" response line.
	ErrServer = errors.New("kv: server error")
)

// Op is a request verb.
type Op string

// Request verbs.
const (
	OpIncr Op = "INCR"
	OpGet  Op = "GET"
	OpPing Op = "PING"
)

// Request is one parsed request line.
type Request struct {
	Op  Op
	Key string // empty for PING
	Seq uint64
}

// AppendRequest appends the wire form of r, '\n' included, to b.
func AppendRequest(b []byte, r Request) []byte {
	b = append(b, r.Op...)
	b = append(b, ' ')
	if r.Op != OpPing {
		b = append(b, r.Key...)
		b = append(b, ' ')
	}
	b = strconv.AppendUint(b, r.Seq, 10)
	return append(b, '\n')
}

// Response is one parsed response line.
type Response struct {
	// Pong is set for a PONG response (Key and Value are then empty).
	Pong  bool
	Key   string
	Value uint64
	Seq   uint64
}

// AppendResponse appends the wire form of r, '\n' included, to b.
func AppendResponse(b []byte, r Response) []byte {
	if r.Pong {
		b = append(b, "PONG "...)
	} else {
		b = append(b, r.Key...)
		b = append(b, ' ')
		b = strconv.AppendUint(b, r.Value, 10)
		b = append(b, ' ')
	}
	b = strconv.AppendUint(b, r.Seq, 10)
	return append(b, '\n')
}

// ValidKey reports whether k is a valid key: 1..MaxKeyLen bytes in 0x21..0x7e.
func ValidKey(k string) bool {
	if len(k) == 0 || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// trimEOL removes a trailing "\n" or "\r\n".
func trimEOL(line string) string {
	line = strings.TrimSuffix(line, "\n")
	return strings.TrimSuffix(line, "\r")
}

// ParseRequest parses one request line (with or without its '\n'). On error it also returns the
// sequence number when one could be read (seqOK reports it), so the ERR response can carry it. The
// error wraps ErrMalformed.
func ParseRequest(line string) (r Request, seqOK bool, err error) {
	f := strings.Split(trimEOL(line), " ")
	// The sequence number is the last field of every valid request.
	if len(f) >= 2 {
		if s, perr := strconv.ParseUint(f[len(f)-1], 10, 64); perr == nil {
			r.Seq, seqOK = s, true
		}
	}
	bad := func(format string, args ...any) (Request, bool, error) {
		return Request{Seq: r.Seq}, seqOK, fmt.Errorf("parse request: "+format+": %w", append(args, ErrMalformed)...)
	}
	switch op := Op(f[0]); op {
	case OpIncr, OpGet:
		if len(f) != 3 {
			return bad("%s wants 2 arguments (key, seq), got %d", op, len(f)-1)
		}
		if !ValidKey(f[1]) {
			return bad("invalid key %q (want 1..%d printable non-space bytes)", f[1], MaxKeyLen)
		}
		r.Op, r.Key = op, f[1]
	case OpPing:
		if len(f) != 2 {
			return bad("PING wants 1 argument (seq), got %d", len(f)-1)
		}
		r.Op = op
	case "":
		return bad("empty request")
	default:
		return bad("unknown verb %q", truncate(f[0], 32))
	}
	if !seqOK {
		return bad("invalid sequence number %q", truncate(f[len(f)-1], 32))
	}
	return r, true, nil
}

// ParseResponse parses one response line (with or without its '\n'). An "ERR <seq> <reason>"
// line returns the sequence number (0 for "-") and an error wrapping ErrServer with the reason;
// any other invalid line returns an error wrapping ErrMalformed.
func ParseResponse(line string) (Response, error) {
	line = trimEOL(line)
	if rest, ok := strings.CutPrefix(line, "ERR "); ok {
		seqs, reason, _ := strings.Cut(rest, " ")
		seq, _ := strconv.ParseUint(seqs, 10, 64)
		return Response{Seq: seq}, fmt.Errorf("parse response: %s: %w", reason, ErrServer)
	}
	f := strings.Split(line, " ")
	var r Response
	var err error
	switch {
	case len(f) == 2 && f[0] == "PONG":
		r.Pong = true
		r.Seq, err = strconv.ParseUint(f[1], 10, 64)
	case len(f) == 3 && ValidKey(f[0]):
		r.Key = f[0]
		if r.Value, err = strconv.ParseUint(f[1], 10, 64); err == nil {
			r.Seq, err = strconv.ParseUint(f[2], 10, 64)
		}
	default:
		return Response{}, fmt.Errorf("parse response %q: %w", truncate(line, 64), ErrMalformed)
	}
	if err != nil {
		return Response{}, fmt.Errorf("parse response %q: %w", truncate(line, 64), ErrMalformed)
	}
	return r, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Store is the service state: a map of uint64 counters. It is safe for concurrent use by any
// number of streams. Its zero value is not usable; use NewStore.
type Store struct {
	mu sync.Mutex
	m  map[string]uint64

	requests atomic.Uint64
	errors   atomic.Uint64
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{m: map[string]uint64{}} }

// Incr adds 1 to key and returns the new value (1 for a new key). It wraps at 2^64.
func (s *Store) Incr(key string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[key] + 1
	s.m[key] = v
	return v
}

// Get returns the value of key (0 when unknown).
func (s *Store) Get(key string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

// Len returns the number of keys.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Stats are the store's request counters since NewStore.
type Stats struct {
	Keys     int    `json:"keys"`
	Requests uint64 `json:"requests"` // valid requests answered
	Errors   uint64 `json:"errors"`   // ERR responses sent
}

// Stats returns a snapshot of the counters.
func (s *Store) Stats() Stats {
	return Stats{Keys: s.Len(), Requests: s.requests.Load(), Errors: s.errors.Load()}
}

// Handle answers one request line (with or without '\n') and appends the response line, '\n'
// included, to b.
func (s *Store) Handle(b []byte, line string) []byte {
	r, seqOK, err := ParseRequest(line)
	if err != nil {
		s.errors.Add(1)
		return appendErr(b, r.Seq, seqOK, errReason(err))
	}
	s.requests.Add(1)
	switch r.Op {
	case OpIncr:
		return AppendResponse(b, Response{Key: r.Key, Value: s.Incr(r.Key), Seq: r.Seq})
	case OpGet:
		return AppendResponse(b, Response{Key: r.Key, Value: s.Get(r.Key), Seq: r.Seq})
	default:
		return AppendResponse(b, Response{Pong: true, Seq: r.Seq})
	}
}

// errReason is the text of a parse error without the package prefixes.
func errReason(err error) string {
	msg := strings.TrimPrefix(err.Error(), "parse request: ")
	return strings.TrimSuffix(msg, ": "+ErrMalformed.Error())
}

func appendErr(b []byte, seq uint64, seqOK bool, reason string) []byte {
	b = append(b, "ERR "...)
	if seqOK {
		b = strconv.AppendUint(b, seq, 10)
	} else {
		b = append(b, '-')
	}
	b = append(b, ' ')
	b = append(b, reason...)
	return append(b, '\n')
}

// Serve answers the requests read from rw until it reads EOF (nil is returned) or fails. After
// a line longer than MaxLine it writes "ERR - line too long" and returns an error wrapping
// ErrLineTooLong. Other read and write errors are returned wrapped. Serve does not close rw.
func (s *Store) Serve(rw io.ReadWriter) error {
	br := bufio.NewReaderSize(rw, MaxLine)
	bw := bufio.NewWriterSize(rw, 4096)
	var out []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.errors.Add(1)
			bw.Write(appendErr(out[:0], 0, false, "line too long"))
			bw.Flush()
			return fmt.Errorf("serve stream: %w", ErrLineTooLong)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if len(line) > 0 { // last request without '\n'
					bw.Write(s.Handle(out[:0], string(line)))
				}
				if ferr := bw.Flush(); ferr != nil {
					return fmt.Errorf("serve stream: write: %w", ferr)
				}
				return nil
			}
			bw.Flush()
			return fmt.Errorf("serve stream: read: %w", err)
		}
		out = s.Handle(out[:0], string(line))
		if _, err := bw.Write(out); err != nil {
			return fmt.Errorf("serve stream: write: %w", err)
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("serve stream: write: %w", err)
			}
		}
	}
}

// ALPN is the TLS application-layer protocol ID (RFC 7301) of this protocol, over QUIC (RFC 9001
// section 8.1) or TLS over TCP.
const ALPN = "steerd-kv"
