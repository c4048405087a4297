package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/secret"
)

// DataRoot is the subject root of chunk streams: DataRoot.<runid>.<kind>.<reader>.
// Every reader has a subject of its own, so each chunk is stored once per
// reader and removed as soon as that reader acked it.
const DataRoot = "bs.data"

// Chunk stream kinds.
const (
	KindRaw    = "raw"
	KindSealed = "sealed"
)

// Chunk message headers.
const (
	HeaderSeq     = "Bs-Seq"
	HeaderFinal   = "Bs-Final"
	HeaderFailed  = "Bs-Failed"
	TrailerPrefix = "Bs-T-"
)

// ErrDownstreamGone means a consumer of a chunk stream was deleted: the stage
// reading it failed or gave up, so the writer must stop too.
var ErrDownstreamGone = errors.New("chunk stream consumer is gone (the reading stage stopped)")

// ErrStalled means no chunk arrived within the reader's stall timeout.
var ErrStalled = errors.New("chunk stream stalled")

// ErrProducerFailed is returned by a reader when the writer ended the stream
// with a failure instead of a final chunk (as a *ProducerError).
var ErrProducerFailed = errors.New("chunk stream producer failed")

// ProducerError is a writer's failure as a reader of its stream sees it:
// errors.Is(err, ErrProducerFailed). A stage that passes the failure on to
// its own readers passes Reason, not Error(), so the prefix is said once
// however many stages the failure crosses.
type ProducerError struct{ Reason string }

func (e *ProducerError) Error() string        { return ErrProducerFailed.Error() + ": " + e.Reason }
func (e *ProducerError) Is(target error) bool { return target == ErrProducerFailed }

// ProducerReason is the reason of the producer failure err carries, or
// err's text when it carries none.
func ProducerReason(err error) string {
	var pe *ProducerError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return err.Error()
}

// DataSubject is the subject prefix of a run's chunk stream of the given kind.
func DataSubject(runID, kind string) string { return DataRoot + "." + runID + "." + kind }

// ReaderSubject is the subject of one reader's copy of a chunk stream.
func ReaderSubject(runID, kind, reader string) string { return DataSubject(runID, kind) + "." + reader }

// DataConsumerName is the durable consumer of a run's chunk stream for reader.
func DataConsumerName(runID, kind, reader string) string {
	return strings.Join([]string{kind, runID, reader}, "_")
}

// DataOptions tunes a chunk stream.
type DataOptions struct {
	// Window is how many chunks may be stored but not yet acked by the
	// slowest reader before the writer waits (backpressure). Default 32.
	Window int
	// Stall is how long a reader waits for the next chunk before failing.
	// Default 5 minutes.
	Stall time.Duration
}

func (o DataOptions) withDefaults() DataOptions {
	if o.Window <= 0 {
		o.Window = 32
	}
	if o.Stall <= 0 {
		o.Stall = 5 * time.Minute
	}
	return o
}

func (b *Bus) ensureDataConsumer(ctx context.Context, runID, kind, reader string, o DataOptions) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:           DataConsumerName(runID, kind, reader),
		FilterSubject:     ReaderSubject(runID, kind, reader),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           2 * time.Minute,
		MaxDeliver:        -1,
		MaxAckPending:     o.Window * 2,
		InactiveThreshold: 30 * time.Minute,
	}
	var c jetstream.Consumer
	err := retryConflict(ctx, func(ctx context.Context) error {
		var err error
		c, err = b.JS.CreateOrUpdateConsumer(ctx, DataStream, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("data consumer %s: %w", cfg.Durable, err)
	}
	return c, nil
}

// DeleteDataConsumer removes a reader's consumer; the stream's interest
// retention then drops chunks nobody else needs. Deleting twice is fine.
func (b *Bus) DeleteDataConsumer(ctx context.Context, runID, kind, reader string) error {
	if b.local != nil {
		// A writer in this process sees the reader gone at its next chunk.
		b.local.dropKey(pipeKey{runID, kind, reader})
	}
	err := b.JS.DeleteConsumer(ctx, DataStream, DataConsumerName(runID, kind, reader))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete data consumer: %w", err)
	}
	return nil
}

