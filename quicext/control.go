package quicext

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// DefaultControlAddr is the address of the control endpoint inside the service container: the
// abstract unix socket "@steerd-quicext" (Linux, unix(7)). Abstract sockets belong to a network
// namespace, so steerd reaches it by entering the pod's network namespace; CRIU checkpoints and
// restores a listening abstract unix socket (criu.org/External_UNIX_socket notes the abstract
// namespace is supported for listening sockets).
const DefaultControlAddr = "@steerd-quicext"

// ErrControl is wrapped by ControlClient errors that the endpoint reported.
var ErrControl = errors.New("quicext: control request failed")

// ErrBadControlRequest is wrapped by the endpoint's error for a request that is not one JSON
// object with a known "op" on one line of at most ControlOptions.MaxRequestBytes, or that did
// not arrive within ControlOptions.ReadTimeout.
var ErrBadControlRequest = errors.New("quicext: bad control request")

// ErrStalePrepare is the endpoint's error for a prepare request read after its deadline
// (ControlRequest.DeadlineUnixMS): the caller has given up on it and may already have sent
// abort, so the server does not prepare (a late prepare would refuse new handshakes until the
// next abort).
var ErrStalePrepare = errors.New("quicext: prepare request arrived after its deadline")

// ControlOptions configure ServeControlWith. Zero values take the defaults.
type ControlOptions struct {
	// ReadTimeout bounds the wait for the request line after a client connects (a client that
	// connects and never sends gets an error response and is closed). Default 10 s.
	ReadTimeout time.Duration
	// WriteTimeout bounds the write of the response. Default 10 s.
	WriteTimeout time.Duration
	// MaxRequestBytes caps the request line including its newline. Default 64 KiB.
	MaxRequestBytes int
}

func (o *ControlOptions) defaults() {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = 64 << 10
	}
}

// ControlRequest is one request to the control endpoint: one JSON object on one line, one
// request per connection.
//
//	{"op":"prepare","target":{"ipv4":"198.18.21.2:4433","ipv6":"[2001:2:0:21::2]:4433"},
//	 "strategy":"symmetric","timeout_ms":2000,"close_unsupported":false}
//	{"op":"restored","target":{...}}   {"op":"abort"}   {"op":"status"}
//
// A prepare may carry "deadline_unix_ms": the wall-clock time (Unix milliseconds, the caller and
// the service share the node's clock) after which the caller stops waiting for the answer. The
// endpoint refuses a prepare it reads after that time (ErrStalePrepare) and ends the wait for
// acknowledgements by then.
type ControlRequest struct {
	Op               string `json:"op"`
	Target           Target `json:"target,omitzero"`
	Strategy         string `json:"strategy,omitempty"`
	TimeoutMS        int    `json:"timeout_ms,omitempty"`
	CloseUnsupported bool   `json:"close_unsupported,omitempty"`
	DeadlineUnixMS   int64  `json:"deadline_unix_ms,omitempty"`
}

// ControlResponse is the one-line JSON answer. OK is false with Error set on failure;
// Readiness is set for prepare, Status for status.
type ControlResponse struct {
	OK        bool       `json:"ok"`
	Error     string     `json:"error,omitempty"`
	Readiness *Readiness `json:"readiness,omitempty"`
	Status    *Status    `json:"status,omitempty"`
}

// ServeControl serves the control protocol on l until l is closed; it returns the Accept error.
// Default prepare timeout: 2000 ms; default strategy: symmetric. It is ServeControlWith with
// the default ControlOptions. Each connection is served on its own goroutine, so a slow or
// silent client delays no other request.
func ServeControl(l net.Listener, s *Server) error {
	return ServeControlWith(l, s, ControlOptions{})
}

// ServeControlWith is ServeControl with options.
func ServeControlWith(l net.Listener, s *Server, o ControlOptions) error {
	return ServeControlGroup(l, []*Server{s}, o)
}

// ServeControlGroup serves one control endpoint for several servers of one service (its pod's
// IPv4 and IPv6 sockets): every request goes to all of them at once. prepare merges their
// readiness (ready, not ready and unsupported lists joined; the longest elapsed time) and, when
// one server fails, aborts the others so the service accepts again; restored and abort succeed
// when every server did (distinct errors joined); status sums the connection counters.
func ServeControlGroup(l net.Listener, servers []*Server, o ControlOptions) error {
	if len(servers) == 0 {
		return fmt.Errorf("serve control: no server")
	}
	o.defaults()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go serveControlConn(c, servers, o)
	}
}

