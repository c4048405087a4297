// Package upload is the upload stage: for every destination of a plan it
// streams the run's sealed chunks into the storage as they arrive, hashing the
// stored bytes on the way, and writes the manifest only once the object is
// complete. A failure anywhere aborts the object, so nothing that looks like
// a backup is left behind.
package upload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/services/stage"
)

// StepName is the run-record entry of the upload to dest.
func StepName(dest string) string { return "upload:" + dest }

// Service is the upload stage.
type Service struct{ *stage.Deps }

// New builds the upload stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d} }

// Name implements stage.Service.
func (s *Service) Name() string { return "upload" }

// Consumers implements stage.Service.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{
		s.Spec("upload", s.handle, events.SnapshotStarted),
		s.Spec("upload-copy", s.copyFrom, events.UploadRequested),
	}
}

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, r, err := s.RunPlan(ctx, "upload", e)
	if err != nil {
		return nil, err
	}
	runID := r.ID
	// Every destination on its own: one's failure does not stop another,
	// which keeps its whole copy (marked failed with the run) for a
	// replay to copy from.
	var g errgroup.Group
	results := make([][]events.Event, len(p.Spec.Destinations))
	errs := make([]error, len(p.Spec.Destinations))
	for i, d := range p.Spec.Destinations {
		g.Go(func() error {
			results[i], errs[i] = s.destination(ctx, p, runID, d.Name, e)
			return nil
		})
	}
	_ = g.Wait()
	var out []events.Event
	for _, r := range results {
		out = append(out, r...)
	}
	return out, errors.Join(errs...)
}

// copyFrom stores a run's backup in a destination by copying it from
// another that holds it (upload.requested, a replay): the object, checked
// against its SHA-256 as it is written, then its manifest, pending verify.
// Put overwrites, so a redelivery copies again.
func (s *Service) copyFrom(ctx context.Context, e events.Event) ([]events.Event, error) {
	var d events.UploadRequestedData
	if err := e.DataAs(&d); err != nil {
		return nil, bus.Permanent(err)
	}
	p, r, err := s.RunPlan(ctx, "upload", e)
	if err != nil {
		return nil, err
	}
	name := StepName(d.Destination)
	r, c, err := s.Claim(ctx, r.ID, name, 0)
	switch {
	case err != nil:
		return nil, err
	case c.Done:
		return s.completed(ctx, p, r, d.Destination)
	case c.Failed:
		return s.FailRun(ctx, p.Name(), r.ID, "upload", name, "copy to "+d.Destination+": "+c.Error, e)
	case c.Skip:
		return nil, nil
	}
	begin := time.Now()
	from, err := s.Plugins.Storage(ctx, p, d.From)
	if err != nil {
		return nil, err // retried: the storage may come back
	}
	defer from.Close()
	to, err := s.Plugins.Storage(ctx, p, d.Destination)
	if err != nil {
		return nil, err
	}
	defer to.Close()
	fail := func(reason string) ([]events.Event, error) {
		_ = to.Delete(context.WithoutCancel(ctx), d.Key)
		if _, ferr := s.FinishStep(ctx, r.ID, name, runs.Failed, 0, reason, nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, r.ID, d.Destination, reason, e)
	}
	m, err := backup.LoadManifest(ctx, from, d.ManifestKey)
	if err != nil {
		return fail(fmt.Sprintf("read the manifest in %s: %v", d.From, err))
	}
	if m.ObjectKey != d.Key || m.StoredSHA256 != d.SHA256 {
		return fail(fmt.Sprintf("the manifest in %s names %s with SHA-256 %s, the request %s with %s: not copied", d.From, m.ObjectKey, m.StoredSHA256, d.Key, d.SHA256))
	}
	info, _, err := backup.Copy(ctx, from, to, m)
	if err != nil {
		return fail(fmt.Sprintf("copy from %s: %v", d.From, err))
	}
	digest := m.StoredSHA256
	r, err = s.FinishStep(ctx, r.ID, name, runs.Succeeded, info.Size, "", &runs.Result{Dest: d.Destination, Destination: &runs.Destination{
		Phase: runs.Succeeded, Key: d.Key, ManifestKey: d.ManifestKey, Size: info.Size, SHA256: digest}})
	if err != nil {
		return nil, err
	}
	s.Log.Info("backup copied", "plan", p.Name(), "runid", r.ID, "from", d.From, "destination", d.Destination, "bytes", info.Size,
		"elapsed", time.Since(begin).Round(time.Millisecond))
	return s.completed(ctx, p, r, d.Destination)
}

