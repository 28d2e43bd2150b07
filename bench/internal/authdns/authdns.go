// Package authdns is the name service of the TCP+DNS baseline: an authoritative DNS server
// (github.com/miekg/dns) for one zone, whose A/AAAA records the orchestrator rewrites when the
// service moves, and a client-side stub resolver with a positive cache that honours the record
// TTL, as a host's caching stub (systemd-resolved, nscd) or an application cache does.
//
// The TTL is the operator's knob: the client keeps using a cached address until it expires
// (RFC 1035 section 3.2.1, RFC 2181 section 8), so a client whose connection broke re-resolves to
// the old address until then.
package authdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/steerd/steerd/internal/nsutil"
)

// ErrNoRecord is returned by Lookup when the server has no address for the name (NXDOMAIN or an
// empty answer).
var ErrNoRecord = errors.New("authdns: no address record")

// Server is an authoritative server for one zone over UDP.
type Server struct {
	zone string
	ttl  uint32
	srv  *dns.Server
	// Addr is the server's UDP address ("198.18.10.1:53").
	Addr string

	mu      sync.Mutex
	records map[string]netip.Addr // FQDN -> address
	queries int
}

// Start serves zone (e.g. "bench.test.") on UDP listen ("198.18.10.1:53") inside the network
// namespace ns, answering every name it knows with ttl (whole seconds, at least 1).
func Start(ns, listen, zone string, ttl time.Duration) (*Server, error) {
	s := &Server{zone: dns.Fqdn(zone), ttl: uint32(max(ttl/time.Second, 1)), records: map[string]netip.Addr{}}
	var pc net.PacketConn
	err := nsutil.Do(ns, func() (err error) {
		pc, err = net.ListenPacket("udp", listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start dns server on %s: %w", listen, err)
	}
	s.Addr = pc.LocalAddr().String()
	mux := dns.NewServeMux()
	mux.HandleFunc(s.zone, s.serve)
	started := make(chan struct{})
	s.srv = &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = s.srv.ActivateAndServe() }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		pc.Close()
		return nil, fmt.Errorf("start dns server on %s: not started after 5 s", listen)
	}
	return s, nil
}

// TTL returns the TTL the server puts on its answers.
func (s *Server) TTL() time.Duration { return time.Duration(s.ttl) * time.Second }

// Set points name (inside the zone) at a.
func (s *Server) Set(name string, a netip.Addr) {
	s.mu.Lock()
	s.records[strings.ToLower(dns.Fqdn(name))] = a
	s.mu.Unlock()
}

// Queries returns how many queries the server answered.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Shutdown() }

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	s.mu.Lock()
	s.queries++
	for _, q := range req.Question {
		a, ok := s.records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: s.ttl}
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6():
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	s.mu.Unlock()
	_ = w.WriteMsg(m)
}

// Resolver is a caching stub resolver that sends its queries from network namespace NS.
type Resolver struct {
	NS     string
	Server string // "198.18.10.1:53"
	// Lookups counts Lookup calls, Queries the ones that went to the server (cache misses).
	Lookups, Queries int

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	addr    netip.Addr
	expires time.Time
}

// Lookup returns the IPv4 address of name, from the cache while its TTL runs, else from the
// server (then cached for the answer's TTL).
func (r *Resolver) Lookup(ctx context.Context, name string) (netip.Addr, error) {
	name = strings.ToLower(dns.Fqdn(name))
	r.mu.Lock()
	r.Lookups++
	if c, ok := r.cache[name]; ok && time.Now().Before(c.expires) {
		r.mu.Unlock()
		return c.addr, nil
	}
	r.Queries++
	r.mu.Unlock()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	q.RecursionDesired = false
	cl := &dns.Client{Net: "udp", Timeout: time.Second}
	var resp *dns.Msg
	err := nsutil.Do(r.NS, func() (err error) {
		resp, _, err = cl.ExchangeContext(ctx, q, r.Server)
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", name, err)
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A.To4())
			r.mu.Lock()
			if r.cache == nil {
				r.cache = map[string]cached{}
			}
			r.cache[name] = cached{addr: addr, expires: time.Now().Add(time.Duration(a.Hdr.Ttl) * time.Second)}
			r.mu.Unlock()
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("resolve %s: rcode %s: %w", name, dns.RcodeToString[resp.Rcode], ErrNoRecord)
}
