// Package pki is the small certificate authority of a steerd cluster: it creates the cluster CA,
// issues one certificate per node (the node name is the certificate's Common Name and its only
// DNS Subject Alternative Name), and builds the mutual-TLS configurations of the peer channel,
// which accept a peer only when its chain ends at the cluster CA and its name is the expected one.
//
// Keys are ECDSA P-256; certificates are X.509 v3 (RFC 5280) with ExtKeyUsage serverAuth and
// clientAuth, because every node is both a client and a server of the peer channel. On disk a
// cluster directory holds PEM files (RFC 7468):
//
//	ca.crt          cluster CA certificate ("CERTIFICATE")
//	ca.key          cluster CA key, mode 0600 ("PRIVATE KEY", PKCS #8); keep it off the nodes
//	<node>.crt      node certificate
//	<node>.key      node key, mode 0600 ("PRIVATE KEY", PKCS #8)
package pki

import (
	"crypto"
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
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Errors callers test with errors.Is.
var (
	// ErrUntrusted: the peer's certificate chain does not end at the cluster CA.
	ErrUntrusted = errors.New("certificate not issued by the cluster CA")
	// ErrWrongNode: the peer's certificate is valid but names another node than the expected one.
	ErrWrongNode = errors.New("certificate names another node")
	// ErrUnknownNode: the peer's certificate names a node that is not in the allowed set.
	ErrUnknownNode = errors.New("certificate names a node that is not a configured peer")
	// ErrBadName: a node name that is not a DNS label (1-63 of [a-z0-9-], no leading/trailing '-').
	ErrBadName = errors.New("invalid node name")
	// ErrNoCertificate: the peer presented no certificate.
	ErrNoCertificate = errors.New("peer presented no certificate")
)

// DefaultCAValidity and DefaultNodeValidity are the certificate lifetimes used when 0 is given.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultNodeValidity = 365 * 24 * time.Hour
)

// ALPN is the TLS application protocol (RFC 7301) of the steerd peer channel.
const ALPN = "steerd-peer/1"

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks that name can be a node name (a lowercase DNS label, RFC 1123 section 2.1).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %q (want a lowercase DNS label: a-z, 0-9, '-', at most 63 bytes)", ErrBadName, name)
	}
	return nil
}

// CA is a cluster certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NodeCert is a node certificate with its key.
type NodeCert struct {
	Name string
	Cert *x509.Certificate
	Key  crypto.Signer
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed cluster CA named "steerd cluster <cluster>" valid for validity
// (0 means DefaultCAValidity).
func NewCA(cluster string, validity time.Duration) (*CA, error) {
	if validity == 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "steerd cluster " + cluster, Organization: []string{"steerd"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue creates a certificate for node (CN and DNS SAN = node) valid for validity (0 means
// DefaultNodeValidity, capped at the CA's own expiry).
func (ca *CA) Issue(node string, validity time.Duration) (*NodeCert, error) {
	if err := ValidateName(node); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	if validity == 0 {
		validity = DefaultNodeValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", node, err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"steerd"}},
		DNSNames:     []string{node},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate for %s: %w", node, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s: %w", node, err)
	}
	return &NodeCert{Name: node, Cert: cert, Key: key}, nil
}

// Pool returns a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// TLSCertificate returns the node certificate as a tls.Certificate.
func (n *NodeCert) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{n.Cert.Raw}, PrivateKey: n.Key, Leaf: n.Cert}
}

// Verify checks that the chain rawCerts (leaf first, DER) ends at a CA in roots, that the leaf
// allows clientAuth and serverAuth use, and returns the node name (the leaf's CN, which must also
// be a DNS SAN). It returns ErrNoCertificate, ErrUntrusted (wrapped with the x509 error).
func Verify(roots *x509.CertPool, rawCerts [][]byte, now time.Time) (string, error) {
	if len(rawCerts) == 0 {
		return "", ErrNoCertificate
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return "", fmt.Errorf("parse peer certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, raw := range rawCerts[1:] {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return "", fmt.Errorf("parse peer chain: %w", err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return "", fmt.Errorf("verify %q: %w: %v", leaf.Subject.CommonName, ErrUntrusted, err)
	}
	name := leaf.Subject.CommonName
	if err := leaf.VerifyHostname(name); err != nil || ValidateName(name) != nil {
		return "", fmt.Errorf("verify %q: %w: common name is not a DNS SAN", name, ErrUntrusted)
	}
	return name, nil
}

// VerifyNode is Verify plus a check that the certificate names node (ErrWrongNode otherwise).
func VerifyNode(roots *x509.CertPool, rawCerts [][]byte, node string, now time.Time) error {
	name, err := Verify(roots, rawCerts, now)
	if err != nil {
		return err
	}
	if name != node {
		return fmt.Errorf("verify peer: %w: got %q, want %q", ErrWrongNode, name, node)
	}
	return nil
}

// ServerConfig returns the TLS 1.3 configuration of a peer-channel server: it presents cert,
// requires a client certificate chained to roots, and, when allowed is non-nil, accepts only
// client names for which allowed returns true (ErrUnknownNode otherwise). The verified client name
// is PeerName(ConnectionState).
func ServerConfig(cert tls.Certificate, roots *x509.CertPool, allowed func(node string) bool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		// The chain is verified in VerifyPeerCertificate (to return the sentinel errors and the
		// node name check); RequireAnyClientCert only demands that one is sent.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			name, err := Verify(roots, raw, time.Now())
			if err != nil {
				return err
			}
			if allowed != nil && !allowed(name) {
				return fmt.Errorf("verify peer: %w: %q", ErrUnknownNode, name)
			}
			return nil
		},
	}
}