// ChunkWriter publishes one run's chunk stream in order, a copy to each
// reader's subject; the stream keeps a chunk until its reader acked it, and
// the writer waits while the slowest reader is Window chunks behind. Not
// safe for concurrent use.
type ChunkWriter struct {
	b         *Bus
	runID     string
	kind      string
	readers   []string
	opts      DataOptions
	consumers []jetstream.Consumer
	seq       int64
	pending   []pubFuture
	// stored holds, per reader, the stream sequences of its chunks that are
	// stored and not yet known to be acked.
	stored   [][]uint64
	sinceChk int
	// free holds buffers handed over with WriteOwned whose chunk is stored:
	// the NATS client may resend a chunk's slice until the server confirms
	// it (a publish answered by "no responders" is retried), never after.
	free chan []byte
	// independent: a reader that goes away stops only its own copy
	// (IndependentReaders); gone marks such readers; abandoned, if set,
	// says whether a reader that holds the window up gave up without ever
	// reading.
	independent bool
	gone        []bool
	abandoned   func(ctx context.Context, reader string) bool
	// ports are the readers' pipes in this process's hub (nil without
	// one): a reader whose port is local gets its chunks in memory.
	ports []port
	ended bool
}

// port is a writer's end of one reader's pipe.
type port struct {
	p *pipe
	// local: this reader's chunks go in memory from now on.
	local bool
}

// IndependentReaders makes each reader's copy independent of the others': a
// reader whose consumer is deleted (its stage gave up on its copy) is
// dropped and the others go on; only when every reader is gone does the
// writer stop with ErrDownstreamGone. The filter writes the sealed stream
// so, for destinations that are written independently.
//
// abandoned (optional) is asked, while the window is full, about each
// reader still counted: a reader that gave up before it ever read (its
// stage failed before it created its consumer, which the writer then
// created for it) is reported there, dropped, and its consumer deleted.
func (w *ChunkWriter) IndependentReaders(abandoned func(ctx context.Context, reader string) bool) {
	w.independent, w.abandoned = true, abandoned
}

// dropAbandoned drops the readers abandoned reports, and reports
// ErrDownstreamGone when none is left.
func (w *ChunkWriter) dropAbandoned(ctx context.Context) error {
	if w.abandoned == nil {
		return nil
	}
	for i, r := range w.readers {
		if w.gone[i] || !w.abandoned(ctx, r) {
			continue
		}
		w.drop(i, "chunk stream reader gave up; writing on for the others")
		_ = w.b.DeleteDataConsumer(ctx, w.runID, w.kind, r)
	}
	if w.lastLive() < 0 {
		return fmt.Errorf("%w: every reader of %s", ErrDownstreamGone, w.kind)
	}
	return nil
}

// drop stops writing reader i's copy.
func (w *ChunkWriter) drop(i int, why string) {
	w.gone[i], w.stored[i] = true, nil
	if w.ports != nil {
		w.b.local.drop(w.ports[i].p)
	}
	w.b.Log.Warn(why, "run", w.runID, "kind", w.kind, "reader", w.readers[i])
}

// readerGone handles reader i found gone (its consumer deleted, or its
// local pipe closed): with IndependentReaders the reader is dropped and
// the others go on (nil) until none is left; else the stream stops.
func (w *ChunkWriter) readerGone(i int) error {
	if w.independent {
		w.drop(i, "chunk stream reader gone; writing on for the others")
		if w.lastLive() >= 0 {
			return nil
		}
		return fmt.Errorf("%w: every reader of %s", ErrDownstreamGone, w.kind)
	}
	if w.ports != nil {
		w.b.local.drop(w.ports[i].p)
	}
	return fmt.Errorf("%w: %s", ErrDownstreamGone, DataConsumerName(w.runID, w.kind, w.readers[i]))
}

