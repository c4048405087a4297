// Package schedule is the scheduler service: every tick it looks at each
// plan's schedule and publishes backup.requested for the slot that is due.
// Several replicas may run: each slot's trigger has a deterministic id, so
// JetStream's duplicate window keeps one, and the KV record of the last slot
// handled keeps one across outages longer than that window.
package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/stage"
)

// Service is the scheduler.
type Service struct {
	*stage.Deps
	// Clock is injected; tests drive it.
	Clock sched.Clock
	// Tick is how often due slots are looked for.
	Tick time.Duration
}

// New builds the scheduler.
func New(d *stage.Deps) *Service {
	return &Service{Deps: d, Clock: sched.SystemClock{}, Tick: 5 * time.Second}
}

// state is the KV record of a plan's schedule.
type state struct {
	// LastFired is the newest slot handled (fired or skipped), or the time
	// the scheduler first saw the plan.
	LastFired time.Time `json:"lastFired"`
	// LastTrigger is the id of the last backup.requested published.
	LastTrigger string `json:"lastTrigger,omitempty"`
}

func stateKey(planName string) string { return "schedule." + planName }

// Spec turns a plan's schedule block into a schedule spec.
func Spec(s *plan.Schedule) sched.Spec {
	return sched.Spec{
		Cron: s.Cron, Timezone: s.Timezone, Jitter: s.Jitter.Std(), StartingDeadline: s.StartingDeadline.Std(),
		MissedRunPolicy: s.MissedRunPolicy, ConcurrencyPolicy: s.ConcurrencyPolicy, Paused: s.Paused,
	}
}

// Run ticks until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.Tick)
	defer t.Stop()
	for {
		if err := s.Once(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("schedule tick failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once fires every plan's due slot at the clock's now.
func (s *Service) Once(ctx context.Context) error {
	plans, err := s.Plans.List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range plans {
		if p.Spec.Schedule == nil {
			continue
		}
		if err := s.plan(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("plan %s: %w", p.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) plan(ctx context.Context, p *plan.Plan) error {
	sc, err := sched.Parse(Spec(p.Spec.Schedule))
	if err != nil {
		return err
	}
	now := s.Clock.Now()
	key := stateKey(p.Name())
	entry, err := s.Bus.Leases.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// First sight: nothing before now is due.
		data, _ := json.Marshal(state{LastFired: now.UTC()})
		if _, err := s.Bus.Leases.Create(ctx, key, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	var st state
	if err := json.Unmarshal(entry.Value(), &st); err != nil {
		return fmt.Errorf("schedule state: %w", err)
	}
	fire, skipped := sched.Due(sc, p.Name(), st.LastFired, now)
	if len(fire) == 0 && len(skipped) == 0 {
		return nil
	}
	newest := st.LastFired
	for _, t := range append(skipped, fire...) {
		if t.After(newest) {
			newest = t
		}
	}
	for _, slot := range skipped {
		s.Log.Info("schedule slot skipped", "plan", p.Name(), "slot", slot)
	}
	next := state{LastFired: newest.UTC(), LastTrigger: st.LastTrigger}
	for _, slot := range fire {
		if sc.Spec().ConcurrencyPolicy != sched.ConcurrencyAllow && s.busy(ctx, p.Name()) {
			s.Log.Warn("schedule slot skipped: a run of the plan is still going (concurrencyPolicy)", "plan", p.Name(), "slot", slot, "policy", sc.Spec().ConcurrencyPolicy)
			continue
		}
		// Publish first: a duplicate is dropped by its id; a crash before
		// the state update re-publishes the same id.
		slot := slot.UTC()
		m := s.Bus.Meta(p.Name(), events.NewID(), "")
		m.ID = sched.TriggerID(p.Name(), slot)
		e, err := events.New(m, events.BackupRequestedData{Trigger: events.TriggerSchedule, Slot: &slot, RequestedBy: "schedule"})
		if err != nil {
			return err
		}
		if err := s.Bus.Publish(ctx, e); err != nil {
			return err
		}
		next.LastTrigger = m.ID
		s.Log.Info("scheduled backup triggered", "plan", p.Name(), "slot", slot, "id", m.ID)
	}
	data, _ := json.Marshal(next)
	if _, err := s.Bus.Leases.Update(ctx, key, data, entry.Revision()); err != nil {
		// Another replica handled the slot first; its record stands.
		return nil
	}
	return nil
}

// busy reports whether a run of planName is still pending or running.
func (s *Service) busy(ctx context.Context, planName string) bool {
	list, err := s.Runs.List(ctx, planName)
	if err != nil {
		return false
	}
	for _, r := range list {
		if r.Kind == runs.KindBackup && (r.Phase == runs.Pending || r.Phase == runs.Running) {
			return true
		}
	}
	return false
}
