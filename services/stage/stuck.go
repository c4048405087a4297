package stage

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
)

// abandoned begins the step error FailStuck records.
const abandoned = "abandoned"

// FailStuck fails the runs a dead process abandoned: a run not yet final
// with a step Running past its deadline (Claim sets one for steps with a
// time limit, such as hook ops: their timeout plus a slack, so a live
// process has killed the op long before). Each such run gets its first
// overdue step marked Failed, and step.failed and backup.failed (or
// restore.failed) are published, so compensation runs.
//
// now is the watchdog's clock. Several watchdogs may call it at once: the
// compare-and-set on the run record lets one decide, and the events' ids
// are deterministic, so a repeat publishes duplicates JetStream drops. It
// returns the ids of the runs it failed (or found failed by a repeat).
func FailStuck(ctx context.Context, d *Deps, now time.Time) ([]string, error) {
	list, err := d.Runs.Active(ctx)
	if err != nil {
		return nil, fmt.Errorf("fail stuck runs: %w", err)
	}
	var failed []string
	for _, r := range list {
		if r.Phase.Done() {
			continue
		}
		name := overdue(r, now)
		if name == "" {
			continue
		}
		ok, err := failStuckRun(ctx, d, r, name, now)
		if err != nil {
			return failed, fmt.Errorf("fail stuck run %s: %w", r.ID, err)
		}
		if ok {
			failed = append(failed, r.ID)
		}
	}
	return failed, nil
}

// overdue names the first step of r Running past its deadline, or "".
func overdue(r *runs.Run, now time.Time) string {
	for _, st := range r.Steps {
		if st.Phase == runs.Running && !st.Deadline.IsZero() && now.After(st.Deadline) {
			return st.Name
		}
	}
	return ""
}

func failStuckRun(ctx context.Context, d *Deps, r *runs.Run, name string, now time.Time) (bool, error) {
	var reason string
	_, err := d.Runs.Update(ctx, r.ID, func(r *runs.Run) error {
		reason = ""
		st := r.FindStep(name)
		switch {
		case st == nil:
			return runs.ErrNoChange
		case st.Phase == runs.Failed && strings.HasPrefix(st.Error, abandoned):
			reason = st.Error // marked by a watchdog that stopped before announcing
			return runs.ErrNoChange
		case st.Phase != runs.Running || !now.After(st.Deadline):
			return runs.ErrNoChange // it moved on meanwhile
		}
		reason = fmt.Sprintf("%s: %s ran past its deadline %s (owner %s)", abandoned, name, st.Deadline.Format(time.RFC3339), st.Owner)
		st.Phase, st.Error, st.Finished = runs.Failed, reason, now.UTC()
		return nil
	})
	if err != nil || reason == "" {
		return false, err
	}
	cause, err := d.Emit(r.Plan, r.ID, name, events.StepFailedData{Step: name, Reason: reason, TimedOut: true})
	if err != nil {
		return false, err
	}
	stageName, _, _ := strings.Cut(name, ":")
	out, err := d.FailRun(ctx, r.Plan, r.ID, stageName, name, reason, cause)
	if err != nil {
		return false, err
	}
	if err := d.Bus.Publish(ctx, append([]events.Event{cause}, out...)...); err != nil {
		return false, err
	}
	return true, nil
}
