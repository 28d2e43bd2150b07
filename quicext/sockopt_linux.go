//go:build linux

package quicext

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ReapplySocketOptions sets again, on uc, the socket options quic-go sets when it takes over a
// *net.UDPConn and that a CRIU restore does not bring back: IP_RECVTOS = 1 (ECN from received
// packets) and IP_MTU_DISCOVER = IP_PMTUDISC_PROBE (DF bit for DPLPMTUD, RFC 9000 section 14.3),
// and for an IPv6 socket IPV6_RECVTCLASS = 1 and IPV6_MTU_DISCOVER = IPV6_PMTUDISC_PROBE (the
// IPv4 options are also tried on a dual-stack IPv6 socket). The values are those of quic-go
// v0.65 (sys_conn_oob.go, sys_conn_df_linux.go). It fails only if no option of the socket's
// family could be set.
func ReapplySocketOptions(uc *net.UDPConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("reapply socket options: %w", err)
	}
	is6 := false
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		is6 = true
	}
	var err4, err6 error
	cerr := rc.Control(func(fd uintptr) {
		f := int(fd)
		err4 = errors.Join(
			unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_RECVTOS, 1),
			unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE))
		if is6 {
			err6 = errors.Join(
				unix.SetsockoptInt(f, unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1),
				unix.SetsockoptInt(f, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE))
		}
	})
	if cerr != nil {
		return fmt.Errorf("reapply socket options: %w", cerr)
	}
	if is6 {
		if err6 != nil {
			return fmt.Errorf("reapply ipv6 socket options: %w", err6)
		}
		return nil // IPv4 options fail on an IPV6_V6ONLY socket: expected
	}
	if err4 != nil {
		return fmt.Errorf("reapply ipv4 socket options: %w", err4)
	}
	return nil
}
