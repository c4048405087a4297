package format_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/format"
)

// readModes are the readers every test that reads objects runs (through
// open, readWith, or a loop of its own): the sequential one first, the one
// restore uses, and read-ahead at both ends of its queue (1: every stage
// waits for the next; 5: fetch reaches the end of a small object before
// Read takes its first frame).
var readModes = []struct {
	name string
	o    format.ReadOptions
}{
	{"sequential", format.ReadOptions{}},
	{"ahead-1", format.ReadOptions{ReadAhead: 1}},
	{"ahead-2", format.ReadOptions{ReadAhead: 2}},
	{"ahead-5", format.ReadOptions{ReadAhead: 5}},
}

// readResult is everything a reader made of one object.
type readResult struct {
	plain []byte
	stats format.ReadStats
	err   error // nil after io.EOF
	again error // what one more Read returned
}

// readWith reads obj whole through a Reader made with o, in reads of an odd
// size so frames are handed out across calls, then reads once more.
func readWith(obj []byte, k format.Keys, o format.ReadOptions) readResult {
	r, err := format.NewReaderWith(bytes.NewReader(obj), k, o)
	if err != nil {
		return readResult{err: err, again: err}
	}
	defer r.Close()
	var res readResult
	buf := make([]byte, 7919)
	for {
		n, err := r.Read(buf)
		res.plain = append(res.plain, buf[:n]...)
		if err != nil {
			if err != io.EOF {
				res.err = err
			}
			break
		}
	}
	res.stats = r.Stats()
	_, res.again = r.Read(buf)
	return res
}

// diff says how b differs from a, or "".
func (a readResult) diff(b readResult) string {
	text := func(err error) string {
		if err == nil {
			return "<nil>"
		}
		return err.Error()
	}
	switch {
	case !bytes.Equal(a.plain, b.plain):
		return fmt.Sprintf("%d bytes of plaintext instead of %d (or other bytes)", len(b.plain), len(a.plain))
	case a.stats != b.stats:
		return fmt.Sprintf("stats %+v instead of %+v", b.stats, a.stats)
	case text(a.err) != text(b.err):
		return fmt.Sprintf("error %q instead of %q", text(b.err), text(a.err))
	case text(a.again) != text(b.again):
		return fmt.Sprintf("then %q instead of %q", text(b.again), text(a.again))
	}
	for _, s := range []error{format.ErrFormat, format.ErrVersion, format.ErrCorrupt, format.ErrTruncated, format.ErrWrongKey} {
		if errors.Is(a.err, s) != errors.Is(b.err, s) {
			return fmt.Sprintf("error %v wraps %v: %v, not %v", b.err, s, errors.Is(b.err, s), errors.Is(a.err, s))
		}
	}
	return ""
}

// aheadModes are readModes without the sequential reader.
func aheadModes() []format.ReadOptions {
	var os []format.ReadOptions
	for _, m := range readModes[1:] {
		os = append(os, m.o)
	}
	return os
}

const aheadChunk = 1000

// aheadObject is 12 frames of aheadChunk bytes (the last one shorter),
// with zstd and aes-256-gcm, and the keys to read it.
func aheadObject(t testing.TB) (data, obj []byte, keys format.Keys) {
	t.Helper()
	data = gen(16, 11*aheadChunk+321)
	obj = seal(t, "01JAHEAD", format.Options{Compression: "zstd", Recipients: []string{identity(t).Recipient().String()}, ChunkSize: aheadChunk}, data)
	return data, obj, format.Keys{Identities: []age.Identity{identity(t)}}
}

// cutReader serves obj up to at, then returns what cut returns (a storage
// that fails there, or one that stalls there until released).
type cutReader struct {
	obj []byte
	at  int
	cut func() error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.at == 0 {
		return 0, c.cut()
	}
	n := copy(p, c.obj[:c.at])
	c.obj, c.at = c.obj[n:], c.at-n
	return n, nil
}

var errStorage = errors.New("connection reset by storage")

