// Package ethtool sets the few interface offloads steerd cares about through the SIOCETHTOOL
// ioctl (include/uapi/linux/ethtool.h), without the ethtool binary.
package ethtool

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// value is struct ethtool_value.
type value struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with the ifr_data pointer member.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

// SetTxChecksum turns TX checksum offload of interface name (in the calling thread's network
// namespace) on or off (ETHTOOL_STXCSUM). A veth with TX checksum offload hands its peer
// CHECKSUM_PARTIAL packets whose UDP checksum field holds only the pseudo-header sum; XDP on the
// peer sees that field, and an incremental rewrite of it yields a wrong checksum. A real NIC never
// delivers such packets, so steerd (and the testbed) turn the offload off on veths that feed XDP.
func SetTxChecksum(name string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set tx checksum on %s: %w", name, err)
	}
	defer unix.Close(fd)
	v := value{cmd: unix.ETHTOOL_STXCSUM}
	if on {
		v.data = 1
	}
	var ifr ifreqData
	copy(ifr.name[:], name)
	ifr.data = uintptr(unsafe.Pointer(&v))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("set tx checksum on %s: %w", name, errno)
	}
	return nil
}
