package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// The one rule of compensation is plan.Compensation's: an op that started
// owes its inverse op until a successful run of that inverse started after
// it. This file applies it to a run record: the first pass after a run
// failed (handleFailure), with retries and backoff for each inverse op, and
// the debts that pass leaves, which the owed-inverse loop (owed.go) retries.

// opRuns is what plan.Compensation decides from: every hook step of r that
// started, and every inverse op compensation ran, with their outcomes.
func opRuns(r *runs.Run) []plan.OpRun {
	var out []plan.OpRun
	for _, st := range r.Steps {
		if !strings.HasPrefix(st.Name, "hook:") || st.Started.IsZero() {
			continue
		}
		ps, err := plan.ParseStep(st.Name)
		if err != nil {
			continue
		}
		out = append(out, plan.OpRun{Step: ps, Started: st.Started, Finished: st.Finished, OK: st.Phase == runs.Succeeded})
	}
	for _, c := range r.Compensation {
		ps, err := plan.ParseStep(c.Step)
		if err != nil || c.Started.IsZero() {
			continue
		}
		out = append(out, plan.OpRun{Step: ps, Inverse: true, Started: c.Started, Finished: c.Finished, OK: c.Phase == runs.Succeeded})
	}
	return out
}

// compensationStep is the step attribute of the events of an inverse op.
func compensationStep(inverse string) string { return "compensate:" + inverse }

// opName is "hook/op" of a step name "hook:hook/op".
func opName(step string) string { return strings.TrimPrefix(step, "hook:") }

// handleFailure is compensation's first pass over a failed run (backup or
// restore): every inverse op the run owes (plan.Compensation over the
// record) is claimed in the record's compensation list, run, and retried
// with backoff while it fails. An inverse op still failing after its
// retries stays owed: compensation.failed says so and the owed-inverse loop
// retries it. The pass ends with CompensationDone in the record and, when
// nothing is owed, compensation.completed.
//
// A redelivery while the pass was under way runs again what is still owed:
// an inverse op whose end was recorded as completed is not run again, one
// left Running by a dead delivery is (inverse ops are idempotent). A
// redelivery after the pass ended only re-emits its closing events.
//
// A failure event delivered after the run was replayed does nothing: a
// replay waits until this pass has ended (runs.OpReplay), so the earlier
// attempt owes nothing the pass has not recorded, and what the new
// attempt's ops owe is for its own end to settle. The event is of an
// earlier attempt (stage.CheckCurrent), and the run machine refuses the
// pass's claims and its end for it (runs.ErrStale, and runs.ErrNotFailed
// on a run no longer failed), for a delivery that read the run just before.
func (s *Service) handleFailure(ctx context.Context, e events.Event) ([]events.Event, error) {
	runID := events.RunID(e)
	r, err := s.settled(ctx, runID)
	if err != nil {
		return nil, err
	}
	if err := stage.CheckCurrent(r, e); err != nil {
		return nil, err
	}
	if !r.Phase.Unsuccessful() {
		s.Log.Info("compensation skips a failure event of a run no longer failed: it was replayed", "plan", r.Plan, "runid", runID, "event", e.ID(), "phase", r.Phase, "attempt", r.CurrentAttempt())
		return nil, nil
	}
	out, err := s.compensate(ctx, r)
	if errors.Is(err, runs.ErrNotFailed) || errors.Is(err, runs.ErrStale) {
		s.Log.Info("compensation stops: the run was replayed", "plan", r.Plan, "runid", runID, "event", e.ID())
		return out, nil
	}
	return out, err
}

