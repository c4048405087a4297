package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/schedule"
)

// maxMissedPerPass bounds the backup.missed events one pass emits for one
// plan; after a long outage of the watchdog the rest follow in later passes.
const maxMissedPerPass = 100

// Miss is one slot whose success did not arrive by ExpectedBy.
type Miss struct {
	Slot       time.Time
	ExpectedBy time.Time
}

// Expectation is what the watchdog knows of a plan between passes.
type Expectation struct {
	// Since is when the watchdog first saw the plan: nothing before it is
	// judged, so a new plan (or a new watchdog) never reports old slots.
	Since time.Time `json:"since"`
	// LastSlot is the newest slot judged, missed or not.
	LastSlot time.Time `json:"lastSlot"`
}

// Missed returns the slots of p judged at now that held no success, oldest
// first, and the newest slot judged (the next LastSlot). It is pure.
//
// With a schedule, every slot is expected to be followed by a success by
// slot + jitter + grace; a success finished in [slot, expectedBy] covers it.
// Without one, alert.expectEvery says a success is due every expectEvery
// after the newest success (or after Since), plus grace. A paused schedule
// expects nothing, and its paused slots are never reported later. grace is
// alert.grace, or plan.DefaultGrace without an alert block.
func Missed(p *plan.Plan, st Expectation, successes []time.Time, now time.Time) ([]Miss, time.Time, error) {
	grace := plan.DefaultGrace.Std()
	if p.Spec.Alert != nil && p.Spec.Alert.Grace > 0 {
		grace = p.Spec.Alert.Grace.Std()
	}
	newest := st.LastSlot
	if newest.Before(st.Since) {
		newest = st.Since
	}
	var out []Miss
	switch {
	case p.Spec.Schedule != nil:
		return scheduleMissed(p.Name(), p.Spec.Schedule, grace, newest, now, func(slot, by time.Time) bool {
			return coveredBy(successes, slot, by)
		})
	case p.Spec.Alert != nil && p.Spec.Alert.ExpectEvery > 0:
		every := p.Spec.Alert.ExpectEvery.Std()
		base := st.Since
		for _, t := range successes {
			if t.After(base) && !t.After(now) {
				base = t
			}
		}
		for slot := base.Add(every); !slot.Add(grace).After(now) && len(out) < maxMissedPerPass; slot = slot.Add(every) {
			if !slot.After(newest) {
				continue
			}
			newest = slot
			out = append(out, Miss{Slot: slot.UTC(), ExpectedBy: slot.Add(grace).UTC()})
		}
	}
	return out, newest, nil
}

