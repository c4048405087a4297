// Package filter is the filter stage: it reads a run's raw chunk stream and
// publishes the sealed object (header, then one frame per chunk: compressed,
// then encrypted) on the run's sealed stream, sealing chunks on every core
// while keeping their order.
//
// The data key of a backup lives only in the memory of the one filter replica
// that seals it (the filter holds public recipients only), so a run's stream
// is sealed by one replica, and a replica that dies mid-run fails the run
// rather than sealing the rest under another key.
package filter

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/snapshot"
	"github.com/backstream/backstream/services/stage"
)

// StepName is the filter's entry in the run record.
const StepName = "filter"

// TrailerMeta is the sealed stream's final trailer: the manifest fields the
// filter knows, as JSON.
const TrailerMeta = "Meta"

// Meta is what the filter tells upload for the manifest.
type Meta struct {
	Chain           []string          `json:"chain"`
	ChunkSize       int               `json:"chunkSize"`
	KeyWrap         format.KeyWrap    `json:"keyWrap"`
	Bytes           int64             `json:"bytes"`
	Frames          uint64            `json:"frames"`
	PlaintextSHA256 string            `json:"plaintextSha256"`
	Source          string            `json:"source"`
	Describe        map[string]string `json:"describe,omitempty"`
}

// Service is the filter stage.
type Service struct {
	*stage.Deps
	// Workers seal chunks in parallel (default GOMAXPROCS).
	Workers int
}

// New builds the filter stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d, Workers: runtime.GOMAXPROCS(0)} }

// Name implements stage.Service.
func (s *Service) Name() string { return "filter" }

// Consumers implements stage.Service.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{s.Spec("filter", s.handle, events.SnapshotStarted)}
}

// Readers are the sealed stream's consumers: one per destination.
func Readers(p *plan.Plan) []string {
	out := make([]string, 0, len(p.Spec.Destinations))
	for _, d := range p.Spec.Destinations {
		out = append(out, d.Name)
	}
	return out
}

// Options turns a plan's filters into format options, reading recipient files
// and the passphrase secret.
func Options(p *plan.Plan) (format.Options, error) {
	f := p.Spec.Filters
	o := format.Options{
		Compression: f.Compression,
		ZstdLevel:   f.Level,
		Encryption:  format.EncryptionNone,
		ChunkSize:   int(p.Spec.ChunkSize),
	}
	if !f.Encrypted() {
		return o, nil
	}
	o.Encryption = format.EncryptionAESGCM
	o.Recipients = append(o.Recipients, f.Encryption.Recipients...)
	if f.Encryption.RecipientsFile != "" {
		file, err := os.Open(f.Encryption.RecipientsFile)
		if err != nil {
			return o, fmt.Errorf("recipients file: %w", err)
		}
		defer file.Close()
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line != "" && !strings.HasPrefix(line, "#") {
				o.Recipients = append(o.Recipients, line)
			}
		}
		if err := sc.Err(); err != nil {
			return o, fmt.Errorf("recipients file: %w", err)
		}
	}
	if f.Encryption.Passphrase != nil {
		pass, err := f.Encryption.Passphrase.Resolve()
		if err != nil {
			return o, err
		}
		o.Passphrase = pass
	}
	return o, nil
}

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, r, err := s.RunPlan(ctx, "filter", e)
	if err != nil {
		return nil, err
	}
	runID := r.ID
	r, c, err := s.Claim(ctx, runID, StepName, 0)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Failed:
		return s.fail(ctx, p, runID, c.Error, e)
	case c.Skip && r.Phase.Unsuccessful() && r.FindStep(StepName) == nil:
		// The run failed before this filter started, and never will: an
		// upload that claimed its step earlier is waiting on the sealed
		// stream, so end that stream with the failure.
		s.abandon(ctx, p, runID, "the run failed before the filter started: "+r.Error)
		return nil, nil
	case c.Skip, c.Done:
		return nil, nil
	case c.Interrupted:
		s.abandon(ctx, p, runID, "filter interrupted: "+c.Owner+" stopped while sealing; the data key died with it")
		if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, "interrupted", nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, fmt.Sprintf("filter interrupted: %s stopped while sealing the stream", c.Owner), e)
	}
	return s.run(ctx, p, runID, e)
}

