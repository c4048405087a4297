package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/services/schedule"
)

// Drills are not runs of the runs bucket, so the watchdog cannot find
// their successes in the run store. The metrics handler keeps the newest
// drill successes of each plan in the leases bucket instead (recordDrill),
// before it writes their points, so the record does not wait for InfluxDB.

// maxDrillSuccesses bounds the successes kept per plan: enough to judge
// every slot of a watchdog that was down for a while, few enough to fit
// one small KV value.
const maxDrillSuccesses = 64

// DrillSuccess is one drill.succeeded as the watchdog sees it.
type DrillSuccess struct {
	// ID is the drill's id (the event's runid); a scheduled drill's is
	// schedule.SideID(plan, schedule.SideDrill, slot).
	ID string `json:"id"`
	// At is when the drill finished (the event's time).
	At time.Time `json:"at"`
}

// DrillSuccesses is the record of a plan's newest drill successes.
type DrillSuccesses struct {
	Successes []DrillSuccess `json:"successes"`
}

// Newest is the time of the newest success, or nil without one.
func (d DrillSuccesses) Newest() *time.Time {
	var t *time.Time
	for _, s := range d.Successes {
		if t == nil || s.At.After(*t) {
			at := s.At.UTC()
			t = &at
		}
	}
	return t
}

func drillWatchKey(planName string) string   { return watchKey(planName) + ".drill" }
func drillSuccessKey(planName string) string { return watchKey(planName) + ".drill-ok" }

// DrillMissedID is the deterministic id of the drill.missed of plan's
// drill slot.
func DrillMissedID(planName string, slot time.Time) string {
	return "drill-missed-" + planName + "-" + strconv.FormatInt(slot.Unix(), 10)
}

// recordDrill adds a drill.succeeded to its plan's success record. It is
// idempotent on the drill id: a redelivery changes nothing. Replicas
// update the record by compare-and-set and try again on a conflict; an
// error naks the event, which is then recorded on its redelivery.
func (s *Service) recordDrill(ctx context.Context, e events.Event) error {
	add := DrillSuccess{ID: events.RunID(e), At: e.Time().UTC()}
	key := drillSuccessKey(e.Subject())
	for range 10 {
		var rec DrillSuccesses
		var rev uint64
		entry, err := s.Bus.Leases.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("read drill successes: %w", err)
		default:
			rev = entry.Revision()
			if err := json.Unmarshal(entry.Value(), &rec); err != nil {
				// A garbled record is replaced: it can only make the
				// watchdog report a drill missed that was not.
				rec = DrillSuccesses{}
			}
		}
		if slices.ContainsFunc(rec.Successes, func(d DrillSuccess) bool { return d.ID == add.ID }) {
			return nil
		}
		rec.Successes = append(rec.Successes, add)
		slices.SortFunc(rec.Successes, func(a, b DrillSuccess) int { return a.At.Compare(b.At) })
		if n := len(rec.Successes); n > maxDrillSuccesses {
			rec.Successes = rec.Successes[n-maxDrillSuccesses:]
		}
		data, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = s.Bus.Leases.Create(ctx, key, data)
		} else {
			_, err = s.Bus.Leases.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !bus.Conflict(err) {
			return fmt.Errorf("record drill success: %w", err)
		}
	}
	return fmt.Errorf("record drill success: the record kept changing")
}

// drillSuccesses reads planName's drill success record.
func (s *Service) drillSuccesses(ctx context.Context, planName string) (DrillSuccesses, error) {
	var rec DrillSuccesses
	entry, err := s.Bus.Leases.Get(ctx, drillSuccessKey(planName))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, nil
	}
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		return rec, fmt.Errorf("drill successes: %w", err)
	}
	return rec, nil
}