// readControlRequest reads and decodes one request line.
func readControlRequest(c net.Conn, o ControlOptions) (ControlRequest, error) {
	var req ControlRequest
	c.SetReadDeadline(time.Now().Add(o.ReadTimeout))
	r := bufio.NewReader(io.LimitReader(c, int64(o.MaxRequestBytes)))
	line, err := r.ReadBytes('\n')
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return req, fmt.Errorf("read control request: no request line within %v: %w", o.ReadTimeout, ErrBadControlRequest)
		case err == io.EOF && len(line) == o.MaxRequestBytes:
			return req, fmt.Errorf("read control request: longer than %d bytes: %w", o.MaxRequestBytes, ErrBadControlRequest)
		case err == io.EOF:
			return req, fmt.Errorf("read control request: connection closed before a newline: %w", ErrBadControlRequest)
		}
		return req, fmt.Errorf("read control request: %w", err)
	}
	if err := json.Unmarshal(line, &req); err != nil {
		return req, fmt.Errorf("decode control request: %w: %v", ErrBadControlRequest, err)
	}
	if req.Op == "" {
		return req, fmt.Errorf("decode control request: missing \"op\": %w", ErrBadControlRequest)
	}
	return req, nil
}

func serveControlConn(c net.Conn, servers []*Server, o ControlOptions) {
	defer c.Close()
	var resp ControlResponse
	req, err := readControlRequest(c, o)
	if err == nil {
		resp, err = handleControl(servers, req)
	}
	if err != nil {
		resp = ControlResponse{Error: err.Error()}
	} else {
		resp.OK = true
	}
	b, _ := json.Marshal(resp)
	c.SetWriteDeadline(time.Now().Add(o.WriteTimeout))
	c.Write(append(b, '\n'))
}

// checkTarget refuses a prepare target address that no client may be sent to.
func checkTarget(t Target) error {
	for _, a := range []netip.AddrPort{t.IPv4, t.IPv6} {
		if !a.IsValid() {
			continue
		}
		ip := a.Addr()
		if ip.IsUnspecified() || ip.IsMulticast() || a.Port() == 0 || ip.Is4In6() {
			return fmt.Errorf("handle control prepare: target %s: %w", a, ErrBadControlRequest)
		}
	}
	return nil
}

func handleControl(servers []*Server, req ControlRequest) (ControlResponse, error) {
	switch req.Op {
	case "prepare":
		st := StrategySymmetric
		if req.Strategy != "" {
			var err error
			if st, err = ParseStrategy(req.Strategy); err != nil {
				return ControlResponse{}, err
			}
		}
		if err := checkTarget(req.Target); err != nil {
			return ControlResponse{}, err
		}
		if req.Target.IsZero() && (st.Has(StrategyExplicit) || st.Has(StrategyExplicitReactive)) {
			return ControlResponse{}, fmt.Errorf("handle control prepare: strategy %v needs a target address: %w", st, ErrBadControlRequest)
		}
		to := time.Duration(req.TimeoutMS) * time.Millisecond
		if to <= 0 {
			to = 2 * time.Second
		}
		if req.DeadlineUnixMS != 0 {
			left := time.Until(time.UnixMilli(req.DeadlineUnixMS))
			if left <= 0 {
				return ControlResponse{}, fmt.Errorf("handle control prepare: %w (%v ago)", ErrStalePrepare, (-left).Round(time.Millisecond))
			}
			to = min(to, left)
		}
		ctx, cancel := context.WithTimeout(context.Background(), to)
		defer cancel()
		rs := make([]Readiness, len(servers))
		errs := make([]error, len(servers))
		var wg sync.WaitGroup
		for i, s := range servers {
			wg.Go(func() {
				rs[i], errs[i] = s.PrepareWith(ctx, req.Target, func(*quic.Conn) Strategy { return st },
					PrepareOptions{CloseUnsupported: req.CloseUnsupported})
			})
		}
		wg.Wait()
		if err := joinDistinct(errs); err != nil {
			for i, s := range servers { // undo the servers that did prepare: the service accepts again
				if errs[i] == nil {
					s.Abort()
				}
			}
			return ControlResponse{}, err
		}
		m := rs[0]
		for _, r := range rs[1:] {
			m.Ready = append(m.Ready, r.Ready...)
			m.NotReady = append(m.NotReady, r.NotReady...)
			m.Unsupported = append(m.Unsupported, r.Unsupported...)
			m.Closed += r.Closed
			m.ElapsedMS = max(m.ElapsedMS, r.ElapsedMS)
		}
		return ControlResponse{Readiness: &m}, nil
	case "restored", "abort":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := make([]error, len(servers))
		var wg sync.WaitGroup
		for i, s := range servers {
			wg.Go(func() {
				if req.Op == "abort" {
					errs[i] = s.Abort()
				} else {
					errs[i] = s.Restored(ctx, req.Target)
				}
			})
		}
		wg.Wait()
		return ControlResponse{}, joinDistinct(errs)
	case "status":
		st := servers[0].Status()
		for _, s := range servers[1:] {
			o := s.Status()
			st.Conns += o.Conns
			st.Negotiated += o.Negotiated
			st.Unsupported += o.Unsupported
			st.RefusedHandshakes += o.RefusedHandshakes
			st.InProgress += o.InProgress
			st.LocalAddr += "," + o.LocalAddr
		}
		return ControlResponse{Status: &st}, nil
	}
	return ControlResponse{}, fmt.Errorf("handle control op %q: unknown op (want prepare, restored, abort or status): %w", req.Op, ErrBadControlRequest)
}

