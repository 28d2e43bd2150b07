package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// ErrPrivileges is returned by CheckPrivileges when steerd lacks the capabilities its datapath or
// container engine needs.
var ErrPrivileges = errors.New("steerd needs root")

// Linux capability numbers (linux/capability.h).
const (
	capNetAdmin  = 12
	capSysPtrace = 19
	capSysAdmin  = 21
)

var capNames = map[int]string{capNetAdmin: "CAP_NET_ADMIN", capSysPtrace: "CAP_SYS_PTRACE", capSysAdmin: "CAP_SYS_ADMIN"}

// neededCaps returns the capabilities a daemon needs, with the reason: the XDP datapath (BPF
// programs and maps, XDP attach: CAP_SYS_ADMIN covers CAP_BPF; netlink: CAP_NET_ADMIN) and the
// runc engine (pod network namespaces and mounts: CAP_SYS_ADMIN; veths and addresses:
// CAP_NET_ADMIN; CRIU dumps other processes: CAP_SYS_PTRACE, CAP_SYS_ADMIN covers
// CAP_CHECKPOINT_RESTORE).
func neededCaps(datapath, runc bool) (caps []int, why []string) {
	set := map[int]bool{}
	if datapath {
		set[capNetAdmin], set[capSysAdmin] = true, true
		why = append(why, "the XDP datapath (BPF maps and programs, XDP attach)")
	}
	if runc {
		set[capNetAdmin], set[capSysAdmin], set[capSysPtrace] = true, true, true
		why = append(why, "pod network namespaces and runc/CRIU")
	}
	for _, c := range []int{capNetAdmin, capSysAdmin, capSysPtrace} {
		if set[c] {
			caps = append(caps, c)
		}
	}
	return caps, why
}

// effectiveCaps reads the effective capability set of this process (CapEff in /proc/self/status,
// proc(5)).
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("read capabilities: no CapEff in /proc/self/status")
}

// checkCaps returns an error wrapping ErrPrivileges that names what is missing from eff, the
// effective capability set, for a daemon with the given parts; nil when nothing is missing.
func checkCaps(eff uint64, euid int, datapath, runc bool) error {
	need, why := neededCaps(datapath, runc)
	var missing, all []string
	for _, c := range need {
		all = append(all, capNames[c])
		if eff&(1<<c) == 0 {
			missing = append(missing, capNames[c])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s need %s; this process (euid %d) lacks %s. Run steerd as root (sudo), or for a control plane without datapath and containers use --no-datapath --runtime none",
		ErrPrivileges, strings.Join(why, " and "), strings.Join(all, ", "), euid, strings.Join(missing, ", "))
}

// CheckPrivileges checks at start that this process has the capabilities the configured datapath
// (datapath: the XDP datapath will be opened) and engine (runc: the runc engine will run
// containers) need, so that steerd fails with one clear message instead of "operation not
// permitted" from the first map, mount or namespace it creates. The error wraps ErrPrivileges.
// When /proc/self/status cannot be read the check is skipped.
func CheckPrivileges(datapath, runc bool) error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil
	}
	return checkCaps(eff, os.Geteuid(), datapath, runc)
}

// permissionHint explains a permission error on steerd's directories (state_dir, the control
// socket's directory): the defaults under /var/lib/steerd and /run/steerd belong to root.
func permissionHint(err error) string {
	if !errors.Is(err, fs.ErrPermission) {
		return ""
	}
	return fmt.Sprintf(" (%v: run steerd as root, or give --state-dir and --socket in directories this user (euid %d) may write)", ErrPrivileges, os.Geteuid())
}