// failingReader serves obj up to at, then fails with errStorage.
func failingReader(obj []byte, at int) io.Reader {
	return &cutReader{obj: obj, at: at, cut: func() error { return errStorage }}
}

// TestReadAheadErrorInFrameOrder: whichever stage finds frame k bad (fetch:
// checksum, length, a storage error; open: authentication), every reader
// hands out frames 0..k-1 whole, then the error naming frame k, which
// sticks; nothing of frame k or later comes out.
func TestReadAheadErrorInFrameOrder(t *testing.T) {
	data, obj, keys := aheadObject(t)
	hdr, frames := layout(t, obj)
	at := func(k int) int { return len(join(hdr, frames[:k]...)) }
	// replaced is the object with frame k replaced by f
	replaced := func(k int, f []byte) io.Reader {
		return bytes.NewReader(join(hdr, slices.Concat(frames[:k:k], [][]byte{f}, frames[k+1:])...))
	}
	tests := []struct {
		name string
		k    int
		give func(k int) io.Reader
		want error
		msg  string
	}{
		{"checksum of the first", 0, func(k int) io.Reader { return replaced(k, flip(frames[k], 30)) }, format.ErrCorrupt, "frame 0: checksum mismatch"},
		{"checksum", 4, func(k int) io.Reader { return replaced(k, flip(frames[k], 30)) }, format.ErrCorrupt, "frame 4: checksum mismatch"},
		{"length", 7, func(k int) io.Reader { return replaced(k, flip(frames[k], 0)) }, format.ErrCorrupt, "frame 7: body length"},
		{"authentication", 5, func(k int) io.Reader { return replaced(k, reCRC(hdr, flip(frames[k], 40))) }, format.ErrCorrupt, "frame 5: authentication failed"},
		{"authentication of the final", 11, func(k int) io.Reader { return replaced(k, reCRC(hdr, flip(frames[k], 40))) }, format.ErrCorrupt, "frame 11: authentication failed"},
		{"storage fails inside the body", 6, func(k int) io.Reader { return failingReader(obj, at(k)+20) }, errStorage, "read frame 6: connection reset"},
		{"storage fails between frames", 3, func(k int) io.Reader { return failingReader(obj, at(k)) }, errStorage, "read frame 3: connection reset"},
	}
	for _, tt := range tests {
		for _, m := range readModes {
			t.Run(tt.name+"/"+m.name, func(t *testing.T) {
				r, err := format.NewReaderWith(tt.give(tt.k), keys, m.o)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				got, err := io.ReadAll(r)
				if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("read: %v; want %v mentioning %q", err, tt.want, tt.msg)
				}
				if !bytes.Equal(got, data[:tt.k*aheadChunk]) {
					t.Fatalf("read %d bytes before the error, want frames 0..%d (%d bytes)", len(got), tt.k-1, tt.k*aheadChunk)
				}
				if n, again := r.Read(make([]byte, 10)); n != 0 || again != err {
					t.Fatalf("then read %d, %v; want the same error", n, again)
				}
			})
		}
	}
}

// TestReadAheadTruncated: an object cut anywhere after its header fails
// with ErrTruncated after the frames before the cut, with every reader.
func TestReadAheadTruncated(t *testing.T) {
	data, obj, keys := aheadObject(t)
	hdr, frames := layout(t, obj)
	tests := []struct {
		name  string
		whole int // frames before the cut
		rest  int // bytes of the next frame
		msg   string
	}{
		{"after the header", 0, 0, "without any frame"},
		{"after a frame", 5, 0, "object ends after frame 4 without the final frame"},
		{"before the final frame", 11, 0, "object ends after frame 10 without the final frame"},
		{"inside a frame header", 8, 9, "frame 8: object ends inside the frame header"},
		{"inside a frame body", 2, 100, "frame 2: object ends inside the frame body"},
		{"inside the final frame", 11, len(frames[11]) - 1, "frame 11: object ends inside the frame body"},
	}
	for _, tt := range tests {
		cut := append(join(hdr, frames[:tt.whole]...), frames[tt.whole][:tt.rest]...)
		for _, m := range readModes {
			t.Run(tt.name+"/"+m.name, func(t *testing.T) {
				res := readWith(cut, keys, m.o)
				if !errors.Is(res.err, format.ErrTruncated) || !strings.Contains(res.err.Error(), tt.msg) || res.again != res.err {
					t.Fatalf("read: %v, then %v; want %v mentioning %q", res.err, res.again, format.ErrTruncated, tt.msg)
				}
				if !bytes.Equal(res.plain, data[:tt.whole*aheadChunk]) {
					t.Fatalf("read %d bytes, want the %d frames before the cut", len(res.plain), tt.whole)
				}
			})
		}
	}
}

