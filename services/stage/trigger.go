package stage

import (
	"context"
	"fmt"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/planstore"
)

// RequestBackup publishes backup.requested for an existing plan and returns
// the new run's id and the event's stream sequence (to follow the run from).
func RequestBackup(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName, trigger, by, reason string) (runID string, err error) {
	if _, err := plans.Get(ctx, planName); err != nil {
		return "", err
	}
	runID = events.NewID()
	m := b.Meta(planName, runID, "")
	e, err := events.New(m, events.BackupRequestedData{Trigger: trigger, RequestedBy: by, Reason: reason})
	if err != nil {
		return "", err
	}
	if err := b.Publish(ctx, e); err != nil {
		return "", fmt.Errorf("trigger %s: %w", planName, err)
	}
	return runID, nil
}

// RequestRestore publishes restore.requested for a plan's backup.
func RequestRestore(ctx context.Context, b *bus.Bus, plans *planstore.Store, planName string, req events.RestoreRequestedData) (runID string, err error) {
	if _, err := plans.Get(ctx, planName); err != nil {
		return "", err
	}
	runID = events.NewID()
	e, err := events.New(b.Meta(planName, runID, ""), req)
	if err != nil {
		return "", err
	}
	if err := b.Publish(ctx, e); err != nil {
		return "", fmt.Errorf("restore %s: %w", planName, err)
	}
	return runID, nil
}
