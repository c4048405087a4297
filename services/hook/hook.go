// Package hook is the hook stage: it runs the hook ops of a run's workflow
// when they are due (exec, sql, http, kubernetes), and when a run fails it
// runs the inverseOps of the ops that completed, newest first, once each —
// also after a crash of this service in the middle of compensation, and with
// several replicas seeing the failure. It must never leave a lock behind.
package hook

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// interrupted is the step error recorded when an op's process died mid-op.
const interrupted = "interrupted"

// Service is the hook stage.
type Service struct{ *stage.Deps }

// New builds the hook stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d} }

// Name implements stage.Service.
func (s *Service) Name() string { return "hook" }

// Consumers implements stage.Service: one consumer runs due steps, another
// compensates failed runs, so a long compensation never delays a lock.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{
		s.Spec("hook", s.handleStep, events.BackupRequested, events.RestoreRequested, events.StepCompleted),
		s.Spec("compensate", s.handleFailure, events.BackupFailed, events.RestoreFailed),
	}
}

func (s *Service) handleStep(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, err := s.Plan(ctx, e)
	if err != nil {
		return nil, err
	}
	r, err := s.EnsureRun(ctx, e)
	if err != nil {
		return nil, err
	}
	step, ok, err := stage.DueStep(p, r, e)
	if err != nil {
		return nil, err
	}
	if !ok {
		// The workflow ended with the step just completed: the run may be
		// done if its data already is.
		if e.Type() == events.StepCompleted {
			return s.Settle(ctx, p, r.ID)
		}
		return nil, nil
	}
	if step.Kind != plan.StepHook {
		return nil, nil
	}
	h, op, found := p.Op(step.Hook, step.Op)
	if !found {
		return nil, bus.Permanent(fmt.Errorf("plan %s: step %s names no op", p.Name(), step))
	}
	name := step.String()
	timeout := h.EffectiveTimeout(op)
	r, c, err := s.Claim(ctx, r.ID, name, timeout+time.Minute)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Skip:
		return nil, nil
	case c.Done:
		return s.stepResult(ctx, p, r, step, h, op)
	case c.Interrupted:
		_, _ = s.FinishStep(ctx, r.ID, name, runs.Failed, 0, interrupted, nil)
		return s.FailRun(ctx, p.Name(), r.ID, "hook", name,
			fmt.Sprintf("hook %s interrupted: %s stopped while running it", step, c.Owner), e)
	}

	log := s.Log.With("plan", p.Name(), "runid", r.ID, "step", name)
	begin := s.Now()
	outcome, runErr := runOp(ctx, p, h, op, timeout)
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
	out, err := s.stepResult(ctx, p, r, step, h, op)
	if err != nil {
		return nil, err
	}
	if outcome.Output != "" || outcome.ExitCode != nil {
		// Re-emit with the op's output tail and exit code, same id.
		out[0], _ = s.resultEvent(p, r, step, h, op, outcome)
	}
	return out, nil
}

// stepResult rebuilds the events of a finished hook step from the record.
func (s *Service) stepResult(ctx context.Context, p *plan.Plan, r *runs.Run, step plan.Step, h *plan.Hook, op *plan.Op) ([]events.Event, error) {
	ev, err := s.resultEvent(p, r, step, h, op, Outcome{})
	if err != nil {
		return nil, err
	}
	st := r.FindStep(step.String())
	switch st.Phase {
	case runs.Succeeded, runs.Skipped:
		next, err := s.StepCompleted(p.Name(), r.ID, step.String(), st.Duration(st.Finished))
		if err != nil {
			return nil, err
		}
		return []events.Event{ev, next}, nil
	}
	failed, err := s.FailRun(ctx, p.Name(), r.ID, "hook", step.String(), "hook "+step.String()+": "+st.Error, ev)
	return append([]events.Event{ev}, failed...), err
}

func (s *Service) resultEvent(p *plan.Plan, r *runs.Run, step plan.Step, h *plan.Hook, op *plan.Op, o Outcome) (events.Event, error) {
	st := r.FindStep(step.String())
	dur := st.Duration(st.Finished).Milliseconds()
	if st.Phase == runs.Succeeded {
		return s.Emit(p.Name(), r.ID, step.String(), events.HookCompletedData{
			Hook: step.Hook, Op: step.Op, DurationMs: dur, OutputTail: o.Output,
		})
	}
	return s.Emit(p.Name(), r.ID, step.String(), events.HookFailedData{
		Hook: step.Hook, Op: step.Op, Error: st.Error, OnError: string(h.EffectiveOnError(op)),
		TimedOut: o.TimedOut || strings.Contains(st.Error, ErrTimeout.Error()), ExitCode: o.ExitCode,
		DurationMs: dur, OutputTail: o.Output,
	})
}

