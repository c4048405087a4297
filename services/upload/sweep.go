package upload

import (
	"context"
	"strings"
	"time"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/storage"
)

// Leftover multipart uploads. An upload that fails is aborted by the
// storage; when the storage itself was unreachable (it died mid-upload), the
// abort cannot reach it and an incomplete upload stays behind: invisible as
// an object, but holding space. Such keys are remembered in the leases
// bucket and swept at the start of the next upload to that destination.

func sweepKey(planName, dest, runID string) string {
	return "sweep." + planName + "." + dest + "." + runID
}

// sweepNow tries to remove the incomplete uploads of key at once, and
// remembers the key for the next upload when the storage does not answer.
func (s *Service) sweepNow(ctx context.Context, st storage.Storage, planName, dest, runID string) {
	sw, ok := storage.As[storage.KeySweeper](st)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := sw.RemoveIncompleteKey(ctx, format.ObjectKey(planName, runID), time.Now()); err == nil {
		return
	}
	if _, err := s.Bus.Leases.Put(ctx, sweepKey(planName, dest, runID), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		s.Log.Warn("could not remember a leftover upload to sweep", "plan", planName, "destination", dest, "runid", runID, "err", err)
	}
}

// sweepLeftovers removes the incomplete uploads remembered for dest. Errors
// leave the record for the next time; they never fail the upload at hand.
func (s *Service) sweepLeftovers(ctx context.Context, st storage.Storage, p *plan.Plan, dest string) {
	sw, ok := storage.As[storage.KeySweeper](st)
	if !ok {
		return
	}
	prefix := "sweep." + p.Name() + "." + dest + "."
	keys, err := bus.ListKeys(ctx, s.Bus.Leases, prefix+"*")
	if err != nil {
		s.Log.Warn("list leftover uploads", "plan", p.Name(), "destination", dest, "err", err)
		return
	}
	for _, k := range keys {
		runID := strings.TrimPrefix(k, prefix)
		n, err := sw.RemoveIncompleteKey(ctx, format.ObjectKey(p.Name(), runID), time.Now())
		if err != nil {
			continue
		}
		_ = s.Bus.Leases.Delete(ctx, k)
		s.Log.Info("swept a leftover upload", "plan", p.Name(), "destination", dest, "runid", runID, "uploads", n)
	}
}
