package daemon

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steerd/steerd/api"
)

func TestControlAPI(t *testing.T) {
	a, _, _, _ := pair(t)
	sock := filepath.Join(t.TempDir(), "run", "control.sock")
	cs, err := a.d.ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", st.Mode())
	}
	if dst, _ := os.Stat(filepath.Dir(sock)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v, want 0700", dst.Mode().Perm())
	}
	// A second daemon cannot take over a live socket.
	if _, err := a.d.ListenControl(sock); err == nil {
		t.Fatal("second listener on a live socket")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewClient(sock)
	defer c.Close()
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Node != "a" || len(s.Services) != 1 || s.Services[0].State != StateRunning || s.Counters["steer_remote"] != 4 {
		t.Fatalf("status %+v", s)
	}
	routes, err := c.Routes(ctx)
	if err != nil || len(routes) != 1 || routes[0].Instance != 7 || routes[0].Kind != api.Local {
		t.Fatalf("routes %+v, %v", routes, err)
	}

	_, err = c.Run(ctx, api.RunRequest{Service: "nope"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != http.StatusNotFound || ae.Node != "a" || ae.Phase != api.PhaseRun {
		t.Fatalf("run unknown: %#v", err)
	}
	_, err = c.Run(ctx, api.RunRequest{Service: testSvc})
	if !errors.As(err, &ae) || ae.Code != http.StatusConflict {
		t.Fatalf("run running service: %v", err)
	}
	_, err = c.Migrate(ctx, api.MigrateRequest{Service: testSvc, To: "b", Strategy: "warp", Technique: api.Cold})
	if !errors.As(err, &ae) || ae.Code != http.StatusBadRequest || ae.Phase != api.PhaseValidate || !strings.Contains(ae.Error(), "node a: phase validate") {
		t.Fatalf("bad strategy: %v", err)
	}

	m, err := c.Migrate(ctx, api.MigrateRequest{Service: testSvc, To: "b", Strategy: "symmetric", Technique: api.Cold, DrainPeriod: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if m.Result != api.Running || m.ID == "" {
		t.Fatalf("started migration %+v", m)
	}
	for m.Result == api.Running {
		time.Sleep(10 * time.Millisecond)
		if m, err = c.Migration(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if m.Result != api.Succeeded || len(m.Events) == 0 {
		t.Fatalf("migration %s with %d events, error %v", m.Result, len(m.Events), m.Error)
	}
	ev, err := c.Events(ctx, m.ID)
	if err != nil || len(ev) < len(m.Events) {
		t.Fatalf("events: %d, %v", len(ev), err)
	}
	list, err := c.Migrations(ctx)
	if err != nil || len(list) != 1 || list[0].ID != m.ID || list[0].Events != nil {
		t.Fatalf("migrations %+v, %v", list, err)
	}
	if _, err := c.Migration(ctx, "nope"); !errors.As(err, &ae) || ae.Code != http.StatusNotFound {
		t.Fatalf("unknown migration: %v", err)
	}
	if _, err := c.Events(ctx, "nope"); !errors.As(err, &ae) || ae.Code != http.StatusNotFound {
		t.Fatalf("unknown migration events: %v", err)
	}

	// Unreachable socket.
	bad := api.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := bad.Status(ctx); !errors.Is(err, api.ErrUnreachable) {
		t.Fatalf("missing socket: %v", err)
	}
}

func TestMetricsExposition(t *testing.T) {
	a, _, _, _ := pair(t)
	migrate(t, a, api.MigrateRequest{})
	rec := &recorder{h: http.Header{}}
	req, _ := http.NewRequest("GET", "/metrics", nil)
	a.d.MetricsHandler().ServeHTTP(rec, req)
	out := rec.b.String()
	for _, want := range []string{
		`steerd_migrations_total{node="a",result="succeeded",strategy="symmetric",technique="cold"} 1`,
		`steerd_migration_phase_duration_seconds_count{node="a",phase="checkpoint",technique="cold"} 1`,
		`steerd_datapath_packets_total{node="a",reason="steer_remote"} 4`,
		`steerd_image_bytes_total{direction="sent",node="a"} 11`,
		`steerd_migration_downtime_seconds_count{node="a",strategy="symmetric",technique="cold"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

type recorder struct {
	h    http.Header
	b    strings.Builder
	code int
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(b []byte) (int, error) { return r.b.Write(b) }
func (r *recorder) WriteHeader(c int)           { r.code = c }
