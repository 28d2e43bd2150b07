package datapath

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/steerd/steerd/loader"
)

// TestReasonsMatchC checks that the Go Reason enum mirrors enum steer_reason
// in bpf/consts.h (names and values, in both directions), through the BTF
// of the committed object (tailscale derp/xdp pattern).
func TestReasonsMatchC(t *testing.T) {
	spec, err := loader.SteerSpec()
	if err != nil {
		t.Fatal(err)
	}
	var e *btf.Enum
	if err := spec.Types.TypeByName("steer_reason", &e); err != nil {
		t.Fatalf("enum steer_reason not in BTF: %v", err)
	}
	c := map[string]uint64{}
	for _, v := range e.Values {
		c[v.Name] = v.Value
	}
	if got, want := uint64(reasonMax), c["R_MAX"]; got != want {
		t.Errorf("Go has %d reasons, C R_MAX = %d", got, want)
	}
	for _, r := range Reasons() {
		v, ok := c[reasonNames[r]]
		if !ok {
			t.Errorf("Go reason %s (%s) missing in C", r, reasonNames[r])
		} else if v != uint64(r) {
			t.Errorf("%s: Go %d, C %d", reasonNames[r], r, v)
		}
	}
	if len(c) != int(reasonMax)+1 {
		t.Errorf("C has %d enumerators, Go %d (+R_MAX)", len(c), reasonMax)
	}
	if m := spec.Maps["counters"]; m == nil || m.MaxEntries != uint32(reasonMax) {
		t.Errorf("counters map max_entries = %v, want %d", m, reasonMax)
	}
}

// TestStructsMatchC checks size and field offsets of every Go mirror
// against the C struct in BTF.
func TestStructsMatchC(t *testing.T) {
	spec, err := loader.SteerSpec()
	if err != nil {
		t.Fatal(err)
	}
	for cname, v := range map[string]any{
		"svc_key": ServiceKey{}, "svc_val": ServiceValue{}, "instance_val": InstanceValue{},
		"client_key": ClientKey{}, "client_val": ClientValue{}, "peer_val": PeerValue{},
		"addr_key": AddrKey{}, "egress_key": EgressKey{}, "egress_val": EgressValue{},
	} {
		var s *btf.Struct
		if err := spec.Types.TypeByName(cname, &s); err != nil {
			t.Errorf("struct %s not in BTF: %v", cname, err)
			continue
		}
		rt := reflect.TypeOf(v)
		if uint32(rt.Size()) != s.Size {
			t.Errorf("%s: Go %s is %d bytes, C %d", cname, rt.Name(), rt.Size(), s.Size)
		}
		if rt.NumField() != len(s.Members) {
			t.Errorf("%s: Go has %d fields, C %d", cname, rt.NumField(), len(s.Members))
			continue
		}
		for i, m := range s.Members {
			f := rt.Field(i)
			if uint32(f.Offset) != m.Offset.Bytes() {
				t.Errorf("%s.%s at %d, Go %s at %d", cname, m.Name, m.Offset.Bytes(), f.Name, f.Offset)
			}
			sz, err := btf.Sizeof(m.Type)
			if err != nil {
				t.Fatal(err)
			}
			if int(f.Type.Size()) != sz {
				t.Errorf("%s.%s is %d bytes, Go %s %d", cname, m.Name, sz, f.Name, f.Type.Size())
			}
		}
	}
	// Map key/value sizes must match the mirrors too.
	for name, kv := range map[string][2]uintptr{
		"services":   {reflect.TypeOf(ServiceKey{}).Size(), reflect.TypeOf(ServiceValue{}).Size()},
		"instances":  {8, reflect.TypeOf(InstanceValue{}).Size()},
		"clients":    {reflect.TypeOf(ClientKey{}).Size(), reflect.TypeOf(ClientValue{}).Size()},
		"peers":      {4, reflect.TypeOf(PeerValue{}).Size()},
		"peer_addrs": {reflect.TypeOf(AddrKey{}).Size(), 4},
		"egress":     {reflect.TypeOf(EgressKey{}).Size(), reflect.TypeOf(EgressValue{}).Size()},
	} {
		m := spec.Maps[name]
		if m == nil || uintptr(m.KeySize) != kv[0] || uintptr(m.ValueSize) != kv[1] {
			t.Errorf("map %s: spec %+v, Go key/value sizes %v", name, m, kv)
		}
	}
}

func TestReasonString(t *testing.T) {
	if got := ReasonPassNotService.String(); got != "pass_not_service" {
		t.Errorf("String = %q", got)
	}
	if got := Reason(999).String(); got != "Reason(999)" {
		t.Errorf("String = %q", got)
	}
}

func TestCheckMTU(t *testing.T) {
	v4, v6 := peer1, peer2
	cases := []struct {
		mtu, payload int
		v6, ok       bool
	}{
		{1600, 1452, false, true}, {1600, 1452, true, true}, {1500, 1452, false, false},
		{1500, 1452, true, false}, {1528, 1452, false, true}, {1527, 1452, false, false},
		{1548, 1452, true, true}, {1547, 1452, true, false},
	}
	for _, c := range cases {
		p := v4
		if c.v6 {
			p = v6
		}
		err := CheckMTU(c.mtu, c.payload, p)
		if (err == nil) != c.ok {
			t.Errorf("CheckMTU(%d, %d, %s) = %v, want ok=%v", c.mtu, c.payload, p, err, c.ok)
		}
	}
}
