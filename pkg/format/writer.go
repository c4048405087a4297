package format

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	"golang.org/x/sync/errgroup"
)

// ErrClosed is returned by a Writer used after Close.
var ErrClosed = errors.New("writer closed")

type sealJob struct {
	index uint64
	final bool
	chunk []byte
	frame []byte
	done  chan error
}

// Writer seals a plaintext stream into an object: it cuts the stream into
// ChunkSize chunks, seals them on a pool of goroutines and writes the header
// and the frames to w in order. At most 2×workers chunks are in memory at
// once, whatever the stream's size.
type Writer struct {
	s       *Sealer
	buf     []byte
	index   uint64
	order   chan *sealJob // jobs in index order, for the writing goroutine
	work    chan *sealJob // jobs for the sealing goroutines
	free    chan []byte   // recycled chunk buffers
	g       *errgroup.Group
	ctx     context.Context
	closed  bool
	err     error
	written int64
}

// NewWriter returns a Writer that writes the object sealed by s to w, using
// workers sealing goroutines (GOMAXPROCS when workers <= 0). Close must be
// called: it writes the final frame and waits for every goroutine. The
// Writer does not close w.
func NewWriter(w io.Writer, s *Sealer, workers int) *Writer {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	g, ctx := errgroup.WithContext(context.Background())
	wr := &Writer{
		s:     s,
		order: make(chan *sealJob, workers),
		work:  make(chan *sealJob, workers),
		free:  make(chan []byte, 2*workers+1),
		g:     g,
		ctx:   ctx,
	}
	wr.buf = wr.getBuf()
	for range workers {
		g.Go(func() error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case j, ok := <-wr.work:
					if !ok {
						return nil
					}
					var err error
					j.frame, err = s.Seal(j.frame[:0], j.index, j.final, j.chunk)
					j.done <- err
				}
			}
		})
	}
	g.Go(func() error {
		if _, err := w.Write(s.raw); err != nil {
			return fmt.Errorf("write header: %w", err)
		}
		wr.written += int64(len(s.raw))
		for j := range wr.order {
			var err error
			select {
			case <-ctx.Done():
				return nil
			case err = <-j.done:
			}
			if err != nil {
				return err
			}
			if _, err := w.Write(j.frame); err != nil {
				return fmt.Errorf("write frame %d: %w", j.index, err)
			}
			wr.written += int64(len(j.frame))
			select {
			case wr.free <- j.chunk[:0]:
			default:
			}
		}
		return nil
	})
	return wr
}

func (wr *Writer) getBuf() []byte {
	select {
	case b := <-wr.free:
		return b
	default:
		return make([]byte, 0, wr.s.hdr.ChunkSize)
	}
}

// Write buffers p and dispatches every full chunk that more data follows.
func (wr *Writer) Write(p []byte) (int, error) {
	if wr.closed {
		return 0, ErrClosed
	}
	if wr.err != nil {
		return 0, wr.err
	}
	n := 0
	cs := wr.s.hdr.ChunkSize
	for len(p) > 0 {
		if len(wr.buf) == cs {
			// A full chunk is final only if nothing follows; something does.
			if err := wr.dispatch(false); err != nil {
				return n, err
			}
		}
		k := copy(wr.buf[len(wr.buf):cs], p)
		wr.buf = wr.buf[:len(wr.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

func (wr *Writer) dispatch(final bool) error {
	j := &sealJob{index: wr.index, final: final, chunk: wr.buf, done: make(chan error, 1)}
	select {
	case wr.order <- j:
	case <-wr.ctx.Done():
		wr.err = wr.wait()
		return wr.err
	}
	select {
	case wr.work <- j:
	case <-wr.ctx.Done():
		wr.err = wr.wait()
		return wr.err
	}
	wr.index++
	if !final {
		wr.buf = wr.getBuf()
	}
	return nil
}

func (wr *Writer) wait() error {
	err := wr.g.Wait()
	if err == nil {
		err = errors.New("write object: stopped")
	}
	return err
}

// Close seals what is buffered as the final frame (an empty one for an
// empty stream), writes the remaining frames and waits for the goroutines.
func (wr *Writer) Close() error {
	if wr.closed {
		return ErrClosed
	}
	wr.closed = true
	if wr.err != nil {
		return wr.err
	}
	err := wr.dispatch(true)
	close(wr.work)
	close(wr.order)
	if err != nil {
		return err
	}
	if err := wr.g.Wait(); err != nil {
		return err
	}
	return nil
}

// Written returns the bytes written to the underlying writer so far; after
// Close, the object's size.
func (wr *Writer) Written() int64 { return wr.written }
