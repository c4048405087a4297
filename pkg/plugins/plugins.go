// Package plugins assembles, in one place, the registries of source plugins
// and storage backends a backstream process knows, and turns a plan's plugin
// blocks into live sources and storages.
package plugins

import (
	"context"
	"fmt"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/source"
	sourceall "github.com/backstream/backstream/pkg/source/all"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/registry"
)

// Registry holds the sources and storages; it is the plan.Checker of a process.
type Registry struct {
	Sources  *source.Registry
	Storages *registry.Registry

	shared *shared // set by Share
}

var _ plan.Checker = (*Registry)(nil)

// Default is every source plugin and storage backend backstream ships.
func Default() *Registry {
	return &Registry{Sources: sourceall.Registry(), Storages: registry.Default()}
}

// CheckSource checks a plan's source block.
func (r *Registry) CheckSource(p plan.Plugin) error {
	sp, err := r.Sources.Lookup(p.Type)
	if err != nil {
		return fmt.Errorf("%w: %v", plan.ErrUnknownType, err)
	}
	return sp.Check(p.Decode)
}

// CheckDestination checks a plan's destination block.
func (r *Registry) CheckDestination(p plan.Plugin) error {
	if _, err := r.Storages.Lookup(p.Type); err != nil {
		return fmt.Errorf("%w: %v", plan.ErrUnknownType, err)
	}
	return r.Storages.Check(p.Type, p.Decode)
}

// ExecUses lists, by field path, every part of p that runs a program or
// loads code the plan itself names: a command source's argv, a dump tool's
// binDir, exec and kubernetes hooks (a kubernetes op is a command exec'd in
// pods with this host's kubeconfig). A serve started with
// --allow-exec=false refuses a plan for which this is not empty. A source
// block that cannot be decoded counts as a use: refusing is the safe guess.
func (r *Registry) ExecUses(p *plan.Plan) []string {
	var uses []string
	src := p.Spec.Source
	if sp, err := r.Sources.Lookup(src.Type); err != nil {
		uses = append(uses, "spec.source.type ("+src.Type+": unknown)")
	} else if sp.Exec != nil {
		fields, err := sp.Exec(src.Decode)
		if err != nil {
			uses = append(uses, "spec.source."+src.Type+" (undecodable)")
		}
		for _, f := range fields {
			uses = append(uses, "spec.source."+src.Type+"."+f)
		}
	}
	for i, h := range p.Spec.Hooks {
		if h.Type == plan.HookExec || h.Type == plan.HookKubernetes {
			uses = append(uses, fmt.Sprintf("spec.hooks[%d] (%s hook %s)", i, h.Type, h.Name))
		}
	}
	if d := p.Spec.Drill; d != nil && len(d.Check.Command) > 0 {
		uses = append(uses, "spec.drill.check.command")
	}
	return uses
}

// Source builds the plan's source and returns it with its plugin description.
func (r *Registry) Source(p *plan.Plan) (source.Source, source.Plugin, error) {
	sp, err := r.Sources.Lookup(p.Spec.Source.Type)
	if err != nil {
		return nil, source.Plugin{}, fmt.Errorf("source %s: %w", p.Spec.Source.Type, err)
	}
	src, err := sp.New(p.Spec.Source.Decode)
	if err != nil {
		return nil, sp, fmt.Errorf("source %s: %w", p.Spec.Source.Type, err)
	}
	return src, sp, nil
}

// Storage opens the plan's destination named dest; the caller closes it.
// After Share, it is a handle on a storage the process shares, and
// closing it releases the handle; a capability of the storage (Tagger,
// Sweeper) is found with storage.As.
func (r *Registry) Storage(ctx context.Context, p *plan.Plan, dest string) (storage.Storage, error) {
	for _, d := range p.Spec.Destinations {
		if d.Name == dest {
			st, err := r.storageOf(ctx, d.Type, d.Config, d.Decode)
			if err != nil {
				return nil, fmt.Errorf("destination %s: %w", dest, err)
			}
			return st, nil
		}
	}
	return nil, fmt.Errorf("destination %s: not in plan %s", dest, p.Name())
}
