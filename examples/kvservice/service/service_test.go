package service

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"

	"github.com/steerd/steerd/connid"
)

func TestCheckListenAddr(t *testing.T) {
	for _, tt := range []struct {
		addr     string
		wildcard bool
		ok       bool
	}{
		{"198.19.0.1:4433", false, true},
		{"[2001:2:0:ff::1]:4433", false, true},
		{"127.0.0.2:0", false, true},
		{"0.0.0.0:4433", true, false},
		{"[::]:4433", true, false},
		{":4433", true, false},
		{"[::ffff:0.0.0.0]:4433", true, false},
		{"pod.example:4433", false, false},
		{"198.19.0.1", false, false},
	} {
		err := CheckListenAddr(tt.addr)
		if (err == nil) != tt.ok || errors.Is(err, ErrWildcard) != tt.wildcard {
			t.Errorf("CheckListenAddr(%q) = %v; want ok=%v wildcard=%v", tt.addr, err, tt.ok, tt.wildcard)
		}
	}
}

func TestNewErrors(t *testing.T) {
	cert, fp, err := SelfSigned([]net.IP{net.IPv4(198, 19, 0, 1)})
	if err != nil || len(fp) != 64 || fp != Fingerprint(cert.Certificate[0]) {
		t.Fatalf("self-signed: %q, %v", fp, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}}
	for _, tt := range []struct {
		name string
		cfg  Config
		want error
	}{
		{"wildcard", Config{Listen: []string{"0.0.0.0:0"}, TLS: tc}, ErrWildcard},
		{"CID too long", Config{Listen: []string{"127.0.0.2:0"}, TLS: tc, CIDLen: 21}, connid.ErrBadCIDLen},
		{"nonce too short", Config{Listen: []string{"127.0.0.2:0"}, TLS: tc, ServerIDLen: 4, CIDLen: 8}, connid.ErrBadNonceLen},
		{"instance out of range", Config{Listen: []string{"127.0.0.2:0"}, TLS: tc, Instance: 1 << 16}, connid.ErrServerIDRange},
	} {
		if _, err := New(tt.cfg); !errors.Is(err, tt.want) {
			t.Errorf("%s: New error = %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := New(Config{Listen: []string{"127.0.0.2:0"}}); err == nil {
		t.Error("New without TLS succeeded")
	}
	// The largest instance of a 2-byte server ID is accepted, and the socket is released.
	s, err := New(Config{Listen: []string{"127.0.0.2:0"}, TLS: tc, Instance: 0xffff})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if st := s.Stats(); st.InstanceID != 0xffff || len(st.ListenAddrs) != 1 {
		t.Errorf("stats %+v", st)
	}
	s.Close()
}
