// Package verify is the verify stage: once every destination of a run
// reported upload.completed, it reads each object back and checks it against
// its manifest (fully when it holds a key that opens it, ciphertext only
// otherwise), records the result in the manifest, and settles the run: a
// backup succeeds only once it is verified. It also scrubs stored backups
// (scrub.go): reads every copy back again later, and repairs a damaged or
// missing copy from a verified one.
package verify

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// StepName is the run-record entry of the verification of dest.
func StepName(dest string) string { return "verify:" + dest }

// Service is the verify stage.
type Service struct{ *stage.Deps }

// New builds the verify stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d} }

// Name implements stage.Service.
func (s *Service) Name() string { return "verify" }

// Consumers implements stage.Service. Verify also settles runs whose last
// workflow step finishes after their uploads (step.completed).
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{
		// upload.failed too: with spec.require below all, a failed copy
		// may be the last destination to end, and the held copies are
		// verified then.
		s.Spec("verify", s.handle, events.UploadCompleted, events.UploadFailed),
		s.Spec("verify-failed", s.handleFailed, events.BackupFailed, events.BackupCancelled),
		s.scrubSpec(),
	}
}

// handleFailed marks the manifests a failed run left as failed, so nothing
// it stored passes for a good backup (retention removes them later). An
// upload that finishes after this runs is caught by handle, which does the
// same for a failed run's upload.completed.
func (s *Service) handleFailed(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, r, err := s.RunPlan(ctx, "verify", e)
	if err != nil {
		return nil, err
	}
	if !r.Phase.Unsuccessful() {
		// The run was replayed since (a backup.failed of an earlier
		// attempt, retried while its storage was down): the new attempt
		// decides what its manifests say; marking them now would write
		// "failed" over a copy it has verified.
		return nil, nil
	}
	for name, d := range r.Destinations {
		if d.ManifestKey != "" {
			if err := s.markFailed(ctx, p, name, d.ManifestKey, r.ID); err != nil {
				return nil, err
			}
		}
	}
	return nil, nil
}

// markFailed records in a manifest that run runID failed, as the run is
// when the manifest is written (backup.UpdateManifest): a run replayed
// since decides its manifests itself, so a marking that would land after
// the replay's verify wrote "verified" finds it running again and marks
// nothing.
func (s *Service) markFailed(ctx context.Context, p *plan.Plan, dest, manifestKey, runID string) error {
	st, err := s.Plugins.Storage(ctx, p, dest)
	if err != nil {
		return err
	}
	defer st.Close()
	marked := false
	_, err = backup.UpdateManifest(ctx, st, manifestKey, func(m *format.Manifest) (bool, error) {
		marked = false
		if backup.Failed(*m) {
			return false, nil
		}
		r, err := s.Runs.Get(ctx, runID)
		if err != nil {
			return false, err
		}
		if !r.Phase.Unsuccessful() {
			return false, nil // replayed since
		}
		marked = s.failedIn(m, r)
		return marked, nil
	})
	if errors.Is(err, backup.ErrNotFound) {
		return nil
	}
	if err == nil && marked {
		s.Log.Info("manifest of a failed run marked failed", "plan", p.Name(), "runid", runID, "destination", dest)
	}
	return err
}

// failedIn marks m failed with failed run r's reason (backup.MarkFailed).
func (s *Service) failedIn(m *format.Manifest, r *runs.Run) bool {
	return backup.MarkFailed(m, s.Now(), fmt.Sprintf("run failed in %s: %s", r.FailedStage, r.Error))
}

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, r, err := s.RunPlan(ctx, "verify", e)
	if err != nil {
		return nil, err
	}
	if r.Phase.Unsuccessful() && e.Type() == events.UploadFailed {
		return nil, nil
	}
	if r.Phase.Unsuccessful() {
		var d events.UploadCompletedData
		if err := e.DataAs(&d); err != nil {
			return nil, bus.Permanent(err)
		}
		return nil, s.markFailed(ctx, p, d.Destination, d.ManifestKey, r.ID)
	}
	var held []string
	for _, d := range p.Spec.Destinations {
		switch ds := r.Destinations[d.Name]; {
		case ds != nil && ds.Phase == runs.Succeeded:
			held = append(held, d.Name)
		case runs.DestinationFailed(r, d.Name):
			// Its copy failed; the others are verified on their own
			// (spec.require says how many the run needs).
		default:
			return nil, nil // another destination is still uploading
		}
	}
	if !p.Spec.Verify.IsEnabled() {
		return nil, nil // the owner of run state settled it on the last upload
	}
	var out []events.Event
	for _, name := range held {
		evs, err := s.verify(ctx, p, r, name, e)
		out = append(out, evs...)
		if err != nil {
			return out, err
		}
	}
	// The last verify's end settles the run (the owner of run state does).
	return out, nil
}

