// Package hook is the hook stage: it runs the hook ops of a run's workflow
// when they are due (exec, sql, http, kubernetes), and when a run fails it
// runs the inverse ops the run owes, newest first, once each with retries —
// also after a crash of this service in the middle of compensation, and with
// several replicas seeing the failure. An inverse op still failing after its
// retries stays owed and is retried by the owed-inverse loop until its
// deadline. It must never leave a lock behind without saying so.
//
// The one rule (plan.Compensation): an op that started owes its inverse op
// until a successful run of that inverse started after it. Every decision
// is read from the run record, never from events: an op is claimed in the
// record before it runs and recorded there before its completion is
// announced; an inverse op is claimed in the record's compensation list
// before it runs and each try is recorded. The one window left is a crash
// after an op or inverse op took effect and before it was recorded: the op
// is then treated as started (its inverse runs) and an inverse op runs
// again, which is why inverse ops must be idempotent.
package hook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// interrupted begins the step error recorded when an op's process died
// mid-op.
const interrupted = "interrupted"

// deadlineSlack is added to an op's timeout to give its step deadline: the
// timeout kills the op first, so a step still Running past its deadline
// belongs to a process that is gone.
const deadlineSlack = time.Minute

// Service is the hook stage.
type Service struct {
	*stage.Deps
	// id names this replica in compensation claims. It is unique per
	// Service, so two replicas in one process are told apart.
	id string
	// Poll is how often compensation looks again at a run whose hook op is
	// still running somewhere (default 250ms).
	Poll time.Duration
	// Backoff is the wait before an inverse op's first retry in
	// compensation; it doubles with every retry, up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// RetryEvery is how long an inverse op still owed after its retries
	// waits before the owed-inverse loop tries it again.
	RetryEvery time.Duration
	// Tick is how often the owed-inverse loop looks for due retries (at
	// most RetryEvery).
	Tick time.Duration
}

// Defaults of the compensation tuning.
const (
	DefaultBackoff    = time.Second
	DefaultMaxBackoff = 30 * time.Second
	DefaultRetryEvery = 5 * time.Minute
	DefaultTick       = 30 * time.Second
)

// New builds the hook stage.
func New(d *stage.Deps) *Service {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &Service{Deps: d, id: d.Instance + "#" + hex.EncodeToString(b[:]), Poll: 250 * time.Millisecond,
		Backoff: DefaultBackoff, MaxBackoff: DefaultMaxBackoff, RetryEvery: DefaultRetryEvery, Tick: DefaultTick}
}

// Name implements stage.Service.
func (s *Service) Name() string { return "hook" }

// Consumers implements stage.Service: one consumer runs due steps, another
// compensates failed runs, so a long compensation never delays a lock.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{
		s.Spec("hook", s.handleStep, events.BackupRequested, events.RestoreRequested, events.StepCompleted),
		s.Spec("compensate", s.handleFailure, events.BackupFailed, events.RestoreFailed, events.BackupCancelled, events.RestoreCancelled),
	}
}

func (s *Service) handleStep(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, r, err := s.RunPlan(ctx, "hook", e)
	if err != nil {
		return nil, err
	}
	step, ok, err := stage.DueStep(p, r, e)
	if err != nil || !ok {
		// Past the workflow's last step the owner of run state settles
		// the run, when the last step's end is recorded.
		return nil, err
	}
	if step.Kind != plan.StepHook {
		return nil, nil
	}
	h, op, found := p.Op(step.Hook, step.Op)
	if !found {
		return nil, bus.Permanent(fmt.Errorf("plan %s: step %s names no op", p.Name(), step))
	}
	name := step.String()
	if err := s.CheckExec(p); err != nil {
		// Refused before the claim: no step started, so compensation
		// finds nothing of this run to undo.
		return s.FailRun(ctx, p.Name(), r.ID, "hook", name, err.Error(), e)
	}
	timeout := h.EffectiveTimeout(op)
	r, c, err := s.Claim(ctx, r.ID, name, timeout+deadlineSlack)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Skip:
		return s.skipped(ctx, p, r, step, h, op)
	case c.Done:
		return s.stepResult(ctx, p, r, step, h, op, Outcome{})
	case c.Interrupted:
		// Heartbeats keep a live handler's delivery; this redelivery means
		// the process running the op died after starting it. The op may
		// have taken effect, so compensation treats it as started.
		r, err = s.FinishStep(ctx, r.ID, name, runs.Failed, 0, interruptedText(c.Owner), nil)
		if err != nil {
			return nil, err
		}
		return s.stepResult(ctx, p, r, step, h, op, Outcome{})
	}

	log := s.Log.With("plan", p.Name(), "runid", r.ID, "step", name)
	begin := s.Now()
	// Records where the op runs in its step first (supervision, reap.go).
	outcome, runErr := s.runStepOp(ctx, p, r.ID, name, h, op, timeout, opEnv(p.Name(), r.ID, name, false))
	if runErr != nil && ctx.Err() != nil && !outcome.TimedOut {
		// Shutting down mid-op: the step stays Running, and the redelivery
		// fails the run and compensates.
		return nil, ctx.Err()
	}
	phase, errText := runs.Succeeded, ""
	if runErr != nil {
		errText = runErr.Error()
		phase = runs.Failed
		if h.EffectiveOnError(op) == plan.OnErrorContinue {
			phase = runs.Skipped
		}
		log.Warn("hook op failed", "err", runErr, "onError", h.EffectiveOnError(op))
	} else {
		log.Info("hook op completed", "elapsed", s.Now().Sub(begin).Round(time.Millisecond))
	}
	// The op is recorded before its completion is announced: compensation
	// reads the record, never the events.
	r, err = s.FinishStep(ctx, r.ID, name, phase, 0, errText, nil)
	if err != nil {
		return nil, err
	}
	if phase == runs.Skipped {
		// A failed inverse op the run goes on without is owed all the same.
		if r, err = s.noteDebt(ctx, p, r, step); err != nil {
			return nil, err
		}
	}
	// With the op's output tail and exit code; a redelivery rebuilds the
	// event from the record without them, under the same id.
	return s.stepResult(ctx, p, r, step, h, op, outcome)
}

