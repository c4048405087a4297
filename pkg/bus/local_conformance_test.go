package bus_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/secret"
)

// The chunk stream's conformance suite: every case runs on every path a
// chunk can take between a writer and its readers, and must behave the
// same on each. Two Buses on one server are two processes.

// chunkPath is one way the writer and the readers of a stream meet.
type chunkPath struct {
	name string
	// hub: the processes run the in-process data plane.
	hub bool
	// order is when the readers open: before the writer, right after it,
	// or after handoverAfter chunks went to JetStream.
	order readerOrder
	// remote says whether reader i runs in another process than the writer.
	remote func(i int) bool
	// inMemory says whether reader i gets chunk seq in memory (the
	// writer's slice) rather than a copy through JetStream.
	inMemory func(i int, seq int64) bool
}

type readerOrder int

const (
	writerFirst readerOrder = iota
	readersFirst
	handover
)

// handoverAfter is how many chunks the handover path writes through
// JetStream before the readers open (or fewer, when the stream ends first).
const handoverAfter = 2

func never(int) bool { return false }

var chunkPaths = []chunkPath{
	{name: "jetstream", order: writerFirst, remote: never,
		inMemory: func(int, int64) bool { return false }},
	{name: "local-writer-first", hub: true, order: writerFirst, remote: never,
		inMemory: func(int, int64) bool { return true }},
	{name: "local-reader-first", hub: true, order: readersFirst, remote: never,
		inMemory: func(int, int64) bool { return true }},
	{name: "handover", hub: true, order: handover, remote: never,
		inMemory: func(_ int, seq int64) bool { return seq >= handoverAfter }},
	{name: "mixed", hub: true, order: writerFirst, remote: func(i int) bool { return i > 0 },
		inMemory: func(i int, _ int64) bool { return i == 0 }},
	{name: "remote", hub: true, order: readersFirst, remote: func(int) bool { return true },
		inMemory: func(int, int64) bool { return false }},
}

// chunkEnv is one path's two processes on one server.
type chunkEnv struct {
	path        chunkPath
	here, there *bus.Bus
}

func connectBus(t *testing.T, srv *bus.Server, service string, local bool) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	auth, _ := bustest.AuthFor(srv.URL(), bus.RoleAdmin)
	b, err := bus.Connect(ctx, srv.URL(), service, bus.Config{Auth: auth, LocalData: local}, bustest.Logger(t))
	if err != nil {
		t.Fatalf("connect bus: %v", err)
	}
	t.Cleanup(func() { b.NC.Close() })
	return b
}

// forEachPath runs test on every path, each case with a fresh run on the
// path's server, and checks that no pipe is left in either process after it.
func forEachPath(t *testing.T, test func(t *testing.T, env *chunkEnv)) {
	for _, path := range chunkPaths {
		t.Run(path.name, func(t *testing.T) {
			srv := bustest.Server(t)
			env := &chunkEnv{path: path, here: connectBus(t, srv, "here", path.hub), there: connectBus(t, srv, "there", path.hub)}
			// Runs after every stream's cleanup: both sides are done.
			t.Cleanup(func() {
				for _, b := range []*bus.Bus{env.here, env.there} {
					if n := bus.LocalPipes(b); n != 0 {
						t.Errorf("%s: %d pipes left in the hub", b.Source, n)
					}
				}
			})
			test(t, env)
		})
	}
}

// chunkStream is one stream under test: its writer and its readers, opened
// in the path's order.
type chunkStream struct {
	t       *testing.T
	env     *chunkEnv
	run     string
	kind    string
	names   []string
	opts    bus.DataOptions
	w       *testWriter
	mu      sync.Mutex
	readers map[string]*bus.ChunkReader
	opened  chan struct{}
	calls   int
}

// testWriter is the stream's ChunkWriter; in the handover path it opens the
// readers before its (handoverAfter+1)th chunk, or before it ends.
type testWriter struct {
	*bus.ChunkWriter
	s     *chunkStream
	ended bool
}

func (w *testWriter) before(end bool) {
	if w.s.env.path.order == handover && (w.s.calls == handoverAfter || end) {
		w.s.openReaders()
	}
	w.s.calls++
	w.ended = w.ended || end
}

func (w *testWriter) Write(ctx context.Context, data []byte) error {
	w.before(false)
	return w.ChunkWriter.Write(ctx, data)
}

