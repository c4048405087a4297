package hook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
)

// The owed-inverse loop: an inverse op still failing after compensation's
// retries stays owed in its run record (a Failed compensation entry), and
// the runs that owe one are indexed in the runs bucket (runs.Store.Owing).
// Every replica of the hook service runs the loop; each due retry is
// claimed in the run record with a compare-and-set, so one replica runs it,
// under a lease: a replica that dies mid-retry leaves the entry Running
// until the lease ends, then another one takes it over. The loop stops
// retrying an entry at its deadline (GaveUp); the debt stays recorded and
// reported until an operator runs `backstream run ID --compensate`.

// Tuning is the compensation tuning a process sets (serve's
// --compensation-retry-every; tests shorten all of it). Zero fields keep
// the defaults.
type Tuning struct {
	Backoff, MaxBackoff, RetryEvery, Tick time.Duration
}

// Tune applies t's non-zero fields.
func (s *Service) Tune(t Tuning) {
	for _, f := range []struct {
		dst *time.Duration
		v   time.Duration
	}{{&s.Backoff, t.Backoff}, {&s.MaxBackoff, t.MaxBackoff}, {&s.RetryEvery, t.RetryEvery}, {&s.Tick, t.Tick}} {
		if f.v > 0 {
			*f.dst = f.v
		}
	}
}

// Run runs the owed-inverse loop until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	tick := s.Tick
	if s.RetryEvery > 0 && s.RetryEvery < tick {
		tick = s.RetryEvery
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if err := s.RetryOwed(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("owed inverse ops: pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RetryOwed is one pass of the owed-inverse loop: every owed inverse op
// whose retry is due (or whose claim's lease ran out) is claimed and run
// once, and a run that owes nothing any more gets its compensation.completed.
// Several replicas may call it at once.
func (s *Service) RetryOwed(ctx context.Context) error {
	list, err := s.Runs.Owing(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range list {
		if err := s.retryRun(ctx, r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Errorf("run %s: %w", r.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) retryRun(ctx context.Context, r *runs.Run) error {
	// A failed run's debts are the first pass's until it ended; a run
	// still going has none the loop may take.
	if !r.CompensationDone && r.Phase != runs.Succeeded {
		return nil
	}
	// The revision the run ran with, unless the plan changed since and
	// still has the op (debtPlan).
	own, err := s.PlanOf(ctx, r)
	if err != nil {
		return err
	}
	log := s.Log.With("plan", r.Plan, "runid", r.ID)
	for _, c := range r.Owed() {
		if !runs.Due(c, s.Now()) {
			continue
		}
		inv, err := plan.ParseStep(c.Step)
		if err != nil {
			return err
		}
		p := s.debtPlan(ctx, own, inv)
		h, op, ok := p.Op(inv.Hook, inv.Op)
		if !ok {
			return fmt.Errorf("owed inverse op %s is not in plan %s any more", c.Step, r.Plan)
		}
		claimed, err := s.claimOwed(ctx, r.ID, c.Step, h.EffectiveTimeout(op)+deadlineSlack)
		if err != nil || !claimed {
			return err
		}
		log.Info("retrying owed inverse op", "op", c.Step, "undoes", c.Undoes, "attempts", c.Attempts)
		evs, err := s.payDebt(ctx, p, r.ID, inv, h, op, 1, log)
		if err != nil {
			return err
		}
		if err := s.publish(ctx, evs); err != nil {
			return err
		}
	}
	return s.announceCompleted(ctx, own, r.ID)
}

// debtPlan is the plan an owed inverse op is retried with once its run
// ended: the newest revision of the plan when it still has the op, so an
// operator fixes a broken unlock by applying the fixed plan; otherwise
// (the plan deleted, or the op gone) the revision the run ran with.
// Everything a run does while it runs reads the run's own revision.
func (s *Service) debtPlan(ctx context.Context, own *plan.Plan, inv plan.Step) *plan.Plan {
	cur, err := s.Plans.Get(ctx, own.Name())
	if err != nil {
		return own
	}
	if _, _, ok := cur.Op(inv.Hook, inv.Op); !ok {
		return own
	}
	return cur
}

// claimOwed claims a due owed entry for this replica, with a lease of
// lease. claimed is false when another replica took it first or it is
// not due any more.
func (s *Service) claimOwed(ctx context.Context, runID, name string, lease time.Duration) (claimed bool, err error) {
	_, o, err := s.Ask(ctx, "hook", runs.Request{Op: runs.OpInverseClaim, Run: runID, Step: name, Owner: s.id, Within: lease})
	return o.Announce, err
}

// announceCompleted publishes the run's compensation.completed once it owes
// nothing, then flags it announced. Replicas that do so at once publish the
// same id, which JetStream's duplicate window keeps once; a crash before
// the flag leaves the index entry, and the next pass announces again.
func (s *Service) announceCompleted(ctx context.Context, p *plan.Plan, runID string) error {
	r, err := s.Runs.Get(ctx, runID)
	if err != nil {
		return err
	}
	if r.Announced[runs.AnnouncedCompensation] || len(r.Compensation) == 0 || len(r.Owed()) > 0 ||
		(!r.CompensationDone && r.Phase != runs.Succeeded) {
		return nil
	}
	ev, err := s.completedEvent(p, r)
	if err != nil {
		return err
	}
	if err := s.publish(ctx, []events.Event{ev}); err != nil {
		return err
	}
	s.Log.Info("owed inverse ops completed: the run owes nothing any more", "plan", p.Name(), "runid", runID)
	_, _, err = s.Ask(ctx, "hook", runs.Request{Op: runs.OpAnnounce, Run: runID, Flag: runs.AnnouncedCompensation})
	return err
}

func (s *Service) publish(ctx context.Context, evs []events.Event) error {
	for _, e := range evs {
		if err := s.Bus.Publish(ctx, e); err != nil {
			return err
		}
	}
	return nil
}
