package quicext

import (
	"fmt"
	"strings"
)

// Strategy is a set of server-migration strategies, one bit each, as negotiated on the wire
// (the MsgNegotiate bitmask, docs/quicext-wire.md). A single bit names one strategy.
type Strategy uint64

// Strategy bits. Explicit, Pool, Symmetric and Synchronized Symmetric keep the bits of the
// frame-level design; ExplicitReactive is this extension's bit for the reactive variant of
// Explicit (the client probes the announced address only when the server goes silent).
const (
	// StrategyExplicit (0x1): the server announces its new address before the freeze
	// (SERVER_MIGRATION with an address); the client probes it at once.
	StrategyExplicit Strategy = 0x1
	// StrategyPool (0x2): the server sends candidate addresses (POOL_MIGRATION_ADDRESS) after the
	// handshake; on silence the client probes them in turn.
	StrategyPool Strategy = 0x2
	// StrategySymmetric (0x4): the server sends SERVER_MIGRATED(new address) after restore.
	StrategySymmetric Strategy = 0x4
	// StrategySyncSymmetric (0x8): as Symmetric, plus an empty SERVER_MIGRATION before the
	// freeze so that the client holds its sends until SERVER_MIGRATED.
	StrategySyncSymmetric Strategy = 0x8
	// StrategyExplicitReactive (0x10): as Explicit, but the client probes the announced address
	// only when the server goes silent.
	StrategyExplicitReactive Strategy = 0x10

	// AllStrategies is every strategy this package implements.
	AllStrategies = StrategyExplicit | StrategyPool | StrategySymmetric | StrategySyncSymmetric | StrategyExplicitReactive
)

// strategyNames maps the control-endpoint names to single strategies.
var strategyNames = []struct {
	name string
	s    Strategy
}{
	{"explicit-proactive", StrategyExplicit},
	{"pool", StrategyPool},
	{"symmetric", StrategySymmetric},
	{"sync-symmetric", StrategySyncSymmetric},
	{"explicit-reactive", StrategyExplicitReactive},
}

// ParseStrategy parses a control-endpoint strategy name: symmetric, sync-symmetric,
// explicit-proactive, explicit-reactive or pool ("explicit" is accepted for explicit-proactive).
func ParseStrategy(name string) (Strategy, error) {
	if name == "explicit" {
		return StrategyExplicit, nil
	}
	for _, n := range strategyNames {
		if n.name == name {
			return n.s, nil
		}
	}
	return 0, fmt.Errorf("parse strategy %q: %w", name, ErrUnknownStrategy)
}

// String returns the control-endpoint name of a single strategy, or the names joined with "|".
func (s Strategy) String() string {
	if s == 0 {
		return "none"
	}
	var parts []string
	rest := s
	for _, n := range strategyNames {
		if s&n.s != 0 {
			parts = append(parts, n.name)
			rest &^= n.s
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint64(rest)))
	}
	return strings.Join(parts, "|")
}

// MarshalText implements encoding.TextMarshaler (JSON uses the names).
func (s Strategy) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: names joined with "|", or "none".
func (s *Strategy) UnmarshalText(b []byte) error {
	*s = 0
	if string(b) == "none" || len(b) == 0 {
		return nil
	}
	for _, part := range strings.Split(string(b), "|") {
		one, err := ParseStrategy(part)
		if err != nil {
			return err
		}
		*s |= one
	}
	return nil
}

// Has reports whether every bit of o is in s.
func (s Strategy) Has(o Strategy) bool { return o != 0 && s&o == o }

// isSingle reports whether s names exactly one strategy.
func (s Strategy) isSingle() bool { return s != 0 && s&(s-1) == 0 }
