package service

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/steerd/steerd/quicext"
)

// ServeControl serves the quicext control protocol (quicext.ControlRequest, one JSON line per
// connection; see quicext.ServeControl) on l until l is closed, and returns the Accept error.
// With one listener it is quicext.ServeControl itself. With several (the pod's IPv4 and IPv6
// addresses) every request goes to all the quicext servers at once: prepare merges their
// readiness reports (ready, not ready and unsupported lists are joined; the strategy is the
// first server's; the elapsed time is the longest), restored and abort succeed when every
// server succeeded (errors are joined), and status sums the connection counters.
func (s *Service) ServeControl(l net.Listener) error {
	servers := s.Servers()
	if len(servers) == 1 {
		return quicext.ServeControl(l, servers[0])
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go serveMultiControl(c, servers)
	}
}

func serveMultiControl(c net.Conn, servers []*quicext.Server) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	var req quicext.ControlRequest
	var resp quicext.ControlResponse
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	if err == nil {
		resp, err = multiControl(servers, req)
	}
	if err != nil {
		resp = quicext.ControlResponse{Error: err.Error()}
	} else {
		resp.OK = true
	}
	b, _ := json.Marshal(resp)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.Write(append(b, '\n'))
}

// multiControl applies req to every server in parallel and merges the results.
func multiControl(servers []*quicext.Server, req quicext.ControlRequest) (quicext.ControlResponse, error) {
	switch req.Op {
	case "prepare":
		st := quicext.StrategySymmetric
		if req.Strategy != "" {
			var err error
			if st, err = quicext.ParseStrategy(req.Strategy); err != nil {
				return quicext.ControlResponse{}, err
			}
		}
		to := time.Duration(req.TimeoutMS) * time.Millisecond
		if to <= 0 {
			to = 2 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), to)
		defer cancel()
		rs := make([]quicext.Readiness, len(servers))
		errs := make([]error, len(servers))
		var wg sync.WaitGroup
		for i, srv := range servers {
			wg.Go(func() {
				rs[i], errs[i] = srv.PrepareWith(ctx, req.Target, func(*quic.Conn) quicext.Strategy { return st },
					quicext.PrepareOptions{CloseUnsupported: req.CloseUnsupported})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			// Undo the servers that did prepare, so that the service accepts again.
			for i, srv := range servers {
				if errs[i] == nil {
					srv.Abort()
				}
			}
			return quicext.ControlResponse{}, fmt.Errorf("prepare: %w", err)
		}
		m := quicext.Readiness{Strategy: st}
		for _, r := range rs {
			m.Ready = append(m.Ready, r.Ready...)
			m.NotReady = append(m.NotReady, r.NotReady...)
			m.Unsupported = append(m.Unsupported, r.Unsupported...)
			m.Closed += r.Closed
			m.ElapsedMS = max(m.ElapsedMS, r.ElapsedMS)
		}
		if rs[0].Strategy != 0 {
			m.Strategy = rs[0].Strategy
		}
		return quicext.ControlResponse{Readiness: &m}, nil
	case "restored", "abort":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := make([]error, len(servers))
		var wg sync.WaitGroup
		for i, srv := range servers {
			wg.Go(func() {
				if req.Op == "abort" {
					errs[i] = srv.Abort()
				} else {
					errs[i] = srv.Restored(ctx, req.Target)
				}
			})
		}
		wg.Wait()
		return quicext.ControlResponse{}, errors.Join(errs...)
	case "status":
		st := servers[0].Status()
		for _, srv := range servers[1:] {
			o := srv.Status()
			st.Conns += o.Conns
			st.Negotiated += o.Negotiated
			st.Unsupported += o.Unsupported
			st.LocalAddr += "," + o.LocalAddr
		}
		return quicext.ControlResponse{Status: &st}, nil
	}
	return quicext.ControlResponse{}, fmt.Errorf("handle control op %q: unknown op", req.Op)
}