// DrillMissed returns the drill slots of p judged at now that no drill
// success covers, oldest first, and the newest slot judged. It is pure.
//
// Every slot of spec.drill.schedule expects a drill success by slot +
// jitter + spec.drill.grace (expectedBy). A success covers a slot when
// it is the slot's own scheduled drill (its id is
// schedule.SideID(plan, SideDrill, slot)), whenever it finished before the
// slot was judged, or when any drill of the plan, scheduled or ad hoc,
// finished in [slot, expectedBy]: a drill asked for by hand in that window
// (say, an operator running again a drill that failed) proves the same as
// the scheduled one, that the plan's backups restore and pass the check.
// A failed drill covers nothing.
func DrillMissed(p *plan.Plan, st Expectation, rec DrillSuccesses, now time.Time) ([]Miss, time.Time, error) {
	newest := st.LastSlot
	if newest.Before(st.Since) {
		newest = st.Since
	}
	d := p.Spec.Drill
	if d == nil || d.Schedule == nil {
		return nil, newest, nil
	}
	grace := plan.DefaultGrace.Std()
	if d.Grace > 0 {
		grace = d.Grace.Std()
	}
	return scheduleMissed(p.Name(), d.Schedule, grace, newest, now, func(slot, by time.Time) bool {
		id := schedule.SideID(p.Name(), schedule.SideDrill, slot)
		for _, s := range rec.Successes {
			if s.ID == id || (!s.At.Before(slot) && !s.At.After(by)) {
				return true
			}
		}
		return false
	})
}

// watchDrills judges the drill slots of every plan with a drill schedule,
// once every drill.succeeded published so far reached the success records
// (eventsCaughtUp); until then it judges none and the slots wait for a
// later pass.
func (s *Service) watchDrills(ctx context.Context, plans []*plan.Plan, now time.Time) error {
	var drilled []*plan.Plan
	for _, p := range plans {
		if d := p.Spec.Drill; d != nil && d.Schedule != nil {
			drilled = append(drilled, p)
		}
	}
	if len(drilled) == 0 {
		return nil
	}
	ok, err := s.eventsCaughtUp(ctx)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if !ok {
		s.Log.Debug("drill slots not judged this pass: the metrics consumer has events still to deliver")
		return nil
	}
	var errs []error
	for _, p := range drilled {
		if err := s.watchDrill(ctx, p, now); err != nil {
			errs = append(errs, fmt.Errorf("watchdog drill of plan %s: %w", p.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// watchDrill judges the drill slots of p and publishes drill.missed for
// each one missed.
func (s *Service) watchDrill(ctx context.Context, p *plan.Plan, now time.Time) error {
	rec, err := s.drillSuccesses(ctx, p.Name())
	if err != nil {
		return err
	}
	last := rec.Newest()
	if last != nil {
		s.prom.setDrillLast(p.Name(), last.Unix())
	}
	return s.watchSlots(ctx, drillWatchKey(p.Name()), now, func(st Expectation) ([]Miss, time.Time, error) {
		return DrillMissed(p, st, rec, now)
	}, func(m Miss) error {
		id := DrillMissedID(p.Name(), m.Slot)
		// The runid is the id the slot's drill has or would have had.
		meta := s.Bus.Meta(p.Name(), schedule.SideID(p.Name(), schedule.SideDrill, m.Slot), "")
		meta.ID = id
		e, err := events.New(meta, events.DrillMissedData{ExpectedBy: m.ExpectedBy, Slot: m.Slot, LastSuccess: last})
		if err != nil {
			return err
		}
		if err := s.Bus.Publish(ctx, e); err != nil {
			return err
		}
		s.Log.Warn("expected drill success missing", "plan", p.Name(), "runid", events.RunID(e), "id", id, "slot", m.Slot, "expectedBy", m.ExpectedBy)
		return nil
	})
}

// eventsCaughtUp reports whether the metrics consumer has been handed
// every event in the stream, so every drill.succeeded published so far is
// in the success records. Until it has (after the stage was down, or
// while InfluxDB is down and events wait beyond the consumer's window),
// drill slots are not judged: a drill that succeeded in time but whose
// event still waits must not be reported missed. A consumer that does not
// exist yet has nothing waiting.
func (s *Service) eventsCaughtUp(ctx context.Context) (bool, error) {
	c, err := s.Bus.JS.Consumer(ctx, bus.EventsStream, "metrics")
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("metrics consumer: %w", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("metrics consumer: %w", err)
	}
	return info.NumPending == 0, nil
}
