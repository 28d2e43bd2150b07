package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
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
}

func (q QuicextControl) client(podNS string) *quicext.ControlClient {
	addr := q.Addr
	if addr == "" {
		addr = quicext.DefaultControlAddr
	}
	return &quicext.ControlClient{Dial: func(ctx context.Context) (net.Conn, error) {
		var c net.Conn
		err := nsutil.Do(podNS, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "unix", addr)
			return err
		})
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
	return Readiness{Ready: len(r.Ready), NotReady: len(r.NotReady), Unsupported: len(r.Unsupported),
		Elapsed: time.Duration(r.ElapsedMS * float64(time.Millisecond))}, nil
}

// Restored implements ServiceControl: quicext "restored".
func (q QuicextControl) Restored(ctx context.Context, podNS string, t Target) error {
	return q.client(podNS).Restored(ctx, qTarget(t))
}

// Abort implements ServiceControl: quicext "abort".
func (q QuicextControl) Abort(ctx context.Context, podNS string) error {
	return q.client(podNS).Abort(ctx)
}