func interruptedText(owner string) string {
	return interrupted + ": " + owner + " stopped while running it"
}

// skipped handles a step Claim skips: the run is over, or the step failed.
// A step recorded Failed by a delivery that died before announcing it is
// announced now; a step left Running in a run that is over belongs to a
// process that died, and is marked interrupted so compensation stops
// waiting for it.
func (s *Service) skipped(ctx context.Context, p *plan.Plan, r *runs.Run, step plan.Step, h *plan.Hook, op *plan.Op) ([]events.Event, error) {
	name := step.String()
	st := r.FindStep(name)
	switch {
	case st == nil:
		return nil, nil
	case st.Phase == runs.Failed:
		return s.stepResult(ctx, p, r, step, h, op, Outcome{})
	case st.Phase == runs.Running && r.Phase.Done():
		_, err := s.Interrupt(ctx, r.ID, name, interruptedText(st.Owner))
		return nil, err
	}
	return nil, nil
}

// stepResult builds the events of a finished hook step from the record,
// with what o adds (the op's output when it ran in this delivery).
func (s *Service) stepResult(ctx context.Context, p *plan.Plan, r *runs.Run, step plan.Step, h *plan.Hook, op *plan.Op, o Outcome) ([]events.Event, error) {
	ev, err := s.resultEvent(p, r, step, h, op, o)
	if err != nil {
		return nil, err
	}
	st := r.FindStep(step.String())
	switch st.Phase {
	case runs.Succeeded, runs.Skipped:
		next, err := s.StepCompleted(ctx, p.Name(), r.ID, step.String(), st.Duration(st.Finished))
		if err != nil {
			return nil, err
		}
		// A workflow's last step may be a hook: the run's last piece.
		return s.Settle(ctx, "hook", r.ID, ev, next)
	}
	return s.FailRun(ctx, p.Name(), r.ID, "hook", step.String(), "hook "+step.String()+": "+st.Error, ev, ev)
}

func (s *Service) resultEvent(p *plan.Plan, r *runs.Run, step plan.Step, h *plan.Hook, op *plan.Op, o Outcome) (events.Event, error) {
	st := r.FindStep(step.String())
	dur := st.Duration(st.Finished).Milliseconds()
	if st.Phase == runs.Succeeded {
		return s.EmitAt(r.CurrentAttempt(), p.Name(), r.ID, step.String(), events.HookCompletedData{
			Hook: step.Hook, Op: step.Op, DurationMs: dur, OutputTail: o.Output,
		})
	}
	return s.EmitAt(r.CurrentAttempt(), p.Name(), r.ID, step.String(), events.HookFailedData{
		Hook: step.Hook, Op: step.Op, Error: st.Error, OnError: string(h.EffectiveOnError(op)),
		TimedOut: o.TimedOut || strings.Contains(st.Error, ErrTimeout.Error()), ExitCode: o.ExitCode,
		DurationMs: dur, OutputTail: o.Output,
	})
}

// inFlight returns the first hook step of r that is Running and not yet
// past its deadline: an op a live replica may still complete.
func inFlight(r *runs.Run, now time.Time) *runs.Step {
	for i := range r.Steps {
		st := &r.Steps[i]
		if strings.HasPrefix(st.Name, "hook:") && st.Phase == runs.Running && (st.Deadline.IsZero() || now.Before(st.Deadline)) {
			return st
		}
	}
	return nil
}

// settled waits until no hook op of the run is in flight, so compensation
// never undoes an op before that op is done (the op would otherwise take
// effect after its inverse). The wait is bounded by the steps' deadlines.
func (s *Service) settled(ctx context.Context, runID string) (*runs.Run, error) {
	for {
		r, err := s.Runs.Get(ctx, runID)
		if err != nil {
			if errors.Is(err, runs.ErrNotFound) {
				return nil, bus.Permanent(err)
			}
			return nil, err
		}
		if !r.Phase.Unsuccessful() {
			return r, nil // replayed since: handleFailure leaves it alone
		}
		st := inFlight(r, s.Now())
		if st == nil {
			return r, nil
		}
		s.Log.Debug("compensation waits for a running hook op", "plan", r.Plan, "runid", runID, "step", st.Name, "deadline", st.Deadline)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(s.Poll):
		}
	}
}
