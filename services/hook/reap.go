package hook

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/supervise"
)

// No op outlives its owner: an exec op's supervisor kills the op's process
// group when the process running the op dies, and an sql op's statement is
// ended by the server's statement limit. Compensation does not rely on
// either alone: before it runs the inverse of an op whose owner died, it
// makes sure that op is dead (ensureDead), from what runStepOp recorded in
// the op's step before the op could take effect.

// reapSlack is added to an op's timeout when compensation cannot see the
// op and waits for the op's own timeout to end it: the owner kills the op
// at its timeout (a statement's server limit is the timeout plus
// sqlLimitSlack), and the kill itself takes a moment.
const reapSlack = 5 * time.Second

// reapWait bounds how long ensureDead waits for a kill it sent to take
// effect before it falls back on waiting for the op's timeout.
const reapWait = 10 * time.Second

// abandoned begins the step error the control service records for a step
// past its deadline (runs.OpExpire).
const abandoned = "abandoned"

// ownerDied reports whether hook step st is an op whose owner died while
// running it: recorded interrupted (a redelivery found it Running) or
// abandoned (the watchdog found it past its deadline), or still Running
// once compensation stopped waiting for it (past its deadline).
func ownerDied(st runs.Step) bool {
	if !strings.HasPrefix(st.Name, "hook:") || st.Started.IsZero() {
		return false
	}
	switch st.Phase {
	case runs.Running:
		return true
	case runs.Failed:
		return strings.HasPrefix(st.Error, interrupted) || strings.HasPrefix(st.Error, abandoned)
	}
	return false
}

// reapInterrupted makes sure every op of r whose owner died is dead
// (ensureDead), so that no such op takes effect after its inverse. It
// returns an error only when ctx ends.
func (s *Service) reapInterrupted(ctx context.Context, p *plan.Plan, r *runs.Run) error {
	for _, st := range r.Steps {
		if !ownerDied(st) {
			continue
		}
		if err := s.ensureDead(ctx, p, st); err != nil {
			return err
		}
	}
	return nil
}

// ensureDead makes sure the op of hook step st, whose owner died, can no
// longer take effect, before compensation runs its inverse:
//
//   - an exec op on this machine: its process group (recorded in the step)
//     is checked gone, and killed if it is not;
//   - an sql op: its session (recorded in the step) is killed on the server;
//   - otherwise — an op on another machine, an http or kubernetes op,
//     nothing recorded, or a kill that did not take — it waits until the
//     op's timeout (plus reapSlack) has passed since the op started: by
//     then the owner, had it lived, killed the op itself.
//
// A kubernetes op's local kubectl is killed like an exec op, and then the
// wait applies all the same: the command kubectl started in the pod is not
// ours to kill. ensureDead is idempotent and returns an error only when
// ctx ends.
func (s *Service) ensureDead(ctx context.Context, p *plan.Plan, st runs.Step) error {
	if st.Started.IsZero() {
		return nil // claimed by no one: nothing ran
	}
	step, err := plan.ParseStep(st.Name)
	if err != nil {
		return nil
	}
	h, op, ok := p.Op(step.Hook, step.Op)
	if !ok {
		return nil
	}
	log := s.Log.With("plan", p.Name(), "step", st.Name, "owner", st.Owner)
	proc := st.Proc
	switch {
	case h.Type == plan.HookHTTP:
		log.Info("an interrupted http request cannot be recalled: waiting for its timeout before undoing it")
	case proc == nil:
		log.Info("the interrupted op recorded no process: waiting for its timeout before undoing it")
	case (h.Type == plan.HookExec || h.Type == plan.HookKubernetes) && proc.PGID != 0:
		g := supervise.Group{Host: proc.Host, Machine: proc.Machine, PGID: proc.PGID, Start: proc.PGIDStart}
		rctx, cancel := context.WithTimeout(ctx, reapWait)
		err := supervise.Reap(rctx, g)
		cancel()
		switch {
		case err == nil && h.Type == plan.HookExec:
			log.Info("the interrupted op's process group is gone", "host", proc.Host, "pgid", proc.PGID)
			return nil
		case err == nil:
			log.Info("the interrupted op's kubectl is gone; its command in the pod may not be: waiting for its timeout", "pgid", proc.PGID)
		case errors.Is(err, supervise.ErrOtherMachine):
			log.Info("the interrupted op ran on another machine: waiting for its timeout before undoing it", "host", proc.Host, "pgid", proc.PGID)
		default:
			log.Warn("the interrupted op's process group could not be killed: waiting for its timeout", "pgid", proc.PGID, "err", err)
		}
	case h.Type == plan.HookSQL && proc.ConnID != 0:
		t, err := sqlDSN(p)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, reapWait)
			err = t.killSession(rctx, *proc)
			cancel()
		}
		if err == nil {
			log.Info("the interrupted op's session is gone", "server", proc.Server, "session", proc.ConnID)
			return nil
		}
		log.Warn("the interrupted op's session could not be ended: waiting for its timeout", "server", proc.Server, "session", proc.ConnID, "err", err)
	}
	return s.waitTimeout(ctx, st, h.EffectiveTimeout(op))
}

// waitTimeout waits until the op of step st has passed its timeout (the
// one recorded with its claim, else the plan's) plus reapSlack.
func (s *Service) waitTimeout(ctx context.Context, st runs.Step, timeout time.Duration) error {
	if !st.Deadline.IsZero() {
		timeout = st.Deadline.Sub(st.Started) - deadlineSlack
	}
	wait := st.Started.Add(timeout + reapSlack).Sub(s.Now())
	if wait <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}
