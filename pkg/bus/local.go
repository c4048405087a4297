package bus

import (
	"context"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The in-process data plane (Config.LocalData; docs/dataplane.md).
//
// When the writer and a reader of a chunk stream run in one process, the
// chunks pass between them in memory: a local reader gets the writer's
// slice, with the same backpressure (at most Window chunks handed over and
// not yet acked), instead of a copy through the JetStream chunk stream. The
// JetStream consumers are still created as always, so a party in another
// process works whatever this one does; the hub only decides, per reader,
// which of the two carries the chunks from which sequence on.
//
// A rendezvous is keyed by (run, kind, reader) and decided under the hub's
// mutex, so the switch point is exact and never a matter of timing:
//
//   - writer first: NewChunkWriter offers a pipe per reader and publishes to
//     JetStream until a local reader claims it. The claim records S, one past
//     the last sequence published to JetStream; the writer sends every later
//     chunk in memory, and the reader reads JetStream until it has delivered
//     S−1, then memory.
//   - reader first: NewChunkReader finds no pipe and waits in one. The first
//     of a JetStream message (the writer is in another process: the reader
//     leaves the hub and reads JetStream from then on) or a local writer
//     attaching (memory from sequence 0; that reader's copy never goes to
//     JetStream) decides.
//
// A pipe leaves the hub when its reader closes or gives up
// (DeleteDataConsumer), or when it has no reader and its last writer ended
// (Close, Fail, or the writer learnt every reader was gone). A pipe a writer
// offered and abandoned without ending it (a stage that returned early) is
// swept once untouched for as long as the server keeps an idle consumer.

// localHub is the process-local rendezvous of chunk streams.
type localHub struct {
	mu    sync.Mutex
	pipes map[pipeKey]*pipe
	now   func() time.Time
}

func newLocalHub() *localHub {
	return &localHub{pipes: map[pipeKey]*pipe{}, now: time.Now}
}

type pipeKey struct{ runID, kind, reader string }

// readerState is what a pipe knows of its reader in this process.
type readerState int

const (
	// readerNone: no reader here yet; writers publish to JetStream.
	readerNone readerState = iota
	// readerWaiting: a reader came first and waits for a local writer or a
	// JetStream message.
	readerWaiting
	// readerLocal: the reader reads (from its switch sequence on) in memory.
	readerLocal
)

// pipeSlack is room in a pipe for failures beyond its window: Fail takes no
// token, so a failure reaches a reader that holds its whole window.
const pipeSlack = 2

// pipe is one reader's copy of a chunk stream inside the process.
type pipe struct {
	key pipeKey

	// Under localHub.mu.
	reader  readerState
	writers int
	// jsNext is one past the highest sequence a writer routed to
	// JetStream: the switch sequence S of a reader that claims now.
	jsNext int64
	// jsFailed: a writer ended the stream with a failure on JetStream
	// (its sequence says nothing of the others'), so a reader that comes
	// now reads JetStream only, where the failure is.
	jsFailed bool
	touched  time.Time

	items  chan localItem
	tokens chan struct{} // Window tokens: a send takes one, an ack returns it
	// attached is done when a local writer attaches to a waiting reader,
	// gone when the reader closed or gave up. They are contexts, not bare
	// channels, so that a JetStream read (jetstream.NextContext) ends on
	// either without a goroutine to watch them.
	attached context.Context
	attach   context.CancelFunc
	gone     context.Context
	markGone context.CancelFunc
}

func newPipe(k pipeKey, window int, now time.Time) *pipe {
	p := &pipe{key: k, touched: now, items: make(chan localItem, window+pipeSlack), tokens: make(chan struct{}, window)}
	p.attached, p.attach = context.WithCancel(context.Background())
	p.gone, p.markGone = context.WithCancel(context.Background())
	for range window {
		p.tokens <- struct{}{}
	}
	return p
}

func (p *pipe) isGone() bool { return p.gone.Err() != nil }

// localItem is one chunk handed over in memory.
type localItem struct {
	seq     int64
	data    []byte
	final   bool
	trailer map[string]string
	failed  string
	ack     *localAck // nil for a failure, which takes no token
}

// localAck is a local chunk's ack: it returns the chunk's token and its
// hold on the writer's buffer, once however often it is called.
type localAck struct {
	p     *pipe
	buf   *ownedBuf
	acked atomic.Bool
}

func (a *localAck) ack() {
	if a == nil || !a.acked.CompareAndSwap(false, true) {
		return
	}
	select {
	case a.p.tokens <- struct{}{}:
	default: // a token is never returned twice; this only guards the invariant
	}
	a.buf.release()
}

// ownedBuf is a buffer handed over with WriteOwned: the writer reuses it
// once every hold is released: each local reader's ack, the confirmation
// that every JetStream copy is stored, and the writer's own while it sends.
type ownedBuf struct {
	refs atomic.Int32
	data []byte
	free chan []byte
}

func newOwnedBuf(data []byte, free chan []byte) *ownedBuf {
	o := &ownedBuf{data: data, free: free}
	o.refs.Store(1)
	return o
}

func (o *ownedBuf) hold() {
	if o != nil {
		o.refs.Add(1)
	}
}

func (o *ownedBuf) release() {
	if o == nil || o.refs.Add(-1) != 0 {
		return
	}
	select {
	case o.free <- o.data:
	default:
	}
}

// offer registers a writer of reader's copy and tells whether it sends in
// memory from its first chunk on (a local reader is there already).
func (h *localHub) offer(k pipeKey, window int) (p *pipe, local bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked()
	p = h.pipes[k]
	if p == nil {
		p = newPipe(k, window, h.now())
		h.pipes[k] = p
	}
	p.writers++
	p.touched = h.now()
	switch p.reader {
	case readerWaiting:
		p.reader = readerLocal
		p.attach()
		return p, true
	case readerLocal:
		// A second writer (one taking over to end the stream with a
		// failure) reaches the reader where it reads.
		return p, true
	}
	return p, false
}

// route decides whether the chunk seq of a writer not yet sending in memory
// goes to JetStream (false) or, a local reader having claimed the pipe, in
// memory from now on (true).
func (h *localHub) route(p *pipe, seq int64, failed bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p.reader == readerLocal {
		return true
	}
	p.jsNext = max(p.jsNext, seq+1)
	p.jsFailed = p.jsFailed || failed
	p.touched = h.now()
	return false
}

// writerDone unregisters a writer that ended its stream.
func (h *localHub) writerDone(p *pipe) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p.writers--
	if p.writers <= 0 && p.reader == readerNone && h.pipes[p.key] == p {
		delete(h.pipes, p.key)
	}
}

