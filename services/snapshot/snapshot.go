// Package snapshot is the snapshot stage: when a run's workflow reaches its
// data step, it runs the plan's source plugin and cuts the dump into chunks
// on the run's raw chunk stream, hashing the plaintext once on the way. It
// never holds a whole dump, and never lets a failed or cut-short dump end as
// anything but a failed stream.
package snapshot

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/services/stage"
)

// Service is the snapshot stage.
type Service struct {
	*stage.Deps
	// ProgressEvery throttles snapshot.progressed events (default 1s).
	ProgressEvery time.Duration
}

// New builds the snapshot stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d, ProgressEvery: time.Second} }

// Name implements stage.Service.
func (s *Service) Name() string { return "snapshot" }

// Consumers implements stage.Service.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{s.Spec("snapshot", s.handle, events.BackupRequested, events.StepCompleted)}
}

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	ds, ok, err := s.ClaimDataStep(ctx, e, runs.KindBackup, plan.StepSnapshot)
	if err != nil || !ok {
		return nil, err
	}
	p, r, name, c := ds.Plan, ds.Run, ds.Name, ds.Claimed
	switch {
	case c.Failed:
		return s.FailRun(ctx, p.Name(), r.ID, "snapshot", name, c.Error, e)
	case c.Skip:
		return nil, nil
	case c.Done:
		return s.completed(p, r, name, nil)
	case c.Interrupted:
		// The process streaming this dump died; its chunks cannot be
		// continued, so the readers are told and the run fails.
		if w, err := s.Bus.NewChunkWriter(ctx, stage.DataKey(r.ID), bus.KindRaw, []string{bus.RawReader}, s.DataFor(p)); err == nil {
			_ = w.Fail(ctx, "snapshot interrupted: the snapshot service running it stopped mid-stream")
		}
		if _, err := s.FinishStep(ctx, r.ID, name, runs.Failed, 0, "interrupted", nil); err != nil {
			return nil, err
		}
		return s.FailRun(ctx, p.Name(), r.ID, "snapshot", name,
			fmt.Sprintf("snapshot interrupted: %s stopped while streaming the dump", c.Owner), e)
	}
	return s.run(ctx, p, r, name, e)
}

// completed rebuilds the events of a finished snapshot from the run record.
func (s *Service) completed(p *plan.Plan, r *runs.Run, name string, desc map[string]string) ([]events.Event, error) {
	st := r.FindStep(name)
	dur := st.Duration(st.Finished)
	done, err := s.EmitAt(r.CurrentAttempt(), p.Name(), r.ID, name, events.SnapshotCompletedData{
		Source: p.Spec.Source.Type, Bytes: r.Bytes, Chunks: r.Chunks, SHA256: r.SHA256, DurationMs: dur.Milliseconds(),
		Describe: desc,
	})
	if err != nil {
		return nil, err
	}
	next, err := s.StepCompletedAt(r.CurrentAttempt(), p.Name(), r.ID, name, dur)
	if err != nil {
		return nil, err
	}
	return []events.Event{done, next}, nil
}