func (w *testWriter) WriteOwned(ctx context.Context, data []byte) error {
	w.before(false)
	return w.ChunkWriter.WriteOwned(ctx, data)
}

func (w *testWriter) Close(ctx context.Context, data []byte, trailer map[string]string) error {
	w.before(true)
	return w.ChunkWriter.Close(ctx, data, trailer)
}

func (w *testWriter) Fail(ctx context.Context, reason string) error {
	w.before(true)
	return w.ChunkWriter.Fail(ctx, reason)
}

// open opens a stream of kind for run, read by names.
func (env *chunkEnv) open(t *testing.T, run, kind string, names []string, opts bus.DataOptions) *chunkStream {
	t.Helper()
	s := &chunkStream{t: t, env: env, run: run, kind: kind, names: names, opts: opts,
		readers: map[string]*bus.ChunkReader{}, opened: make(chan struct{})}
	if env.path.order == readersFirst {
		s.openReaders()
	}
	w, err := env.here.NewChunkWriter(context.Background(), run, kind, names, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.w = &testWriter{ChunkWriter: w, s: s}
	if env.path.order == writerFirst {
		s.openReaders()
	}
	t.Cleanup(s.cleanup)
	return s
}

func (s *chunkStream) openReaders() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.readers) > 0 {
		return
	}
	for i, name := range s.names {
		r, err := s.busOf(i).NewChunkReader(context.Background(), s.run, s.kind, name, s.opts)
		if err != nil {
			s.t.Errorf("open reader %s: %v", name, err)
			return
		}
		s.readers[name] = r
	}
	close(s.opened)
}

func (s *chunkStream) index(name string) int {
	for i, n := range s.names {
		if n == name {
			return i
		}
	}
	s.t.Fatalf("no reader %s", name)
	return -1
}

func (s *chunkStream) busOf(i int) *bus.Bus {
	if s.env.path.remote(i) {
		return s.env.there
	}
	return s.env.here
}

// reader waits until the stream's readers are open and returns name's.
func (s *chunkStream) reader(name string) *bus.ChunkReader {
	<-s.opened
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readers[name]
}

// deleteConsumer is name's stage giving up, in name's process.
func (s *chunkStream) deleteConsumer(name string) {
	s.t.Helper()
	if err := s.busOf(s.index(name)).DeleteDataConsumer(context.Background(), s.run, s.kind, name); err != nil {
		s.t.Fatal(err)
	}
}

// cleanup closes the readers and ends a writer the case left running (as
// a stage that gives up fails its stream).
func (s *chunkStream) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s.mu.Lock()
	for name, r := range s.readers {
		if err := r.Close(ctx); err != nil {
			s.t.Errorf("close reader %s: %v", name, err)
		}
	}
	s.mu.Unlock()
	if !s.w.ended {
		_ = s.w.ChunkWriter.Fail(ctx, "the test ended")
	}
}

// noChunksLeft waits until JetStream holds no chunk of the stream.
func (s *chunkStream) noChunksLeft() {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.env.here.JS.Stream(ctx, bus.DataStream)
	if err != nil {
		s.t.Fatal(err)
	}
	waitFor(s.t, "consumed chunks removed from the stream", func() bool {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.DataSubject(s.run, s.kind)+".>"))
		return err == nil && len(info.State.Subjects) == 0
	})
}

// sameSlice says whether a and b start at the same memory.
func sameSlice(a, b []byte) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0]
}

