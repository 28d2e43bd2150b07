package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/steerd/steerd/api"
)

// ErrNoEngine is returned by NoEngine: the node has no container engine.
var ErrNoEngine = errors.New("no container engine on this node")

// NoEngine is the Engine of a node without containers (Config.Runtime "none", or until the runc +
// CRIU engine of package migrate is wired in): every operation fails with ErrNoEngine, except
// Remove and Resume of containers it never had.
type NoEngine struct{}

// Run implements Engine.
func (NoEngine) Run(_ context.Context, s ContainerSpec) error {
	return fmt.Errorf("run %s: %w", s.Name, ErrNoEngine)
}

// Checkpoint implements Engine.
func (NoEngine) Checkpoint(_ context.Context, r CheckpointRequest) (EngineReport, error) {
	return EngineReport{}, fmt.Errorf("checkpoint %s: %w", r.Service, ErrNoEngine)
}

// Resume implements Engine: nothing was stopped.
func (NoEngine) Resume(context.Context, string) error { return nil }

// Complete implements Engine.
func (NoEngine) Complete(_ context.Context, s string) error {
	return fmt.Errorf("complete %s: %w", s, ErrNoEngine)
}

// Restore implements Engine.
func (NoEngine) Restore(_ context.Context, r RestoreRequest) (EngineReport, error) {
	return EngineReport{}, fmt.Errorf("restore %s: %w", r.Service, ErrNoEngine)
}

// Supports implements TechniqueChecker: no technique works without an engine.
func (NoEngine) Supports(_ context.Context, t api.Technique) error {
	return fmt.Errorf("migrate with %s: %w", t, ErrNoEngine)
}

// Remove implements Engine: there is nothing to remove.
func (NoEngine) Remove(context.Context, string) error { return nil }
