package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/quicext"
)

// DefaultPrepareGrace is how long past the prepare timeout QuicextControl waits for the service's
// answer before it gives up with ErrPrepareTimeout.
const DefaultPrepareGrace = time.Second

// QuicextControl implements ServiceControl with quicext.ControlClient: it dials the service's
// control endpoint (abstract unix socket Addr, default quicext.DefaultControlAddr) from a thread
// inside the pod network namespace (abstract sockets are per network namespace, unix(7)); the
// connected socket is then used from any thread.
type QuicextControl struct {
	// Addr is the endpoint's unix socket address ("" = quicext.DefaultControlAddr).
	Addr string
	// Grace is added to the prepare timeout for the answer (0 = DefaultPrepareGrace).
	Grace time.Duration
	// ConnectRetry is how long a refused connection to the endpoint is retried (every 50 ms, within
	// the request's context): a service that was just started (or restarted) may not listen yet
	// (0 = DefaultConnectRetry).
	ConnectRetry time.Duration
}

// DefaultConnectRetry is QuicextControl's default ConnectRetry.
const DefaultConnectRetry = time.Second

func (q QuicextControl) client(podNS string) *quicext.ControlClient {
	addr := q.Addr
	if addr == "" {
		addr = quicext.DefaultControlAddr
	}
	retry := q.ConnectRetry
	if retry <= 0 {
		retry = DefaultConnectRetry
	}
	return &quicext.ControlClient{Dial: func(ctx context.Context) (net.Conn, error) {
		var c net.Conn
		give := time.Now().Add(retry)
		var err error
		for {
			err = nsutil.Do(podNS, func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, "unix", addr)
				return err
			})
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(give) || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err != nil {
			return nil, fmt.Errorf("dial %s in netns %q: %w", addr, podNS, err)
		}
		return c, nil
	}}
}

func qTarget(t Target) quicext.Target { return quicext.Target{IPv4: t.IPv4, IPv6: t.IPv6} }

// Prepare implements ServiceControl: quicext "prepare". Connections that are not ready when the
// service answers are counted in NotReady / Unsupported, not an error.
func (q QuicextControl) Prepare(ctx context.Context, podNS string, t Target, strategy string, timeout time.Duration) (Readiness, error) {
	grace := q.Grace
	if grace <= 0 {
		grace = DefaultPrepareGrace
	}
	cctx, cancel := context.WithTimeout(ctx, timeout+grace)
	defer cancel()
	r, err := q.client(podNS).Prepare(cctx, qTarget(t), strategy, timeout, false)
	if err != nil {
		if cctx.Err() != nil && ctx.Err() == nil {
			return Readiness{}, fmt.Errorf("prepare: no answer within %v: %w", timeout+grace, ErrPrepareTimeout)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Readiness{}, fmt.Errorf("prepare: %w: %w", ErrPrepareTimeout, err)
		}
		return Readiness{}, err
	}
	return Readiness{Ready: len(r.Ready), NotReady: len(r.NotReady), Unsupported: len(r.Unsupported), Holding: r.Holding(),
		Elapsed: time.Duration(r.ElapsedMS * float64(time.Millisecond))}, nil
}

// Restored implements ServiceControl: quicext "restored".
func (q QuicextControl) Restored(ctx context.Context, podNS string, t Target) error {
	return q.client(podNS).Restored(ctx, qTarget(t))
}

// abortTries bounds how often Abort repeats the abort of a service that still reports a prepared
// migration; abortRetryDelay is the pause between two tries.
const (
	abortTries      = 5
	abortRetryDelay = 50 * time.Millisecond
)

// Abort implements ServiceControl: quicext "abort". It leaves the service accepting new
// handshakes: "no migration prepared" counts as done, and while the service's status still shows
// a prepared migration (a prepare that reached it only after the abort, or an abort that raced
// it) the abort is sent again, up to abortTries times. A service without the status operation is
// taken at its abort answer.
func (q QuicextControl) Abort(ctx context.Context, podNS string) error {
	c := q.client(podNS)
	for try := 1; ; try++ {
		if err := c.Abort(ctx); err != nil && !isNotPrepared(err) {
			return err
		}
		st, err := c.Status(ctx)
		if err != nil || !st.Prepared {
			return nil
		}
		if try == abortTries {
			return fmt.Errorf("abort: service still has a prepared migration (refusing handshakes) after %d aborts", try)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("abort: service still prepared: %w", ctx.Err())
		case <-time.After(abortRetryDelay):
		}
	}
}

// isNotPrepared reports whether err is the endpoint's "no migration prepared" answer
// (quicext.ErrNotPrepared, which crosses the control socket as text).
func isNotPrepared(err error) bool {
	return errors.Is(err, quicext.ErrControl) && strings.Contains(err.Error(), quicext.ErrNotPrepared.Error())
}