// ClientConfig returns the TLS 1.3 configuration to dial node: it presents cert and accepts only
// a server certificate chained to roots that names node (ErrWrongNode otherwise).
func ClientConfig(cert tls.Certificate, roots *x509.CertPool, node string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		ServerName:   node,
		// Standard verification would do the same checks; doing them here keeps the errors
		// (ErrUntrusted, ErrWrongNode) identical on both sides.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return VerifyNode(roots, raw, node, time.Now())
		},
	}
}

// PeerName returns the verified node name of the peer of a completed handshake ("" if none).
func PeerName(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}

// File names inside a cluster directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// NodeCertFile and NodeKeyFile return the file names of a node's certificate and key.
func NodeCertFile(node string) string { return node + ".crt" }

// NodeKeyFile returns the file name of a node's key.
func NodeKeyFile(node string) string { return node + ".key" }

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writePair(dir, certFile, keyFile string, cert *x509.Certificate, key crypto.Signer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := writePEM(filepath.Join(dir, keyFile), "PRIVATE KEY", der, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, certFile), "CERTIFICATE", cert.Raw, 0o644)
}

// Save writes ca.crt and ca.key into dir (created with mode 0700 if missing).
func (ca *CA) Save(dir string) error { return writePair(dir, CACertFile, CAKeyFile, ca.Cert, ca.Key) }

// Save writes <node>.crt and <node>.key into dir.
func (n *NodeCert) Save(dir string) error {
	return writePair(dir, NodeCertFile(n.Name), NodeKeyFile(n.Name), n.Cert, n.Key)
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("read certificate %s: no CERTIFICATE PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", path, err)
	}
	return c, nil
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("read key %s: no PRIVATE KEY PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse key %s: %T is not a signing key", path, k)
	}
	return s, nil
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	c, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	k, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	return &CA{Cert: c, Key: k}, nil
}

// LoadRoots reads ca.crt from dir into a pool (nodes need only the CA certificate, not its key).
func LoadRoots(dir string) (*x509.CertPool, error) {
	c, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	p.AddCert(c)
	return p, nil
}

// LoadNode reads <node>.crt and <node>.key from dir.
func LoadNode(dir, node string) (*NodeCert, error) {
	c, err := readCert(filepath.Join(dir, NodeCertFile(node)))
	if err != nil {
		return nil, err
	}
	k, err := readKey(filepath.Join(dir, NodeKeyFile(node)))
	if err != nil {
		return nil, err
	}
	if c.Subject.CommonName != node {
		return nil, fmt.Errorf("load node %s: %w: certificate is for %q", node, ErrWrongNode, c.Subject.CommonName)
	}
	return &NodeCert{Name: node, Cert: c, Key: k}, nil
}
