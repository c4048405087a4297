// Package planstore keeps plans in the JetStream KV bucket of plans. Only a
// plan that passed validation is ever written through it, and every plan
// read through it is validated again: whoever can write the bucket directly
// skips Put, so a stored plan is trusted only once it passes the same checks
// (defaults, Validate with the plugin checker, its key matching its name).
// Services read plans from here and never from the bucket itself.
//
// Every write is a new KV revision and the bucket keeps the last
// bus.PlansHistory revisions of each plan, also after a delete: a run
// records the revision it started with (GetCurrent) and every stage reads
// exactly that one (GetRevision), so applying or deleting the plan mid-run
// changes nothing of a running run.
package planstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound means no plan has that name.
	ErrNotFound = errors.New("plan not found")
	// ErrInvalidPlan means a stored plan does not decode or does not pass
	// validation: it was written to the bucket without Put. The error is an
	// *InvalidError naming the plan and every problem.
	ErrInvalidPlan = errors.New("invalid stored plan")
	// ErrRevisionGone means a plan revision is not in the bucket (any
	// more): the plan was applied so often since that the revision left the
	// bucket's history (bus.PlansHistory revisions per plan), it was
	// purged, or the revision never was one of that plan.
	ErrRevisionGone = errors.New("plan revision no longer stored")
)

// InvalidError is a stored plan that cannot be trusted.
type InvalidError struct {
	// Name is the plan's key in the bucket.
	Name string
	// Revision is the KV revision read by GetRevision, 0 otherwise: a run
	// pinned to it stays refused after the plan is fixed.
	Revision uint64
	// Problems are "path: message", every one found.
	Problems []string
}

// Error names the plan and every problem on one line: it becomes a dead
// letter's reason and a run's error.
func (e *InvalidError) Error() string {
	name := e.Name
	if e.Revision != 0 {
		name += fmt.Sprintf(" revision %d", e.Revision)
	}
	return fmt.Sprintf("%s: plan %s (not written by `backstream plan apply`?): %s",
		ErrInvalidPlan, name, strings.Join(e.Problems, "; "))
}

// Is makes errors.Is(err, ErrInvalidPlan) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalidPlan }

// Store reads and writes plans.
type Store struct {
	kv      jetstream.KeyValue
	checker plan.Checker
}

// New wraps the plans bucket; checker validates plugin blocks on Put.
func New(kv jetstream.KeyValue, checker plan.Checker) *Store {
	return &Store{kv: kv, checker: checker}
}

// Prepare fills defaults and validates p, returning every problem.
func (s *Store) Prepare(p *plan.Plan) error {
	p.Defaults()
	return p.Validate(s.checker)
}

// Stored is what Put did.
type Stored struct {
	// Revision is the plan's KV revision after Put: the one it wrote, or
	// the current one when the plan was unchanged.
	Revision uint64
	// Changed reports whether Put wrote a new revision.
	Changed bool
}

// Put validates p and stores it. A refused plan stores nothing. A plan
// equal to the stored one is not written again, so applying the same file
// twice neither makes a revision nor pushes an older one out of history.
func (s *Store) Put(ctx context.Context, p *plan.Plan) (Stored, error) {
	if err := s.Prepare(p); err != nil {
		return Stored{}, err
	}
	data, err := p.Marshal()
	if err != nil {
		return Stored{}, fmt.Errorf("encode plan %s: %w", p.Name(), err)
	}
	if cur, err := s.kv.Get(ctx, p.Name()); err == nil && string(cur.Value()) == string(data) {
		return Stored{Revision: cur.Revision()}, nil
	}
	rev, err := s.kv.Put(ctx, p.Name(), data)
	if err != nil {
		return Stored{}, fmt.Errorf("store plan %s: %w", p.Name(), err)
	}
	return Stored{Revision: rev, Changed: true}, nil
}

// Get returns the plan name, with defaults filled, after validating it
// again: a plan that does not pass is an *InvalidError (ErrInvalidPlan) and
// is never returned, so nothing of it can run. A deleted plan is
// ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (*plan.Plan, error) {
	p, _, err := s.GetCurrent(ctx, name)
	return p, err
}