// compensate is handleFailure's pass over failed run r.
func (s *Service) compensate(ctx context.Context, r *runs.Run) ([]events.Event, error) {
	runID := r.ID
	// The revision the run ran with: the ops that ran are its ops.
	p, err := s.PlanOf(ctx, r)
	if err != nil {
		return nil, err
	}
	if r.CompensationDone {
		return s.closing(p, r)
	}
	// Supervision (reap.go): an op whose owner died is made sure dead
	// before any inverse runs, so it cannot take effect after its inverse.
	if err := s.reapInterrupted(ctx, p, r); err != nil {
		return nil, err
	}
	log := s.Log.With("plan", p.Name(), "runid", runID)
	debts := p.Compensation(opRuns(r))
	var out []events.Event
	for _, d := range debts {
		h, op, ok := p.Op(d.Inverse.Hook, d.Inverse.Op)
		if !ok {
			continue // Validate makes every inverseOp an op of its hook
		}
		if err := s.claimInverse(ctx, runID, d); err != nil {
			return out, err
		}
		evs, err := s.payDebt(ctx, p, runID, d.Inverse, h, op, 1+h.EffectiveRetries(op), log)
		out = append(out, evs...)
		if err != nil {
			return out, err
		}
	}
	r, _, err = s.Ask(ctx, "hook", runs.Request{Op: runs.OpCompensationEnd, Run: runID})
	if err != nil {
		return out, err
	}
	if len(r.Owed()) > 0 {
		return out, nil
	}
	ev, err := s.completedEvent(p, r)
	if err != nil {
		return out, err
	}
	return append(out, ev), nil
}

