// Package planstore keeps plans in the JetStream KV bucket of plans. Only a
// plan that passed validation is ever written; services read plans from here.
package planstore

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/plan"
)

// ErrNotFound means no plan has that name.
var ErrNotFound = errors.New("plan not found")

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

// Put validates p and stores it. A refused plan stores nothing. It reports
// whether the stored plan changed.
func (s *Store) Put(ctx context.Context, p *plan.Plan) (changed bool, err error) {
	if err := s.Prepare(p); err != nil {
		return false, err
	}
	data, err := p.Marshal()
	if err != nil {
		return false, fmt.Errorf("encode plan %s: %w", p.Name(), err)
	}
	if cur, err := s.kv.Get(ctx, p.Name()); err == nil && string(cur.Value()) == string(data) {
		return false, nil
	}
	if _, err := s.kv.Put(ctx, p.Name(), data); err != nil {
		return false, fmt.Errorf("store plan %s: %w", p.Name(), err)
	}
	return true, nil
}

// Get returns the plan name, with defaults filled.
func (s *Store) Get(ctx context.Context, name string) (*plan.Plan, error) {
	e, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("get plan %s: %w", name, err)
	}
	p, err := plan.FromJSON(e.Value())
	if err != nil {
		return nil, fmt.Errorf("decode plan %s: %w", name, err)
	}
	p.Defaults()
	return p, nil
}

// List returns every plan, sorted by name.
func (s *Store) List(ctx context.Context) ([]*plan.Plan, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list plans: %w", err)
	}
	var names []string
	for k := range lister.Keys() {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []*plan.Plan
	for _, n := range names {
		p, err := s.Get(ctx, n)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Delete removes the plan name; ErrNotFound when there is none.
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
