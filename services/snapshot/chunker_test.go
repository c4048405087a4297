package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"testing/iotest"
	"time"

	"github.com/backstream/backstream/pkg/datagen"
)

// sink records what a chunker publishes; failAt > 0 makes the failAt-th
// WriteOwned fail, block makes every WriteOwned wait for its ctx.
type sink struct {
	chunks [][]byte
	failAt int
	block  bool
}

var errSinkFull = errors.New("sink: downstream gone")

func (s *sink) Buffer(n int) []byte { return make([]byte, 0, n) }

func (s *sink) WriteOwned(ctx context.Context, b []byte) error {
	if s.block {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	if len(s.chunks)+1 == s.failAt {
		return errSinkFull
	}
	s.chunks = append(s.chunks, b)
	return nil
}

func dump(n int) []byte {
	b, err := io.ReadAll(datagen.New(1, int64(n)))
	if err != nil {
		panic(err)
	}
	return b
}

// TestChunkerCutsHashesAndKeepsOrder: whatever the sizes of the plugin's
// writes or reads, every published chunk is exactly size bytes, in order,
// the rest is the last chunk finish returns, and the digest is the whole
// dump's SHA-256.
func TestChunkerCutsHashesAndKeepsOrder(t *testing.T) {
	const size = 4 << 10
	tests := []struct {
		name string
		n    int
		feed func(c *chunker, data []byte) error
	}{
		{"empty, ReadFrom", 0, readFrom},
		{"one byte short of a chunk, ReadFrom", size - 1, readFrom},
		{"exactly one chunk, ReadFrom", size, readFrom},
		{"many chunks and a rest, ReadFrom in short reads", 37*size + 123, func(c *chunker, d []byte) error {
			_, err := c.ReadFrom(iotest.HalfReader(bytes.NewReader(d)))
			return err
		}},
		{"many chunks, Write in odd pieces", 37*size + 123, writeIn(1000)},
		{"chunks larger than a write's piece", 5 * size, writeIn(3 * size)},
		{"Write then ReadFrom", 9*size + 7, func(c *chunker, d []byte) error {
			if _, err := c.Write(d[:size+5]); err != nil {
				return err
			}
			_, err := c.ReadFrom(bytes.NewReader(d[size+5:]))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := dump(tt.n)
			s := &sink{}
			c := newChunker(context.Background(), s, size)
			if err := tt.feed(c, data); err != nil {
				t.Fatal(err)
			}
			last, sum, err := c.finish()
			if err != nil {
				t.Fatal(err)
			}
			if want := sha256.Sum256(data); !bytes.Equal(sum, want[:]) {
				t.Errorf("digest %x, want %x", sum, want)
			}
			var got []byte
			for i, ch := range s.chunks {
				if len(ch) != size {
					t.Errorf("chunk %d holds %d bytes, want %d", i, len(ch), size)
				}
				got = append(got, ch...)
			}
			if len(last) >= size && len(data) > 0 {
				t.Errorf("last chunk holds %d bytes, want fewer than %d", len(last), size)
			}
			if got = append(got, last...); !bytes.Equal(got, data) {
				t.Errorf("chunks hold %d bytes that differ from the dump's %d", len(got), len(data))
			}
			if c.written.Load() != int64(len(data)) || c.chunks.Load() != int64(len(s.chunks)) {
				t.Errorf("progress says %d bytes in %d chunks, want %d in %d", c.written.Load(), c.chunks.Load(), len(data), len(s.chunks))
			}
		})
	}
}

func readFrom(c *chunker, d []byte) error {
	_, err := c.ReadFrom(bytes.NewReader(d))
	return err
}

func writeIn(piece int) func(c *chunker, d []byte) error {
	return func(c *chunker, d []byte) error {
		for len(d) > 0 {
			k := min(piece, len(d))
			if _, err := c.Write(d[:k]); err != nil {
				return err
			}
			d = d[k:]
		}
		return nil
	}
}

// endless is a dump that never ends, counting what was read of it.
type endless struct{ read int64 }

func (e *endless) Read(p []byte) (int, error) {
	e.read += int64(len(p))
	return len(p), nil
}

// TestChunkerStopsReadingWhenAPublishFails: once the stream refuses a
// chunk, the dump is read at most a few chunks further, ReadFrom and
// finish return the stream's error, and the chunks after the failed one
// are never published.
func TestChunkerStopsReadingWhenAPublishFails(t *testing.T) {
	const size = 4 << 10
	s := &sink{failAt: 3}
	c := newChunker(context.Background(), s, size)
	src := &endless{}
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadFrom(src)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errSinkFull) {
			t.Fatalf("ReadFrom: %v, want the sink's error", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("ReadFrom still reads an endless dump after its stream failed")
	}
	if _, _, err := c.finish(); !errors.Is(err, errSinkFull) {
		t.Errorf("finish: %v, want the sink's error", err)
	}
	if len(s.chunks) != 2 {
		t.Errorf("%d chunks published, want the 2 before the failed one", len(s.chunks))
	}
	// The failed chunk, the queued ones and the one being filled.
	if limit := int64(3+hashAhead+1) * size; src.read > limit {
		t.Errorf("read %d bytes of the dump, want at most %d", src.read, limit)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after finish succeeded")
	}
}

// TestChunkerEndsWithItsContext: a stream that never takes a chunk (a
// reader that stopped) holds the dump only until the run's context ends.
func TestChunkerEndsWithItsContext(t *testing.T) {
	const size = 4 << 10
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("run cancelled")
	c := newChunker(ctx, &sink{block: true}, size)
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadFrom(&endless{})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel(cause)
	select {
	case err := <-done:
		if !errors.Is(err, cause) {
			t.Fatalf("ReadFrom: %v, want the context's cause", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("ReadFrom did not end with its context")
	}
	if _, _, err := c.finish(); !errors.Is(err, cause) {
		t.Errorf("finish: %v, want the context's cause", err)
	}
}

// TestChunkerStopsWithoutFinish: stop, as the snapshot defers it for a
// plugin that panicked, ends the hasher after the chunks handed to it, may
// be called again, and a write after it is refused.
func TestChunkerStopsWithoutFinish(t *testing.T) {
	const size = 4 << 10
	s := &sink{}
	c := newChunker(context.Background(), s, size)
	if _, err := c.Write(dump(3*size + 1)); err != nil {
		t.Fatal(err)
	}
	c.stop()
	c.stop()
	if len(s.chunks) != 3 {
		t.Errorf("%d chunks published, want 3", len(s.chunks))
	}
	if _, err := c.Write(make([]byte, size)); !errors.Is(err, errChunkerClosed) {
		t.Errorf("Write after stop: %v, want errChunkerClosed", err)
	}
}