// GetCurrent is Get that also returns the plan's current KV revision: the
// revision a new run records, so that its stages read the plan it started
// with through GetRevision.
func (s *Store) GetCurrent(ctx context.Context, name string) (*plan.Plan, uint64, error) {
	e, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get plan %s: %w", name, err)
	}
	p, err := s.trust(name, e.Value())
	if err != nil {
		return nil, 0, err
	}
	return p, e.Revision(), nil
}

// GetRevision returns revision rev of the plan name, validated again like
// Get (an *InvalidError names the revision). It still works after the plan
// was changed or deleted, for as long as the bucket's history holds the
// revision; after that, and for a revision that is not one of this plan
// (0, another plan's, a delete), it is ErrRevisionGone.
func (s *Store) GetRevision(ctx context.Context, name string, rev uint64) (*plan.Plan, error) {
	// The KV reads revision 0 as "the latest", which would hand a run
	// whatever was applied since it started.
	if rev == 0 {
		return nil, fmt.Errorf("plan %s revision 0: %w", name, ErrRevisionGone)
	}
	// jetstream maps a missing sequence, one of another key and a delete
	// marker all to ErrKeyNotFound.
	e, err := s.kv.GetRevision(ctx, name, rev)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("plan %s revision %d: %w (pushed out of the bucket's history of %d revisions per plan by later applies and deletes, or never a revision of this plan)",
			name, rev, ErrRevisionGone, bus.PlansHistory)
	}
	if err != nil {
		return nil, fmt.Errorf("get plan %s revision %d: %w", name, rev, err)
	}
	p, err := s.trust(name, e.Value())
	var ie *InvalidError
	if errors.As(err, &ie) {
		ie.Revision = rev
	}
	return p, err
}

// trust decodes and validates what is stored under key name.
func (s *Store) trust(name string, data []byte) (*plan.Plan, error) {
	p, err := plan.FromJSON(data)
	if err != nil {
		return nil, &InvalidError{Name: name, Problems: []string{err.Error()}}
	}
	var problems []string
	if err := s.Prepare(p); err != nil {
		var ve *plan.ValidationError
		if !errors.As(err, &ve) {
			return nil, fmt.Errorf("validate plan %s: %w", name, err)
		}
		for _, pr := range ve.Problems {
			problems = append(problems, pr.String())
		}
	}
	// Stages look a plan up by the event's subject: a plan stored under
	// another plan's key would run in that plan's name.
	if p.Name() != name {
		problems = append(problems, fmt.Sprintf("metadata.name: %q, but stored under key %q", p.Name(), name))
	}
	if len(problems) > 0 {
		return nil, &InvalidError{Name: name, Problems: problems}
	}
	return p, nil
}

// List returns every stored plan that passes validation, sorted by name, and
// in bad, by name, each one that does not (an *InvalidError). One raw write
// never hides the other plans from the schedule, the watchdog or a listing;
// err is for the bucket itself.
func (s *Store) List(ctx context.Context) (good []*plan.Plan, bad map[string]error, err error) {
	names, err := bus.ListKeys(ctx, s.kv)
	if err != nil {
		return nil, nil, fmt.Errorf("list plans: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		p, err := s.Get(ctx, n)
		switch {
		case errors.Is(err, ErrNotFound):
			continue
		case errors.Is(err, ErrInvalidPlan):
			if bad == nil {
				bad = map[string]error{}
			}
			bad[n] = err
			continue
		case err != nil:
			return nil, nil, err
		}
		good = append(good, p)
	}
	return good, bad, nil
}

// Delete removes the plan name; ErrNotFound when there is none. It writes
// a delete marker and keeps the plan's earlier revisions (a KV Delete, not a
// Purge): runs that started with the plan go on reading their revision.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.kv.Get(ctx, name); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return fmt.Errorf("delete plan %s: %w", name, err)
	}
	if err := s.kv.Delete(ctx, name); err != nil {
		return fmt.Errorf("delete plan %s: %w", name, err)
	}
	return nil
}
