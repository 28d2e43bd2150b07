package quicext

import (
	"fmt"
	"testing"
	"time"
)

func TestSymmetricMove(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			tb := newTestbed(t, v6, ServerConfig{})
			tb.dial(1, ClientOptions{}, 10*time.Millisecond)
			time.Sleep(50 * time.Millisecond)
			r := tb.move(0, StrategySymmetric, 150*time.Millisecond, noAddr)
			if len(r.Ready) != 1 || !r.AllReady() {
				t.Fatalf("readiness: %+v", r)
			}
			tb.finish("symmetric")
		})
	}
}
