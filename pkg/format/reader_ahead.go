package format

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"hash"
	"sync"
	"sync/atomic"
)

// errClosed is what Read returns once Close stopped a read-ahead Reader
// before its end. It is no verdict on the object, so it wraps no sentinel.
var errClosed = errors.New("read of a closed object reader")

// pipeline is the read-ahead of one Reader, three goroutines in a row:
// fetch reads and checks frames from the object (frameReader: lengths,
// CRC-32C, order, final flag, nothing after it, stored SHA-256), open
// authenticates and decompresses them (opener), hash takes the plaintext's
// SHA-256, and the Reader's Read takes the frames in order from hashed.
// The plaintext is hashed in a stage of its own because SHA-256 costs as
// much per byte as opening a frame (docs/bench.md, "Restore read-ahead"):
// in open it would make that the slowest stage, in Read it would hold up
// the consumer. Each stage ends on its own after the object's last frame
// or its first error, which it passes on in frame order; done stops them
// earlier, and wg waits for them.
//
// Frame bodies and plaintexts circulate through two free lists, each
// holding ReadAhead+1 buffers (allocated the first time each is needed):
// a stage that finds its list empty waits until a later one (open for a
// compressed body, else Read) hands a buffer back. That bounds memory to a
// constant number of frames whatever the object's length, and bounds how
// far fetch can run ahead of Read.
type pipeline struct {
	fetched chan item
	opened  chan item
	hashed  chan item
	bodies  chan []byte // free frame bodies
	plains  chan []byte // free plaintext buffers (compressed objects only)

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	closed   atomic.Bool // Close was called

	// owned by the Reader's goroutine: what the frames taken so far say
	// about the object, and the buffer of the one at hand
	last  stored
	plain plainState
	held  []byte
	list  chan []byte // held's free list
}

// item is one frame, or the error in its place, on its way through the
// stages; each fills in its part.
type item struct {
	err error // io.EOF after the final frame and the end of the object

	// fetch
	f    frame
	body []byte // f.body's buffer, whole, to hand back
	at   stored

	// open
	plain []byte
	buf   []byte      // the buffer plain lives in, to hand back to list
	list  chan []byte // bodies or plains

	// hash
	sum plainState
}

// stored is what the frame reader had read when it passed a frame (or its
// error) on, and plainState what the plaintext came to with that frame:
// the Reader's Stats report the state at the frame Read is at, as the
// sequential Reader does, not how far the stages have run ahead.
type stored struct {
	frames uint64
	bytes  int64
	sha    []byte // the stored SHA-256's state (encoding.BinaryMarshaler)
}

type plainState struct {
	bytes int64
	sha   []byte // the plaintext SHA-256's state, nil before the first frame
}

func startPipeline(fr *frameReader, op opener, ahead int) *pipeline {
	n := ahead + 1
	p := &pipeline{
		// the free lists are the bound; the queues only never block first
		fetched: make(chan item, n),
		opened:  make(chan item, n),
		hashed:  make(chan item, n),
		bodies:  make(chan []byte, n),
		plains:  make(chan []byte, n),
		done:    make(chan struct{}),
		last:    stored{frames: fr.frames, bytes: fr.storedLen, sha: marshal(fr.stored)},
	}
	for range n {
		p.bodies <- nil
		p.plains <- nil
	}
	p.wg.Go(func() { p.fetch(fr) })
	p.wg.Go(func() {
		defer op.close()
		p.stage(p.fetched, p.opened, func(it *item) bool { return p.open(op, it) })
	})
	p.wg.Go(func() {
		h := sha256.New()
		var n int64
		p.stage(p.opened, p.hashed, func(it *item) bool {
			h.Write(it.plain)
			n += int64(len(it.plain))
			it.sum = plainState{bytes: n, sha: marshal(h)}
			return true
		})
	})
	return p
}

// marshal returns a SHA-256 digest's state; sha256's digests always
// marshal.
func marshal(h hash.Hash) []byte {
	if h == nil {
		return nil // ReadOptions.SkipStoredDigest
	}
	b, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	return b
}

