package format

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
)

// errClosed is what Read returns once Close stopped a read-ahead Reader
// before its end. It is no verdict on the object, so it wraps no sentinel.
var errClosed = errors.New("read of a closed object reader")

// pipeline is the read-ahead of one Reader: fetch reads and checks frames
// from the object (frameReader: lengths, CRC-32C, order, final flag,
// nothing after it, stored SHA-256), open authenticates and decompresses
// them (opener), and the Reader's Read takes them in order from opened.
// Both goroutines belong to the pipeline and end on their own after the
// object's last frame or its first error, which they pass on in frame
// order; done stops them earlier, and wg waits for them.
//
// Frame bodies and plaintexts circulate through two free lists, each
// holding ReadAhead+1 buffers (allocated the first time each is needed):
// a stage that finds its list empty waits until a later one (open for a
// compressed body, else Read) hands a buffer back. That bounds memory to a
// constant number of frames whatever the object's length, and bounds how
// far fetch can run ahead of Read. The plaintext's SHA-256 is taken in
// Read, as each frame is taken: it must run in frame order anyway, and
// there it overlaps with fetch and open instead of lengthening open, the
// slowest stage.
type pipeline struct {
	fetched chan fetched
	opened  chan opened
	bodies  chan []byte // free frame bodies
	plains  chan []byte // free plaintext buffers (compressed objects only)

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	closed   atomic.Bool // Close was called

	// owned by the Reader's goroutine: what the last frame taken from
	// opened says about the object so far, and the buffer it occupies
	last stored
	held []byte
	list chan []byte // held's free list
}

// stored is what the frame reader had read when it passed a frame (or its
// error) on: the Reader's Stats report the state at the frame Read is at,
// as the sequential Reader does, not how far fetch has run ahead.
type stored struct {
	frames uint64
	bytes  int64
	sha    []byte // the stored SHA-256's state (encoding.BinaryMarshaler)
}

type fetched struct {
	f    frame
	err  error // io.EOF after the final frame and the end of the object
	at   stored
	body []byte // f.body's buffer, whole, to hand back
}

type opened struct {
	plain []byte
	err   error
	at    stored
	buf   []byte      // the buffer plain lives in, to hand back to list
	list  chan []byte // bodies or plains
}

func startPipeline(fr *frameReader, op opener, ahead int) *pipeline {
	n := ahead + 1
	p := &pipeline{
		// the free lists are the bound; the queues only never block first
		fetched: make(chan fetched, n),
		opened:  make(chan opened, n),
		bodies:  make(chan []byte, n),
		plains:  make(chan []byte, n),
		done:    make(chan struct{}),
		last:    snapshot(fr),
	}
	for range n {
		p.bodies <- nil
		p.plains <- nil
	}
	p.wg.Go(func() { p.fetch(fr) })
	p.wg.Go(func() { p.open(op) })
	return p
}

// snapshot records the frame reader's counts and stored digest state.
func snapshot(fr *frameReader) stored {
	// sha256's digest always marshals
	sha, _ := fr.stored.(encoding.BinaryMarshaler).MarshalBinary()
	return stored{frames: fr.frames, bytes: fr.storedLen, sha: sha}
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
		it := fetched{f: f, err: err, at: snapshot(fr), body: fr.buf}
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

// open authenticates and decompresses the fetched frames in order and
// passes them, or the first error, on to Read.
func (p *pipeline) open(op opener) {
	defer close(p.opened)
	defer op.close()
	for {
		var it fetched
		var ok bool
		select {
		case it, ok = <-p.fetched:
		case <-p.done:
			return
		}
		if !ok {
			return // fetch stopped early: done is closed
		}
		out := opened{err: it.err, at: it.at}
		if it.err == nil {
			var plain []byte
			if op.compressed() {
				select {
				case plain = <-p.plains:
				case <-p.done:
					return
				}
				if plain == nil {
					plain = make([]byte, 0, op.hdr.ChunkSize)
				}
			}
			out.plain, out.err = op.open(it.f, plain)
			if op.compressed() {
				// the plaintext is out: the body can take the next frame
				p.bodies <- it.body
				out.buf, out.list = plain, p.plains
			} else {
				out.buf, out.list = it.body, p.bodies
			}
		}
		select {
		case p.opened <- out:
		case <-p.done:
			return
		}
		if out.err != nil {
			return
		}
	}
}

// nextAhead takes the next opened frame into pending; the caller has
// consumed the one before, whose buffer goes back to its free list.
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
	var it opened
	var ok bool
	select {
	case it, ok = <-p.opened:
	case <-p.done:
	}
	if !ok {
		return errClosed
	}
	p.last = it.at
	if it.err != nil {
		// frames behind the bad one are never looked at; io.EOF means
		// both stages ended already
		p.stop()
		return it.err
	}
	p.held, p.list = it.buf, it.list
	rd.plainSHA.Write(it.plain)
	rd.bytes += int64(len(it.plain))
	rd.pending = it.plain
	return nil
}

// stop tells both stages to end, without waiting for them.
func (p *pipeline) stop() { p.stopOnce.Do(func() { close(p.done) }) }

// close stops both stages and waits for them.
func (p *pipeline) close() {
	p.closed.Store(true)
	p.stop()
	p.wg.Wait()
}

// stats returns the stored counts and digest as of the frame Read is at.
func (p *pipeline) stats() (frames uint64, bytes int64, sha string) {
	h := sha256.New()
	// the state came from the same kind of digest
	_ = h.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.last.sha)
	return p.last.frames, p.last.bytes, hex.EncodeToString(h.Sum(nil))
}
