// Package baseline measures what a client of a moved service experiences without steerd, on the
// same testbed (tests/netns), with the same service logic (bench/cmd/kvsvc: examples/kv's Store
// and protocol, as the QUIC example service runs it, over TLS 1.3) and the same client pacing
// (bench/internal/pace, one INCR every Interval) as the steerd matrix:
//
//   - KindNone: no move at all, the floor (largest gap of a paced client on an idle testbed).
//   - KindTCPDNS: TLS over TCP; the client finds the service by name through an authoritative DNS
//     server in the router namespace (bench/internal/authdns); the orchestrator moves the container
//     from pod 0 of node 0 to pod 0 of node 1 (a new address) with `runc checkpoint` / `runc restore`
//     (CRIU, tcp-close: established connections are not carried, the listener is) and then rewrites
//     the record; the client sees the connection break, re-resolves (its cache honours the TTL),
//     reconnects and resumes.
//   - KindMPTCP: the same over MPTCP (Go's SetMultipathTCP on both ends, kernel MPTCP limits set
//     in the namespaces). CRIU is asked to checkpoint the MPTCP container first; when it refuses,
//     the run falls back to stop/start with the counter passed along (MethodStopStart), and the
//     CRIU error is reported.
package baseline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/steerd/steerd/bench/internal/authdns"
	"github.com/steerd/steerd/bench/internal/container"
	"github.com/steerd/steerd/bench/internal/pace"
	"github.com/steerd/steerd/examples/kv"
	"github.com/steerd/steerd/internal/nsutil"
	"github.com/steerd/steerd/tests/netns"
)

// Kind names a baseline.
type Kind string

// Baselines.
const (
	KindNone   Kind = "none"
	KindTCPDNS Kind = "tcp-dns"
	KindMPTCP  Kind = "mptcp"
)

// Move methods.
const (
	// MethodCRIU moves the container with runc checkpoint/restore (CRIU 4.x, tcp-close).
	MethodCRIU = "runc-criu"
	// MethodStopStart stops the container on node A (SIGTERM: it writes its counter to a state
	// file) and starts a new one on node B that reads it.
	MethodStopStart = "stop-start"
	// MethodNone is the floor: no move.
	MethodNone = "none"
)

// ServiceName is the DNS name of the service; Zone is the zone the baseline server is
// authoritative for (".test" is reserved, RFC 2606).
const (
	Zone        = "bench.test."
	ServiceName = "svc.bench.test."
	ServicePort = 7000
	// StateKey is the kv key the client increments and kvsvc passes along on stop/start.
	StateKey = "bench"
)

// ErrCheckpoint wraps a CRIU checkpoint failure (the message has CRIU's words).
var ErrCheckpoint = errors.New("baseline: checkpoint failed")

// Env is what every run of a baseline shares.
type Env struct {
	TB *netns.Testbed
	// Work is a scratch directory for bundles and images.
	Work string
	// KVSvc is the path of the static kvsvc binary.
	KVSvc string
	// Interval is the client's request interval; the gap resolution.
	Interval time.Duration
	// DNS is the authoritative server (router namespace) the client resolves through.
	DNS *authdns.Server

	tlsClient *tls.Config
	certPEM   []byte
	keyPEM    []byte
}

// NewEnv prepares TLS material and the MPTCP limits of the testbed's namespaces.
func NewEnv(tb *netns.Testbed, work, kvsvc string, interval time.Duration, dns *authdns.Server) (*Env, error) {
	e := &Env{TB: tb, Work: work, KVSvc: kvsvc, Interval: interval, DNS: dns}
	if err := e.makeTLS(); err != nil {
		return nil, err
	}
	// MPTCP: let every host open and accept extra subflows and addresses (ip-mptcp(8)).
	for _, ns := range []string{tb.Clients[0].NS, tb.Nodes[0].Pods[0].NetNS, tb.Nodes[1].Pods[0].NetNS} {
		if out, err := exec.Command("ip", "-n", ns, "mptcp", "limits", "set", "subflow", "2", "add_addr_accepted", "2").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("set mptcp limits in %s: %s: %w", ns, out, err)
		}
	}
	return e, nil
}

