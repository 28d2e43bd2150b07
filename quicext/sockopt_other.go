//go:build !linux

package quicext

import "net"

// ReapplySocketOptions is a no-op outside Linux (CRIU is Linux only).
func ReapplySocketOptions(uc *net.UDPConn) error { return nil }
