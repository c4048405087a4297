// Package restore is the restore stage: a restore run finds its backup in
// the destinations of the plan, streams a copy object → frames checked →
// decrypted → decompressed into the plan's source plugin, and checks the
// plaintext SHA-256 against the manifest at the end; a copy that fails a
// check makes it start again from the next copy (choose.go). The same
// reading path serves `backstream restore`, which needs no NATS at all.
package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/services/stage"
)

// Service is the restore stage, and runs fire drills (drill.go).
type Service struct {
	*stage.Deps
	// DrillDir is where drills of directory sources (files, redis) make
	// their scratch directories; os.TempDir() when empty.
	DrillDir string
}

// New builds the restore stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d} }

// Name implements stage.Service.
func (s *Service) Name() string { return "restore" }

// Consumers implements stage.Service.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{s.Spec("restore", s.handle, events.RestoreRequested, events.StepCompleted), s.drillSpec()}
}

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	ds, ok, err := s.ClaimDataStep(ctx, e, runs.KindRestore, plan.StepRestore)
	if err != nil || !ok {
		return nil, err
	}
	p, r, name, c := ds.Plan, ds.Run, ds.Name, ds.Claimed
	switch {
	case c.Failed:
		return s.FailRun(ctx, p.Name(), r.ID, "restore", name, c.Error, e)
	case c.Skip:
		return nil, nil
	case c.Done:
		return s.completed(ctx, p, r, name)
	case c.Interrupted:
		if _, ferr := s.FinishStep(ctx, r.ID, name, runs.Failed, 0, "interrupted", nil); ferr != nil {
			return nil, ferr
		}
		return s.FailRun(ctx, p.Name(), r.ID, "restore", name, fmt.Sprintf("restore interrupted: %s stopped mid-restore; the target may hold a partial restore", c.Owner), e)
	}
	// The restore stops when the run ends elsewhere (cancelled).
	rctx, stopWatch := s.WatchRun(ctx, r.ID)
	out, err := s.restore(rctx, p, r, name)
	ended := context.Cause(rctx)
	if err != nil && errors.Is(ended, stage.ErrRunEnded) {
		err = fmt.Errorf("stopped: %w; the target may hold a partial restore", ended)
	}
	stopWatch()
	if err != nil && stage.Cancelled(ended) {
		// Stopped for the operator's cancel: the step ends Cancelled, and
		// restore.cancelled (control's) is the news.
		_, ferr := s.FinishStep(ctx, r.ID, name, runs.Cancelled, 0, err.Error(), nil)
		s.Log.Warn("restore stopped: the run was cancelled; the target may hold a partial restore", "plan", p.Name(), "runid", r.ID)
		return nil, ferr
	}
	if err != nil {
		if _, ferr := s.FinishStep(ctx, r.ID, name, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.FailRun(ctx, p.Name(), r.ID, "restore", name, err.Error(), e)
	}
	return out, nil
}

func (s *Service) restore(ctx context.Context, p *plan.Plan, r *runs.Run, name string) ([]events.Event, error) {
	var dests []string
	for _, d := range p.Spec.Destinations {
		dests = append(dests, d.Name)
	}
	order, err := Order(dests, r.Destination)
	if err != nil {
		return nil, err
	}
	open := func(ctx context.Context, d string) (storage.Storage, error) { return s.Plugins.Storage(ctx, p, d) }
	held := Gather(ctx, open, order, p.Name())
	copies, err := Candidates(held, Choice{ID: r.BackupID, FallbackOlder: r.FallbackOlder})
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, Unlisted(held))
	}
	src, _, err := s.Plugins.Source(p)
	if err != nil {
		return nil, err
	}
	into := IntoSource(p.Spec.Source.Type, src, source.RestoreOptions{Target: r.Target, Create: r.Create, Clean: r.Clean}, nil)
	begin := time.Now()
	used, stats, failed, err := Fallback(ctx, open, copies, s.Keys, func(ctx context.Context, attempt int, c Copy, rd io.Reader) error {
		// The record and restore.started name the copy being read, so a
		// restore that fails or falls back says what it read.
		m := c.Manifest
		if _, _, err := s.Ask(ctx, "restore", runs.Request{Op: runs.OpRecord, Run: r.ID, Result: &runs.Result{BackupID: m.BackupID, RestoredFrom: c.Destination}}); err != nil {
			return err
		}
		started, err := s.Emit(ctx, p.Name(), r.ID, name, events.RestoreStartedData{BackupID: m.BackupID, Destination: c.Destination, Key: m.ObjectKey, Size: m.StoredBytes})
		if err != nil {
			return err
		}
		if attempt > 0 {
			// Its own id per copy, so the duplicate window keeps it
			// (a redelivery repeats the same one).
			started.SetID(fmt.Sprintf("%s.copy-%s-%s", started.ID(), c.Destination, m.BackupID))
		}
		if err := s.Bus.Publish(ctx, started); err != nil {
			return err
		}
		return into(ctx, attempt, c, rd)
	})
	for _, a := range failed {
		s.Log.Warn("restore: a copy failed", "plan", p.Name(), "runid", r.ID, "step", name,
			"backup", a.Copy.Manifest.BackupID, "destination", a.Copy.Destination, "error", a.Err)
	}
	if err != nil {
		return nil, err
	}
	rr, err := s.FinishStep(ctx, r.ID, name, runs.Succeeded, stats.Bytes, "", &runs.Result{Bytes: stats.Bytes, SHA256: stats.PlaintextSHA256, BackupID: used.Manifest.BackupID, RestoredFrom: used.Destination})
	if err != nil {
		return nil, err
	}
	s.Log.Info("restore step completed", "plan", p.Name(), "runid", r.ID, "step", name, "backup", used.Manifest.BackupID,
		"destination", used.Destination, "fallbacks", len(failed), "bytes", stats.Bytes, "elapsed", time.Since(begin).Round(time.Millisecond))
	return s.completed(ctx, p, rr, name)
}

