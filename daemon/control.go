package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/steerd/steerd/api"
)

// ControlServer serves the control API (package api) on a unix socket.
type ControlServer struct {
	ln  net.Listener
	srv *http.Server
}

// ListenControl creates the control socket at path (its directory with mode 0700, the socket with
// mode 0600, a stale socket replaced) and serves the daemon's control API on it.
func (d *Daemon) ListenControl(path string) (*ControlServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w%s", err, permissionHint(err))
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen control socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen control socket %s: another steerd is serving it", path)
		}
		os.Remove(path)
	}
	// Create the socket with mode 0600 from the start: no window with a wider mode.
	ln, err := listenUnix0600(path)
	if err != nil {
		return nil, fmt.Errorf("listen control socket %s: %w", path, err)
	}
	cs := &ControlServer{ln: ln, srv: &http.Server{Handler: d.ControlHandler(), ReadHeaderTimeout: 10 * time.Second}}
	go cs.srv.Serve(ln)
	return cs, nil
}

// Close stops the server and removes the socket.
func (c *ControlServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	return err
}

// httpStatus maps an error to an HTTP status.
func httpStatus(err error) int {
	switch {
	case errorsIsAny(err, ErrUnknownService, ErrUnknownMig, ErrUnknownPeer):
		return http.StatusNotFound
	case errorsIsAny(err, ErrBusy, ErrNotRunning, ErrAlreadyRunning):
		return http.StatusConflict
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// ControlHandler returns the HTTP handler of the control API.
func (d *Daemon) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	fail := func(w http.ResponseWriter, phase api.Phase, err error, code int) {
		ae := d.apiErr(phase, err)
		if code == 0 {
			code = httpStatus(err)
			if code == http.StatusInternalServerError {
				// *api.Error flattens the sentinel: map by cause text.
				for _, s := range []error{ErrUnknownService, ErrUnknownMig, ErrUnknownPeer, ErrBusy, ErrNotRunning, ErrAlreadyRunning, ErrBadRequest} {
					if strings.Contains(ae.Cause, s.Error()) {
						code = httpStatus(s)
						break
					}
				}
			}
		}
		writeJSON(w, code, map[string]*api.Error{"error": {Node: ae.Node, Phase: ae.Phase, Cause: ae.Cause, Code: code}})
	}
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			fail(w, api.PhaseControl, fmt.Errorf("decode request: %w: %w", ErrBadRequest, err), http.StatusBadRequest)
			return false
		}
		return true
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.Status()) })
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.Routes()) })
	mux.HandleFunc("POST /v1/services", func(w http.ResponseWriter, r *http.Request) {
		var req api.RunRequest
		if !decode(w, r, &req) {
			return
		}
		st, err := d.Run(r.Context(), req)
		if err != nil {
			fail(w, api.PhaseRun, err, 0)
			return
		}
		writeJSON(w, 200, st)
	})
	mux.HandleFunc("POST /v1/migrations", func(w http.ResponseWriter, r *http.Request) {
		var req api.MigrateRequest
		if !decode(w, r, &req) {
			return
		}
		m, err := d.Migrate(r.Context(), req)
		if err != nil {
			fail(w, api.PhaseValidate, err, 0)
			return
		}
		writeJSON(w, 200, m)
	})
	mux.HandleFunc("GET /v1/migrations", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.Migrations()) })
	mux.HandleFunc("GET /v1/migrations/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := d.Migration(r.PathValue("id"))
		if err != nil {
			fail(w, api.PhaseControl, err, http.StatusNotFound)
			return
		}
		writeJSON(w, 200, m)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		ev, err := d.Events(r.URL.Query().Get("migration"))
		if err != nil {
			fail(w, api.PhaseControl, err, http.StatusNotFound)
			return
		}
		if ev == nil {
			ev = []api.Event{}
		}
		writeJSON(w, 200, ev)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, api.PhaseControl, fmt.Errorf("%s %s: %w: no such endpoint", r.Method, r.URL.Path, ErrBadRequest), http.StatusNotFound)
	})
	return mux
}
