package daemon

import (
	"context"
	"fmt"

	"github.com/steerd/steerd/api"
)

// TechniqueChecker is an Engine that can tell before a migration whether it supports a
// technique on this node (RuncEngine: the CRIU features, `criu check --feature`, and what package
// migrate implements; NoEngine: none). Migrate asks it in phase validate, so an unsupported
// technique is refused before the destination is contacted or the service told anything.
type TechniqueChecker interface {
	// Supports returns nil when the engine can checkpoint with t here, else an error that says
	// why (RuncEngine: wrapping migrate.ErrTechniqueUnsupported).
	Supports(ctx context.Context, t api.Technique) error
}

// checkTechnique asks the engine, if it is a TechniqueChecker, whether t works on this node.
func (d *Daemon) checkTechnique(ctx context.Context, t api.Technique) error {
	tc, ok := d.engine.(TechniqueChecker)
	if !ok {
		return nil
	}
	if err := tc.Supports(ctx, t); err != nil {
		return fmt.Errorf("technique %s on %s: %w", t, d.cfg.Node, err)
	}
	return nil
}