// joinDistinct joins the non-nil errors, each distinct message once (the servers of one service
// usually fail for the same reason).
func joinDistinct(errs []error) error {
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		if e != nil && !seen[e.Error()] {
			seen[e.Error()] = true
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}

// ControlClient speaks to a control endpoint. Dial opens one connection per request (e.g. a
// unix-socket dial made inside the pod's network namespace).
type ControlClient struct {
	Dial func(ctx context.Context) (net.Conn, error)
}

// NewControlClient returns a client that dials the unix socket addr (DefaultControlAddr if empty)
// from the caller's current network namespace.
func NewControlClient(addr string) *ControlClient {
	if addr == "" {
		addr = DefaultControlAddr
	}
	return &ControlClient{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", addr)
	}}
}

// ListenControl listens on the unix socket addr (DefaultControlAddr if empty).
func ListenControl(addr string) (net.Listener, error) {
	if addr == "" {
		addr = DefaultControlAddr
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("listen control: %w", err)
	}
	return l, nil
}

// Do sends req and returns the response; an endpoint error is returned wrapping ErrControl.
func (cc *ControlClient) Do(ctx context.Context, req ControlRequest) (ControlResponse, error) {
	c, err := cc.Dial(ctx)
	if err != nil {
		return ControlResponse{}, fmt.Errorf("dial control: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return ControlResponse{}, fmt.Errorf("encode control request: %w", err)
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return ControlResponse{}, fmt.Errorf("write control request: %w", err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return ControlResponse{}, fmt.Errorf("read control response: %w", err)
	}
	var resp ControlResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return ControlResponse{}, fmt.Errorf("decode control response: %w", err)
	}
	if !resp.OK {
		return resp, fmt.Errorf("control %s: %w: %s", req.Op, ErrControl, resp.Error)
	}
	return resp, nil
}

// Prepare asks the server to prepare a migration to target with strategy (a name accepted by
// ParseStrategy); timeout bounds the wait for acknowledgements. When ctx has a deadline it is
// sent as the request's deadline: a server that reads the request only after it refuses it
// (ErrStalePrepare) instead of preparing a migration its caller gave up on.
func (cc *ControlClient) Prepare(ctx context.Context, target Target, strategy string, timeout time.Duration, closeUnsupported bool) (Readiness, error) {
	req := ControlRequest{Op: "prepare", Target: target, Strategy: strategy,
		TimeoutMS: int(timeout.Milliseconds()), CloseUnsupported: closeUnsupported}
	if dl, ok := ctx.Deadline(); ok {
		req.DeadlineUnixMS = dl.UnixMilli()
	}
	resp, err := cc.Do(ctx, req)
	if err != nil {
		return Readiness{}, err
	}
	if resp.Readiness == nil {
		return Readiness{}, fmt.Errorf("control prepare: %w: no readiness", ErrControl)
	}
	return *resp.Readiness, nil
}

// Restored tells the server it runs at target now.
func (cc *ControlClient) Restored(ctx context.Context, target Target) error {
	_, err := cc.Do(ctx, ControlRequest{Op: "restored", Target: target})
	return err
}

// Abort cancels the prepared migration.
func (cc *ControlClient) Abort(ctx context.Context) error {
	_, err := cc.Do(ctx, ControlRequest{Op: "abort"})
	return err
}

// Status returns the server status.
func (cc *ControlClient) Status(ctx context.Context) (Status, error) {
	resp, err := cc.Do(ctx, ControlRequest{Op: "status"})
	if err != nil {
		return Status{}, err
	}
	if resp.Status == nil {
		return Status{}, fmt.Errorf("control status: %w: no status", ErrControl)
	}
	return *resp.Status, nil
}
