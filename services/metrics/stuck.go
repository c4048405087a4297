package metrics

import (
	"context"
	"time"

	"github.com/backstream/backstream/services/stage"
)

// failStuck fails the runs stuck in a step past its deadline (a process
// died mid-step and no redelivery took the step over), so their
// compensation runs and a backup.failed tells the operator why.
func (s *Service) failStuck(ctx context.Context, now time.Time) error {
	ids, err := stage.FailStuck(ctx, s.Deps, now)
	for _, id := range ids {
		s.Log.Warn("watchdog failed a run stuck past its step deadline", "runid", id)
	}
	return err
}
