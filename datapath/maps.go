package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ErrNotFound is returned when a map has no entry for a key.
var ErrNotFound = errors.New("entry not found")

// Map is a typed wrapper around a BPF hash map whose key and value types
// mirror C structs (cilium pkg/maps style).
type Map[K comparable, V any] struct {
	m    *ebpf.Map
	name string
}

// NewMap wraps m; name is the C map name, used in errors.
func NewMap[K comparable, V any](m *ebpf.Map, name string) Map[K, V] {
	return Map[K, V]{m: m, name: name}
}

// Put creates or replaces the entry for k.
func (m Map[K, V]) Put(k K, v V) error {
	if err := m.m.Put(&k, &v); err != nil {
		return fmt.Errorf("update %s: %w", m.name, err)
	}
	return nil
}

// Lookup returns the entry for k, or an error wrapping ErrNotFound.
func (m Map[K, V]) Lookup(k K) (V, error) {
	var v V
	if err := m.m.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return v, fmt.Errorf("lookup %s: %w", m.name, ErrNotFound)
		}
		return v, fmt.Errorf("lookup %s: %w", m.name, err)
	}
	return v, nil
}

// Delete removes the entry for k; an error wraps ErrNotFound if none existed.
func (m Map[K, V]) Delete(k K) error {
	if err := m.m.Delete(&k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m.name, ErrNotFound)
		}
		return fmt.Errorf("delete from %s: %w", m.name, err)
	}
	return nil
}

// Entries returns a snapshot of all entries.
func (m Map[K, V]) Entries() (map[K]V, error) {
	out := map[K]V{}
	var (
		k K
		v V
	)
	it := m.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", m.name, err)
	}
	return out, nil
}

// Counters wraps the per-CPU counters array (enum steer_reason -> u64).
type Counters struct{ m *ebpf.Map }

// Read returns the counters summed over all CPUs.
func (c Counters) Read() (map[Reason]uint64, error) {
	out := make(map[Reason]uint64, reasonMax)
	for _, r := range Reasons() {
		var per []uint64
		k := uint32(r)
		if err := c.m.Lookup(&k, &per); err != nil {
			return nil, fmt.Errorf("lookup counters[%s]: %w", r, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[r] = sum
	}
	return out, nil
}

// Maps are the typed datapath maps (bpf/maps.h).
type Maps struct {
	Services  Map[ServiceKey, ServiceValue]
	Instances Map[uint64, InstanceValue]
	Clients   Map[ClientKey, ClientValue]
	Peers     Map[uint32, PeerValue]
	PeerAddrs Map[AddrKey, uint32]
	Egress    Map[EgressKey, EgressValue]
	Fenced    Map[uint32, uint32] // host veth ifindex -> 1 (Datapath.SetFenced)
	Counters  Counters
}