// TestChunkStreamInOrderWithBackpressure: every chunk in order, the final
// one with its trailer as JetStream headers carry it, a slow reader
// holding the writer back by its window, nothing left in JetStream, and
// the chunks a path hands over in memory are the writer's own slices.
func TestChunkStreamInOrderWithBackpressure(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		opts := bus.DataOptions{Window: 8}
		s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, opts)
		const n = 200
		chunks := make([][]byte, n)
		for i := range chunks {
			chunks[i] = make([]byte, 1000+i)
			_, _ = rand.Read(chunks[i])
		}
		var maxAhead, consumed atomic.Int64
		errc := make(chan error, 1)
		go func() {
			for i := 0; i < n-1; i++ {
				if err := s.w.Write(ctx, chunks[i]); err != nil {
					errc <- err
					return
				}
				maxAhead.Store(max(maxAhead.Load(), s.w.Seq()-consumed.Load()))
			}
			errc <- s.w.Close(ctx, chunks[n-1], map[string]string{"Sha256": "abc", "Note": " two\nlines "})
		}()
		r := s.reader("filter")
		for i := 0; i < n; i++ {
			c, err := r.Next(ctx)
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			if c.Seq != int64(i) || !bytes.Equal(c.Data, chunks[i]) {
				t.Fatalf("chunk %d: got seq %d, %d bytes", i, c.Seq, len(c.Data))
			}
			if got, want := sameSlice(c.Data, chunks[i]), env.path.inMemory(0, c.Seq); got != want {
				t.Fatalf("chunk %d: the writer's own slice: %v, want %v", i, got, want)
			}
			if c.Final != (i == n-1) {
				t.Fatalf("chunk %d: final=%v", i, c.Final)
			}
			// Header values lose surrounding space and line breaks on the
			// wire; a trailer handed over in memory reads the same.
			if c.Final && (c.Trailer["Sha256"] != "abc" || c.Trailer["Note"] != "two lines" || len(c.Trailer) != 2) {
				t.Fatalf("trailer %q", c.Trailer)
			}
			if i%10 == 0 {
				time.Sleep(5 * time.Millisecond) // a slow reader
			}
			if err := c.Ack(); err != nil {
				t.Fatal(err)
			}
			consumed.Add(1)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		// The writer may run ahead by the window plus the chunks published
		// between two checks of the reader's state (or, handing over, the
		// chunks still in JetStream), never by the whole stream.
		if a := maxAhead.Load(); a > int64(opts.Window*3) {
			t.Errorf("writer ran %d chunks ahead of a slow reader with window %d", a, opts.Window)
		}
		s.noChunksLeft()
	})
}

// TestChunkStreamReusesOwnedBuffersAfterEveryReader: a WriteOwned buffer
// comes back from Buffer once every JetStream copy is stored and, not
// before, every reader in the process acked it.
func TestChunkStreamReusesOwnedBuffersAfterEveryReader(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindSealed, []string{"a", "b"}, bus.DataOptions{Window: 4})
		const size = 4096
		first := append(s.w.Buffer(size), bytes.Repeat([]byte{1}, size)...)
		if err := s.w.WriteOwned(ctx, first); err != nil {
			t.Fatal(err)
		}
		// Close waits until every chunk is stored (or handed over).
		if err := s.w.Close(ctx, nil, nil); err != nil {
			t.Fatal(err)
		}
		var held []bus.Chunk
		for _, name := range s.names {
			c, err := s.reader(name).Next(ctx)
			if err != nil || !bytes.Equal(c.Data, first) {
				t.Fatalf("reader %s: %v", name, err)
			}
			held = append(held, c)
		}
		heldHere := env.path.inMemory(0, 0) || env.path.inMemory(1, 0)
		if reused := sameSlice(s.w.Buffer(size), first); reused == heldHere {
			t.Fatalf("buffer reused: %v, with a reader in the process holding it: %v", reused, heldHere)
		}
		held[0].Ack()
		if heldHere && env.path.inMemory(1, 0) && sameSlice(s.w.Buffer(size), first) {
			t.Fatal("buffer reused while the second reader holds it")
		}
		held[1].Ack()
		if heldHere && !sameSlice(s.w.Buffer(size), first) {
			t.Fatal("buffer not reused once every reader acked it")
		}
	})
}

