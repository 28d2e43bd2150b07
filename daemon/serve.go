package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/steerd/steerd/pki"
)

// ServeOptions are the collaborators Serve may take from its caller; nil fields get the real
// implementations (the datapath Config.Datapath selects, XDP or NFT, unless Config.NoDatapath, quicext control endpoint, RuncEngine for
// runtime "runc", NoEngine for runtime "none").
type ServeOptions struct {
	Logger   *slog.Logger
	Engine   Engine
	Datapath Datapath
	Control  ServiceControl
	// Ready, when set, is called once every listener is up.
	Ready func(*Daemon)
}

// Serve runs a node daemon until ctx ends: it loads the node certificate, opens the datapath,
// listens on the peer channel, the control socket and the metrics address, then waits. On return
// every listener is closed; containers keep running.
func Serve(ctx context.Context, cfg *Config, o ServeOptions) (err error) {
	if err := cfg.Normalize(); err != nil {
		return err
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := CheckPrivileges(o.Datapath == nil && !cfg.NoDatapath, o.Engine == nil && cfg.Runtime == "runc"); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	node, err := pki.LoadNode(cfg.PKIDir, cfg.Node)
	if err != nil {
		return fmt.Errorf("serve: node certificate: %w", err)
	}
	roots, err := pki.LoadRoots(cfg.PKIDir)
	if err != nil {
		return fmt.Errorf("serve: cluster CA: %w", err)
	}
	cert := node.TLSCertificate()
	dp := o.Datapath
	if dp == nil && !cfg.NoDatapath {
		// One steerd per network namespace owns the uplink's datapath.
		release, err := LockNetNS("")
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		defer release()
		switch cfg.Datapath {
		case DatapathNFT:
			n, err := OpenNFT(cfg)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			dp = n
		default:
			x, err := OpenXDP(cfg)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			dp = x
		}
	}
	if dp != nil {
		defer dp.Close()
	}
	eng := o.Engine
	if eng == nil {
		switch cfg.Runtime {
		case "none":
			eng = NoEngine{}
		case "runc":
			re, err := NewRuncEngine(cfg, log)
			if err != nil {
				return fmt.Errorf("serve: runtime runc: %w (install runc and CRIU: make deps; or runtime none)", err)
			}
			eng = re
		default:
			return fmt.Errorf("serve: %w: runtime %q: want runc or none", ErrBadRequest, cfg.Runtime)
		}
	}
	ctl := o.Control
	if ctl == nil {
		ctl = QuicextControl{}
	}
	d, err := New(cfg, Deps{Datapath: dp, Engine: eng, Control: ctl, Dial: Dialer(cfg, cert, roots), Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Recover(ctx); err != nil {
		log.Error("recover node state", "error", err)
	}
	ps, err := d.ListenPeers(cert, roots)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer ps.Close()
	cs, err := d.ListenControl(cfg.ControlSocket)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer cs.Close()
	var ms *http.Server
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("serve: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.MetricsHandler())
		ms = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go ms.Serve(ln)
		defer ms.Close()
	}
	log.Info("steerd ready", "node", cfg.Node, "peer_listen", ps.Addr().String(), "control", cfg.ControlSocket,
		"metrics", cfg.MetricsListen, "datapath", datapathName(cfg, dp), "services", len(cfg.Services), "peers", len(cfg.Peers))
	if o.Ready != nil {
		o.Ready(d)
	}
	<-ctx.Done()
	log.Info("steerd stopping", "node", cfg.Node)
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return nil
	}
	return context.Cause(ctx)
}

// datapathName names the datapath in the ready log line: "none", "xdp", "nftables" or "custom"
// (a caller's ServeOptions.Datapath).
func datapathName(cfg *Config, dp Datapath) string {
	switch dp.(type) {
	case nil:
		return "none"
	case *XDP:
		return DatapathXDP
	case *NFT:
		return DatapathNFT
	}
	return "custom"
}