// TestReadAheadCloseEarly: a caller that stops reading anywhere and Closes
// leaves no goroutine behind (the bubble fails the test on one blocked
// forever), later Reads fail without a verdict on the object, and Close
// may be repeated. Without compression the plaintext is the frame's body
// and goes back to the other free list, so both layouts run.
func TestReadAheadCloseEarly(t *testing.T) {
	data := gen(17, 40*aheadChunk)
	objs := map[string][]byte{
		"zstd": seal(t, "01JCLOSE", format.Options{Compression: "zstd", Encryption: "none", ChunkSize: aheadChunk}, data),
		"none": seal(t, "01JCLOSE", format.Options{Compression: "none", Encryption: "none", ChunkSize: aheadChunk}, data),
	}
	for name, obj := range objs {
		for _, o := range aheadModes() {
			for _, after := range []int{0, 1, 3*aheadChunk + 17, len(data) - 1, len(data)} {
				t.Run(fmt.Sprintf("%s/ahead-%d/after-%d", name, o.ReadAhead, after), func(t *testing.T) {
					synctest.Test(t, func(t *testing.T) {
						r, err := format.NewReaderWith(bytes.NewReader(obj), format.Keys{}, o)
						if err != nil {
							t.Fatal(err)
						}
						got := make([]byte, after)
						if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, data[:after]) {
							t.Fatalf("read %d bytes: %v", after, err)
						}
						// let the pipeline run ahead as far as it can
						synctest.Wait()
						for range 2 {
							if err := r.Close(); err != nil {
								t.Fatalf("close: %v", err)
							}
						}
						n, err := r.Read(make([]byte, 10))
						if n != 0 || err == nil || err == io.EOF || wrapsSentinel(err) {
							t.Fatalf("read after close: %d, %v; want a failure that is not about the object", n, err)
						}
					})
				})
			}
		}
	}
}

// TestReadAheadCloseWaitsForFetch pins down Close's contract with a read in
// flight on the object (Reader's doc): a Read blocked on the pipeline
// returns when Close is called from another goroutine, and Close returns
// only after the fetching goroutine's read of the object returned, which
// takes the caller closing the object (here: releasing the reader).
func TestReadAheadCloseWaitsForFetch(t *testing.T) {
	data, obj, keys := aheadObject(t)
	hdr, frames := layout(t, obj)
	const whole = 4
	for _, o := range aheadModes() {
		t.Run(fmt.Sprintf("ahead-%d", o.ReadAhead), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// a connection that stops delivering until the caller
				// closes it
				release := make(chan struct{})
				src := &cutReader{obj: obj, at: len(join(hdr, frames[:whole]...)) + 5, cut: func() error {
					<-release
					return errors.New("read on closed body")
				}}
				r, err := format.NewReaderWith(src, keys, o)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, whole*aheadChunk)
				if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, data[:len(got)]) {
					t.Fatalf("read the frames before the stall: %v", err)
				}
				var readErr atomic.Pointer[error]
				go func() {
					_, err := r.Read(make([]byte, 10))
					readErr.Store(&err)
				}()
				synctest.Wait()
				if readErr.Load() != nil {
					t.Fatalf("Read returned %v with the object stalled", *readErr.Load())
				}
				var closed atomic.Bool
				go func() {
					r.Close()
					closed.Store(true)
				}()
				synctest.Wait()
				if p := readErr.Load(); p == nil || *p == nil || wrapsSentinel(*p) {
					t.Fatalf("blocked Read after Close: %v; want it to fail, not about the object", p)
				}
				if closed.Load() {
					t.Fatal("Close returned while the fetching goroutine was inside the object's Read")
				}
				close(release)
				synctest.Wait()
				if !closed.Load() {
					t.Fatal("Close did not return after the object's Read did")
				}
			})
		})
	}
}