// TestChunkStreamOwnedBuffersStayIntactUntilAcked: a stream of buffers
// from Buffer, each filled and handed over with WriteOwned while the
// readers hold some unacked: a buffer reused too early shows as a wrong
// chunk here (and as a race under -race).
func TestChunkStreamOwnedBuffersStayIntactUntilAcked(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindSealed, []string{"a", "b"}, bus.DataOptions{Window: 4})
		const size, n = 4096, 64
		fill := func(seq int64) []byte { return bytes.Repeat([]byte{byte(seq*7 + 1)}, size) }
		errc := make(chan error, 1)
		go func() {
			for i := range int64(n) {
				b := append(s.w.Buffer(size), fill(i)...)
				if err := s.w.WriteOwned(ctx, b); err != nil {
					errc <- err
					return
				}
			}
			errc <- s.w.Close(ctx, nil, nil)
		}()
		var wg sync.WaitGroup
		for _, name := range s.names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.reader(name)
				var unacked []bus.Chunk // up to two chunks held, checked again before their ack
				for {
					c, err := r.Next(ctx)
					if err != nil {
						t.Errorf("reader %s: %v", name, err)
						return
					}
					unacked = append(unacked, c)
					if len(unacked) > 2 || c.Final {
						for _, u := range unacked {
							if !u.Final && !bytes.Equal(u.Data, fill(u.Seq)) {
								t.Errorf("reader %s: chunk %d overwritten before its ack", name, u.Seq)
							}
							_ = u.Ack()
						}
						unacked = unacked[:0]
					}
					if c.Final {
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
}

// TestChunkWriterStopsWhenReaderGone: a reader that closes, or whose stage
// deletes its consumer, stops the writer with ErrDownstreamGone.
func TestChunkWriterStopsWhenReaderGone(t *testing.T) {
	ways := []struct {
		name string
		gone func(s *chunkStream)
	}{
		{"consumer deleted", func(s *chunkStream) { s.deleteConsumer("filter") }},
		{"reader closed", func(s *chunkStream) {
			if err := s.reader("filter").Close(context.Background()); err != nil {
				s.t.Fatal(err)
			}
		}},
	}
	for _, way := range ways {
		t.Run(way.name, func(t *testing.T) {
			forEachPath(t, func(t *testing.T, env *chunkEnv) {
				ctx := context.Background()
				s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, bus.DataOptions{Window: 4})
				for i := range handoverAfter + 1 {
					if err := s.w.Write(ctx, []byte{byte(i)}); err != nil {
						t.Fatal(err)
					}
				}
				way.gone(s)
				var werr error
				for i := 0; i < 100 && werr == nil; i++ {
					werr = s.w.Write(ctx, []byte("x"))
				}
				if !errors.Is(werr, bus.ErrDownstreamGone) {
					t.Fatalf("writer error %v, want ErrDownstreamGone", werr)
				}
			})
		})
	}
}

// TestChunkStreamSealedToTwoReaders: each of two readers (one in the
// writer's process and one in another, on the mixed path) reads every chunk.
func TestChunkStreamSealedToTwoReaders(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindSealed, []string{"a", "b"}, bus.DataOptions{Window: 4})
		s.w.IndependentReaders(nil)
		const n = 40
		errc := make(chan error, 1)
		go func() {
			for i := range n - 1 {
				if err := s.w.Write(ctx, []byte{byte(i)}); err != nil {
					errc <- err
					return
				}
			}
			errc <- s.w.Close(ctx, []byte{n - 1}, map[string]string{"Meta": "{}"})
		}()
		var wg sync.WaitGroup
		for i, name := range s.names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.reader(name)
				for seq := int64(0); seq < n; seq++ {
					c, err := r.Next(ctx)
					if err != nil {
						t.Errorf("reader %s chunk %d: %v", name, seq, err)
						return
					}
					if c.Seq != seq || !bytes.Equal(c.Data, []byte{byte(seq)}) || c.Final != (seq == n-1) {
						t.Errorf("reader %s: chunk %d: seq %d data %v final %v", name, seq, c.Seq, c.Data, c.Final)
					}
					if c.Final && c.Trailer["Meta"] != "{}" {
						t.Errorf("reader %s: trailer %q", name, c.Trailer)
					}
					_ = c.Ack()
				}
				if err := r.Close(ctx); err != nil {
					t.Errorf("reader %s (%d): %v", name, i, err)
				}
			}()
		}
		wg.Wait()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		s.noChunksLeft()
	})
}

// TestIndependentReadersOutliveAGoneOne: with IndependentReaders a reader
// that goes away stops only its copy; the other reads every chunk, and
// only when both are gone does the writer stop.
func TestIndependentReadersOutliveAGoneOne(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindSealed, []string{"a", "b"}, bus.DataOptions{Window: 4})
		s.w.IndependentReaders(nil)
		s.deleteConsumer("b")
		const n = 40
		read := make(chan int, 1)
		go func() {
			r := s.reader("a")
			got := 0
			for got < n {
				c, err := r.Next(ctx)
				if err != nil {
					break
				}
				_ = c.Ack()
				got++
			}
			read <- got
		}()
		for i := range n {
			if err := s.w.Write(ctx, []byte{byte(i)}); err != nil {
				t.Fatalf("chunk %d: %v, want the writer to go on for reader a", i, err)
			}
		}
		if got := <-read; got != n {
			t.Fatalf("reader a read %d chunks, want %d", got, n)
		}
		s.deleteConsumer("a")
		var werr error
		for i := 0; i < 100 && werr == nil; i++ {
			werr = s.w.Write(ctx, []byte("x"))
		}
		if !errors.Is(werr, bus.ErrDownstreamGone) {
			t.Fatalf("with every reader gone: %v, want ErrDownstreamGone", werr)
		}
	})
}

