package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/steerd/steerd/datapath"
)

// TestMTUError: the error names the peer, the MTU the path needs and the largest service payload
// that fits; that payload passes the datapath's own check at the uplink MTU, one byte more fails.
func TestMTUError(t *testing.T) {
	for _, tc := range []struct {
		peer    string
		mtu     int
		payload int
		need    int
		fits    int
	}{
		{"198.18.21.2", 1500, 0, 1528, 1424},
		{"2001:2:0:21::2", 1500, 0, 1548, 1404},
		{"198.18.21.2", 1400, 1300, 1376, 1324},
		{"198.18.21.2", 1250, 0, 1528, 1174}, // below QUIC's 1200: only the MTU can change
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.peer, tc.mtu), func(t *testing.T) {
			cfg := &Config{Uplink: "eth0", MaxUDPPayload: tc.payload}
			p := PeerDef{Name: "n1", Address: netip.MustParseAddr(tc.peer)}
			err := mtuError(cfg, p, tc.mtu)
			msg := err.Error()
			if !errors.Is(err, datapath.ErrMTU) {
				t.Fatalf("%v does not wrap ErrMTU", err)
			}
			for _, want := range []string{"add peer n1 (" + tc.peer + ")", fmt.Sprintf("MTU %d", tc.mtu),
				fmt.Sprintf("needs %d", tc.need), fmt.Sprintf("to %d", tc.need)} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q: %s", want, msg)
				}
			}
			if tc.fits < 1200 {
				if !strings.Contains(msg, "no option") || strings.Contains(msg, "InitialPacketSize") {
					t.Errorf("payload %d < 1200 offered as a fix: %s", tc.fits, msg)
				}
				return
			}
			if !strings.Contains(msg, fmt.Sprintf("InitialPacketSize = %d", tc.fits)) || !strings.Contains(msg, fmt.Sprintf("max_udp_payload %d", tc.fits)) {
				t.Errorf("error lacks the payload cap %d: %s", tc.fits, msg)
			}
			if err := datapath.CheckMTU(tc.mtu, tc.fits, p.Address); err != nil {
				t.Errorf("suggested payload %d does not fit: %v", tc.fits, err)
			}
			if err := datapath.CheckMTU(tc.mtu, tc.fits+1, p.Address); err == nil {
				t.Errorf("suggested payload %d is not the largest that fits", tc.fits)
			}
			if err := datapath.CheckMTU(tc.need, max(tc.payload, datapath.DefaultMaxUDPPayload), p.Address); tc.payload == 0 && err != nil {
				t.Errorf("the MTU named (%d) does not fit: %v", tc.need, err)
			}
		})
	}
}