// TestReadAheadMemoryBound: a reader's buffers do not grow with the object:
// 120 more frames allocate less than a sixteenth of a chunk each (a few
// hundred bytes of bookkeeping and garbage), so no frame gets a buffer of
// its own.
func TestReadAheadMemoryBound(t *testing.T) {
	const chunk = 64 << 10
	keys := format.Keys{Identities: []age.Identity{identity(t)}}
	// snappy: zstd's decoder keeps scratch space in a sync.Pool, which the
	// race detector makes drop some, so it allocates per frame under -race
	o := format.Options{Compression: "snappy", Recipients: []string{identity(t).Recipient().String()}, ChunkSize: chunk}
	short := seal(t, "01JMEMORY", o, gen(18, 8*chunk))
	long := seal(t, "01JMEMORY", o, gen(18, 128*chunk))
	cost := func(obj []byte, ro format.ReadOptions) uint64 {
		before := allocated()
		r, err := format.NewReaderWith(bytes.NewReader(obj), keys, ro)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		// a buffer of its own: io.Discard's come from a pool, which the
		// race detector makes drop some
		buf := make([]byte, 32<<10)
		for {
			_, err := r.Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		return allocated() - before
	}
	for _, m := range readModes {
		t.Run(m.name, func(t *testing.T) {
			s, l := cost(short, m.o), cost(long, m.o)
			t.Logf("%d frames: %d bytes allocated, %d frames: %d", 8, s, 128, l)
			if l > s+120*chunk/16 {
				t.Fatalf("reading 128 frames allocated %d bytes, 8 frames %d: grows with the object", l, s)
			}
		})
	}
}

func TestReadOptionsValidate(t *testing.T) {
	_, obj, keys := aheadObject(t)
	tests := []struct {
		give    int
		wantErr bool
	}{{-1, true}, {0, false}, {format.MaxReadAhead, false}, {format.MaxReadAhead + 1, true}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.give), func(t *testing.T) {
			r, err := format.NewReaderWith(bytes.NewReader(obj), keys, format.ReadOptions{ReadAhead: tt.give})
			if got := errors.Is(err, format.ErrInvalidOption); got != tt.wantErr {
				t.Fatalf("NewReaderWith(ReadAhead %d): %v", tt.give, err)
			}
			if err == nil {
				r.Close()
			}
		})
	}
}

// BenchmarkOpenAhead reads a zstd-fastest, encrypted object of 64 MiB with
// each reader of readModes, at the pipeline's 256 KiB chunks and at the
// 4 MiB frames filter seals by default; the consumer copies the plaintext
// out, as a restore into a file does.
func BenchmarkOpenAhead(b *testing.B) {
	data := gen(2, 64<<20)
	keys := format.Keys{Identities: []age.Identity{identity(b)}}
	for _, chunk := range []int{256 << 10, 4 << 20} {
		obj := seal(b, "01JBENCHAHEAD", format.Options{Compression: "zstd", ZstdLevel: "fastest", Recipients: []string{identity(b).Recipient().String()}, ChunkSize: chunk}, data)
		for _, m := range readModes {
			b.Run(fmt.Sprintf("chunk=%dKiB/%s", chunk>>10, m.name), func(b *testing.B) {
				out := make([]byte, 1<<20)
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					r, err := format.NewReaderWith(bytes.NewReader(obj), keys, m.o)
					if err != nil {
						b.Fatal(err)
					}
					for {
						_, err := io.ReadFull(r, out)
						if err == io.EOF || err == io.ErrUnexpectedEOF {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					r.Close()
				}
			})
		}
	}
}