// claim registers a reader. mode says how it reads: readJetStream (another
// reader of the same copy is here already, or the stream already failed on
// JetStream: this one is not local), readWaiting, readHandover until
// switchAt, or readMemory.
func (h *localHub) claim(k pipeKey, window int) (p *pipe, mode readMode, switchAt int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked()
	p = h.pipes[k]
	if p == nil {
		p = newPipe(k, window, h.now())
		p.reader = readerWaiting
		h.pipes[k] = p
		return p, readWaiting, 0
	}
	if p.reader != readerNone || p.jsFailed {
		return nil, readJetStream, 0
	}
	p.reader = readerLocal
	if p.jsNext == 0 {
		return p, readMemory, 0
	}
	return p, readHandover, p.jsNext
}

// leaveWaiting is called by a waiting reader that got a JetStream message:
// unless a local writer attached meanwhile (true), the reader leaves the
// hub and a later local writer publishes to JetStream like any other.
func (h *localHub) leaveWaiting(p *pipe) (attached bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p.reader == readerLocal {
		return true
	}
	if h.pipes[p.key] == p {
		delete(h.pipes, p.key)
	}
	return false
}

// drop ends a pipe: its reader closed or gave up, or its writer learnt so.
func (h *localHub) drop(p *pipe) {
	h.mu.Lock()
	if h.pipes[p.key] == p {
		delete(h.pipes, p.key)
	}
	h.mu.Unlock()
	p.markGone()
}

// dropKey ends the pipe of k, if there is one (DeleteDataConsumer).
func (h *localHub) dropKey(k pipeKey) {
	h.mu.Lock()
	p := h.pipes[k]
	h.mu.Unlock()
	if p != nil {
		h.drop(p)
	}
}

// pipeIdle is how long a pipe without a reader may stay untouched before
// it is swept: the data consumer's InactiveThreshold, after which the
// server forgets the stream's reader too.
const pipeIdle = 30 * time.Minute

// sweepLocked removes pipes a writer offered and abandoned.
func (h *localHub) sweepLocked() {
	now := h.now()
	for k, p := range h.pipes {
		if p.reader == readerNone && now.Sub(p.touched) > pipeIdle {
			delete(h.pipes, k)
		}
	}
}

func (h *localHub) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.pipes)
}

// readMode is how a ChunkReader reads.
type readMode int

const (
	// readJetStream: every chunk from JetStream (no hub, a remote writer).
	readJetStream readMode = iota
	// readWaiting: the first JetStream message or local writer decides.
	readWaiting
	// readHandover: JetStream up to switchAt−1, then memory.
	readHandover
	// readMemory: every chunk in memory.
	readMemory
)

// headerNewlines is what the NATS client does to a header value's CR and LF.
var headerNewlines = strings.NewReplacer("\r", " ", "\n", " ")

// wireValue is v as a reader receives it in a NATS header, so a trailer
// or a failure reads the same whichever way it came.
func wireValue(v string) string { return headerNewlines.Replace(textproto.TrimString(v)) }

// wireTrailer is a copy of trailer as a JetStream reader receives it.
func wireTrailer(trailer map[string]string) map[string]string {
	out := make(map[string]string, len(trailer))
	for k, v := range trailer {
		out[k] = wireValue(v)
	}
	return out
}