// scheduleMissed judges the slots of schedule ps after newest that are
// due at now (slot + jitter + grace passed): those covered reports false
// for are missed. It returns them, oldest first and at most
// maxMissedPerPass, and the newest slot judged. A paused schedule expects
// nothing, and its paused slots are never reported later.
func scheduleMissed(planName string, ps *plan.Schedule, grace time.Duration, newest, now time.Time, covered func(slot, by time.Time) bool) ([]Miss, time.Time, error) {
	sc, err := sched.Parse(schedule.Spec(ps))
	if err != nil {
		return nil, newest, fmt.Errorf("schedule: %w", err)
	}
	if sc.Spec().Paused {
		return nil, laterOf(newest, now), nil
	}
	var out []Miss
	wait := sched.Jitter(planName, time.Time{}, sc.Spec().Jitter) + grace
	for _, slot := range sc.Slots(newest, now.Add(-wait)) {
		if len(out) == maxMissedPerPass {
			break
		}
		by := slot.Add(wait)
		newest = slot
		if !covered(slot, by) {
			out = append(out, Miss{Slot: slot.UTC(), ExpectedBy: by.UTC()})
		}
	}
	return out, newest, nil
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func coveredBy(successes []time.Time, from, to time.Time) bool {
	for _, t := range successes {
		if !t.Before(from) && !t.After(to) {
			return true
		}
	}
	return false
}

// MissedID is the deterministic id of the backup.missed of plan's slot:
// replicas and repeated passes publish the same id, and JetStream's
// duplicate window (with the KV record beyond it) keeps one.
func MissedID(planName string, slot time.Time) string {
	return "missed-" + planName + "-" + strconv.FormatInt(slot.Unix(), 10)
}

func watchKey(planName string) string { return "watchdog." + planName }

// Watch is one watchdog pass at the clock's now: backup.missed for every
// newly missed slot of every plan, drill.missed for every newly missed
// drill slot (DrillMissed), then the owed inverse ops counted per plan.
// Only a Succeeded run covers a backup slot: the run store's success index
// holds nothing else, so a slot whose run failed or was cancelled is
// reported missed like one that never ran.
func (s *Service) Watch(ctx context.Context) error {
	now := s.Clock.Now().UTC()
	plans, bad, err := s.Plans.List(ctx)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	// A plan that fails validation cannot be watched: its schedule is not
	// trusted either. It is reported on every pass instead.
	var errs []error
	for _, err := range bad {
		errs = append(errs, fmt.Errorf("watchdog: %w", err))
	}
	for _, p := range plans {
		if p.Spec.Schedule == nil && (p.Spec.Alert == nil || p.Spec.Alert.ExpectEvery <= 0) {
			continue
		}
		// The run store's success index keeps the newest success times of
		// each plan, so a pass reads one record per plan, not every run.
		successes, err := s.Runs.Successes(ctx, p.Name())
		if err != nil {
			errs = append(errs, fmt.Errorf("watchdog plan %s: %w", p.Name(), err))
			continue
		}
		var lastSuccess *time.Time
		if n := len(successes); n > 0 {
			t := successes[n-1].UTC()
			lastSuccess = &t
			s.prom.setLastSuccess(p.Name(), t.Unix())
		}
		if err := s.watchPlan(ctx, p, successes, lastSuccess, now); err != nil {
			errs = append(errs, fmt.Errorf("watchdog plan %s: %w", p.Name(), err))
		}
	}
	if err := s.watchDrills(ctx, plans, now); err != nil {
		errs = append(errs, err)
	}
	if err := s.watchOwed(ctx, plans, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *Service) watchPlan(ctx context.Context, p *plan.Plan, successes []time.Time, lastSuccess *time.Time, now time.Time) error {
	return s.watchSlots(ctx, watchKey(p.Name()), now, func(st Expectation) ([]Miss, time.Time, error) {
		return Missed(p, st, successes, now)
	}, func(m Miss) error {
		id := MissedID(p.Name(), m.Slot)
		// The runid is the run the slot started or would have started
		// (a ULID, as every runid must be); the event id stays MissedID.
		meta := s.Bus.Meta(p.Name(), schedule.SlotRunID(p.Name(), m.Slot), "")
		meta.ID = id
		e, err := events.New(meta, events.BackupMissedData{ExpectedBy: m.ExpectedBy, Slot: m.Slot, LastSuccess: lastSuccess})
		if err != nil {
			return err
		}
		if err := s.Bus.Publish(ctx, e); err != nil {
			return err
		}
		s.Log.Warn("expected backup success missing", "plan", p.Name(), "runid", events.RunID(e), "id", id, "slot", m.Slot, "expectedBy", m.ExpectedBy)
		return nil
	})
}

// watchSlots is one judgement of the expectation kept at key: judge gives
// the slots missed since the state's LastSlot and the newest slot judged,
// announce publishes one miss. The first sight of key records now and
// judges nothing, so nothing from before the watchdog knew of a schedule
// is reported.
func (s *Service) watchSlots(ctx context.Context, key string, now time.Time, judge func(Expectation) ([]Miss, time.Time, error), announce func(Miss) error) error {
	entry, err := s.Bus.Leases.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		data, _ := json.Marshal(Expectation{Since: now, LastSlot: now})
		if _, err := s.Bus.Leases.Create(ctx, key, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	var st Expectation
	if err := json.Unmarshal(entry.Value(), &st); err != nil {
		return fmt.Errorf("watchdog state: %w", err)
	}
	missed, newest, err := judge(st)
	if err != nil {
		return err
	}
	if !newest.After(st.LastSlot) {
		return nil
	}
	// Publish first: a crash before the state update re-publishes the same
	// ids, which the duplicate window drops.
	sort.Slice(missed, func(i, j int) bool { return missed[i].Slot.Before(missed[j].Slot) })
	for _, m := range missed {
		if err := announce(m); err != nil {
			return err
		}
	}
	st.LastSlot = newest.UTC()
	data, _ := json.Marshal(st)
	if _, err := s.Bus.Leases.Update(ctx, key, data, entry.Revision()); err != nil && !bus.Conflict(err) {
		// A conflict is another replica that judged the same slots first:
		// its record stands. Anything else leaves the slots to judge again,
		// and says so.
		return fmt.Errorf("record watchdog state %s: %w", key, err)
	}
	return nil
}
