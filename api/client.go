package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"time"
)

// DefaultSocket returns the default control socket path of node: /run/steerd/<node>/control.sock.
func DefaultSocket(node string) string {
	return filepath.Join("/run/steerd", node, "control.sock")
}

// ErrUnreachable wraps the error of a client that could not connect to the control socket.
var ErrUnreachable = errors.New("control socket unreachable")

// Client calls a node's control API over its unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{Socket: path, hc: &http.Client{Transport: tr}}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// do sends a request with body in (nil: none) and decodes the JSON response into out (nil: ignore).
// An error response is returned as *Error.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://steerd"+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s via %s: %w: %w", method, path, c.Socket, ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response of %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error *Error `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != nil {
			e.Error.Code = resp.StatusCode
			return e.Error
		}
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode response of %s %s: %w", method, path, err)
	}
	return nil
}

// Status returns the node's overview.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, Version+"/status", nil, &s)
}

// Routes returns the node's datapath entries.
func (c *Client) Routes(ctx context.Context) ([]Route, error) {
	var r []Route
	return r, c.do(ctx, http.MethodGet, Version+"/routes", nil, &r)
}

// Run starts a service container on the node.
func (c *Client) Run(ctx context.Context, req RunRequest) (*ServiceStatus, error) {
	var s ServiceStatus
	return &s, c.do(ctx, http.MethodPost, Version+"/services", req, &s)
}

// Migrate starts a migration (and waits for its end when req.Wait is set). A migration that ran
// and failed is returned with its Error set and a nil error.
func (c *Client) Migrate(ctx context.Context, req MigrateRequest) (*Migration, error) {
	var m Migration
	return &m, c.do(ctx, http.MethodPost, Version+"/migrations", req, &m)
}

// Migration returns one migration with its events.
func (c *Client) Migration(ctx context.Context, id string) (*Migration, error) {
	var m Migration
	return &m, c.do(ctx, http.MethodGet, Version+"/migrations/"+url.PathEscape(id), nil, &m)
}

// Migrations lists the migrations this node ran as a source (newest last, without events).
func (c *Client) Migrations(ctx context.Context) ([]Migration, error) {
	var m []Migration
	return m, c.do(ctx, http.MethodGet, Version+"/migrations", nil, &m)
}

// Events returns the timeline of one migration (every migration when id is "").
func (c *Client) Events(ctx context.Context, id string) ([]Event, error) {
	var e []Event
	p := Version + "/events"
	if id != "" {
		p += "?migration=" + url.QueryEscape(id)
	}
	return e, c.do(ctx, http.MethodGet, p, nil, &e)
}
