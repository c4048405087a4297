package stage

import (
	"context"
	"fmt"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/planstore"
)

// RequestBackup publishes backup.requested for an existing plan that passes
// validation and returns the new run's id.
func RequestBackup(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName, trigger, by, reason string) (runID string, err error) {
	if _, err := plans.Get(ctx, planName); err != nil {
		return "", err
	}
	return publishBackup(ctx, b, planName, trigger, by, reason)
}

// RequestRestore publishes restore.requested for a plan's backup.
func RequestRestore(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName string, req events.RestoreRequestedData) (runID string, err error) {
	if _, err := plans.Get(ctx, planName); err != nil {
		return "", err
	}
	return publishRestore(ctx, b, planName, req)
}

// RequestBackup is RequestBackup in a process with d's policy: when d
// refuses exec, a plan that would run a program is refused here at once
// (ErrExecRefused), before a run exists, rather than by the stage.
func (d *Deps) RequestBackup(ctx context.Context, planName, trigger, by, reason string) (runID string, err error) {
	if err := d.triggerable(ctx, planName); err != nil {
		return "", err
	}
	return publishBackup(ctx, d.Bus, planName, trigger, by, reason)
}

// RequestRestore is RequestRestore in a process with d's policy (see
// RequestBackup): a command source's restoreArgv and exec hooks are refused.
func (d *Deps) RequestRestore(ctx context.Context, planName string, req events.RestoreRequestedData) (runID string, err error) {
	if err := d.triggerable(ctx, planName); err != nil {
		return "", err
	}
	return publishRestore(ctx, d.Bus, planName, req)
}

func (d *Deps) triggerable(ctx context.Context, planName string) error {
	p, err := d.Plans.Get(ctx, planName)
	if err != nil {
		return err
	}
	return d.CheckExec(p)
}

func publishBackup(ctx context.Context, b *bus.Bus, planName, trigger, by, reason string) (string, error) {
	runID := events.NewID()
	e, err := events.New(b.Meta(planName, runID, ""), events.BackupRequestedData{Trigger: trigger, RequestedBy: by, Reason: reason})
	if err != nil {
		return "", err
	}
	if err := b.Publish(ctx, e); err != nil {
		return "", fmt.Errorf("trigger %s: %w", planName, err)
	}
	return runID, nil
}

func publishRestore(ctx context.Context, b *bus.Bus, planName string, req events.RestoreRequestedData) (string, error) {
	runID := events.NewID()
	e, err := events.New(b.Meta(planName, runID, ""), req)
	if err != nil {
		return "", err
	}
	if err := b.Publish(ctx, e); err != nil {
		return "", fmt.Errorf("restore %s: %w", planName, err)
	}
	return runID, nil
}