// lastLive is the index of the last reader not gone, or -1.
func (w *ChunkWriter) lastLive() int {
	for i := len(w.readers) - 1; i >= 0; i-- {
		if !w.gone[i] {
			return i
		}
	}
	return -1
}

// freeBuffers is how many stored chunks' buffers a writer keeps for reuse.
const freeBuffers = 16

// NewChunkWriter prepares the chunk stream of kind for runID, read by
// readers. With the in-process data plane (Config.LocalData), a reader in
// this process gets its chunks in memory from the moment it claims its
// copy; every other reader gets them through JetStream.
func (b *Bus) NewChunkWriter(ctx context.Context, runID, kind string, readers []string, o DataOptions) (*ChunkWriter, error) {
	o = o.withDefaults()
	if len(readers) == 0 {
		return nil, fmt.Errorf("chunk stream %s of run %s: no readers", kind, runID)
	}
	w := &ChunkWriter{b: b, runID: runID, kind: kind, readers: readers, opts: o, stored: make([][]uint64, len(readers)),
		free: make(chan []byte, freeBuffers), gone: make([]bool, len(readers))}
	for _, r := range readers {
		c, err := b.ensureDataConsumer(ctx, runID, kind, r, o)
		if err != nil {
			return nil, err
		}
		w.consumers = append(w.consumers, c)
	}
	if b.local != nil {
		for _, r := range readers {
			p, local := b.local.offer(pipeKey{runID, kind, r}, o.Window)
			w.ports = append(w.ports, port{p: p, local: local})
		}
	}
	return w, nil
}

// Seq is the number of chunks written so far.
func (w *ChunkWriter) Seq() int64 { return w.seq }

// Write publishes one chunk. The caller must not change data afterwards:
// the NATS client resends it if the server is briefly unavailable, and a
// reader in this process reads the slice itself.
func (w *ChunkWriter) Write(ctx context.Context, data []byte) error {
	return w.publish(ctx, data, chunkEnd{})
}

// WriteOwned publishes one chunk and hands data over to the writer, which
// reuses it for a later Buffer once every JetStream copy is stored and
// every reader in this process acked it. A stage that fills a chunk a
// second spares the allocator (and the zeroing and collection of) a buffer
// per chunk.
func (w *ChunkWriter) WriteOwned(ctx context.Context, data []byte) error {
	return w.publish(ctx, data, chunkEnd{owned: true})
}

// Buffer returns an empty buffer with room for n bytes, for a chunk to be
// passed to WriteOwned: the buffer of a chunk already stored, or a new one.
// Safe for concurrent use, also with the other methods.
func (w *ChunkWriter) Buffer(n int) []byte {
	select {
	case b := <-w.free:
		if cap(b) >= n {
			return b[:0]
		}
	default:
	}
	return make([]byte, 0, n)
}

// Close publishes the final chunk (which may be empty) with its trailer, and
// waits until every chunk is stored (for a reader in this process: handed
// over, as a memory stream stores it).
func (w *ChunkWriter) Close(ctx context.Context, data []byte, trailer map[string]string) error {
	defer w.end()
	if err := w.publish(ctx, data, chunkEnd{final: true, trailer: trailer}); err != nil {
		return err
	}
	return w.flush(ctx)
}

// Fail ends the stream with a failure the readers see as ErrProducerFailed.
// A failure takes no room in a local reader's window, so it reaches a
// reader that holds its whole window unacked.
func (w *ChunkWriter) Fail(ctx context.Context, reason string) error {
	defer w.end()
	// A driver's error may quote a secret.
	if err := w.publish(ctx, nil, chunkEnd{final: true, failed: truncate(secret.Redact(reason), 2048)}); err != nil {
		return err
	}
	return w.flush(ctx)
}

// end unregisters the writer from the hub once it ended its stream.
func (w *ChunkWriter) end() {
	if w.ended {
		return
	}
	w.ended = true
	for _, pt := range w.ports {
		w.b.local.writerDone(pt.p)
	}
}

