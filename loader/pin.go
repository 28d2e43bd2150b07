package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Names of the XDP link pins in a pin directory (bpffs forbids "." in names).
// A pinned bpf_link keeps its program attached after the process that
// created it exits (kill -9 included), until the pin is removed and the last
// file descriptor is closed, or the device goes away.
const (
	// UplinkLinkPin is the pin of xdp_steer's link on the uplink.
	UplinkLinkPin = "link-uplink"
	// podLinkPrefix + host ifindex is the pin of xdp_pod's link on a pod's host-side veth.
	podLinkPrefix = "link-pod-"
	// passLinkPrefix + host ifindex is the pin of xdp_pass's link on that pod's pod-side veth.
	passLinkPrefix = "link-pass-"
	// netnsMapName is a one-entry array holding the netns cookie of the namespace the
	// directory belongs to (SO_NETNS_COOKIE, never reused while the system runs).
	netnsMapName = "netns"
)

// PodLinkPin returns the pin name of xdp_pod's link on the host-side veth hostIfindex.
func PodLinkPin(hostIfindex int) string { return fmt.Sprintf("%s%d", podLinkPrefix, hostIfindex) }

// PassLinkPin returns the pin name of xdp_pass's link on the pod-side veth of the pod whose
// host-side veth is hostIfindex.
func PassLinkPin(hostIfindex int) string { return fmt.Sprintf("%s%d", passLinkPrefix, hostIfindex) }

// PinnedPods returns the host ifindexes that have a pinned xdp_pod link in dir (sorted by
// name; none when dir does not exist).
func PinnedPods(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list pin dir: %w", err)
	}
	var out []int
	for _, e := range ents {
		var ix int
		if _, err := fmt.Sscanf(e.Name(), podLinkPrefix+"%d", &ix); err == nil && ix > 0 {
			out = append(out, ix)
		}
	}
	return out, nil
}

// LinkIfindex returns the ifindex (in the namespace it was attached in) of the device an XDP
// link is attached to; 0 when the device is gone (deleted, or its namespace was deleted):
// the link is then defunct and its pin only keeps the program alive.
func LinkIfindex(l link.Link) (int, error) {
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("xdp link info: %w", err)
	}
	x := info.XDP()
	if x == nil {
		return 0, fmt.Errorf("xdp link info: link type %d is not XDP", info.Type)
	}
	return int(x.Ifindex), nil
}

// LoadPinnedXDP opens the XDP link pinned at path and returns it with the ifindex it is
// attached to (0: defunct). The error wraps os.ErrNotExist when nothing is pinned there.
func LoadPinnedXDP(path string) (link.Link, int, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("load pinned link %s: %w", filepath.Base(path), err)
	}
	ix, err := LinkIfindex(l)
	if err != nil {
		l.Close()
		return nil, 0, err
	}
	return l, ix, nil
}

// RemoveLink unpins l and closes it; with no other pin or file descriptor left the kernel
// detaches its program.
func RemoveLink(l link.Link) error {
	return errors.Join(l.Unpin(), l.Close())
}

// AttachPinnedXDPAt attaches prog to ifindex inside the network namespace at nsPath ("" for
// the calling thread's) through a bpf_link pinned at pinPath. When a link is pinned there
// already and attached to ifindex, it is updated to prog in place (BPF_LINK_UPDATE: no moment
// without a program, the attach mode is kept); a pinned link that is defunct or on another
// device is unpinned first. The returned link is pinned; closing it keeps the program
// attached, RemoveLink detaches it.
func AttachPinnedXDPAt(prog *ebpf.Program, nsPath string, ifindex int, pinPath string) (link.Link, error) {
	old, ix, err := LoadPinnedXDP(pinPath)
	switch {
	case err == nil && ix == ifindex:
		if uerr := old.Update(prog); uerr == nil {
			return old, nil
		} else {
			slog.Warn("loader: update pinned xdp link failed, attaching anew", "pin", pinPath, "err", uerr)
		}
		fallthrough
	case err == nil:
		if rerr := RemoveLink(old); rerr != nil {
			return nil, fmt.Errorf("remove stale link %s: %w", filepath.Base(pinPath), rerr)
		}
	case !errors.Is(err, os.ErrNotExist):
		// Not a link, or unreadable: move it out of the way.
		if rerr := os.Remove(pinPath); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
	}
	var l link.Link
	if nsPath == "" {
		l, _, err = AttachXDP(prog, ifindex)
	} else {
		l, _, err = AttachXDPAt(prog, nsPath, ifindex)
	}
	if err != nil {
		return nil, err
	}
	if err := l.Pin(pinPath); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin xdp link %s: %w", filepath.Base(pinPath), err)
	}
	return l, nil
}

// NetNSCookie returns the cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
// Linux 5.14): unlike the namespace's inode number, it is never reused while the system runs.
func NetNSCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return v, nil
}

var netnsMapSpec = ebpf.MapSpec{Name: "steerd_netns", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}

// checkOwner makes sure dir belongs to the calling thread's network namespace. PinDirFor
// names directories by the namespace's inode number, which the kernel reuses after the
// namespace is deleted: a directory whose recorded cookie differs was left by a deleted
// namespace (its links are defunct, its routing state foreign) and is removed, so Load starts
// afresh. A directory without the record (older version) is adopted. When dir exists
// afterwards, the cookie is recorded in it.
func checkOwner(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	cookie, err := NetNSCookie()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, netnsMapName)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err == nil {
		defer m.Close()
		var v []byte
		if err := m.Lookup(uint32(0), &v); err != nil {
			return fmt.Errorf("read netns record: %w", err)
		}
		if len(v) == 8 && binary.NativeEndian.Uint64(v) == cookie {
			return nil
		}
		slog.Warn("loader: pin dir left by a deleted network namespace, removing it", "dir", dir)
		return Unpin(dir)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load netns record: %w", err)
	}
	return recordOwner(dir)
}

// recordOwner pins the netns record of the calling thread's namespace in dir.
func recordOwner(dir string) error {
	cookie, err := NetNSCookie()
	if err != nil {
		return err
	}
	m, err := ebpf.NewMap(&netnsMapSpec)
	if err != nil {
		return fmt.Errorf("create netns record: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), cookie); err != nil {
		return fmt.Errorf("write netns record: %w", err)
	}
	if err := m.Pin(filepath.Join(dir, netnsMapName)); err != nil {
		return fmt.Errorf("pin netns record: %w", err)
	}
	return nil
}
