package pki

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func mustCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustIssue(t *testing.T, ca *CA, node string) *NodeCert {
	t.Helper()
	n, err := ca.Issue(node, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIssueAndVerify(t *testing.T) {
	ca := mustCA(t, "test")
	n := mustIssue(t, ca, "node-a")
	if n.Cert.Subject.CommonName != "node-a" || len(n.Cert.DNSNames) != 1 || n.Cert.DNSNames[0] != "node-a" {
		t.Fatalf("certificate names: CN %q SAN %v", n.Cert.Subject.CommonName, n.Cert.DNSNames)
	}
	name, err := Verify(ca.Pool(), [][]byte{n.Cert.Raw}, time.Now())
	if err != nil || name != "node-a" {
		t.Fatalf("Verify = %q, %v; want node-a, nil", name, err)
	}
	if err := VerifyNode(ca.Pool(), [][]byte{n.Cert.Raw}, "node-b", time.Now()); !errors.Is(err, ErrWrongNode) {
		t.Fatalf("VerifyNode(other name) = %v, want ErrWrongNode", err)
	}
	other := mustCA(t, "other")
	forged := mustIssue(t, other, "node-a")
	if _, err := Verify(ca.Pool(), [][]byte{forged.Cert.Raw}, time.Now()); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Verify(cert from another CA) = %v, want ErrUntrusted", err)
	}
	if _, err := Verify(ca.Pool(), [][]byte{n.Cert.Raw}, n.Cert.NotAfter.Add(time.Hour)); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Verify(expired) = %v, want ErrUntrusted", err)
	}
	if _, err := Verify(ca.Pool(), nil, time.Now()); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("Verify(nil) = %v, want ErrNoCertificate", err)
	}
}

func TestBadNames(t *testing.T) {
	ca := mustCA(t, "test")
	for _, name := range []string{"", "Node", "-a", "a-", "a.b", "a b", string(make([]byte, 64))} {
		if _, err := ca.Issue(name, 0); !errors.Is(err, ErrBadName) {
			t.Errorf("Issue(%q) = %v, want ErrBadName", name, err)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "test")
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	n := mustIssue(t, ca, "n1")
	if err := n.Save(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CAKeyFile, NodeKeyFile("n1")} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	ca2, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Cert.Equal(ca.Cert) {
		t.Fatal("loaded CA differs")
	}
	n2, err := LoadNode(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	roots, err := LoadRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyNode(roots, [][]byte{n2.Cert.Raw}, "n1", time.Now()); err != nil {
		t.Fatal(err)
	}
	// A node issued by the loaded CA verifies against the original pool: the key round-tripped.
	n3, err := ca2.Issue("n3", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ca.Pool(), [][]byte{n3.Cert.Raw}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "n1.crt"), filepath.Join(dir, "n9.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "n1.key"), filepath.Join(dir, "n9.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNode(dir, "n9"); !errors.Is(err, ErrWrongNode) {
		t.Fatalf("LoadNode(renamed) = %v, want ErrWrongNode", err)
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns both sides' errors and the
// client name the server saw.
func handshake(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error, peer string) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	var s *tls.Conn
	go func() {
		s = tls.Server(a, srv)
		err := s.Handshake()
		a.Close()
		done <- err
	}()
	c := tls.Client(b, cli)
	clientErr = c.Handshake()
	b.Close()
	serverErr = <-done
	if serverErr == nil {
		peer = PeerName(s.ConnectionState())
	}
	return
}

func TestMutualTLS(t *testing.T) {
	ca := mustCA(t, "test")
	a, b := mustIssue(t, ca, "a"), mustIssue(t, ca, "b")
	other := mustCA(t, "other")
	evil := mustIssue(t, other, "b")
	allowed := func(n string) bool { return n == "b" }

	srvErr, cliErr, peer := handshake(t, ServerConfig(a.TLSCertificate(), ca.Pool(), allowed), ClientConfig(b.TLSCertificate(), ca.Pool(), "a"))
	if srvErr != nil || cliErr != nil || peer != "b" {
		t.Fatalf("good handshake: server %v, client %v, peer %q", srvErr, cliErr, peer)
	}
	srvErr, _, _ = handshake(t, ServerConfig(a.TLSCertificate(), ca.Pool(), allowed), ClientConfig(evil.TLSCertificate(), ca.Pool(), "a"))
	if !errors.Is(srvErr, ErrUntrusted) {
		t.Fatalf("client from another CA: server error %v, want ErrUntrusted", srvErr)
	}
	_, cliErr, _ = handshake(t, ServerConfig(b.TLSCertificate(), ca.Pool(), nil), ClientConfig(a.TLSCertificate(), ca.Pool(), "c"))
	if !errors.Is(cliErr, ErrWrongNode) {
		t.Fatalf("server with another name: client error %v, want ErrWrongNode", cliErr)
	}
	_, cliErr, _ = handshake(t, ServerConfig(evil.TLSCertificate(), other.Pool(), nil), ClientConfig(a.TLSCertificate(), ca.Pool(), "b"))
	if !errors.Is(cliErr, ErrUntrusted) {
		t.Fatalf("server from another CA: client error %v, want ErrUntrusted", cliErr)
	}
	c := mustIssue(t, ca, "c")
	srvErr, _, _ = handshake(t, ServerConfig(a.TLSCertificate(), ca.Pool(), allowed), ClientConfig(c.TLSCertificate(), ca.Pool(), "a"))
	if !errors.Is(srvErr, ErrUnknownNode) {
		t.Fatalf("client not in allowed set: server error %v, want ErrUnknownNode", srvErr)
	}
}