// chunkEnd says what kind of chunk publish writes.
type chunkEnd struct {
	owned   bool
	final   bool
	trailer map[string]string
	failed  string
}

func (w *ChunkWriter) publish(ctx context.Context, data []byte, e chunkEnd) error {
	if err := w.waitWindow(ctx); err != nil {
		return err
	}
	// Which readers get this chunk through JetStream, and which in memory.
	lastJS, anyLocal := -1, false
	for i := range w.readers {
		if w.gone[i] {
			continue
		}
		if w.ports != nil {
			if w.ports[i].p.isGone() {
				if err := w.readerGone(i); err != nil {
					return err
				}
				continue
			}
			if !w.ports[i].local && w.b.local.route(w.ports[i].p, w.seq, e.failed != "") {
				w.ports[i].local = true
			}
			if w.ports[i].local {
				anyLocal = true
				continue
			}
		}
		lastJS = i
	}
	var buf *ownedBuf
	if e.owned {
		buf = newOwnedBuf(data, w.free)
		defer buf.release() // the writer's own hold, while it sends
	}
	if lastJS >= 0 {
		if err := w.publishJS(data, e, buf, lastJS); err != nil {
			return err
		}
	}
	if anyLocal {
		it := localItem{seq: w.seq, data: data, final: e.final}
		if e.final && e.failed == "" {
			it.trailer = wireTrailer(e.trailer)
		}
		if e.failed != "" {
			it.failed, it.data = wireValue(e.failed), nil
		}
		for i := range w.readers {
			if w.gone[i] || !w.ports[i].local {
				continue
			}
			if err := w.sendLocal(ctx, i, it, buf); err != nil {
				return err
			}
		}
	}
	w.seq++
	w.sinceChk++
	return nil
}

// publishJS publishes the chunk to every reader that gets it through
// JetStream (none gone, none local); last is the last of them.
func (w *ChunkWriter) publishJS(data []byte, e chunkEnd, buf *ownedBuf, last int) error {
	seq := strconv.FormatInt(w.seq, 10)
	for i, r := range w.readers {
		if w.gone[i] || (w.ports != nil && w.ports[i].local) {
			continue
		}
		mh := nats.Header{}
		mh.Set(HeaderSeq, seq)
		mh.Set(HeaderMsgID, w.runID+"."+w.kind+"."+r+"."+seq)
		if e.final {
			mh.Set(HeaderFinal, "1")
		}
		for k, v := range e.trailer {
			mh.Set(TrailerPrefix+k, v)
		}
		if e.failed != "" {
			mh.Set(HeaderFailed, e.failed)
			// A failure may be published by a writer that took over from a
			// dead one and does not know the sequence reached: its own id.
			mh.Set(HeaderMsgID, w.runID+"."+w.kind+"."+r+".failed")
		}
		f, err := w.b.JS.PublishMsgAsync(&nats.Msg{Subject: ReaderSubject(w.runID, w.kind, r), Data: data, Header: mh})
		if err != nil {
			return fmt.Errorf("publish chunk %d: %w", w.seq, err)
		}
		p := pubFuture{f: f, reader: i}
		if i == last && buf != nil {
			// Futures settle in publish order: when the last reader's copy
			// is stored, every copy is.
			buf.hold()
			p.buf = buf
		}
		w.pending = append(w.pending, p)
	}
	return nil
}

// sendLocal hands chunk it to local reader i: a chunk waits for one of the
// reader's Window tokens (its ack returns it), a failure does not.
func (w *ChunkWriter) sendLocal(ctx context.Context, i int, it localItem, buf *ownedBuf) error {
	p := w.ports[i].p
	if it.failed == "" {
		if err := w.takeToken(ctx, i, p); err != nil || w.gone[i] {
			return err
		}
		it.ack = &localAck{p: p, buf: buf}
		buf.hold()
	}
	select {
	case p.items <- it:
		return nil
	case <-p.gone.Done():
		it.ack.ack()
		return w.readerGone(i)
	case <-ctx.Done():
		it.ack.ack()
		return ctx.Err()
	}
}

