package metrics

import (
	"context"
	"time"
)

// failStuck fails runs stuck in a step past its deadline.
func (s *Service) failStuck(ctx context.Context, now time.Time) error {
	return nil // TODO: stage.FailStuck
}