// closing rebuilds the events a finished first pass ended with, with the
// same ids: compensation.completed when nothing is owed, else the
// compensation.failed of every inverse op still owed.
func (s *Service) closing(p *plan.Plan, r *runs.Run) ([]events.Event, error) {
	owed := r.Owed()
	if len(owed) == 0 {
		ev, err := s.completedEvent(p, r)
		if err != nil {
			return nil, err
		}
		return []events.Event{ev}, nil
	}
	var out []events.Event
	for _, c := range owed {
		if c.Phase != runs.Failed || c.Attempts == 0 {
			continue
		}
		ev, err := s.failedEvent(r.CurrentAttempt(), p.Name(), r.ID, c)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// completedEvent is the run's one compensation.completed, listing the
// inverse ops that completed, in the order compensation claimed them
// (newest op first).
func (s *Service) completedEvent(p *plan.Plan, r *runs.Run) (events.Event, error) {
	ran := []string{}
	for _, c := range r.Compensation {
		if c.Phase == runs.Succeeded {
			ran = append(ran, opName(c.Step))
		}
	}
	return s.EmitAt(r.CurrentAttempt(), p.Name(), r.ID, "compensation", events.CompensationCompletedData{Ops: ran})
}

// failedEvent is the compensation.failed of an owed entry. Its id carries
// the attempts, so each failed round is announced once, also when a
// redelivery rebuilds it.
func (s *Service) failedEvent(attempt int, planName, runID string, c runs.Compensation) (events.Event, error) {
	step := compensationStep(c.Step)
	m := s.AttemptMeta(attempt, planName, runID, step, events.CompensationFailed, step)
	m.ID += "." + strconv.Itoa(c.Attempts)
	d := events.CompensationFailedData{Op: opName(c.Step), Undoes: opName(c.Undoes), Error: c.Error, Attempts: c.Attempts}
	if !c.RetryAt.IsZero() {
		t := c.RetryAt
		d.NextRetry = &t
	}
	if d.Error == "" {
		d.Error = "interrupted"
	}
	return events.New(m, d)
}

// claimInverse marks the inverse op of debt d Running for this replica in
// the run's compensation list, adding the entry when it is new. The first
// pass claims whatever the entry says: an entry left Running belongs to a
// delivery that died (only one delivery of the failure event is in flight
// at a time), and a Failed one is owed.
func (s *Service) claimInverse(ctx context.Context, runID string, d plan.Debt) error {
	_, _, err := s.Ask(ctx, "hook", runs.Request{Op: runs.OpInverseClaim, Run: runID, Step: d.Inverse.String(), Undoes: d.Op.String(), Owner: s.id})
	return err
}

// backoff is the wait after the n-th failed try (n >= 1) of an inverse op.
func (s *Service) backoff(n int) time.Duration {
	d := s.Backoff
	for i := 1; i < n && d < s.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, s.MaxBackoff)
}

// payDebt runs the claimed inverse op inv up to tries times, with backoff
// between tries, recording every try in its compensation entry before it
// announces anything. It returns hook.completed (inverse) when a try
// completed, or compensation.failed when the last one failed (the entry is
// then Failed: owed, with the next automatic retry). When ctx ends mid-op
// the entry stays Running and ctx's error is returned: whoever takes the
// debt over runs the op again.
func (s *Service) payDebt(ctx context.Context, p *plan.Plan, runID string, inv plan.Step, h *plan.Hook, op *plan.Op, tries int, log *slog.Logger) ([]events.Event, error) {
	name := inv.String()
	log = log.With("step", compensationStep(name))
	for try := 1; ; try++ {
		begin := s.Now()
		outcome, runErr := s.runOp(ctx, p, h, op, h.EffectiveTimeout(op), opEnv(p.Name(), runID, name, true))
		if runErr != nil && ctx.Err() != nil && !outcome.TimedOut {
			return nil, ctx.Err()
		}
		// A refusal to run exec is this process's setting: trying again
		// here cannot help, another replica's loop may.
		last := runErr == nil || try >= tries || errors.Is(runErr, stage.ErrExecRefused)
		// Recorded even when ctx ends now: an inverse op that ran and is
		// not recorded runs a second time.
		c, err := s.recordTry(context.WithoutCancel(ctx), runID, name, h, runErr, last)
		if err != nil {
			return nil, err
		}
		if runErr == nil {
			log.Info("inverse op completed", "op", name, "attempts", c.Attempts)
			ev, err := s.Emit(ctx, p.Name(), runID, compensationStep(name), events.HookCompletedData{
				Hook: inv.Hook, Op: inv.Op, Inverse: true, DurationMs: s.Now().Sub(begin).Milliseconds(), OutputTail: outcome.Output})
			if err != nil {
				return nil, err
			}
			return []events.Event{ev}, nil
		}
		if last {
			log.Error("inverse op still fails: the op it undoes may still hold", "op", name, "undoes", c.Undoes,
				"attempts", c.Attempts, "err", runErr, "nextRetry", c.RetryAt, "until", c.Until)
			ev, err := s.failedEvent(stage.EmitAttempt(ctx, runID), p.Name(), runID, c)
			if err != nil {
				return nil, err
			}
			return []events.Event{ev}, nil
		}
		wait := s.backoff(try)
		log.Warn("inverse op failed, retrying", "op", name, "attempt", c.Attempts, "err", runErr, "in", wait)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// recordTry records one try of inverse op name: completed (the debt is
// paid), failed with tries left (the entry stays Running), or failed for
// the last time: the entry becomes Failed, owed, due again after RetryEvery
// unless that is past its deadline (the hook's compensationDeadline after
// its first failure), in which case no automatic retry follows (GaveUp).
func (s *Service) recordTry(ctx context.Context, runID, name string, h *plan.Hook, runErr error, last bool) (runs.Compensation, error) {
	req := runs.Request{Op: runs.OpInverseTried, Run: runID, Step: name, Last: last,
		Deadline: h.EffectiveCompensationDeadline(), RetryEvery: s.RetryEvery}
	if runErr != nil {
		req.Error = runErr.Error()
	}
	r, _, err := s.Ask(ctx, "hook", req)
	if err != nil {
		return runs.Compensation{}, err
	}
	c := r.FindCompensation(name)
	if c == nil {
		return runs.Compensation{}, fmt.Errorf("run %s: no compensation entry %s", runID, name)
	}
	return *c, nil
}

// noteDebt records the debt an inverse op leaves when it fails as a
// forward step with onError continue: the run goes on, and may even
// succeed, but the op it undoes still holds. The entry is Failed and due at
// once: compensation's first pass takes it if the run fails, the
// owed-inverse loop if it succeeds.
func (s *Service) noteDebt(ctx context.Context, p *plan.Plan, r *runs.Run, step plan.Step) (*runs.Run, error) {
	var debt *plan.Debt
	for _, d := range p.Compensation(opRuns(r)) {
		if d.Inverse == step {
			debt = &d
		}
	}
	if debt == nil {
		return r, nil
	}
	h, _, _ := p.Op(step.Hook, step.Op)
	r, _, err := s.Ask(ctx, "hook", runs.Request{Op: runs.OpDebt, Run: r.ID, Step: step.String(), Undoes: debt.Op.String(),
		Deadline: h.EffectiveCompensationDeadline()})
	return r, err
}