// takeToken waits until local reader i has room in its window. While it
// waits, IndependentReaders' abandoned is asked, as while JetStream
// readers hold the window up. It returns nil with w.gone[i] set when the
// reader was dropped meanwhile.
func (w *ChunkWriter) takeToken(ctx context.Context, i int, p *pipe) error {
	select {
	case <-p.tokens:
		return nil
	default:
	}
	var ask <-chan time.Time
	if w.independent && w.abandoned != nil {
		t := time.NewTicker(abandonedEvery)
		defer t.Stop()
		ask = t.C
	}
	for {
		select {
		case <-p.tokens:
			return nil
		case <-p.gone.Done():
			return w.readerGone(i)
		case <-ctx.Done():
			return ctx.Err()
		case <-ask:
			if err := w.dropAbandoned(ctx); err != nil || w.gone[i] {
				return err
			}
		}
	}
}

// pubFuture is a chunk's publish to one reader's subject, not yet stored.
type pubFuture struct {
	f      jetstream.PubAckFuture
	reader int
	buf    *ownedBuf // the chunk's buffer, released once this publish is stored
}

// settle waits for stored acks of published chunks until at most keep remain.
func (w *ChunkWriter) settle(ctx context.Context, keep int) error {
	for len(w.pending) > keep {
		select {
		case ack := <-w.pending[0].f.Ok():
			w.confirmed(ack)
		case err := <-w.pending[0].f.Err():
			return w.storeErr(err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (w *ChunkWriter) flush(ctx context.Context) error { return w.settle(ctx, 0) }

// reap records the chunks already stored, without waiting.
func (w *ChunkWriter) reap() error {
	for len(w.pending) > 0 {
		select {
		case ack := <-w.pending[0].f.Ok():
			w.confirmed(ack)
		case err := <-w.pending[0].f.Err():
			return w.storeErr(err)
		default:
			return nil
		}
	}
	return nil
}

// confirmed moves the oldest pending publish to its reader's stored chunks.
func (w *ChunkWriter) confirmed(ack *jetstream.PubAck) {
	p := w.pending[0]
	w.stored[p.reader] = append(w.stored[p.reader], ack.Sequence)
	w.pending[0] = pubFuture{}
	w.pending = w.pending[1:]
	p.buf.release()
}

// storeErr names the chunk whose oldest pending publish failed.
func (w *ChunkWriter) storeErr(err error) error {
	return fmt.Errorf("store chunk %s: %w", w.pending[0].f.Msg().Header.Get(HeaderSeq), err)
}

// waitWindow blocks while the slowest reader has Window or more chunks
// outstanding. The readers' consumer state is read every Window/4 chunks, and
// polled with growing pauses while the window is full.
func (w *ChunkWriter) waitWindow(ctx context.Context) error {
	if err := w.settle(ctx, 16*len(w.readers)); err != nil {
		return err
	}
	if len(w.consumers) == 0 || w.sinceChk < max(1, w.opts.Window/4) {
		return nil
	}
	pause := time.Millisecond
	var failingSince time.Time
	lastAsked := time.Now()
	for {
		outstanding, err := w.outstanding(ctx)
		if err != nil {
			// A reader that is gone stops the writer; a consumer-state request
			// that times out (a cluster electing leaders, a loaded server) is
			// asked again for a while before the stream gives up.
			if errors.Is(err, ErrDownstreamGone) || ctx.Err() != nil {
				return err
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			} else if time.Since(failingSince) > consumerStateGrace {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		failingSince = time.Time{}
		if outstanding < w.opts.Window {
			w.sinceChk = 0
			return nil
		}
		if w.independent && time.Since(lastAsked) > abandonedEvery {
			lastAsked = time.Now()
			if err := w.dropAbandoned(ctx); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 50*time.Millisecond)
	}
}

// outstanding is the most chunks any reader has not acked yet through
// JetStream: those whose publish is not confirmed, plus those stored above
// the reader's ack floor. It counts the writer's own chunks against the
// consumer's ack floor rather than trusting the consumer's pending count,
// which the server may compute lazily for a filtered consumer. A reader in
// this process that has read all its JetStream chunks is not asked: its
// window is its tokens, and its idle consumer is none of its business.
func (w *ChunkWriter) outstanding(ctx context.Context) (int, error) {
	if err := w.reap(); err != nil {
		return 0, err
	}
	unconfirmed := make([]int, len(w.readers))
	for _, p := range w.pending {
		unconfirmed[p.reader]++
	}
	most := 0
	for i, c := range w.consumers {
		if w.gone[i] || (w.ports != nil && w.ports[i].local && len(w.stored[i])+unconfirmed[i] == 0) {
			continue
		}
		info, err := c.Info(ctx)
		if err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				if err := w.readerGone(i); err != nil {
					return 0, err
				}
				continue
			}
			return 0, fmt.Errorf("read consumer state: %w", err)
		}
		floor := info.AckFloor.Stream
		k := 0
		for k < len(w.stored[i]) && w.stored[i][k] <= floor {
			k++
		}
		w.stored[i] = w.stored[i][k:]
		most = max(most, len(w.stored[i])+unconfirmed[i])
	}
	return most, nil
}

// abandonedEvery is how often a writer whose window is full asks whether a
// reader holding it up gave up (IndependentReaders).
const abandonedEvery = 500 * time.Millisecond

// consumerStateGrace is how long a writer keeps asking for its readers'
// state while the requests fail.
const consumerStateGrace = 2 * time.Minute

// Chunk is one message of a chunk stream. Data is valid until Ack: a chunk
// from a writer in this process is the writer's own slice, which a writer
// that owns it (WriteOwned) reuses once every reader acked it.
type Chunk struct {
	Seq     int64
	Data    []byte
	Final   bool
	Trailer map[string]string
	msg     jetstream.Msg
	local   *localAck
}

// Ack tells the stream this reader is done with the chunk; acking twice is
// harmless. The final chunk's ack returns once the writer's side has every
// ack: the server's, which has then processed every earlier ack too, or,
// for a chunk handed over in memory, at once (an ack there is the return of
// the chunk's window token, which the writer sees as it happens).
func (c Chunk) Ack() error {
	if c.local != nil {
		c.local.ack()
		return nil
	}
	if c.Final {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return c.msg.DoubleAck(ctx)
	}
	return c.msg.Ack()
}

// ChunkReader reads one run's chunk stream in order, through the reader's
// durable consumer or, from a writer in this process, in memory. Not safe
// for concurrent use.
type ChunkReader struct {
	b      *Bus
	runID  string
	kind   string
	reader string
	opts   DataOptions
	next   int64

	// iter reads JetStream; nil once this reader reads only memory.
	iter jetstream.MessagesContext

	// p is the reader's pipe in the hub, nil when it reads only JetStream.
	p        *pipe
	mode     readMode
	switchAt int64
}

// NewChunkReader opens reader's consumer of runID's chunk stream of kind,
// creating it if the writer has not yet. With the in-process data plane
// the reader reads in memory from a writer in this process (see local.go
// for how the two meet).
func (b *Bus) NewChunkReader(ctx context.Context, runID, kind, reader string, o DataOptions) (*ChunkReader, error) {
	o = o.withDefaults()
	c, err := b.ensureDataConsumer(ctx, runID, kind, reader, o)
	if err != nil {
		return nil, err
	}
	r := &ChunkReader{b: b, runID: runID, kind: kind, reader: reader, opts: o}
	if b.local != nil {
		r.p, r.mode, r.switchAt = b.local.claim(pipeKey{runID, kind, reader}, o.Window)
	}
	if r.mode == readMemory {
		return r, nil
	}
	// A short heartbeat bounds how long a pull request the server dropped
	// without a word (seen here: 35 chunks pending, no waiting pull, the
	// reader idle until the default 30s expiry) can stall the stream: with no
	// message or heartbeat for two beats the client asks again.
	iter, err := c.Messages(jetstream.PullMaxMessages(8), jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		if r.p != nil {
			b.local.drop(r.p)
		}
		return nil, fmt.Errorf("read chunks: %w", err)
	}
	r.iter = iter
	return r, nil
}

// Next returns the next chunk in order. Redelivered chunks already seen are
// acked and skipped. After the final chunk, Next must not be called again.
// A producer's failure is returned as ErrProducerFailed with its reason.
func (r *ChunkReader) Next(ctx context.Context) (Chunk, error) {
	for {
		msg, it, err := r.receive(ctx)
		if err != nil {
			return Chunk{}, err
		}
		var c Chunk
		if it != nil {
			c, err = r.fromLocal(it)
		} else {
			c, err = r.fromJetStream(msg)
		}
		if err != nil || c.Seq >= 0 {
			return c, err
		}
	}
}

// skipped is the Chunk of a redelivered chunk already seen.
var skipped = Chunk{Seq: -1}

func (r *ChunkReader) fromLocal(it *localItem) (Chunk, error) {
	if it.failed != "" {
		return Chunk{}, &ProducerError{Reason: it.failed}
	}
	if it.seq < r.next {
		it.ack.ack()
		return skipped, nil
	}
	if it.seq > r.next {
		return Chunk{}, fmt.Errorf("chunk stream out of order: got chunk %d, want %d", it.seq, r.next)
	}
	r.next++
	return Chunk{Seq: it.seq, Data: it.data, Final: it.final, Trailer: it.trailer, local: it.ack}, nil
}

func (r *ChunkReader) fromJetStream(msg jetstream.Msg) (Chunk, error) {
	h := msg.Headers()
	seq, err := strconv.ParseInt(h.Get(HeaderSeq), 10, 64)
	if err != nil {
		_ = msg.Term()
		return Chunk{}, fmt.Errorf("chunk without a valid %s header: %q", HeaderSeq, h.Get(HeaderSeq))
	}
	if reason := h.Get(HeaderFailed); reason != "" {
		_ = msg.Ack()
		return Chunk{}, &ProducerError{Reason: reason}
	}
	if seq < r.next {
		_ = msg.Ack()
		return skipped, nil
	}
	if seq > r.next {
		return Chunk{}, fmt.Errorf("chunk stream out of order: got chunk %d, want %d", seq, r.next)
	}
	r.next++
	c := Chunk{Seq: seq, Data: msg.Data(), Final: h.Get(HeaderFinal) == "1", msg: msg}
	if c.Final {
		c.Trailer = map[string]string{}
		for k, v := range h {
			if strings.HasPrefix(k, TrailerPrefix) && len(v) > 0 {
				c.Trailer[strings.TrimPrefix(k, TrailerPrefix)] = v[0]
			}
		}
	}
	return c, nil
}

// receive waits, for at most the stall timeout, for the next message: from
// JetStream (msg) or handed over in memory (it), as the reader's mode says.
func (r *ChunkReader) receive(ctx context.Context) (msg jetstream.Msg, it *localItem, err error) {
	wait, cancel := context.WithTimeoutCause(ctx, r.opts.Stall, errStallTimer)
	defer cancel()
	for {
		switch r.mode {
		case readMemory:
			select {
			case got := <-r.p.items:
				return nil, &got, nil
			case <-r.p.gone.Done():
				return nil, nil, r.waitEnded(ctx, errReaderGone)
			case <-wait.Done():
				return nil, nil, r.waitEnded(ctx, context.Cause(wait))
			}
		case readHandover:
			// JetStream carries every chunk below the switch, in order, and
			// memory every chunk from it on (a failure too): the switch is
			// a sequence, never a race between the two.
			if r.next >= r.switchAt {
				r.stopJetStream()
				r.mode = readMemory
				continue
			}
		}
		msg, err := r.nextJetStream(wait)
		switch {
		case errors.Is(err, errLocalWriter):
			r.stopJetStream()
			r.mode = readMemory
			continue
		case errors.Is(err, errReaderGone), errors.Is(err, errStallTimer), ctx.Err() != nil:
			return nil, nil, r.waitEnded(ctx, err)
		case err != nil && transient(err):
			continue
		case err != nil:
			return nil, nil, fmt.Errorf("read chunk %d: %w", r.next, err)
		}
		if r.mode != readWaiting {
			return msg, nil, nil
		}
		if !r.b.local.leaveWaiting(r.p) {
			// The writer is in another process.
			r.p, r.mode = nil, readJetStream
			return msg, nil, nil
		}
		// A local writer attached meanwhile and writes this copy from its
		// start: a message from elsewhere is left unread (Close purges it),
		// but a failure still ends the stream.
		r.stopJetStream()
		r.mode = readMemory
		if msg.Headers().Get(HeaderFailed) != "" {
			return msg, nil, nil
		}
	}
}

// Why a wait for a chunk ended other than with a chunk or the caller's
// context: the causes of the contexts receive and nextJetStream wait on.
var (
	errStallTimer  = errors.New("stall timer")
	errReaderGone  = errors.New("reader gone")
	errLocalWriter = errors.New("a local writer attached")
)

// nextJetStream waits for the next JetStream message until ctx ends, the
// reader's pipe is gone or, while the reader waits, a local writer
// attaches (errLocalWriter). NextContext leaves a message that arrives too
// late in the iterator for the next call; nothing is lost and no goroutine
// outlives the wait.
func (r *ChunkReader) nextJetStream(ctx context.Context) (jetstream.Msg, error) {
	if r.iter == nil {
		// Stopped by a cancelled or stalled wait, as a JetStream reader is.
		return nil, jetstream.ErrMsgIteratorClosed
	}
	if r.p != nil {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		defer context.AfterFunc(r.p.gone, func() { cancel(errReaderGone) })()
		if r.mode == readWaiting {
			defer context.AfterFunc(r.p.attached, func() { cancel(errLocalWriter) })()
		}
	}
	msg, err := r.iter.Next(jetstream.NextContext(ctx))
	if err != nil && ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return msg, err
}

// waitEnded stops reading JetStream and says why a wait ended: the
// caller's context, the stall timeout, or the reader gone.
func (r *ChunkReader) waitEnded(ctx context.Context, cause error) error {
	r.stopJetStream()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(cause, errStallTimer):
		return fmt.Errorf("%w: no chunk %d within %s", ErrStalled, r.next, r.opts.Stall)
	default:
		return fmt.Errorf("read chunk %d: %w", r.next, jetstream.ErrConsumerDeleted)
	}
}

// stopJetStream stops reading JetStream.
func (r *ChunkReader) stopJetStream() {
	if r.iter != nil {
		r.iter.Stop()
		r.iter = nil
	}
}

// Close stops reading, deletes the reader's consumer and purges whatever of
// its copy of the stream is left (a reader that gave up midway), so no chunk
// outlives its reader. A writer in this process sees the reader gone at once.
func (r *ChunkReader) Close(ctx context.Context) error {
	r.stopJetStream()
	if r.p != nil {
		r.b.local.drop(r.p)
	}
	ctx = context.WithoutCancel(ctx)
	if err := r.b.DeleteDataConsumer(ctx, r.runID, r.kind, r.reader); err != nil {
		return err
	}
	s, err := r.b.JS.Stream(ctx, DataStream)
	if err != nil {
		return fmt.Errorf("purge chunks of reader %s: %w", r.reader, err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(ReaderSubject(r.runID, r.kind, r.reader))); err != nil {
		return fmt.Errorf("purge chunks of reader %s: %w", r.reader, err)
	}
	return nil
}