// TestAnAbandonedReaderIsDropped: a reader that never reads (its stage gave
// up before it read) holds the window up until abandoned reports it; then
// the writer drops it and goes on for the other.
func TestAnAbandonedReaderIsDropped(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindSealed, []string{"a", "b"}, bus.DataOptions{Window: 4})
		var asked atomic.Int32
		s.w.IndependentReaders(func(_ context.Context, reader string) bool {
			asked.Add(1)
			return reader == "b"
		})
		const n = 40
		read := make(chan int, 1)
		go func() {
			r := s.reader("a")
			got := 0
			for got < n {
				c, err := r.Next(ctx)
				if err != nil {
					break
				}
				_ = c.Ack()
				got++
			}
			read <- got
		}()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for i := range n {
			if err := s.w.Write(wctx, []byte{byte(i)}); err != nil {
				t.Fatalf("chunk %d: %v, want reader b dropped and the writer going on", i, err)
			}
		}
		if got := <-read; got != n {
			t.Fatalf("reader a read %d chunks, want %d", got, n)
		}
		if asked.Load() == 0 {
			t.Fatal("abandoned never asked")
		}
	})
}

// TestChunkProducerFailureReachesReader: a writer's failure reaches the
// reader after the chunks before it, redacted and as one header line; a
// middle stage passing it on says its prefix once.
func TestChunkProducerFailureReachesReader(t *testing.T) {
	const token = "hunter2-chunk-secret"
	secret.Register(token)
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		run := events.NewID()
		s := env.open(t, run, bus.KindRaw, []string{"filter"}, bus.DataOptions{})
		if err := s.w.Write(ctx, []byte("partial")); err != nil {
			t.Fatal(err)
		}
		if err := s.w.Fail(ctx, "mariadb-dump exited with status 2\nstderr: password="+token); err != nil {
			t.Fatal(err)
		}
		r := s.reader("filter")
		c, err := r.Next(ctx)
		if err != nil || string(c.Data) != "partial" {
			t.Fatalf("first chunk: %q %v", c.Data, err)
		}
		_ = c.Ack()
		_, err = r.Next(ctx)
		var pe *bus.ProducerError
		if !errors.As(err, &pe) || !errors.Is(err, bus.ErrProducerFailed) {
			t.Fatalf("got %v, want ErrProducerFailed", err)
		}
		if !strings.HasPrefix(pe.Reason, "mariadb-dump exited with status 2 stderr: password=") || strings.Contains(pe.Reason, token) {
			t.Fatalf("reason %q: want the failure on one line, its secret redacted", pe.Reason)
		}

		// Passed on by a middle stage (filter to upload), the failure says
		// its prefix once.
		failed := fmt.Errorf("read chunk: %w", &bus.ProducerError{Reason: "mariadb-dump exited with status 2"})
		s2 := env.open(t, run, bus.KindSealed, []string{"upload"}, bus.DataOptions{})
		if err := s2.w.Fail(ctx, bus.ProducerReason(failed)); err != nil {
			t.Fatal(err)
		}
		_, err = s2.reader("upload").Next(ctx)
		if want := "chunk stream producer failed: mariadb-dump exited with status 2"; err == nil || err.Error() != want {
			t.Fatalf("passed on: %v, want %q", err, want)
		}
	})
}

// TestChunkTakeoverFailureReachesTheReader: a second writer of the same
// stream in the same process (snapshot's takeover of an interrupted run,
// which only fails the stream) reaches the reader where it reads.
func TestChunkTakeoverFailureReachesTheReader(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, bus.DataOptions{Window: 8})
		const n = handoverAfter + 2
		writeChunks(ctx, t, s.w, n)
		r := s.reader("filter")
		readChunks(ctx, t, r, n)
		// The first writer is abandoned mid-stream, as a dead stage's is.
		w2, err := env.here.NewChunkWriter(ctx, s.run, s.kind, s.names, s.opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := w2.Fail(ctx, "snapshot interrupted"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(ctx); !errors.Is(err, bus.ErrProducerFailed) || !strings.Contains(err.Error(), "snapshot interrupted") {
			t.Fatalf("after the takeover: %v, want its failure", err)
		}
	})
}

