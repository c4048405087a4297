// Package filter is the filter stage: it reads a run's raw chunk stream and
// publishes the sealed object (header, then frames: compressed, then
// encrypted) on the run's sealed stream, sealing frames on every core while
// keeping their order.
//
// A frame holds consecutive raw chunks up to the plan's frame size, so
// compression sees more than one transport chunk at a time; a sealed frame
// larger than a transport chunk's is published in pieces no larger than
// that, so the sealed stream's messages and windows keep their size. The
// raw chunks of a frame are acked once its pieces are published.
//
// The data key of a backup lives only in the memory of the one filter replica
// that seals it (the filter holds public recipients only), so a run's stream
// is sealed by one replica, and a replica that dies mid-run fails the run
// rather than sealing the rest under another key.
//
// A plan encrypted with a passphrase seals with the plan's keyring
// (pkg/keyring): the data key is wrapped for the keyring's recipient, so
// scrypt runs once per process and keyring, never once per backup.
package filter

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/keyring"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// StepName is the filter's entry in the run record.
const StepName = "filter"

// Service is the filter stage.
type Service struct {
	*stage.Deps
	// Workers seal chunks in parallel (default GOMAXPROCS).
	Workers int

	keyringsOnce sync.Once
	keyrings     *keyring.Store
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
// and the passphrase secret. A passphrase becomes the plan's keyring, which
// keyrings ensures (made on the plan's first backup, replaced when the
// passphrase changed); format.Options.Passphrase, one scrypt per backup, is
// never used.
func Options(ctx context.Context, p *plan.Plan, keyrings *keyring.Store) (format.Options, error) {
	f := p.Spec.Filters
	o := format.Options{
		Compression: f.Compression,
		ZstdLevel:   f.Level,
		Encryption:  format.EncryptionNone,
		ChunkSize:   int(p.Spec.EffectiveFrameSize()),
	}
	if !f.Encrypted() {
		return o, nil
	}
	o.Encryption = format.EncryptionAESGCM
	if f.Encryption.Passphrase == nil {
		rs, err := f.Encryption.LoadRecipients()
		if err != nil {
			return o, err
		}
		o.Recipients = rs
		return o, nil
	}
	pass, err := f.Encryption.Passphrase.Resolve()
	if err != nil {
		return o, err
	}
	k, err := keyrings.Ensure(ctx, p.Name(), pass)
	if err != nil {
		return o, err
	}
	o.Keyring = &k
	return o, nil
}

// keyringStore is the store of plan keyrings on this process's bus.
func (s *Service) keyringStore() *keyring.Store {
	s.keyringsOnce.Do(func() { s.keyrings = keyring.New(s.Bus.Keyrings, s.Log) })
	return s.keyrings
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
	_ = s.Bus.DeleteDataConsumer(ctx, stage.DataKey(runID), bus.KindRaw, bus.RawReader)
}

func (s *Service) fail(ctx context.Context, p *plan.Plan, runID, reason string, cause events.Event) ([]events.Event, error) {
	fe, err := s.Emit(ctx, p.Name(), runID, StepName, events.FilterFailedData{Error: reason})
	if err != nil {
		return nil, err
	}
	return s.FailRun(ctx, p.Name(), runID, "filter", StepName, reason, cause, fe)
}

// job is one frame on its way through the pipeline.
type job struct {
	index uint64
	final bool
	// size is the frame's plaintext so far.
	size int
	// held is the frame's chunk when a frame is one chunk: its data is
	// the frame's plaintext, sealed where it is, and it is acked once the
	// frame's pieces are published.
	held  []bus.Chunk
	plain []byte
	// fw compresses a frame of many chunks as they come: each chunk is
	// acked as soon as it is written, so the raw bytes are not held twice
	// (nor gathered into a frame-sized buffer first), and a frame keeps
	// none of the raw stream's window tokens (the snapshot goes on while
	// the frame fills and is sealed, and a frame may be larger than the
	// window). A run whose filter dies fails either way, so nothing is
	// owed to an acked chunk.
	fw *format.FrameWriter
	// end is the final chunk's trailer (the snapshot's totals).
	end   bus.RawEnd
	frame chan []byte
	err   chan error
}

// add appends chunk c to the frame.
func (j *job) add(c bus.Chunk) error {
	j.size += len(c.Data)
	if c.Final {
		end, err := bus.ParseRawEnd(c.Trailer)
		if err != nil {
			return err
		}
		j.end = end
	}
	if j.fw == nil {
		j.plain, j.held = c.Data, append(j.held, c)
		return nil
	}
	if _, err := j.fw.Write(c.Data); err != nil {
		return fmt.Errorf("compress chunk %d: %w", c.Seq, err)
	}
	if err := c.Ack(); err != nil {
		return fmt.Errorf("ack chunk %d: %w", c.Seq, err)
	}
	return nil
}

func (s *Service) run(ctx context.Context, p *plan.Plan, runID string, cause events.Event) ([]events.Event, error) {
	begin := time.Now()
	log := s.Log.With("plan", p.Name(), "runid", runID, "step", StepName)
	opts, err := Options(ctx, p, s.keyringStore())
	if err != nil {
		s.abandon(ctx, p, runID, err.Error())
		if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, err.Error(), cause)
	}
	// The reader gathers chunks into frames in order, workers seal frames
	// in any order, the writer publishes them in order. Frames alive at
	// once (gathered, sealed or published) are bounded by slots:
	// 2×workers+1 when a frame is one chunk (as many chunks as before
	// frames existed), fewer as frames grow, and one as soon as two frames
	// would hold more than 2×workers+1 chunks: then the filter holds one
	// frame's compressor (about a frame of history) and its sealed form
	// and seals on one core. A frame of many chunks is compressed as its
	// chunks come, which are acked at once (job.fw), so the raw stream's
	// window lets the snapshot run ahead meanwhile.
	workers := max(1, s.Workers)
	frameSize := opts.ChunkSize
	chunkSize := int(p.Spec.ChunkSize)
	if chunkSize <= 0 {
		chunkSize = int(plan.DefaultChunkSize)
	}
	chunkSize = min(chunkSize, frameSize)
	slots := max(1, (2*workers+1)*chunkSize/frameSize)
	opts.Concurrency = min(workers, slots)
	sealer, err := format.NewSealer(runID, opts)
	if err != nil {
		s.abandon(ctx, p, runID, err.Error())
		if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, err.Error(), nil); ferr != nil {
			return nil, ferr
		}
		return s.fail(ctx, p, runID, "seal: "+err.Error(), cause)
	}
	in, err := s.Bus.NewChunkReader(ctx, stage.DataKey(runID), bus.KindRaw, bus.RawReader, s.DataFor(p))
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

	depth := max(1, slots-1)
	free := make(chan struct{}, slots)
	for range slots {
		free <- struct{}{}
	}
	frameLen := sealer.MaxFrameLen()
	// A piece of a sealed frame is at most what one chunk sealed on its
	// own would be: the sealed stream's messages stay today's size.
	pieceLen := format.MaxFrameLen(chunkSize)
	queue := make(chan *job, depth)
	work := make(chan *job, depth)
	// A frame of one chunk is sealed into a buffer the chunk writer owns
	// once published and hands back once stored. A larger frame is
	// compressed into a buffer of the filter's own (grown to what the
	// frame needs, not its bound) and copied into such buffers piece by
	// piece: without that, every frame's sealed buffer would be garbage
	// the moment its pieces are stored, and the heap would grow by GOGC's
	// share of it (1 MiB frames peaked ~45 MiB higher that way).
	multi := frameLen > pieceLen
	sealBufs := make(chan []byte, slots)
	sealBuf := func() []byte {
		if !multi {
			return out.Buffer(frameLen)
		}
		select {
		case b := <-sealBufs:
			return b[:0]
		default:
			return nil
		}
	}
	fws := make(chan *format.FrameWriter, slots)
	newJob := func() (*job, error) {
		if !multi {
			return &job{}, nil
		}
		var fw *format.FrameWriter
		select {
		case fw = <-fws:
		default:
			var err error
			if fw, err = sealer.NewFrameWriter(); err != nil {
				return nil, err
			}
		}
		fw.Reset(sealBuf())
		return &job{fw: fw}, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	var end bus.RawEnd
	var bytesOut int64
	var frames uint64
	g.Go(func() error {
		defer close(queue)
		defer close(work)
		var index uint64
		dispatch := func(j *job) error {
			j.index, j.frame, j.err = index, make(chan []byte, 1), make(chan error, 1)
			index++
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
			return nil
		}
		var cur *job
		for {
			c, err := in.Next(gctx)
			if err != nil {
				return err
			}
			if cur != nil && cur.size+len(c.Data) > frameSize {
				// A short chunk before this one: the frame is as full as
				// whole chunks make it.
				if err := dispatch(cur); err != nil {
					return err
				}
				cur = nil
			}
			if cur == nil {
				select {
				case <-free:
				case <-gctx.Done():
					return gctx.Err()
				}
				if cur, err = newJob(); err != nil {
					return err
				}
			}
			if err := cur.add(c); err != nil {
				return err
			}
			switch {
			case c.Final:
				cur.final = true
				return dispatch(cur)
			case cur.size >= frameSize:
				if err := dispatch(cur); err != nil {
					return err
				}
				cur = nil
			}
		}
	})
	for range workers {
		g.Go(func() error {
			for j := range work {
				var f []byte
				var err error
				if j.fw != nil {
					f, err = j.fw.Seal(j.index, j.final)
				} else {
					f, err = sealer.Seal(sealBuf(), j.index, j.final, j.plain)
				}
				if err != nil {
					j.err <- fmt.Errorf("seal frame %d: %w", j.index, err)
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
			if j.fw != nil {
				fws <- j.fw // at most slots exist
				j.fw = nil
			}
			frames++
			bytesOut += int64(len(f))
			if err := s.publish(gctx, out, sealer, j, f, multi, pieceLen, frames, &end); err != nil {
				return err
			}
			if multi {
				select {
				case sealBufs <- f[:0]:
				default:
				}
			}
			for _, c := range j.held {
				if err := c.Ack(); err != nil {
					return fmt.Errorf("ack chunk %d: %w", c.Seq, err)
				}
			}
			free <- struct{}{}
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
	bytesIn := end.Bytes
	_, err = s.FinishStep(ctx, runID, StepName, runs.Succeeded, bytesOut, "", nil)
	if err != nil {
		return nil, err
	}
	log.Info("filter completed", "frames", frames, "frameSize", frameSize, "bytesIn", bytesIn, "bytesOut", bytesOut, "elapsed", time.Since(begin).Round(time.Millisecond))
	ev, err := s.Emit(ctx, p.Name(), runID, StepName, events.FilterCompletedData{
		Chain: sealer.Chain(), Frames: int64(frames), BytesIn: bytesIn, BytesOut: bytesOut,
	})
	if err != nil {
		return nil, err
	}
	return []events.Event{ev}, nil
}

// publish writes sealed frame f of job j on the sealed stream in pieces of
// at most pieceLen bytes; the final frame's last piece closes the stream
// with the trailer (frames is the count so far, j's included). f is handed
// over to the writer, unless keep says the caller keeps it: then its
// pieces are copied into the writer's buffers (a frame of one piece is
// never larger than a piece).
func (s *Service) publish(ctx context.Context, out *bus.ChunkWriter, sealer *format.Sealer, j *job, f []byte, keep bool, pieceLen int, frames uint64, end *bus.RawEnd) error {
	if keep {
		for len(f) > pieceLen {
			if err := out.WriteOwned(ctx, append(out.Buffer(pieceLen), f[:pieceLen]...)); err != nil {
				return fmt.Errorf("publish frame %d: %w", j.index, err)
			}
			f = f[pieceLen:]
		}
		f = append(out.Buffer(len(f)), f...)
	}
	if !j.final {
		if err := out.WriteOwned(ctx, f); err != nil {
			return fmt.Errorf("publish frame %d: %w", j.index, err)
		}
		return nil
	}
	*end = j.end
	trailer, err := bus.SealedEnd{
		Chain:           sealer.Chain(),
		ChunkSize:       sealer.ChunkSize(),
		KeyWrap:         sealer.KeyWrap(),
		Bytes:           end.Bytes,
		Frames:          frames,
		PlaintextSHA256: end.SHA256,
		Source:          end.Source,
		Describe:        end.Describe,
	}.Trailer()
	if err != nil {
		return err
	}
	if err := out.Close(ctx, f, trailer); err != nil {
		return fmt.Errorf("publish final frame: %w", err)
	}
	return nil
}

func (s *Service) sealFailed(ctx context.Context, p *plan.Plan, runID string, out *bus.ChunkWriter, err error, cause events.Event) ([]events.Event, error) {
	reason := "filter: " + err.Error()
	if errors.Is(err, bus.ErrDownstreamGone) {
		reason = "filter: upload stopped reading (" + err.Error() + ")"
	}
	_ = out.Fail(context.WithoutCancel(ctx), reason)
	_ = s.Bus.DeleteDataConsumer(context.WithoutCancel(ctx), stage.DataKey(runID), bus.KindRaw, bus.RawReader)
	if _, ferr := s.FinishStep(ctx, runID, StepName, runs.Failed, 0, reason, nil); ferr != nil {
		return nil, ferr
	}
	return s.fail(ctx, p, runID, reason, cause)
}
