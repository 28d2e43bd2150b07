// Package kv is the service logic every benchmark shares: a counter/KV request-response protocol
// over a stream connection, and a paced client that records when each response arrives.
//
// Wire format (one request, one response, each a line ending in '\n'):
//
//	client: "INC\n"           server: "<counter after increment, decimal>\n"
//	client: "GET <key>\n"     server: "<value>\n" (empty line when unset)
//	client: "SET <key> <v>\n" server: "OK\n"
//
// The counter lives in the server process's memory, so a checkpoint/restore (CRIU) keeps it and a
// stop/start must pass it along; the client checks that it never goes backwards across a move.
package kv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrProtocol is returned for a malformed request or response line.
var ErrProtocol = errors.New("kv: protocol error")

// MaxLine is the longest request or response line in bytes, newline included.
const MaxLine = 4096

// Store is the service state: one counter and a string map. Safe for concurrent use.
type Store struct {
	counter atomic.Uint64
	mu      sync.Mutex
	m       map[string]string
}

// NewStore returns a store whose counter starts at start.
func NewStore(start uint64) *Store {
	s := &Store{m: map[string]string{}}
	s.counter.Store(start)
	return s
}

// Counter returns the current counter value.
func (s *Store) Counter() uint64 { return s.counter.Load() }

// Handle answers one request line (without '\n') and returns the response line (without '\n').
func (s *Store) Handle(line string) (string, error) {
	cmd, rest, _ := strings.Cut(line, " ")
	switch cmd {
	case "INC":
		return strconv.FormatUint(s.counter.Add(1), 10), nil
	case "GET":
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.m[rest], nil
	case "SET":
		k, v, ok := strings.Cut(rest, " ")
		if !ok || k == "" {
			return "", fmt.Errorf("handle %q: %w", line, ErrProtocol)
		}
		s.mu.Lock()
		s.m[k] = v
		s.mu.Unlock()
		return "OK", nil
	}
	return "", fmt.Errorf("handle %q: %w", line, ErrProtocol)
}

// Serve answers requests on c until it fails or the peer closes it; it closes c.
func (s *Store) Serve(c net.Conn) error {
	defer c.Close()
	r := bufio.NewReaderSize(c, MaxLine)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		resp, err := s.Handle(strings.TrimSuffix(line, "\n"))
		if err != nil {
			resp = "ERR"
		}
		if _, err := io.WriteString(c, resp+"\n"); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
	}
}

// ServeListener accepts connections on l and serves each in its own goroutine until Accept fails.
func (s *Store) ServeListener(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go s.Serve(c)
	}
}

// Inc sends one INC request on an established connection and returns the counter in the reply.
// The deadline bounds the round trip.
func Inc(c net.Conn, r *bufio.Reader, deadline time.Time) (uint64, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(c, "INC\n"); err != nil {
		return 0, fmt.Errorf("send INC: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("read INC reply: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(line, "\n"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse INC reply %q: %w", line, ErrProtocol)
	}
	return v, nil
}
