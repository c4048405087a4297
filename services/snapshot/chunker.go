package snapshot

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"
)

// chunkSink is where a chunker's full chunks go: the run's raw chunk
// stream (*bus.ChunkWriter). Buffer may be called while WriteOwned runs on
// another goroutine; WriteOwned is called from one goroutine at a time, in
// chunk order, and takes the buffer it is given.
type chunkSink interface {
	Buffer(n int) []byte
	WriteOwned(ctx context.Context, data []byte) error
}

// hashAhead is how many full chunks may wait for the hasher: the dump is
// read on while the chunk before is hashed, and a slow stream downstream
// stops the reading after this many more chunks (the same backpressure,
// a few chunks later).
const hashAhead = 2

// errChunkerClosed is what a write after finish gets.
var errChunkerClosed = errors.New("chunker: write after the dump ended")

// chunker is the io.Writer a source plugin dumps into. It fills chunks of
// size bytes; a goroutine of its own hashes each full chunk (the plaintext
// SHA-256 of the manifest) and then publishes it, so reading the dump and
// hashing the chunk before it run at the same time. One goroutine doing
// both was the snapshot's ceiling: on a 2-core Xeon a 1 GiB dump of
// pgbench spent 0.71 s in SHA-256 and 0.15 s in reads one after the other
// (docs/bench.md). The chunk being filled, and the last, partial one that
// finish returns for the final message, never reach the hasher
// goroutine; finish hashes the last one itself once that goroutine is done.
//
// Write and ReadFrom are called from one goroutine (the plugin's); stop
// and finish from that goroutine, after the plugin returned.
type chunker struct {
	ctx  context.Context
	sink chunkSink
	size int
	buf  []byte // the chunk being filled
	n    int64  // bytes taken

	full  chan []byte   // full chunks for the hasher, in order
	done  chan struct{} // closed when the hasher returned
	sum   hash.Hash     // the hasher's until done, then finish's
	herr  error         // the hasher's error, read after done
	ended bool

	written atomic.Int64 // for progress events
	chunks  atomic.Int64
}

// newChunker starts the hasher; stop or finish must be called to end it.
func newChunker(ctx context.Context, sink chunkSink, size int) *chunker {
	c := &chunker{ctx: ctx, sink: sink, size: size, buf: sink.Buffer(size), full: make(chan []byte, hashAhead),
		done: make(chan struct{}), sum: sha256.New()}
	go c.hash()
	return c
}

// hash hashes and publishes full chunks in order until full is closed or
// a publish fails; after a failure it drops the chunks still coming, so the
// reader is never blocked on it.
func (c *chunker) hash() {
	defer close(c.done)
	for b := range c.full {
		c.sum.Write(b)
		if err := c.sink.WriteOwned(c.ctx, b); err != nil {
			c.herr = fmt.Errorf("publish chunk: %w", err)
			return
		}
		c.chunks.Add(1)
	}
}

func (c *chunker) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(c.size-len(c.buf), len(p))
		c.buf = append(c.buf, p[:k]...)
		c.took(k)
		p = p[k:]
		if err := c.handOff(); err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

// ReadFrom reads a dump straight into the chunk being filled, so io.Copy
// from a pipe fills whole chunks without a copy through its own 32 KiB buffer.
func (c *chunker) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if err := c.handOff(); err != nil {
			return total, err
		}
		n, err := r.Read(c.buf[len(c.buf):c.size])
		if n > 0 {
			c.buf = c.buf[:len(c.buf)+n]
			c.took(n)
			total += int64(n)
		}
		if err == io.EOF {
			return total, c.handOff()
		}
		if err != nil {
			return total, err
		}
	}
}

// took counts dump bytes as they enter the chunk being filled.
func (c *chunker) took(n int) {
	c.n += int64(n)
	c.written.Store(c.n)
}

// handOff gives the chunk being filled to the hasher once it is full (and
// returns the hasher's error once it has failed).
func (c *chunker) handOff() error {
	if c.ended {
		return errChunkerClosed
	}
	if len(c.buf) < c.size {
		return nil
	}
	select {
	case <-c.done: // failed: read no further
		return c.herr
	default:
	}
	select {
	case c.full <- c.buf:
	case <-c.done:
		return c.herr
	case <-c.ctx.Done():
		return context.Cause(c.ctx)
	}
	c.buf = c.sink.Buffer(c.size)
	return nil
}

// stop ends the hasher after it published the full chunks handed to it
// and waits for it. It may be called any number of times; the snapshot
// defers it, so the hasher never outlives a plugin that panicked.
func (c *chunker) stop() {
	if !c.ended {
		c.ended = true
		close(c.full)
	}
	<-c.done
}

// finish stops the hasher and returns the last, partial chunk (maybe
// empty) and the SHA-256 of all bytes taken, or the hasher's error. Call
// it once, after the plugin returned.
func (c *chunker) finish() (last, sum []byte, err error) {
	c.stop()
	if c.herr != nil {
		return nil, nil, c.herr
	}
	c.sum.Write(c.buf)
	return c.buf, c.sum.Sum(nil), nil
}
