// Package schedule is the scheduler service: every tick it looks at each
// plan's schedules and publishes backup.requested (spec.schedule),
// scrub.requested (spec.scrub.schedule) and drill.requested
// (spec.drill.schedule) for the slots that are due.
//
// Several replicas may run at once. Each slot's trigger has a deterministic
// event id (and a deterministic run id), so JetStream's duplicate window keeps
// one when two replicas fire the same slot; the KV record of the last slot
// handled, updated by compare-and-set, keeps one across outages longer than
// that window. The same record holds the plan's run lease, which the
// concurrency policy (forbid, allow, replace) is decided on.
//
// The scheduler never sleeps to wait for a slot in tests: the clock is
// injected and Once does one pass.
package schedule

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/stage"
)

// Service is the scheduler.
type Service struct {
	*stage.Deps
	// Clock is injected; tests drive it and call Once.
	Clock sched.Clock
	// Tick is how often Run looks for due slots.
	Tick time.Duration
	// Grace is how long a published trigger that no stage has picked up
	// yet (no run record) holds its plan; see DefaultGrace.
	Grace time.Duration
}

// DefaultGrace is the default Service.Grace. The hook stage picks a trigger
// up within seconds; a trigger still without a run record after the
// events stream's duplicate window was lost or its stage is down, and must
// not block the schedule for ever.
const DefaultGrace = 10 * time.Minute

// New builds the scheduler.
func New(d *stage.Deps) *Service {
	return &Service{Deps: d, Clock: sched.SystemClock{}, Tick: 5 * time.Second, Grace: DefaultGrace}
}

// State is the KV record of a plan's schedule, at key StateKey(plan) in the
// leases bucket. Replicas change it only by compare-and-set.
type State struct {
	// LastFired is the newest slot handled (fired or skipped), or the time
	// the scheduler first saw the plan.
	LastFired time.Time `json:"lastFired"`
	// LastTrigger is the id of the last backup.requested published.
	LastTrigger string `json:"lastTrigger,omitempty"`
	// Lease is the scheduled run that holds the plan, if any.
	Lease *Lease `json:"lease,omitempty"`
}

// Lease names the run a slot started. It holds the plan while that run is
// pending or running; see Service.holds.
type Lease struct {
	RunID string    `json:"runId"`
	Slot  time.Time `json:"slot"`
	// Since is when the trigger was published (scheduler clock).
	Since time.Time `json:"since"`
}

// StateKey is the leases-bucket key of a plan's schedule state.
func StateKey(planName string) string { return "schedule." + planName }

// SlotRunID is the run id of plan's slot: a ULID whose time is the slot and
// whose entropy is a hash of plan and slot, so every replica (and every
// restart) gives a slot's run the same id and ULIDs still sort by slot.
func SlotRunID(planName string, slot time.Time) string {
	sum := sha256.Sum256([]byte(planName + "\x00" + slot.UTC().Format(time.RFC3339Nano)))
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(slot))
	_ = id.SetEntropy(sum[:10])
	return id.String()
}

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

