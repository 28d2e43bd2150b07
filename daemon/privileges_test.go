package daemon

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckCaps(t *testing.T) {
	all := uint64(1)<<capNetAdmin | 1<<capSysAdmin | 1<<capSysPtrace
	for _, tc := range []struct {
		eff            uint64
		datapath, runc bool
		missing        string // "" = no error
	}{
		{0, false, false, ""},
		{all, true, true, ""},
		{0, true, false, "lacks CAP_NET_ADMIN, CAP_SYS_ADMIN."},
		{0, false, true, "lacks CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE."},
		{1 << capSysAdmin, true, true, "lacks CAP_NET_ADMIN, CAP_SYS_PTRACE."},
		{all &^ (1 << capSysPtrace), true, false, ""},
	} {
		err := checkCaps(tc.eff, 1000, tc.datapath, tc.runc)
		if tc.missing == "" {
			if err != nil {
				t.Errorf("eff %#x datapath %v runc %v: %v", tc.eff, tc.datapath, tc.runc, err)
			}
			continue
		}
		if !errors.Is(err, ErrPrivileges) || !strings.Contains(err.Error(), tc.missing) ||
			!strings.HasPrefix(err.Error(), "steerd needs root: ") || !strings.Contains(err.Error(), "euid 1000") {
			t.Errorf("eff %#x datapath %v runc %v: %v, want ErrPrivileges naming %q", tc.eff, tc.datapath, tc.runc, err, tc.missing)
		}
	}
	// This process: as root nothing is missing.
	if eff, err := effectiveCaps(); err != nil {
		t.Fatalf("effective caps: %v", err)
	} else if eff&all == all {
		if err := CheckPrivileges(true, true); err != nil {
			t.Fatalf("with every capability: %v", err)
		}
	}
}