func (s *Service) completed(ctx context.Context, p *plan.Plan, r *runs.Run, name string) ([]events.Event, error) {
	st := r.FindStep(name)
	next, err := s.StepCompleted(ctx, p.Name(), r.ID, name, st.Duration(st.Finished))
	if err != nil {
		return nil, err
	}
	return s.Settle(ctx, "restore", r.ID, next)
}

// ErrDigestMismatch means the restored plaintext does not hash to the
// manifest's digest.
var ErrDigestMismatch = errors.New("restored data does not match the backup's SHA-256")

// ReadAhead is how many frames Stream fetches and opens ahead of the one
// consume is reading, so that the object's GET, opening frames, hashing
// their plaintext and the consumer overlap on separate cores instead of
// taking turns: restore of 1 GiB ~25% faster on 2 cores for ~8% more CPU.
// It holds up to 3 frame bodies and 3 plaintexts instead of one of each:
// at the 8 MiB frames filter seals by default the restore CLI peaks at
// ~64 MiB instead of ~43. 1 was slower, 3 and 4 no faster (docs/bench.md,
// "Restore read-ahead").
const ReadAhead = 2

// Stream opens the object of m and hands its verified plaintext to consume,
// then checks the plaintext size and SHA-256 against the manifest. Every
// frame is authenticated before any of its bytes reach consume, and consume
// is called only once the first frame checked out (or the whole, empty,
// backup did): what consume does to its target before reading — a plugin
// dropping the database it restores into (clean), a loader taking an empty
// pipe for an empty dump — is never done for a copy bad from its start,
// which fails here and leaves the target as it was for the next copy. The
// stored object's SHA-256 is not taken (the stats' StoredSHA256 is empty):
// the frames' checks and the plaintext's digest cover a restore.
func Stream(ctx context.Context, st storage.Storage, m format.Manifest, keys format.Keys, consume func(io.Reader) error) (format.ReadStats, error) {
	// The reader's own goroutine reads the object; when consume stops
	// early, cancelling the GET ends a read of it in flight, so the
	// reader's Close below never waits on a stalled connection.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, err := st.Open(ctx, m.ObjectKey)
	if err != nil {
		return format.ReadStats{}, fmt.Errorf("open backup %s: %w", m.ObjectKey, err)
	}
	defer rc.Close()
	rd, err := format.NewReaderWith(rc, keys, format.ReadOptions{ReadAhead: ReadAhead, SkipStoredDigest: true})
	if err != nil {
		return format.ReadStats{}, fmt.Errorf("open backup %s: %w", m.ObjectKey, err)
	}
	// Runs before rc.Close: the reader stops reading rc before rc closes.
	defer func() {
		cancel()
		rd.Close()
	}()
	var first [1]byte
	n, err := io.ReadFull(rd, first[:])
	if err != nil && err != io.EOF {
		return rd.Stats(), fmt.Errorf("read backup %s: %w", m.ObjectKey, err)
	}
	if err := consume(io.MultiReader(bytes.NewReader(first[:n]), rd)); err != nil {
		return rd.Stats(), err
	}
	// Drain what the consumer left, so every frame is checked.
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return rd.Stats(), fmt.Errorf("read backup %s: %w", m.ObjectKey, err)
	}
	stats := rd.Stats()
	if stats.Bytes != m.Bytes || stats.PlaintextSHA256 != m.PlaintextSHA256 {
		return stats, fmt.Errorf("%w: got %d bytes sha256 %s, manifest says %d bytes sha256 %s",
			ErrDigestMismatch, stats.Bytes, stats.PlaintextSHA256, m.Bytes, m.PlaintextSHA256)
	}
	return stats, nil
}