// Once handles every plan's due slot at the clock's now. It may run on
// several replicas at the same time; each slot is triggered once.
func (s *Service) Once(ctx context.Context) error {
	plans, bad, err := s.Plans.List(ctx)
	if err != nil {
		return fmt.Errorf("schedule: %w", err)
	}
	// A plan that fails validation is never triggered; it is reported on
	// every tick until it is fixed or deleted.
	var errs []error
	for _, err := range bad {
		errs = append(errs, fmt.Errorf("schedule: %w", err))
	}
	for _, p := range plans {
		if p.Spec.Schedule != nil {
			if err := s.plan(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("schedule plan %s: %w", p.Name(), err))
			}
		}
		if sc := p.Spec.Scrub; sc != nil && sc.Schedule != nil {
			if err := s.side(ctx, p, SideScrub, sc.Schedule); err != nil {
				errs = append(errs, fmt.Errorf("schedule scrub of plan %s: %w", p.Name(), err))
			}
		}
		if d := p.Spec.Drill; d != nil && d.Schedule != nil {
			if err := s.side(ctx, p, SideDrill, d.Schedule); err != nil {
				errs = append(errs, fmt.Errorf("schedule drill of plan %s: %w", p.Name(), err))
			}
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
	key := StateKey(p.Name())
	entry, st, fire, next, err := s.due(ctx, p, key, sc, now)
	if err != nil || entry == nil {
		return err
	}
	for _, slot := range fire {
		runID := SlotRunID(p.Name(), slot)
		trigger, err := s.trigger(p, slot, runID)
		if err != nil {
			return err
		}
		policy := sc.Spec().ConcurrencyPolicy
		if l := st.Lease; policy != sched.ConcurrencyAllow && l != nil && l.RunID != runID {
			held, err := s.holds(ctx, l, now)
			if err != nil {
				return err
			}
			switch {
			case held && policy == sched.ConcurrencyForbid:
				s.Log.Warn("schedule slot skipped: the plan's previous run is still going (concurrencyPolicy forbid)", "plan", p.Name(), "slot", slot, "runid", l.RunID)
				continue
			case held && policy == sched.ConcurrencyReplace:
				if err := s.replace(ctx, p, l, slot, trigger); err != nil {
					return err
				}
			}
		}
		// Publish before recording: a replica that crashes in between
		// leaves the slot due, and whoever fires it again publishes the
		// same id, which the duplicate window drops.
		if err := s.Bus.Publish(ctx, trigger); err != nil {
			return err
		}
		next.LastTrigger = trigger.ID()
		next.Lease = &Lease{RunID: runID, Slot: slot, Since: now.UTC()}
		s.Log.Info("scheduled backup triggered", "plan", p.Name(), "slot", slot, "runid", runID, "id", trigger.ID())
	}
	return s.record(ctx, p, key, entry, next)
}

// due reads the schedule state at key and returns the slots of sc due at
// now, and the state to record once they are fired. A nil entry means
// there is nothing to do (first sight of the schedule: nothing before now
// is due).
func (s *Service) due(ctx context.Context, p *plan.Plan, key string, sc *sched.Schedule, now time.Time) (jetstream.KeyValueEntry, State, []time.Time, State, error) {
	entry, err := s.Bus.Leases.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		data, _ := json.Marshal(State{LastFired: now.UTC()})
		if _, err := s.Bus.Leases.Create(ctx, key, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, State{}, nil, State{}, fmt.Errorf("create state: %w", err)
		}
		return nil, State{}, nil, State{}, nil
	}
	if err != nil {
		return nil, State{}, nil, State{}, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(entry.Value(), &st); err != nil {
		return nil, State{}, nil, State{}, fmt.Errorf("decode state: %w", err)
	}
	fire, skipped := sched.Due(sc, p.Name(), st.LastFired, now)
	if len(fire) == 0 && len(skipped) == 0 {
		return nil, State{}, nil, State{}, nil
	}
	next := st
	for _, t := range append(skipped, fire...) {
		if t.After(next.LastFired) {
			next.LastFired = t.UTC()
		}
	}
	for _, slot := range skipped {
		s.Log.Info("schedule slot skipped", "plan", p.Name(), "key", key, "slot", slot, "paused", sc.Spec().Paused, "missedRunPolicy", sc.Spec().MissedRunPolicy)
	}
	for i := range fire {
		fire[i] = fire[i].UTC()
	}
	return entry, st, fire, next, nil
}

// record writes the schedule state next over entry by compare-and-set;
// losing it to another replica is not an error.
func (s *Service) record(ctx context.Context, p *plan.Plan, key string, entry jetstream.KeyValueEntry, next State) error {
	data, _ := json.Marshal(next)
	_, err := s.Bus.Leases.Update(ctx, key, data, entry.Revision())
	if bus.Conflict(err) {
		// Another replica handled the slot first: it computed the same
		// slots and event ids, and its record stands.
		s.Log.Debug("schedule state changed meanwhile", "plan", p.Name(), "key", key, "err", err)
		return nil
	}
	if err != nil {
		// The slot stays due: the next tick fires it again with the same
		// event id, which the duplicate window drops.
		return fmt.Errorf("record schedule state %s: %w", key, err)
	}
	return nil
}

// Side work: scrubs and drills have schedules of their own. They are not
// runs of the runs bucket and hold no lease: each slot publishes one
// request with a deterministic id (the duplicate window keeps one), and
// the stage that handles it is idempotent on it.
const (
	SideScrub = "scrub"
	SideDrill = "drill"
)

// SideStateKey is the leases-bucket key of a plan's scrub or drill schedule.
func SideStateKey(planName, side string) string { return StateKey(planName) + "." + side }

// SideID is the id (event id and runid) of the scrub or drill of plan's
// slot: a ULID whose time is the slot, like SlotRunID.
func SideID(planName, side string, slot time.Time) string {
	return SlotRunID(planName+"\x00"+side, slot)
}

// side fires the due slots of a plan's scrub or drill schedule.
func (s *Service) side(ctx context.Context, p *plan.Plan, side string, ps *plan.Schedule) error {
	sc, err := sched.Parse(Spec(ps))
	if err != nil {
		return err
	}
	key := SideStateKey(p.Name(), side)
	entry, _, fire, next, err := s.due(ctx, p, key, sc, s.Clock.Now())
	if err != nil || entry == nil {
		return err
	}
	for _, slot := range fire {
		id := SideID(p.Name(), side, slot)
		m := s.Bus.Meta(p.Name(), id, "")
		m.ID = id
		var payload events.Payload = events.ScrubRequestedData{Trigger: events.TriggerSchedule, Slot: &slot, RequestedBy: "schedule"}
		if side == SideDrill {
			payload = events.DrillRequestedData{Trigger: events.TriggerSchedule, Slot: &slot, RequestedBy: "schedule"}
		}
		e, err := events.New(m, payload)
		if err != nil {
			return fmt.Errorf("%s slot %s: %w", side, slot.Format(time.RFC3339), err)
		}
		if err := s.Bus.Publish(ctx, e); err != nil {
			return err
		}
		next.LastTrigger = e.ID()
		s.Log.Info("scheduled "+side+" triggered", "plan", p.Name(), "slot", slot, "id", id)
	}
	return s.record(ctx, p, key, entry, next)
}

// trigger builds the backup.requested of plan's slot with its
// deterministic event and run ids.
func (s *Service) trigger(p *plan.Plan, slot time.Time, runID string) (events.Event, error) {
	m := s.Bus.Meta(p.Name(), runID, "")
	m.ID = sched.TriggerID(p.Name(), slot)
	e, err := events.New(m, events.BackupRequestedData{Trigger: events.TriggerSchedule, Slot: &slot, RequestedBy: "schedule"})
	if err != nil {
		return events.Event{}, fmt.Errorf("trigger slot %s: %w", slot.Format(time.RFC3339), err)
	}
	return e, nil
}

// holds reports whether lease l still holds its plan: its run is pending,
// initializing or running, or it has no run record yet and was published
// less than Grace ago (no stage has picked the trigger up yet). A trigger
// no stage picked up within Grace no longer holds the plan, so a stopped
// hook stage cannot block a schedule for ever.
func (s *Service) holds(ctx context.Context, l *Lease, now time.Time) (bool, error) {
	r, err := s.Runs.Get(ctx, l.RunID)
	if errors.Is(err, runs.ErrNotFound) {
		grace := s.Grace
		if grace <= 0 {
			grace = DefaultGrace
		}
		return now.Sub(l.Since) < grace, nil
	}
	if err != nil {
		return false, fmt.Errorf("lease: %w", err)
	}
	return !r.Phase.Done(), nil
}

// ReplacedReason is the failure reason of a run replaced by a newer slot.
func ReplacedReason(slot time.Time) string {
	return "replaced by slot " + slot.UTC().Format(time.RFC3339)
}

// replace fails the run holding the lease with ReplacedReason, caused by
// the new slot's trigger, and publishes its backup.failed. Two replicas
// replacing the same run publish the same event id.
func (s *Service) replace(ctx context.Context, p *plan.Plan, l *Lease, slot time.Time, cause events.Event) error {
	// A trigger no stage has picked up yet has no record: create it, so
	// that the stages see it failed when they do.
	seed := runs.Run{ID: l.RunID, Plan: p.Name(), Kind: runs.KindBackup, Trigger: events.TriggerSchedule, RequestedBy: "schedule", Created: l.Since}
	if _, _, err := s.Ask(ctx, "schedule", runs.Request{Op: runs.OpCreate, Run: l.RunID, Seed: &seed}); err != nil {
		return fmt.Errorf("replace run %s: %w", l.RunID, err)
	}
	// The owner of run state announces the failure.
	if _, err := s.FailRun(ctx, p.Name(), l.RunID, "schedule", "", ReplacedReason(slot), cause); err != nil {
		return fmt.Errorf("replace run %s: %w", l.RunID, err)
	}
	s.Log.Warn("scheduled run replaced (concurrencyPolicy replace)", "plan", p.Name(), "runid", l.RunID, "slot", slot)
	return nil
}