func (s *Service) run(ctx context.Context, p *plan.Plan, r *runs.Run, name string, cause events.Event) ([]events.Event, error) {
	log := s.Log.With("plan", p.Name(), "runid", r.ID, "step", name)
	fail := func(reason string, failed events.SnapshotFailedData) ([]events.Event, error) {
		if _, err := s.FinishStep(ctx, r.ID, name, runs.Failed, failed.Bytes, reason, nil); err != nil {
			return nil, err
		}
		failed.Source, failed.Error = p.Spec.Source.Type, reason
		fe, err := s.Emit(ctx, p.Name(), r.ID, name, failed)
		if err != nil {
			return nil, err
		}
		return s.FailRun(ctx, p.Name(), r.ID, "snapshot", name, reason, cause, fe)
	}

	src, plugin, err := s.Plugins.Source(p)
	if err != nil {
		return fail(err.Error(), events.SnapshotFailedData{})
	}
	w, err := s.Bus.NewChunkWriter(ctx, stage.DataKey(r.ID), bus.KindRaw, []string{bus.RawReader}, s.DataFor(p))
	if err != nil {
		return nil, err
	}
	chunkSize := int(p.Spec.ChunkSize)
	started, err := s.Emit(ctx, p.Name(), r.ID, name, events.SnapshotStartedData{
		Source: p.Spec.Source.Type, DataSubject: bus.DataSubject(stage.DataKey(r.ID), bus.KindRaw), ChunkSize: int64(chunkSize),
	})
	if err != nil {
		return nil, err
	}
	if err := s.Bus.Publish(ctx, started); err != nil {
		return nil, err
	}

	begin := time.Now()
	// The dump, and its chunks' publishing, stop when the run ends
	// elsewhere (cancelled, failed).
	dumpCtx, cancelDump := s.WatchRun(ctx, r.ID)
	defer cancelDump()
	cw := newChunker(dumpCtx, w, chunkSize)
	// After finish this is a no-op; after a plugin's panic the hasher may
	// wait on the stream, so the dump's context ends first.
	defer func() { cancelDump(); cw.stop() }()
	stopProgress := s.Progress(dumpCtx, p.Name(), r.ID, name, events.SnapshotProgressed, "", s.ProgressEvery,
		func() (int64, int64) { return cw.written.Load(), cw.chunks.Load() })
	desc, berr := src.Backup(dumpCtx, cw)
	stopProgress()
	last, sum, herr := cw.finish()
	if berr == nil {
		berr = herr
	}
	if berr == nil && cw.n == 0 && !(plugin.CanBeEmpty || p.Spec.Source.AllowEmpty) {
		berr = errors.New("the dump is empty, and the plan says an empty dump is impossible for this source (set spec.source.allowEmpty to accept it)")
	}
	if ended := context.Cause(dumpCtx); berr != nil && errors.Is(ended, stage.ErrRunEnded) {
		// Killed because the run ended elsewhere: an operator's cancel, or
		// another stage's failure, which that stage announced. The dump
		// did not fail, so no snapshot.failed (an alert on it would fire
		// on every cancel, and name the wrong cause of a failure); the
		// step ends Cancelled, or Failed naming the run's failure.
		berr = fmt.Errorf("stopped: %w", ended)
		if ferr := w.Fail(context.WithoutCancel(ctx), berr.Error()); ferr != nil && !errors.Is(ferr, bus.ErrDownstreamGone) {
			log.Warn("could not end the chunk stream with the run's end", "err", ferr)
		}
		phase := runs.Failed
		if stage.Cancelled(ended) {
			phase = runs.Cancelled
		}
		_, err := s.FinishStep(ctx, r.ID, name, phase, cw.n, berr.Error(), nil)
		log.Info("snapshot stopped: the run ended", "phase", phase, "bytes", cw.n)
		return nil, err
	}
	if berr != nil {
		failed := events.SnapshotFailedData{Bytes: cw.n}
		var se *source.Error
		if errors.As(berr, &se) {
			failed.ExitStatus, failed.StderrTail = se.ExitStatus, se.StderrTail
		}
		// Tell the readers first, so upload aborts and nothing looks like a backup.
		if ferr := w.Fail(context.WithoutCancel(ctx), berr.Error()); ferr != nil && !errors.Is(ferr, bus.ErrDownstreamGone) {
			log.Warn("could not end the chunk stream with the failure", "err", ferr)
		}
		return fail("dump failed: "+berr.Error(), failed)
	}

	digest := hex.EncodeToString(sum)
	end := bus.RawEnd{Bytes: cw.n, SHA256: digest, Chunks: w.Seq() + 1, Source: p.Spec.Source.Type, Describe: desc}
	if err := w.Close(ctx, last, end.Trailer()); err != nil {
		return fail("end chunk stream: "+err.Error(), events.SnapshotFailedData{Bytes: cw.n})
	}
	chunks := w.Seq()
	r, err = s.FinishStep(ctx, r.ID, name, runs.Succeeded, cw.n, "", &runs.Result{Bytes: cw.n, SHA256: digest, Chunks: chunks})
	if err != nil {
		return nil, err
	}
	log.Info("snapshot completed", "bytes", cw.n, "chunks", chunks, "sha256", digest, "elapsed", time.Since(begin).Round(time.Millisecond))
	return s.completed(p, r, name, desc)
}