// TestChunkRepeatedSequencesAreSkipped: chunks below the reader's next
// sequence (a redelivery, or a writer that starts the stream again) are
// acked and skipped.
func TestChunkRepeatedSequencesAreSkipped(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, bus.DataOptions{Window: 8})
		const n = handoverAfter + 1
		writeChunks(ctx, t, s.w, n)
		r := s.reader("filter")
		readChunks(ctx, t, r, n)
		w2, err := env.here.NewChunkWriter(ctx, s.run, s.kind, s.names, s.opts)
		if err != nil {
			t.Fatal(err)
		}
		writeChunks(ctx, t, w2, n)
		if err := w2.Close(ctx, []byte("end"), nil); err != nil {
			t.Fatal(err)
		}
		c, err := r.Next(ctx)
		if err != nil || c.Seq != n || !c.Final || string(c.Data) != "end" {
			t.Fatalf("after the repeats: seq %d final %v %q %v, want the final chunk %d", c.Seq, c.Final, c.Data, err, n)
		}
		_ = c.Ack()
		// The repeats were acked: the reader's copy holds nothing more.
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s.noChunksLeft()
	})
}

// TestChunkReaderStalls: a reader that gets no chunk within its stall
// timeout fails with ErrStalled, wherever the chunks would come from.
func TestChunkReaderStalls(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, bus.DataOptions{Window: 8, Stall: 300 * time.Millisecond})
		for i := range handoverAfter + 1 {
			if err := s.w.Write(ctx, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		r := s.reader("filter")
		for i := range handoverAfter + 1 {
			c, err := r.Next(ctx)
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			_ = c.Ack()
		}
		if _, err := r.Next(ctx); !errors.Is(err, bus.ErrStalled) {
			t.Fatalf("got %v, want ErrStalled", err)
		}
	})
}

// TestChunkCancelUnblocksBothSides: a writer waiting for room in the window
// and a reader waiting for a chunk both return when their context ends.
func TestChunkCancelUnblocksBothSides(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		s := env.open(t, events.NewID(), bus.KindRaw, []string{"filter"}, bus.DataOptions{Window: 4})

		// The reader waits before any chunk is written (in the handover
		// path: before the handover).
		if env.path.order == handover {
			s.openReaders()
		}
		rctx, rcancel := context.WithCancel(context.Background())
		rerr := make(chan error, 1)
		go func() {
			_, err := s.reader("filter").Next(rctx)
			rerr <- err
		}()
		rcancel()
		if err := <-rerr; !errors.Is(err, context.Canceled) {
			t.Fatalf("reader: %v, want context.Canceled", err)
		}

		// The writer fills the window of a reader that does not read.
		wctx, wcancel := context.WithCancel(context.Background())
		werr := make(chan error, 1)
		var written atomic.Int32
		go func() {
			for {
				if err := s.w.Write(wctx, []byte("x")); err != nil {
					werr <- err
					return
				}
				written.Add(1)
			}
		}()
		waitFor(t, "the writer to fill the window", func() bool { return written.Load() >= 4 })
		wcancel()
		if err := <-werr; !errors.Is(err, context.Canceled) {
			t.Fatalf("writer: %v, want context.Canceled", err)
		}
	})
}