func (e *Env) makeTLS() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: strings.TrimSuffix(ServiceName, ".")},
		DNSNames:              []string{strings.TrimSuffix(ServiceName, ".")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(crt)
	e.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	e.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	e.tlsClient = &tls.Config{
		RootCAs:            pool,
		ServerName:         strings.TrimSuffix(ServiceName, "."),
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{kv.ALPN},
		ClientSessionCache: tls.NewLRUClientSessionCache(4), // resumption, as a real client does
	}
	return nil
}

// Config is one cell of the baselines.
type Config struct {
	Kind      Kind
	BallastMB int
	// Warmup is the time between the client's first response and the move; a random extra in
	// [0, TTL) is added so that the age of the client's cached record is uniform, as it is for a
	// move at an arbitrary moment.
	Warmup time.Duration
	// After is how long the client keeps going once it has a response from the moved service.
	After time.Duration
	// Timeout bounds the whole run.
	Timeout time.Duration
}

// Result is one run.
type Result struct {
	Kind      Kind
	Method    string
	TTL       time.Duration
	BallastMB int
	Run       int
	// Gap is the largest interval between successive responses after the move started.
	Gap time.Duration
	// Freeze is the service downtime: from the start of the checkpoint (or SIGTERM) to the end of
	// the restore (or start) on node B. Checkpoint and Restore are its two runc commands.
	Freeze, Checkpoint, Restore time.Duration
	// ImageBytes is the size of the CRIU image directory.
	ImageBytes int64
	// StateKept: the counter the client saw never went backwards.
	StateKept bool
	// MPTCP reports whether the client connection really was MPTCP (Go's TCPConn.MultipathTCP).
	MPTCP bool
	// Responses after the move, connection attempts and failed requests/dials of the client.
	Responses, Dials, Failures int
	FirstError                 string
	// Err is set when the run itself failed (then Gap is meaningless).
	Err string
	// CRIUError is the CRIU refusal that made an MPTCP run fall back to stop/start.
	CRIUError string
}

// Run performs one run of cfg. It never returns a partial success as a number: on failure
// Result.Err says why.
func (e *Env) Run(ctx context.Context, cfg Config, run int, tryCRIU bool) Result {
	res := Result{Kind: cfg.Kind, TTL: e.DNS.TTL(), BallastMB: cfg.BallastMB, Run: run, Method: MethodNone}
	if cfg.Kind == KindNone {
		res.TTL = 0
	}
	if err := e.run(ctx, cfg, &res, tryCRIU); err != nil {
		res.Err = err.Error()
	}
	return res
}

