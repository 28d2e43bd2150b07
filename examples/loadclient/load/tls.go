package load

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrPinMismatch is returned by the TLS handshake of a PinnedTLS config when the server's leaf
// certificate does not have the pinned SHA-256.
var ErrPinMismatch = errors.New("load: server certificate does not match the pinned SHA-256")

// PinnedTLS returns a client TLS config that accepts exactly the server certificate whose DER
// SHA-256 is fingerprint (64 hex digits; colons and case are ignored, as kvservice prints it),
// without a CA (for self-signed demo certificates). serverName is sent as SNI.
func PinnedTLS(fingerprint, serverName string) (*tls.Config, error) {
	fp := strings.ToLower(strings.ReplaceAll(fingerprint, ":", ""))
	want, err := hex.DecodeString(fp)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("parse pin %q: want 64 hex digits (SHA-256)", fingerprint)
	}
	return &tls.Config{
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by the pin check below
		NextProtos:         nil,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return ErrPinMismatch
			}
			h := sha256.Sum256(raw[0])
			if string(h[:]) != string(want) {
				return fmt.Errorf("verify server certificate %s: %w", hex.EncodeToString(h[:]), ErrPinMismatch)
			}
			return nil
		},
	}, nil
}