// abandon ends the sealed stream with a failure and drops the raw consumer,
// so upload aborts and snapshot stops.
func (s *Service) abandon(ctx context.Context, p *plan.Plan, runID, reason string) {
	ctx = context.WithoutCancel(ctx)
	if w, err := s.Bus.NewChunkWriter(ctx, stage.DataKey(runID), bus.KindSealed, Readers(p), s.DataFor(p)); err == nil {
		_ = w.Fail(ctx, reason)
	}
	_ = s.Bus.DeleteDataConsumer(ctx, stage.DataKey(runID), bus.KindRaw, snapshot.Reader)
}

func (s *Service) fail(ctx context.Context, p *plan.Plan, runID, reason string, cause events.Event) ([]events.Event, error) {
	fe, err := s.Emit(p.Name(), runID, StepName, events.FilterFailedData{Error: reason})
	if err != nil {
		return nil, err
	}
	return s.FailRun(ctx, p.Name(), runID, "filter", StepName, reason, cause, fe)
}

type job struct {
	chunk bus.Chunk
	frame chan []byte
	err   chan error
}

func (s *Service) run(ctx context.Context, p *plan.Plan, runID string, cause events.Event) ([]events.Event, error) {
	begin := time.Now()
	log := s.Log.With("plan", p.Name(), "runid", runID, "step", StepName)
	opts, err := Options(p)
	if err != nil {
		s.abandon(ctx, p, runID, err.Error())
		if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, err.Error(), cause)
	}
	sealer, err := format.NewSealer(runID, opts)
	if err != nil {
		s.abandon(ctx, p, runID, err.Error())
		if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, "seal: "+err.Error(), cause)
	}
	in, err := s.Bus.NewChunkReader(ctx, stage.DataKey(runID), bus.KindRaw, snapshot.Reader, s.DataFor(p))
	if err != nil {
		return nil, err
	}
	defer in.Close(ctx)
	out, err := s.Bus.NewChunkWriter(ctx, stage.DataKey(runID), bus.KindSealed, Readers(p), s.DataFor(p))
	if err != nil {
		return nil, err
	}
	// Each destination's copy on its own: an upload that gave up stops
	// only its copy (the others keep theirs for a replay to copy from).
	out.IndependentReaders(func(ctx context.Context, dest string) bool {
		// An upload that failed before it read never will.
		r, err := s.Runs.Get(ctx, runID)
		if err != nil {
			return false
		}
		st := r.FindStep("upload:" + dest)
		return st != nil && st.Phase == runs.Failed
	})
	if err := out.Write(ctx, sealer.Header()); err != nil {
		return s.sealFailed(ctx, p, runID, out, fmt.Errorf("publish header: %w", err), cause)
	}

	// Readers fetch in order, workers seal in any order, the writer publishes
	// in order: the queue holds at most 2×workers chunks in flight.
	workers := max(1, s.Workers)
	frameLen := sealer.MaxFrameLen()
	queue := make(chan *job, 2*workers)
	work := make(chan *job, 2*workers)
	g, gctx := errgroup.WithContext(ctx)
	var trailer map[string]string
	var bytesOut int64
	var frames uint64
	g.Go(func() error {
		defer close(queue)
		defer close(work)
		for {
			c, err := in.Next(gctx)
			if err != nil {
				return err
			}
			j := &job{chunk: c, frame: make(chan []byte, 1), err: make(chan error, 1)}
			select {
			case queue <- j:
			case <-gctx.Done():
				return gctx.Err()
			}
			select {
			case work <- j:
			case <-gctx.Done():
				return gctx.Err()
			}
			if c.Final {
				return nil
			}
		}
	})
	for range workers {
		g.Go(func() error {
			for j := range work {
				f, err := sealer.Seal(out.Buffer(frameLen), uint64(j.chunk.Seq), j.chunk.Final, j.chunk.Data)
				if err != nil {
					j.err <- fmt.Errorf("seal frame %d: %w", j.chunk.Seq, err)
					continue
				}
				j.frame <- f
			}
			return nil
		})
	}
	g.Go(func() error {
		for j := range queue {
			var f []byte
			select {
			case f = <-j.frame:
			case err := <-j.err:
				return err
			case <-gctx.Done():
				return gctx.Err()
			}
			frames++
			bytesOut += int64(len(f))
			if j.chunk.Final {
				trailer = j.chunk.Trailer
				meta, err := s.meta(sealer, trailer, frames)
				if err != nil {
					return err
				}
				if err := out.Close(gctx, f, map[string]string{TrailerMeta: meta}); err != nil {
					return fmt.Errorf("publish final frame: %w", err)
				}
			} else if err := out.WriteOwned(gctx, f); err != nil {
				return fmt.Errorf("publish frame %d: %w", j.chunk.Seq, err)
			}
			if err := j.chunk.Ack(); err != nil {
				return fmt.Errorf("ack chunk %d: %w", j.chunk.Seq, err)
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		if errors.Is(err, bus.ErrProducerFailed) {
			// Snapshot reported its own failure; pass it on to upload.
			_ = out.Fail(context.WithoutCancel(ctx), bus.ProducerReason(err))
			_, ferr := s.FinishStep(ctx, runID, StepName, runs.Skipped, 0, err.Error(), nil)
			return nil, ferr
		}
		return s.sealFailed(ctx, p, runID, out, err, cause)
	}
	bytesIn, _ := strconv.ParseInt(trailer[snapshot.TrailerBytes], 10, 64)
	_, err = s.FinishStep(ctx, runID, StepName, runs.Succeeded, bytesOut, "", nil)
	if err != nil {
		return nil, err
	}
	log.Info("filter completed", "frames", frames, "bytesIn", bytesIn, "bytesOut", bytesOut, "elapsed", time.Since(begin).Round(time.Millisecond))
	ev, err := s.Emit(p.Name(), runID, StepName, events.FilterCompletedData{
		Chain: sealer.Chain(), Frames: int64(frames), BytesIn: bytesIn, BytesOut: bytesOut,
	})
	if err != nil {
		return nil, err
	}
	return []events.Event{ev}, nil
}

func (s *Service) sealFailed(ctx context.Context, p *plan.Plan, runID string, out *bus.ChunkWriter, err error, cause events.Event) ([]events.Event, error) {
	reason := "filter: " + err.Error()
	if errors.Is(err, bus.ErrDownstreamGone) {
		reason = "filter: upload stopped reading (" + err.Error() + ")"
	}
	_ = out.Fail(context.WithoutCancel(ctx), reason)
	_ = s.Bus.DeleteDataConsumer(context.WithoutCancel(ctx), stage.DataKey(runID), bus.KindRaw, snapshot.Reader)
	if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, reason, nil); ferr != nil {
		return nil, ferr
	}
	return s.fail(ctx, p, runID, reason, cause)
}

func (s *Service) meta(sealer *format.Sealer, trailer map[string]string, frames uint64) (string, error) {
	m := Meta{
		Chain:           sealer.Chain(),
		ChunkSize:       sealer.ChunkSize(),
		KeyWrap:         sealer.KeyWrap(),
		Frames:          frames,
		PlaintextSHA256: trailer[snapshot.TrailerSHA256],
		Source:          trailer[snapshot.TrailerSource],
	}
	m.Bytes, _ = strconv.ParseInt(trailer[snapshot.TrailerBytes], 10, 64)
	if d := trailer[snapshot.TrailerDescribe]; d != "" && d != "null" {
		if err := json.Unmarshal([]byte(d), &m.Describe); err != nil {
			return "", fmt.Errorf("snapshot trailer describe: %w", err)
		}
	}
	b, err := json.Marshal(m)
	return string(b), err
}