func (e *Env) run(ctx context.Context, cfg Config, res *Result, tryCRIU bool) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	podA, podB := e.TB.Nodes[0].Pods[0], e.TB.Nodes[1].Pods[0]
	mptcp := cfg.Kind == KindMPTCP
	id := fmt.Sprintf("stdr-bench-%s-%d-%d", cfg.Kind, cfg.BallastMB, res.Run)
	dir := filepath.Join(e.Work, id)
	defer os.RemoveAll(dir)
	args := []string{"/kvsvc", "-listen", fmt.Sprintf(":%d", ServicePort), "-ballast-mb", strconv.Itoa(cfg.BallastMB), "-state", "/state/counter", "-state-key", StateKey}
	if mptcp {
		args = append(args, "-mptcp")
	}
	b, err := container.NewBundle(filepath.Join(dir, "bundle"), container.Spec{
		Binary: e.KVSvc, Args: args,
		Files:       map[string][]byte{"cert.pem": e.certPEM, "key.pem": e.keyPEM},
		NetNS:       podA.Path(),
		CRIUOptions: []string{"tcp-close", "network-lock skip"},
	})
	if err != nil {
		return err
	}
	container.Delete(id)
	if err := container.Run(id, b); err != nil {
		return err
	}
	defer container.Delete(id)
	e.DNS.Set(ServiceName, podA.IPv4)

	client := e.TB.Clients[0]
	res0 := &authdns.Resolver{NS: client.NS, Server: e.DNS.Addr}
	dial := func(ctx context.Context) (net.Conn, error) {
		addr, err := res0.Lookup(ctx, ServiceName)
		if err != nil {
			return nil, err
		}
		var c net.Conn
		err = nsutil.Do(client.NS, func() (err error) {
			d := net.Dialer{}
			d.SetMultipathTCP(mptcp)
			c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, ServicePort).String())
			return err
		})
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			if m, err := tc.MultipathTCP(); err == nil && m {
				res.MPTCP = true
			}
		}
		tc := tls.Client(c, e.tlsClient)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		return tc, nil
	}
	// Wait for the service (the ballast takes a moment to dirty).
	ready := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err := dial(dctx)
		dcancel()
		if err == nil {
			c.Close()
			ready = true
			break
		}
	}
	if !ready {
		return fmt.Errorf("service %s did not answer within 10 s", id)
	}

	pctx, pcancel := context.WithTimeout(ctx, cfg.Timeout)
	defer pcancel()
	type out struct {
		tr  *pace.Trace
		err error
	}
	done := make(chan out, 1)
	go func() {
		tr, err := pace.Pace(pctx, pace.Config{
			Dial: dial, Key: StateKey, Interval: e.Interval, RequestTimeout: time.Second,
			MaxRequests: int(cfg.Timeout/e.Interval) + 1,
		})
		done <- out{tr, err}
	}()
	warm := cfg.Warmup
	if cfg.Kind != KindNone && res.TTL > 0 {
		warm += time.Duration(mrand.Int64N(int64(res.TTL)))
	}
	time.Sleep(warm)
	moveStart := time.Now()
	switch {
	case cfg.Kind == KindNone:
		res.Method = MethodNone
	case tryCRIU:
		res.Method = MethodCRIU
		img := filepath.Join(dir, "image")
		res.Checkpoint, err = container.Checkpoint(id, img, filepath.Join(dir, "work-dump"))
		if err != nil {
			if !mptcp {
				pcancel()
				<-done
				return fmt.Errorf("%w: %v", ErrCheckpoint, err)
			}
			res.CRIUError = err.Error()
			res.Method = MethodStopStart + " (CRIU refused)"
			moveStart = time.Now()
			if err := e.stopStart(id, b, podB.Path(), res); err != nil {
				pcancel()
				<-done
				return err
			}
			break
		}
		res.ImageBytes = container.ImageSize(img)
		container.Delete(id)
		if err := b.SetNetNS(podB.Path()); err != nil {
			return err
		}
		res.Restore, err = container.Restore(id, b, img, filepath.Join(dir, "work-restore"))
		if err != nil {
			pcancel()
			<-done
			return err
		}
	default:
		res.Method = MethodStopStart
		if err := e.stopStart(id, b, podB.Path(), res); err != nil {
			pcancel()
			<-done
			return err
		}
	}
	res.Freeze = time.Since(moveStart)
	if cfg.Kind != KindNone {
		e.DNS.Set(ServiceName, podB.IPv4)
	}
	moveEnd := time.Now()
	// Keep the client going until it has talked to the moved service for cfg.After (bounded by
	// the run timeout): wait for the TTL to run out plus the settling time.
	wait := cfg.After
	if cfg.Kind != KindNone {
		wait += res.TTL
	}
	select {
	case <-time.After(wait):
	case <-ctx.Done():
	}
	pcancel()
	o := <-done
	if o.err != nil {
		return o.err
	}
	res.Gap, _ = o.tr.MaxGap(moveStart)
	res.StateKept = o.tr.Monotonic()
	res.Responses = o.tr.ResponsesAfter(moveEnd)
	res.Dials, res.Failures, res.FirstError = o.tr.Dials, o.tr.Failures, o.tr.FirstError
	if res.Responses == 0 {
		return fmt.Errorf("client got no response after the move (%d dials, first error %q)", res.Dials, res.FirstError)
	}
	return nil
}

// stopStart stops the container (SIGTERM: kvsvc writes /state/counter in the shared root
// filesystem), then starts it again in the network namespace netnsB; kvsvc reads the counter.
func (e *Env) stopStart(id string, b *container.Bundle, netnsB string, res *Result) error {
	start := time.Now()
	if err := container.Kill(id, "TERM"); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); container.State(id) == "running"; {
		if time.Now().After(deadline) {
			return fmt.Errorf("stop %s: still running 5 s after SIGTERM", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.Checkpoint = time.Since(start)
	container.Delete(id)
	if err := b.SetNetNS(netnsB); err != nil {
		return err
	}
	t := time.Now()
	if err := container.Run(id, b); err != nil {
		return err
	}
	res.Restore = time.Since(t)
	return nil
}