func (s *Service) verify(ctx context.Context, p *plan.Plan, r *runs.Run, dest string, cause events.Event) ([]events.Event, error) {
	name := StepName(dest)
	ds := r.Dest(dest)
	if ds.Verified {
		st := r.FindStep(name)
		return s.completed(ctx, p, r, dest, ds, st)
	}
	begin := s.Now()
	// Verifying only reads: a verify interrupted by a process that died is
	// simply done again.
	rr, c, err := s.Claim(ctx, r.ID, name, 0)
	switch {
	case err != nil:
		return nil, err
	case c.Done:
		return s.completed(ctx, p, rr, dest, rr.Dest(dest), rr.FindStep(name))
	case c.Failed:
		return s.FailRun(ctx, p.Name(), r.ID, "verify", name, "verify "+dest+": "+c.Error, cause)
	case c.Skip:
		return nil, nil
	}
	st, err := s.Plugins.Storage(ctx, p, dest)
	if err != nil {
		return nil, err // retried: the storage may come back
	}
	defer st.Close()
	m, err := backup.LoadManifest(ctx, st, ds.ManifestKey)
	if err != nil {
		return s.failed(ctx, p, r.ID, dest, ds.Key, fmt.Sprintf("read manifest: %v", err), cause)
	}
	res, verr := backup.Verify(ctx, st, m, s.Keys, s.Now())
	if verr != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// The result is written as the run is at the write: still this
	// attempt's (a replay since verifies with its own reading), and still
	// running. A run that failed meanwhile (a hook after the snapshot) has
	// its manifest say failed, whatever this read. verify-failed marks it
	// too; both decide from the run as it is at their write (a write in
	// between makes the other read again), so it ends failed.
	var runFailed bool
	_, err = backup.UpdateManifest(ctx, st, ds.ManifestKey, func(m *format.Manifest) (bool, error) {
		now, err := s.Runs.Get(ctx, r.ID)
		if err != nil {
			return false, err
		}
		if err := stage.CheckCurrent(now, cause); err != nil {
			return false, err
		}
		if runFailed = now.Phase.Unsuccessful(); runFailed {
			return s.failedIn(m, now), nil
		}
		m.Verify = res.VerifyResult
		return true, nil
	})
	if err != nil {
		return nil, err // retried, or acked when stale
	}
	if verr != nil {
		return s.failed(ctx, p, r.ID, dest, ds.Key, verr.Error(), cause)
	}
	if runFailed {
		_, err := s.FinishStep(ctx, r.ID, name, runs.Skipped, 0, "the run failed while verifying: manifest marked failed", nil)
		return nil, err
	}
	rr, err = s.FinishStep(ctx, r.ID, name, runs.Succeeded, res.StoredBytes, "", &runs.Result{Dest: dest,
		Destination: &runs.Destination{Verified: true, VerifyMode: res.Mode}})
	if err != nil {
		return nil, err
	}
	s.Log.Info("backup verified", "plan", p.Name(), "runid", r.ID, "destination", dest, "mode", res.Mode, "elapsed", time.Since(begin).Round(time.Millisecond))
	return s.completed(ctx, p, rr, dest, rr.Dest(dest), rr.FindStep(name))
}

// completed is the verify.completed of dest, from the run record r.
func (s *Service) completed(ctx context.Context, p *plan.Plan, r *runs.Run, dest string, ds *runs.Destination, st *runs.Step) ([]events.Event, error) {
	var dur time.Duration
	if st != nil {
		dur = st.Duration(st.Finished)
	}
	data := events.VerifyCompletedData{
		Destination: dest, Key: ds.Key, Size: ds.Size, SHA256: ds.SHA256, Mode: ds.VerifyMode,
		DurationMs: dur.Milliseconds(),
	}
	if st != nil && ds.VerifyMode == format.VerifyModeFull {
		data.PlaintextSHA256 = r.SHA256
	}
	ev, err := s.Emit(ctx, p.Name(), r.ID, StepName(dest), data)
	if err != nil {
		return nil, err
	}
	return s.Settle(ctx, "verify", r.ID, ev)
}

func (s *Service) failed(ctx context.Context, p *plan.Plan, runID, dest, key, reason string, cause events.Event) ([]events.Event, error) {
	if _, ferr := s.FinishStep(ctx, runID, StepName(dest), runs.Failed, 0, reason, nil); ferr != nil {
		return nil, ferr
	}
	fe, err := s.Emit(ctx, p.Name(), runID, StepName(dest), events.VerifyFailedData{Destination: dest, Key: key, Error: reason})
	if err != nil {
		return nil, err
	}
	return s.FailRun(ctx, p.Name(), runID, "verify", StepName(dest), "verify "+dest+": "+reason, cause, fe)
}
