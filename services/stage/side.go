package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
)

// Scrubs and drills asked for by hand (the CLI, the API): not runs of the
// runs bucket; the request's event id is the scrub's or drill's id, which
// every result event carries as its runid.

// ErrNoDrill means a drill was asked of a plan without spec.drill.
var ErrNoDrill = errors.New("the plan has no spec.drill (docs/drills.md)")

// ErrUnknownDestination means a request named a destination the plan
// does not have.
var ErrUnknownDestination = errors.New("not a destination of the plan")

// RequestDrill publishes drill.requested for planName, which must exist,
// pass validation and have spec.drill, and returns the drill's id.
func RequestDrill(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName string, req events.DrillRequestedData) (string, error) {
	p, err := plans.Get(ctx, planName)
	if err != nil {
		return "", err
	}
	return publishDrill(ctx, b, p, req)
}

// RequestDrill is RequestDrill in a process with d's policy: when d
// refuses exec, a plan whose drill would run a program is refused here.
func (d *Deps) RequestDrill(ctx context.Context, planName string, req events.DrillRequestedData) (string, error) {
	p, err := d.Plans.Get(ctx, planName)
	if err != nil {
		return "", err
	}
	if err := d.CheckExec(p); err != nil {
		return "", err
	}
	return publishDrill(ctx, d.Bus, p, req)
}

// RequestScrub publishes scrub.requested for planName, which must exist
// and pass validation; a destination must be one of the plan's.
func RequestScrub(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName string, req events.ScrubRequestedData) (string, error) {
	p, err := plans.Get(ctx, planName)
	if err != nil {
		return "", err
	}
	return publishScrub(ctx, b, p, req)
}

// RequestScrub is RequestScrub for the API (a scrub runs no program).
func (d *Deps) RequestScrub(ctx context.Context, planName string, req events.ScrubRequestedData) (string, error) {
	return RequestScrub(ctx, d.Bus, d.Plans, planName, req)
}

func publishDrill(ctx context.Context, b *bus.Bus, p *plan.Plan, req events.DrillRequestedData) (string, error) {
	if p.Spec.Drill == nil {
		return "", fmt.Errorf("drill %s: %w", p.Name(), ErrNoDrill)
	}
	return publishSide(ctx, b, p.Name(), "drill", req)
}

func publishScrub(ctx context.Context, b *bus.Bus, p *plan.Plan, req events.ScrubRequestedData) (string, error) {
	if req.Destination != "" {
		var names []string
		for _, d := range p.Spec.Destinations {
			if d.Name == req.Destination {
				return publishSide(ctx, b, p.Name(), "scrub", req)
			}
			names = append(names, d.Name)
		}
		return "", fmt.Errorf("destination %q: %w %s (%s)", req.Destination, ErrUnknownDestination, p.Name(), strings.Join(names, ", "))
	}
	return publishSide(ctx, b, p.Name(), "scrub", req)
}

func publishSide(ctx context.Context, b *bus.Bus, planName, what string, req events.Payload) (string, error) {
	id := events.NewID()
	m := b.Meta(planName, id, "")
	m.ID = id
	e, err := events.New(m, req)
	if err != nil {
		return "", err
	}
	if err := b.Publish(ctx, e); err != nil {
		return "", fmt.Errorf("%s %s: %w", what, planName, err)
	}
	return id, nil
}