// done lists the hook steps of r that may have taken effect, in the order
// they finished: completed ones, and interrupted ones (their process died
// after starting them, so they may have run).
func done(r *runs.Run) []plan.Step {
	type fin struct {
		step plan.Step
		at   time.Time
	}
	var list []fin
	for _, st := range r.Steps {
		if !strings.HasPrefix(st.Name, "hook:") {
			continue
		}
		if st.Phase != runs.Succeeded && !(st.Phase == runs.Failed && st.Error == interrupted) && st.Phase != runs.Running {
			continue
		}
		ps, err := plan.ParseStep(st.Name)
		if err != nil {
			continue
		}
		at := st.Finished
		if at.IsZero() {
			at = st.Started
		}
		list = append(list, fin{ps, at})
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].at.Before(list[j].at) })
	out := make([]plan.Step, len(list))
	for i, f := range list {
		out[i] = f.step
	}
	return out
}

// handleFailure compensates a failed run: each due inverse op is claimed in
// the run record before it runs and recorded when it ends, so a redelivery
// skips what already ran and resumes where a crash stopped.
func (s *Service) handleFailure(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, err := s.Plan(ctx, e)
	if err != nil {
		return nil, err
	}
	runID := events.RunID(e)
	r, err := s.Runs.Get(ctx, runID)
	if err != nil {
		if errors.Is(err, runs.ErrNotFound) {
			return nil, bus.Permanent(err)
		}
		return nil, err
	}
	due := p.Compensation(done(r))
	if len(due) == 0 {
		if r.CompensationDone || len(r.Compensation) == 0 {
			return nil, nil
		}
	}
	var ran []string
	var out []events.Event
	for _, inv := range due {
		name := inv.String()
		h, op, ok := p.Op(inv.Hook, inv.Op)
		if !ok {
			continue
		}
		var state runs.Compensation
		var start bool
		_, err := s.Runs.Update(ctx, runID, func(r *runs.Run) error {
			start = false
			for i := range r.Compensation {
				c := &r.Compensation[i]
				if c.Step != name {
					continue
				}
				state = *c
				if c.Phase == runs.Running && c.Owner != s.Instance {
					// Its owner died mid-op (the failure event came back to
					// us): run it again, inverse ops are made to be repeated.
					c.Owner, c.Started = s.Instance, s.Now().UTC()
					start = true
					return nil
				}
				return runs.ErrNoChange
			}
			r.Compensation = append(r.Compensation, runs.Compensation{Step: name, Phase: runs.Running, Owner: s.Instance, Started: s.Now().UTC()})
			start = true
			return nil
		})
		if err != nil {
			return out, err
		}
		if !start {
			if state.Phase == runs.Succeeded {
				ran = append(ran, inv.Hook+"/"+inv.Op)
			}
			continue
		}
		begin := s.Now()
		outcome, runErr := runOp(ctx, p, h, op, h.EffectiveTimeout(op))
		if runErr != nil && ctx.Err() != nil && !outcome.TimedOut {
			return out, ctx.Err()
		}
		phase, errText := runs.Succeeded, ""
		if runErr != nil {
			phase, errText = runs.Failed, runErr.Error()
		}
		if _, err := s.Runs.Update(ctx, runID, func(r *runs.Run) error {
			for i := range r.Compensation {
				if r.Compensation[i].Step == name {
					r.Compensation[i].Phase, r.Compensation[i].Error, r.Compensation[i].Finished = phase, errText, s.Now().UTC()
				}
			}
			return nil
		}); err != nil {
			return out, err
		}
		step := "compensate:" + name
		if runErr != nil {
			s.Log.Error("inverse op failed: the service may need an operator", "plan", p.Name(), "runid", runID, "op", name, "err", runErr)
			ev, err := s.Emit(p.Name(), runID, step, events.CompensationFailedData{Op: inv.Hook + "/" + inv.Op, Error: errText})
			if err != nil {
				return out, err
			}
			out = append(out, ev)
			continue
		}
		s.Log.Info("inverse op completed", "plan", p.Name(), "runid", runID, "op", name)
		ev, err := s.Emit(p.Name(), runID, step, events.HookCompletedData{Hook: inv.Hook, Op: inv.Op, Inverse: true, DurationMs: s.Now().Sub(begin).Milliseconds(), OutputTail: outcome.Output})
		if err != nil {
			return out, err
		}
		out = append(out, ev)
		ran = append(ran, inv.Hook+"/"+inv.Op)
	}
	if _, err := s.Runs.Update(ctx, runID, func(r *runs.Run) error {
		if r.CompensationDone {
			return runs.ErrNoChange
		}
		r.CompensationDone = true
		return nil
	}); err != nil {
		return out, err
	}
	ev, err := s.Emit(p.Name(), runID, "compensation", events.CompensationCompletedData{Ops: ran})
	if err != nil {
		return out, err
	}
	return append(out, ev), nil
}
