package datapath

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/steerd/steerd/connid"
	"github.com/steerd/steerd/internal/nsutil"
)

// initialLike is the routing policy on top of connid.RouteInfo: v1/v2
// Initial and 0-RTT, and long headers of unknown versions (not 0), may go to
// the service's default instance when their DCID names no known instance.
func initialLike(payload []byte, kind connid.PacketKind) bool {
	switch kind {
	case connid.KindInitial:
		return true
	case connid.KindOtherLong:
		v := binary.BigEndian.Uint32(payload[1:5])
		bits := payload[0] >> 4 & 3
		return (v == connid.Version1 && bits == 1) || (v == connid.Version2 && bits == 2) ||
			(v != connid.Version1 && v != connid.Version2)
	}
	return false
}

// outcome is what a packet to the v4 service became.
type outcome struct {
	verdict  uint32
	instance uint64 // 0: none
}

// reference predicts the outcome with the Go parser (connid.RouteInfo).
func reference(payload []byte, codec *connid.Codec) outcome {
	id, kind, err := connid.RouteInfo(payload, codec)
	if kind == connid.KindInvalid {
		return outcome{verdict: xdpDrop}
	}
	inst := uint64(0)
	if err == nil {
		switch uint64(id) {
		case instLocal, instNoNeigh, instRemote4, instRemote6:
			inst = uint64(id)
		}
	}
	if inst == 0 && initialLike(payload, kind) {
		inst = instLocal // the service's default
	}
	switch inst {
	case 0:
		return outcome{xdpPass, 0}
	case instNoNeigh:
		return outcome{xdpPass, inst}
	case instLocal:
		return outcome{xdpRedirect, inst}
	default:
		return outcome{xdpTX, inst}
	}
}

// observe derives the outcome from the XDP verdict and output packet.
func observe(verdict uint32, in, out []byte) outcome {
	o := outcome{verdict: verdict}
	switch {
	case verdict == xdpTX:
		switch netip.AddrFrom4([4]byte(out[14+16 : 14+20])) {
		case peer1:
			o.instance = instRemote4
		}
		if out[12] == 0x86 {
			o.instance = instRemote6
		}
	case verdict == xdpRedirect || verdict == xdpPass:
		if len(out) >= 34 && out[12] == 0x08 && out[13] == 0 {
			switch netip.AddrFrom4([4]byte(out[14+16 : 14+20])) {
			case pod4:
				o.instance = instLocal
			case netip.MustParseAddr("198.19.0.4"):
				o.instance = instNoNeigh
			}
		}
	}
	return o
}

// randomPayload makes a QUIC-ish UDP payload: valid CIDs of known and
// unknown instances in short and long headers of several versions, then
// random mutations and truncations.
func randomPayload(r *rand.Rand) []byte {
	insts := []uint16{instLocal, instNoNeigh, instRemote4, instRemote6, 0x7777, uint16(r.Uint32())}
	inst := insts[r.IntN(len(insts))]
	nonce := make([]byte, 5)
	for i := range nonce {
		nonce[i] = byte(r.Uint32())
	}
	c := cid(uint8(r.IntN(8)*(r.IntN(4)/3)), inst, nonce...)
	if r.IntN(5) == 0 { // other CID lengths
		c = make([]byte, r.IntN(22))
		for i := range c {
			c[i] = byte(r.Uint32())
		}
	}
	var p []byte
	if r.IntN(2) == 0 {
		p = shortHdr(c, make([]byte, r.IntN(30))...)
	} else {
		versions := []uint32{connid.Version1, connid.Version2, 0, 0xff00001d, r.Uint32()}
		p = longHdr(versions[r.IntN(len(versions))], uint8(r.IntN(4)), c, []byte{1, 2, 3, 4}, make([]byte, r.IntN(40))...)
		if r.IntN(10) == 0 {
			p[5] = byte(r.IntN(256)) // DCID length field
		}
	}
	for n := r.IntN(3); n > 0 && len(p) > 0; n-- {
		p[r.IntN(min(len(p), 12))] ^= 1 << r.IntN(8)
	}
	if r.IntN(6) == 0 {
		p = p[:r.IntN(len(p)+1)]
	}
	return p
}

// TestDifferentialRouteInfo checks that xdp_steer and connid.RouteInfo (plus
// the documented default-instance policy) agree on instance and verdict for
// 100,000 random and mutated packets.
func TestDifferentialRouteInfo(t *testing.T) {
	e := newEnv(t)
	codec, err := connid.NewCodec(connid.DefaultConfig(2, 5))
	if err != nil {
		t.Fatal(err)
	}
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	r := rand.New(rand.NewPCG(1, 2))
	prog := e.dp.Objects().Steer
	kinds := map[outcome]int{}
	mismatches := 0
	err = nsutil.Do(e.ns, func() error {
		out := make([]byte, 512)
		for i := 0; i < n; i++ {
			payload := randomPayload(r)
			pkt := fromClient(client4, node4, svcPort, payload)
			opts := ebpf.RunOptions{Data: pkt, DataOut: out[:cap(out)],
				Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(e.upIx)}}
			v, err := prog.Run(&opts)
			if err != nil {
				return err
			}
			got, want := observe(v, pkt, opts.DataOut), reference(payload, codec)
			kinds[want]++
			if got != want {
				mismatches++
				if mismatches <= 10 {
					t.Errorf("payload %x: xdp %+v, RouteInfo %+v", payload, got, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if mismatches > 0 {
		t.Fatalf("%d of %d packets disagree", mismatches, n)
	}
	// The generator must exercise every outcome.
	for _, o := range []outcome{{xdpDrop, 0}, {xdpPass, 0}, {xdpPass, instNoNeigh}, {xdpRedirect, instLocal}, {xdpTX, instRemote4}, {xdpTX, instRemote6}} {
		if kinds[o] < n/200 {
			t.Errorf("outcome %+v seen %d times only", o, kinds[o])
		}
	}
	t.Logf("outcomes: %v", kinds)
}

// FuzzSteerVsRouteInfo is the differential test as a fuzz target: any UDP
// payload to the service must get the outcome connid.RouteInfo predicts.
// Run with: go test -fuzz FuzzSteerVsRouteInfo ./datapath/ (root).
func FuzzSteerVsRouteInfo(f *testing.F) {
	for _, s := range [][]byte{
		quicPayload, shortHdr(cid(0, instRemote6)), longHdr(1, 0, cid(0, instRemote4), nil),
		longHdr(0x6b3343cf, 2, []byte{1, 2, 3}, nil), {0xc0, 0, 0, 0, 1, 21}, {}, {0x40},
	} {
		f.Add(s)
	}
	e := newEnv(f)
	codec, err := connid.NewCodec(connid.DefaultConfig(2, 5))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > 1400 {
			return
		}
		pkt := fromClient(client4, node4, svcPort, payload)
		v, out := e.run(t, e.dp.Objects().Steer, e.upIx, pkt)
		if got, want := observe(v, pkt, out), reference(payload, codec); got != want {
			t.Fatalf("payload %x: xdp %+v, RouteInfo %+v", payload, got, want)
		}
	})
}