// TestAReaderWaitingForItsFirstChunk: a reader that opened before any
// writer and waits in Next is woken by whichever comes: a writer in its
// process (the chunks in memory), one in another (through JetStream), or
// its consumer deleted (its stage gave up) — never by the stall timeout.
func TestAReaderWaitingForItsFirstChunk(t *testing.T) {
	tests := []struct {
		name      string
		hub       bool
		writer    string // "here", "there" or "" (none: the consumer is deleted)
		inMemory  bool
		wantError error
	}{
		{name: "jetstream writer", writer: "there"},
		{name: "local writer", hub: true, writer: "here", inMemory: true},
		{name: "writer in another process", hub: true, writer: "there"},
		{name: "jetstream consumer deleted", wantError: jetstream.ErrConsumerDeleted},
		{name: "local consumer deleted", hub: true, wantError: jetstream.ErrConsumerDeleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			srv := bustest.Server(t)
			buses := map[string]*bus.Bus{"here": connectBus(t, srv, "here", tt.hub), "there": connectBus(t, srv, "there", tt.hub)}
			run, opts := events.NewID(), bus.DataOptions{Window: 4, Stall: time.Minute}
			r, err := buses["here"].NewChunkReader(ctx, run, bus.KindRaw, "filter", opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close(ctx) })
			type result struct {
				c   bus.Chunk
				err error
			}
			got := make(chan result, 1)
			go func() {
				c, err := r.Next(ctx)
				got <- result{c, err}
			}()
			time.Sleep(100 * time.Millisecond) // most likely waiting in Next by now
			data := []byte("first and last")
			if tt.writer == "" {
				if err := buses["here"].DeleteDataConsumer(ctx, run, bus.KindRaw, "filter"); err != nil {
					t.Fatal(err)
				}
			} else {
				w, err := buses[tt.writer].NewChunkWriter(ctx, run, bus.KindRaw, []string{"filter"}, opts)
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Close(ctx, data, map[string]string{"Bytes": "14"}); err != nil {
					t.Fatal(err)
				}
			}
			var res result
			select {
			case res = <-got:
			case <-time.After(30 * time.Second):
				t.Fatal("the waiting reader was not woken")
			}
			if tt.wantError != nil {
				if !errors.Is(res.err, tt.wantError) {
					t.Fatalf("Next: %v, want %v", res.err, tt.wantError)
				}
				return
			}
			if res.err != nil || res.c.Seq != 0 || !res.c.Final || !bytes.Equal(res.c.Data, data) {
				t.Fatalf("Next: seq %d final %v %q %v, want the one final chunk", res.c.Seq, res.c.Final, res.c.Data, res.err)
			}
			if sameSlice(res.c.Data, data) != tt.inMemory {
				t.Fatalf("the writer's own slice: %v, want %v", !tt.inMemory, tt.inMemory)
			}
			_ = res.c.Ack()
		})
	}
}

// TestChunkFailureWrittenBeforeTheReaderReachesIt: a stream that a second
// writer failed before its reader came (a takeover of an abandoned
// writer's stream) still ends with that failure, after the chunks before it.
func TestChunkFailureWrittenBeforeTheReaderReachesIt(t *testing.T) {
	forEachPath(t, func(t *testing.T, env *chunkEnv) {
		ctx := context.Background()
		// A reader looking for the failure in the wrong place stalls.
		run, opts := events.NewID(), bus.DataOptions{Window: 8, Stall: 20 * time.Second}
		w1, err := env.here.NewChunkWriter(ctx, run, bus.KindRaw, []string{"filter"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		const n = 3
		writeChunks(ctx, t, w1, n)
		w2, err := env.here.NewChunkWriter(ctx, run, bus.KindRaw, []string{"filter"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := w2.Fail(ctx, "snapshot interrupted"); err != nil {
			t.Fatal(err)
		}
		rb := env.here
		if env.path.remote(0) {
			rb = env.there
		}
		r, err := rb.NewChunkReader(ctx, run, bus.KindRaw, "filter", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := r.Close(ctx); err != nil {
				t.Error(err)
			}
			_ = w1.Fail(ctx, "the test ended") // the abandoned writer ends, as its stage would
		}()
		readChunks(ctx, t, r, n)
		if _, err := r.Next(ctx); !errors.Is(err, bus.ErrProducerFailed) {
			t.Fatalf("got %v, want the takeover's failure", err)
		}
	})
}

// writeChunks writes chunks 0..n-1, each the byte of its index.
func writeChunks(ctx context.Context, t *testing.T, w interface {
	Write(context.Context, []byte) error
}, n int) {
	t.Helper()
	for i := range n {
		if err := w.Write(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// readChunks reads and acks the next n chunks, which must be 0..n-1.
func readChunks(ctx context.Context, t *testing.T, r *bus.ChunkReader, n int) {
	t.Helper()
	for i := range n {
		c, err := r.Next(ctx)
		if err != nil || c.Seq != int64(i) {
			t.Fatalf("chunk %d: %v %v", i, c.Seq, err)
		}
		_ = c.Ack()
	}
}