func (s *Service) destination(ctx context.Context, p *plan.Plan, runID, dest string, cause events.Event) ([]events.Event, error) {
	name := StepName(dest)
	r, c, err := s.Claim(ctx, runID, name, 0)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Failed:
		return s.FailRun(ctx, p.Name(), runID, "upload", name, "upload to "+dest+": "+c.Error, cause)
	case c.Skip:
		return nil, nil
	case c.Done:
		return s.completed(ctx, p, r, dest)
	case c.Interrupted:
		_ = s.Bus.DeleteDataConsumer(context.WithoutCancel(ctx), stage.DataKey(runID), bus.KindSealed, dest)
		if st, err := s.Plugins.Storage(ctx, p, dest); err == nil {
			// The dead process's multipart upload was never aborted.
			s.sweepNow(ctx, st, p.Name(), dest, runID)
			st.Close()
		}
		if _, err := s.FinishStep(ctx, runID, name, runs.Failed, 0, "interrupted", nil); err != nil {
			return nil, err
		}
		return s.fail(ctx, p, runID, dest, fmt.Sprintf("upload interrupted: %s stopped while uploading", c.Owner), cause)
	}

	begin := time.Now()
	st, err := s.Plugins.Storage(ctx, p, dest)
	if err != nil {
		_ = s.Bus.DeleteDataConsumer(context.WithoutCancel(ctx), stage.DataKey(runID), bus.KindSealed, dest)
		if _, ferr := s.FinishStep(ctx, runID, name, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, dest, err.Error(), cause)
	}
	defer st.Close()
	s.sweepLeftovers(ctx, st, p, dest)

	key := format.ObjectKey(p.Name(), runID)
	manifestKey := format.ManifestKey(p.Name(), runID)
	var sent, chunks atomic.Int64
	stopProgress := s.Progress(ctx, p.Name(), runID, name, events.UploadProgressed, dest, 0,
		func() (int64, int64) { return sent.Load(), chunks.Load() })
	// The upload is aborted when the run is cancelled: nothing that looks
	// like a backup is left. A run failed elsewhere (a hook after the
	// snapshot) still gets its object, marked failed, for a replay; a
	// failed dump or filter ends the stream itself.
	streamCtx, stopWatch := s.WatchCancel(ctx, runID)
	in, err := s.Bus.NewChunkReader(streamCtx, stage.DataKey(runID), bus.KindSealed, dest, s.DataFor(p))
	var meta bus.SealedEnd
	var info storage.Info
	var digest string
	if err == nil {
		meta, info, digest, err = s.stream(streamCtx, st, in, key, &sent, &chunks)
	}
	ended := context.Cause(streamCtx)
	if err != nil && errors.Is(ended, stage.ErrRunEnded) {
		err = fmt.Errorf("stopped: %w", ended)
	}
	stopWatch()
	stopProgress()
	if err == nil {
		err = s.writeManifest(ctx, st, p, runID, key, meta, info, digest)
		if err != nil {
			_ = st.Delete(context.WithoutCancel(ctx), key)
		}
	}
	// Closing the reader deletes its consumer, which stops the filter and,
	// through it, the snapshot ("the reading stage stopped"). A failed
	// upload closes it only once its own failure is recorded, so the run's
	// failure names the upload and not what it caused upstream, and
	// sweeping (against a storage that may be down and retried) comes
	// last.
	closeIn := func() {
		if in != nil {
			_ = in.Close(ctx)
			in = nil
		}
	}
	defer closeIn()
	if err != nil {
		if errors.Is(err, bus.ErrProducerFailed) {
			// An earlier stage failed and said so; nothing to add.
			closeIn()
			s.sweepNow(ctx, st, p.Name(), dest, runID)
			_, ferr := s.FinishStep(ctx, runID, name, runs.Skipped, 0, err.Error(), nil)
			return nil, ferr
		}
		if stage.Cancelled(ended) {
			// Aborted for the operator's cancel: no upload.failed (the
			// destination did not fail); backup.cancelled says it.
			closeIn()
			s.sweepNow(ctx, st, p.Name(), dest, runID)
			_, ferr := s.FinishStep(ctx, runID, name, runs.Cancelled, 0, err.Error(), nil)
			s.Log.Info("upload stopped: the run was cancelled", "plan", p.Name(), "runid", runID, "destination", dest)
			return nil, ferr
		}
		if _, ferr := s.FinishStep(ctx, runID, name, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		evs, ferr := s.fail(ctx, p, runID, dest, err.Error(), cause)
		closeIn()
		s.sweepNow(ctx, st, p.Name(), dest, runID)
		return evs, ferr
	}
	closeIn()
	r, err = s.FinishStep(ctx, runID, name, runs.Succeeded, info.Size, "", &runs.Result{Dest: dest, Destination: &runs.Destination{
		Phase: runs.Succeeded, Key: key, ManifestKey: manifestKey, Size: info.Size, SHA256: digest}})
	if err != nil {
		return nil, err
	}
	s.Log.Info("upload completed", "plan", p.Name(), "runid", runID, "destination", dest, "key", key, "bytes", info.Size, "elapsed", time.Since(begin).Round(time.Millisecond))
	return s.completed(ctx, p, r, dest)
}