// sumOf returns the hex digest of a state from marshal, or of nothing.
func sumOf(state []byte) string {
	h := sha256.New()
	if state != nil {
		// the state came from the same kind of digest
		_ = h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fetch reads frames in order until the object's end or its first error,
// each into a body from the free list.
func (p *pipeline) fetch(fr *frameReader) {
	defer close(p.fetched)
	for {
		var body []byte
		select {
		case body = <-p.bodies:
		case <-p.done:
			return
		}
		fr.buf = body
		f, err := fr.nextFrame()
		it := item{f: f, err: err, body: fr.buf, at: stored{frames: fr.frames, bytes: fr.storedLen, sha: marshal(fr.stored)}}
		fr.buf = nil // the body now travels with the frame
		select {
		case p.fetched <- it:
		case <-p.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// stage runs fn on every item from in, in order, and passes it on to out;
// an item with an error passes unchanged and ends the stage, and so does
// fn returning false (it found done closed).
func (p *pipeline) stage(in <-chan item, out chan<- item, fn func(*item) bool) {
	defer close(out)
	for {
		var it item
		var ok bool
		select {
		case it, ok = <-in:
		case <-p.done:
			return
		}
		if !ok {
			return // the stage before stopped early: done is closed
		}
		if it.err == nil && !fn(&it) {
			return
		}
		select {
		case out <- it:
		case <-p.done:
			return
		}
		if it.err != nil {
			return
		}
	}
}

// open authenticates and decompresses one fetched frame into a plaintext
// buffer from the free list (without compression, in place in its body).
func (p *pipeline) open(op opener, it *item) bool {
	var plain []byte
	if op.compressed() {
		select {
		case plain = <-p.plains:
		case <-p.done:
			return false
		}
		if plain == nil {
			plain = make([]byte, 0, op.hdr.ChunkSize)
		}
	}
	it.plain, it.err = op.open(it.f, plain)
	if op.compressed() {
		// the plaintext is out: the body can take the next frame
		p.bodies <- it.body
		it.buf, it.list = plain, p.plains
	} else {
		it.buf, it.list = it.body, p.bodies
	}
	return true
}

// nextAhead takes the next frame into pending; the caller has consumed the
// one before, whose buffer goes back to its free list.
func (rd *Reader) nextAhead() error {
	p := rd.ahead
	if p.list != nil {
		p.list <- p.held // never blocks: the list has room for every buffer
		p.held, p.list = nil, nil
	}
	select {
	case <-p.done: // closed: frames still queued are not handed out
		return errClosed
	default:
	}
	var it item
	var ok bool
	select {
	case it, ok = <-p.hashed:
	case <-p.done:
	}
	if !ok {
		return errClosed
	}
	p.last = it.at
	if it.err != nil {
		// frames behind the bad one are never looked at; after io.EOF
		// the stages have ended already
		p.stop()
		return it.err
	}
	p.plain = it.sum
	p.held, p.list = it.buf, it.list
	rd.pending = it.plain
	return nil
}

// stop tells the stages to end, without waiting for them.
func (p *pipeline) stop() { p.stopOnce.Do(func() { close(p.done) }) }

// close stops the stages and waits for them.
func (p *pipeline) close() {
	p.closed.Store(true)
	p.stop()
	p.wg.Wait()
}

// stats returns the Reader's stats as of the frame Read is at.
func (p *pipeline) stats() ReadStats {
	return ReadStats{
		Frames:          p.last.frames,
		Bytes:           p.plain.bytes,
		StoredBytes:     p.last.bytes,
		PlaintextSHA256: sumOf(p.plain.sha),
		StoredSHA256:    p.storedSum(),
	}
}

// storedSum is the stored digest as of the frame Read is at; without one
// (ReadOptions.SkipStoredDigest) marshal left no state, not even the
// header's.
func (p *pipeline) storedSum() string {
	if p.last.sha == nil {
		return ""
	}
	return sumOf(p.last.sha)
}
