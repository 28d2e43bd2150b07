package dpbench

import (
	"errors"
	"testing"
)

// TestPerPacketCost measures a small table once and checks that the numbers are plausible: every
// program ran, xdp_steer costs more than the bare parser, nothing is zero.
func TestPerPacketCost(t *testing.T) {
	c, err := PerPacketCost(1000, 2000)
	if errors.Is(err, ErrNotReady) {
		t.Skipf("skip: missing capability: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v local/bare %.2f forward/bare %.2f", c, c.LocalRatio(), c.ForwardRatio())
	if c.BareMean <= 0 || c.LocalMean <= 0 || c.ForwardMean <= 0 {
		t.Errorf("zero cost: %+v", c)
	}
	if c.LocalMean <= c.BareMean || c.ForwardMean <= c.BareMean {
		t.Errorf("xdp_steer not slower than the bare parser: %+v", c)
	}
	if c.Packets != 4096 || c.Runs != 2000 {
		t.Errorf("packets %d runs %d", c.Packets, c.Runs)
	}
}
