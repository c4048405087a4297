// Package archive is the small container format that source plugins use to
// put several named entries (one dump per database, one BSON file per
// collection) into one stream. Unlike tar it needs no size up front: an
// entry's content is written as length-prefixed chunks, so a child process
// can stream into it.
//
// Format (all integers big-endian):
//
//	stream  = magic entry* end
//	magic   = "BSARCH01"                          (8 bytes)
//	entry   = 'F' u16 nameLen name chunk* u32(0)  (an empty chunk ends the entry)
//	chunk   = u32 len (1..16 MiB) bytes[len]
//	end     = 'Z' u32 entryCount
//
// A stream without the end record, or whose count differs, is truncated:
// Reader reports io.ErrUnexpectedEOF. Names are UTF-8, 1..65535 bytes, and
// their meaning belongs to the plugin. Nothing here authenticates content;
// the object format around it does.
package archive

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic opens every archive stream.
const Magic = "BSARCH01"

// MaxChunk bounds one chunk, so a corrupt length cannot make a reader allocate much.
const MaxChunk = 16 << 20

const writeChunk = 256 << 10

// ErrFormat means the stream is not an archive or is corrupt.
var ErrFormat = errors.New("archive: bad format")

// Writer writes an archive. Create an entry, write it, Close it, and Close the
// Writer last; only then is the stream complete.
type Writer struct {
	w       io.Writer
	started bool
	open    bool
	count   uint32
	buf     []byte
}

// NewWriter returns a Writer that writes to w. Nothing is written until the first call.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

func (a *Writer) start() error {
	if a.started {
		return nil
	}
	a.started = true
	_, err := io.WriteString(a.w, Magic)
	return err
}

// Create starts the entry name and returns its writer. The previous entry
// must be closed. The returned writer buffers up to 256 KiB per chunk.
func (a *Writer) Create(name string) (io.WriteCloser, error) {
	if a.open {
		return nil, errors.New("archive: previous entry not closed")
	}
	if len(name) == 0 || len(name) > 0xffff {
		return nil, fmt.Errorf("archive: entry name length %d", len(name))
	}
	if err := a.start(); err != nil {
		return nil, err
	}
	hdr := make([]byte, 3, 3+len(name))
	hdr[0] = 'F'
	binary.BigEndian.PutUint16(hdr[1:], uint16(len(name)))
	hdr = append(hdr, name...)
	if _, err := a.w.Write(hdr); err != nil {
		return nil, err
	}
	a.open = true
	if a.buf == nil {
		a.buf = make([]byte, 4, 4+writeChunk)
	}
	return &entryWriter{a: a}, nil
}

// Close writes the end record. It does not close the underlying writer.
func (a *Writer) Close() error {
	if a.open {
		return errors.New("archive: entry not closed")
	}
	if err := a.start(); err != nil {
		return err
	}
	var end [5]byte
	end[0] = 'Z'
	binary.BigEndian.PutUint32(end[1:], a.count)
	_, err := a.w.Write(end[:])
	return err
}

type entryWriter struct {
	a      *Writer
	closed bool
}

func (e *entryWriter) flush() error {
	b := e.a.buf
	if len(b) == 4 {
		return nil
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	_, err := e.a.w.Write(b)
	e.a.buf = b[:4]
	return err
}

func (e *entryWriter) Write(p []byte) (int, error) {
	if e.closed {
		return 0, errors.New("archive: write to closed entry")
	}
	n := 0
	for len(p) > 0 {
		room := 4 + writeChunk - len(e.a.buf)
		k := min(room, len(p))
		e.a.buf = append(e.a.buf, p[:k]...)
		p = p[k:]
		n += k
		if len(e.a.buf) == 4+writeChunk {
			if err := e.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (e *entryWriter) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	if err := e.flush(); err != nil {
		return err
	}
	if _, err := e.a.w.Write([]byte{0, 0, 0, 0}); err != nil {
		return err
	}
	e.a.open = false
	e.a.count++
	return nil
}

// Reader reads an archive entry by entry, like tar.Reader.
type Reader struct {
	r       *bufio.Reader
	started bool
	done    bool
	count   uint32
	left    uint32 // bytes left in the current chunk
	inEntry bool
	err     error
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Next skips what is left of the current entry and returns the next entry's
// name. It returns io.EOF after a complete stream's end record, and
// io.ErrUnexpectedEOF (or an error wrapping ErrFormat) for a stream that is cut
// short or corrupt.
func (a *Reader) Next() (string, error) {
	if a.err != nil {
		return "", a.err
	}
	name, err := a.next()
	if err != nil {
		a.err = err
	}
	return name, err
}

func (a *Reader) next() (string, error) {
	if !a.started {
		a.started = true
		var m [len(Magic)]byte
		if _, err := io.ReadFull(a.r, m[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return "", fmt.Errorf("%w: empty stream", ErrFormat)
			}
			return "", unexpected(err)
		}
		if string(m[:]) != Magic {
			return "", fmt.Errorf("%w: bad magic", ErrFormat)
		}
	}
	if a.done {
		return "", io.EOF
	}
	for a.inEntry {
		if _, err := io.Copy(io.Discard, entryReader{a}); err != nil {
			return "", err
		}
	}
	t, err := a.r.ReadByte()
	if err != nil {
		return "", unexpected(err)
	}
	switch t {
	case 'F':
		var l [2]byte
		if _, err := io.ReadFull(a.r, l[:]); err != nil {
			return "", unexpected(err)
		}
		n := binary.BigEndian.Uint16(l[:])
		if n == 0 {
			return "", fmt.Errorf("%w: empty entry name", ErrFormat)
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(a.r, name); err != nil {
			return "", unexpected(err)
		}
		a.inEntry = true
		a.left = 0
		a.count++
		return string(name), nil
	case 'Z':
		var c [4]byte
		if _, err := io.ReadFull(a.r, c[:]); err != nil {
			return "", unexpected(err)
		}
		if got := binary.BigEndian.Uint32(c[:]); got != a.count {
			return "", fmt.Errorf("%w: end record counts %d entries, read %d", ErrFormat, got, a.count)
		}
		a.done = true
		return "", io.EOF
	default:
		return "", fmt.Errorf("%w: record type %q", ErrFormat, t)
	}
}

// Read reads the current entry's content; io.EOF at its end.
func (a *Reader) Read(p []byte) (int, error) { return entryReader{a}.Read(p) }

type entryReader struct{ a *Reader }

func (e entryReader) Read(p []byte) (int, error) {
	a := e.a
	if a.err != nil {
		return 0, a.err
	}
	if !a.inEntry {
		return 0, io.EOF
	}
	if a.left == 0 {
		var l [4]byte
		if _, err := io.ReadFull(a.r, l[:]); err != nil {
			a.err = unexpected(err)
			return 0, a.err
		}
		n := binary.BigEndian.Uint32(l[:])
		if n == 0 {
			a.inEntry = false
			return 0, io.EOF
		}
		if n > MaxChunk {
			a.err = fmt.Errorf("%w: chunk of %d bytes", ErrFormat, n)
			return 0, a.err
		}
		a.left = n
	}
	if uint32(len(p)) > a.left {
		p = p[:a.left]
	}
	n, err := a.r.Read(p)
	a.left -= uint32(n)
	if err != nil {
		a.err = unexpected(err)
		return n, a.err
	}
	return n, nil
}