func (s *Service) completed(ctx context.Context, p *plan.Plan, r *runs.Run, dest string) ([]events.Event, error) {
	d := r.Dest(dest)
	st := r.FindStep(StepName(dest))
	ev, err := s.Emit(ctx, p.Name(), r.ID, StepName(dest), events.UploadCompletedData{
		Destination: dest, Key: d.Key, ManifestKey: d.ManifestKey, Size: d.Size, SHA256: d.SHA256,
		DurationMs: st.Duration(st.Finished).Milliseconds(),
	})
	if err != nil {
		return nil, err
	}
	// Without verify, the last upload is the run's last piece.
	return s.Settle(ctx, "upload", r.ID, ev)
}

func (s *Service) fail(ctx context.Context, p *plan.Plan, runID, dest, reason string, cause events.Event) ([]events.Event, error) {
	fe, err := s.Emit(ctx, p.Name(), runID, StepName(dest), events.UploadFailedData{Destination: dest, Error: reason})
	if err != nil {
		return nil, err
	}
	return s.FailRun(ctx, p.Name(), runID, "upload", StepName(dest), "upload to "+dest+": "+reason, cause, fe)
}

// stream copies the sealed chunk stream of in into the object at key. On
// any error the Put is aborted (nothing visible at key); the caller closes
// in.
func (s *Service) stream(ctx context.Context, st storage.Storage, in *bus.ChunkReader, key string, sent, chunks *atomic.Int64) (bus.SealedEnd, storage.Info, string, error) {
	var meta bus.SealedEnd

	pr, pw := io.Pipe()
	type putResult struct {
		info storage.Info
		err  error
	}
	putc := make(chan putResult, 1)
	go func() {
		info, err := st.Put(ctx, key, pr, storage.PutOptions{ContentType: "application/vnd.backstream.object"})
		_ = pr.CloseWithError(fmt.Errorf("storage stopped reading: %v", err))
		putc <- putResult{info, err}
	}()
	sum := sha256.New()
	var copyErr error
	for {
		c, err := in.Next(ctx)
		if err != nil {
			copyErr = err
			break
		}
		sum.Write(c.Data)
		if _, err := pw.Write(c.Data); err != nil {
			copyErr = fmt.Errorf("write chunk %d: %w", c.Seq, err)
			break
		}
		if err := c.Ack(); err != nil {
			copyErr = fmt.Errorf("ack chunk %d: %w", c.Seq, err)
			break
		}
		sent.Add(int64(len(c.Data)))
		chunks.Add(1)
		if c.Final {
			if meta, err = bus.ParseSealedEnd(c.Trailer); err != nil {
				copyErr = err
			}
			break
		}
	}
	if copyErr != nil {
		_ = pw.CloseWithError(copyErr)
		res := <-putc
		if res.err == nil {
			// The storage finished before the error reached it: remove it.
			_ = st.Delete(context.WithoutCancel(ctx), key)
		}
		return meta, storage.Info{}, "", copyErr
	}
	_ = pw.Close()
	res := <-putc
	if res.err != nil {
		return meta, storage.Info{}, "", fmt.Errorf("put %s: %w", key, res.err)
	}
	return meta, res.info, hex.EncodeToString(sum.Sum(nil)), nil
}

func (s *Service) writeManifest(ctx context.Context, st storage.Storage, p *plan.Plan, runID, key string, meta bus.SealedEnd, info storage.Info, digest string) error {
	r, err := s.Runs.Get(ctx, runID)
	if err != nil {
		return err
	}
	if r.Phase == runs.Cancelled {
		return fmt.Errorf("run cancelled meanwhile (%s): the object is removed", r.Error)
	}
	trigger := r.Trigger
	if trigger == "" {
		trigger = events.TriggerEvent
	}
	m := format.Manifest{
		FormatVersion:   format.Version,
		BackupID:        runID,
		Plan:            p.Name(),
		RunID:           runID,
		Trigger:         trigger,
		Created:         r.Created,
		Started:         r.Created,
		Finished:        s.Now().UTC(),
		Source:          format.Source{Type: meta.Source, Describe: meta.Describe},
		Chain:           meta.Chain,
		ChunkSize:       meta.ChunkSize,
		KeyWrap:         meta.KeyWrap,
		Bytes:           meta.Bytes,
		StoredBytes:     info.Size,
		Frames:          meta.Frames,
		PlaintextSHA256: meta.PlaintextSHA256,
		StoredSHA256:    digest,
		ObjectKey:       key,
		Verify:          format.VerifyResult{Status: format.VerifyPending},
		Tags:            p.Metadata.Labels,
	}
	if r.Phase == runs.Failed {
		// The run failed after its dump was whole (a hook after the
		// snapshot): the object is kept for a replay, marked failed so
		// that nothing takes it for a good backup.
		backup.MarkFailed(&m, s.Now(), fmt.Sprintf("run failed in %s: %s", r.FailedStage, r.Error))
	}
	if m.Chain == nil {
		m.Chain = []string{}
	}
	return backup.SaveManifest(ctx, st, m)
}
