package format

import (
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/golang/snappy"
	"github.com/klauspost/compress/zstd"
)

// frame is one frame as read from an object, checked for structure and
// checksum but not yet opened.
type frame struct {
	index uint32
	final bool
	body  []byte
}

// frameReader reads the frames of one object in order and checks what can
// be checked without the key: lengths, CRC-32C, index sequence, flags, and
// that nothing follows the final frame. Reader and Scan share it, so a
// restore never accepts an object a ciphertext verify rejects.
type frameReader struct {
	r      io.Reader
	hdr    HeaderInfo
	crcBuf [4]byte
	next   uint64 // index expected next
	final  bool   // the final frame was read
	fh     [frameHeaderLen]byte
	buf    []byte

	stored    hash.Hash
	storedLen int64
	frames    uint64
}

// newFrameReader reads frames after the header rawHeader; it hashes the
// stored bytes unless skipDigest.
func newFrameReader(r io.Reader, hdr HeaderInfo, rawHeader []byte, skipDigest bool) *frameReader {
	fr := &frameReader{r: r, hdr: hdr}
	binary.BigEndian.PutUint32(fr.crcBuf[:], hdr.crc)
	if !skipDigest {
		fr.stored = sha256.New()
		fr.stored.Write(rawHeader)
	}
	fr.storedLen = int64(len(rawHeader))
	return fr
}

func (fr *frameReader) readFull(b []byte) (int, error) {
	n, err := io.ReadFull(fr.r, b)
	if fr.stored != nil {
		fr.stored.Write(b[:n])
	}
	fr.storedLen += int64(n)
	return n, err
}

// next returns the next frame, or io.EOF after the final frame when the
// object ends there.
func (fr *frameReader) nextFrame() (frame, error) {
	idx := fr.next
	if fr.final {
		var one [1]byte
		n, err := fr.readFull(one[:])
		switch {
		case n > 0:
			return frame{}, fmt.Errorf("%w: data follows the final frame %d", ErrCorrupt, idx-1)
		case errors.Is(err, io.EOF):
			return frame{}, io.EOF
		default:
			return frame{}, fmt.Errorf("read after final frame: %w", err)
		}
	}
	n, err := fr.readFull(fr.fh[:])
	if err != nil {
		switch {
		case n == 0 && errors.Is(err, io.EOF) && idx == 0:
			return frame{}, fmt.Errorf("%w: object ends after the header without any frame", ErrTruncated)
		case n == 0 && errors.Is(err, io.EOF):
			return frame{}, fmt.Errorf("%w: object ends after frame %d without the final frame", ErrTruncated, idx-1)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return frame{}, fmt.Errorf("%w: frame %d: object ends inside the frame header", ErrTruncated, idx)
		default:
			return frame{}, fmt.Errorf("read frame %d: %w", idx, err)
		}
	}
	bodyLen := binary.BigEndian.Uint32(fr.fh[0:4])
	if max := maxBodyLen(fr.hdr.ChunkSize); uint64(bodyLen) > uint64(max) {
		return frame{}, fmt.Errorf("%w: frame %d: body length %d exceeds the bound %d for chunk size %d", ErrCorrupt, idx, bodyLen, max, fr.hdr.ChunkSize)
	}
	if cap(fr.buf) < int(bodyLen) {
		fr.buf = make([]byte, bodyLen, maxBodyLen(fr.hdr.ChunkSize))
	}
	fr.buf = fr.buf[:bodyLen]
	if _, err := fr.readFull(fr.buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return frame{}, fmt.Errorf("%w: frame %d: object ends inside the frame body", ErrTruncated, idx)
		}
		return frame{}, fmt.Errorf("read frame %d: %w", idx, err)
	}
	if got, want := binary.BigEndian.Uint32(fr.fh[12:16]), frameCRC(fr.crcBuf, fr.fh[:12], fr.buf); got != want {
		return frame{}, fmt.Errorf("%w: frame %d: checksum mismatch (damaged, or a frame of another object)", ErrCorrupt, idx)
	}
	f := frame{index: binary.BigEndian.Uint32(fr.fh[4:8]), final: fr.fh[8]&flagFinal != 0, body: fr.buf}
	if uint64(f.index) != idx {
		what := "dropped or reordered"
		if uint64(f.index) < idx {
			what = "duplicated or reordered"
		}
		return frame{}, fmt.Errorf("%w: frame %d: found frame %d in its place (%s frames)", ErrCorrupt, idx, f.index, what)
	}
	if fr.fh[8]&^flagFinal != 0 || fr.fh[9] != 0 || fr.fh[10] != 0 || fr.fh[11] != 0 {
		return frame{}, fmt.Errorf("%w: frame %d: unknown flags %02x %02x%02x%02x", ErrFormat, idx, fr.fh[8], fr.fh[9], fr.fh[10], fr.fh[11])
	}
	if !f.final && idx == MaxFrames-1 {
		return frame{}, fmt.Errorf("%w: frame %d: last possible frame is not final", ErrCorrupt, idx)
	}
	fr.next++
	fr.frames++
	fr.final = f.final
	return f, nil
}

func (fr *frameReader) storedSum() string {
	if fr.stored == nil {
		return ""
	}
	return hex.EncodeToString(fr.stored.Sum(nil))
}

// ScanStats is what Scan learns about an object without its key.
type ScanStats struct {
	Header       HeaderInfo
	Frames       uint64
	StoredBytes  int64
	StoredSHA256 string // lowercase hex of the whole object's bytes
}

// Scan checks the structure of a whole object without its key: the header
// and its checksum, every frame's length, CRC-32C, index and flags, that the
// last frame is final and nothing follows it. It is the "ciphertext" verify:
// it catches damage and truncation but, unlike Reader, cannot tell a frame
// forged by someone who recomputed its CRC. Errors wrap the package sentinels.
func Scan(r io.Reader) (ScanStats, error) {
	hdr, raw, err := ReadHeader(r)
	if err != nil {
		return ScanStats{}, fmt.Errorf("scan: %w", err)
	}
	fr := newFrameReader(r, hdr, raw, false)
	for {
		if _, err := fr.nextFrame(); err == io.EOF {
			break
		} else if err != nil {
			return ScanStats{Header: hdr, Frames: fr.frames, StoredBytes: fr.storedLen}, fmt.Errorf("scan: %w", err)
		}
	}
	return ScanStats{Header: hdr, Frames: fr.frames, StoredBytes: fr.storedLen, StoredSHA256: fr.storedSum()}, nil
}

// ReadStats describe what a Reader has read so far; they are complete once
// Read has returned io.EOF.
type ReadStats struct {
	Frames          uint64
	Bytes           int64  // plaintext bytes
	StoredBytes     int64  // object bytes, header included
	PlaintextSHA256 string // lowercase hex
	StoredSHA256    string // lowercase hex
}

// Reader yields the plaintext of one object. It checks every frame in order
// (checksum, index, authentication tag, decompression) before returning any
// byte of it, and returns io.EOF only after the final frame and the end of
// the object; an object cut short fails with ErrTruncated. After an error,
// every further Read returns the same error. Not safe for concurrent use,
// except that Close may stop a Read blocked in another goroutine.
//
// A Reader made by NewReader does all of that in the caller's goroutine,
// one frame at a time. One made by NewReaderWith with ReadAhead > 0 runs a
// pipeline of three goroutines of its own (reader_ahead.go): one reads and
// checks frames from r, one opens them, one hashes their plaintext, while
// Read hands out the frames before; the guarantees above are the same,
// byte for byte and error for error, and Stats say the same between Reads.
//
// Close stops the pipeline and waits for its goroutines. A caller that may
// stop before io.EOF or an error must call it; after either it returns at
// once. The goroutine that reads r may be inside r.Read: Close waits until
// that call returns, which it does when r delivers its next bytes, fails,
// or is closed or cancelled from elsewhere. So a caller whose r can block
// indefinitely (a pipe, a stalled connection) cancels r's context or
// closes r from another goroutine; a caller whose r is an open S3 body or
// file may call Close first and close r after it, in that order (defer
// r.Close() before defer rd.Close()): the read in flight returns with the
// next bytes. The Reader never closes r, which belongs to the caller.
type Reader struct {
	fr  *frameReader
	hdr HeaderInfo
	op  opener

	pending []byte
	err     error

	// sequential only
	plain    []byte
	plainSHA hash.Hash
	bytes    int64

	ahead *pipeline // nil when sequential
}

// ReadOptions tune a Reader. The zero value is the sequential Reader of
// NewReader.
type ReadOptions struct {
	// ReadAhead is how many frames the Reader opens ahead of the one Read
	// hands out, on goroutines of its own, so that fetching a frame,
	// opening it, hashing its plaintext and consuming the one before
	// overlap on separate cores. 0 reads sequentially in the caller's
	// goroutine. With read-ahead the Reader holds
	// up to ReadAhead+1 frame bodies and ReadAhead+1 plaintexts (each about
	// the header's ChunkSize) instead of one of each, whatever the object's
	// length. At most MaxReadAhead.
	ReadAhead int
	// SkipStoredDigest leaves out the SHA-256 of the object's stored bytes
	// (Stats' StoredSHA256 stays empty): a restore does not need it, since
	// every frame is checked (CRC-32C, and the GCM tag when encrypted) and
	// the plaintext's SHA-256 is compared with the manifest's, and it costs
	// ~0.37 core-s per GiB read. Verify keeps it (it checks the stored
	// object against the manifest).
	SkipStoredDigest bool
}

// MaxReadAhead bounds ReadOptions.ReadAhead: beyond a few frames read-ahead
// only costs memory, since the stages run at a fixed speed each.
const MaxReadAhead = 16

// Validate reports an option out of range, wrapping ErrInvalidOption.
func (o ReadOptions) Validate() error {
	if o.ReadAhead < 0 || o.ReadAhead > MaxReadAhead {
		return fmt.Errorf("%w: readAhead: %d is not in 0..%d", ErrInvalidOption, o.ReadAhead, MaxReadAhead)
	}
	return nil
}

// NewReader reads the header of the object in r and opens its data key with
// k. Wrong or missing keys fail here with ErrWrongKey. The Reader reads
// sequentially in the caller's goroutine; Close is a no-op.
func NewReader(r io.Reader, k Keys) (*Reader, error) {
	return NewReaderWith(r, k, ReadOptions{})
}

// NewReaderWith is NewReader with options; with ReadAhead > 0 the Reader
// runs its pipeline from here on, and the caller must Close it (see Reader).
func NewReaderWith(r io.Reader, k Keys, o ReadOptions) (*Reader, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("open object: %w", err)
	}
	hdr, raw, err := ReadHeader(r)
	if err != nil {
		return nil, fmt.Errorf("open object: %w", err)
	}
	rd := &Reader{fr: newFrameReader(r, hdr, raw, o.SkipStoredDigest), hdr: hdr, plainSHA: sha256.New()}
	if rd.op, err = newOpener(hdr, raw, k); err != nil {
		return nil, err
	}
	if o.ReadAhead > 0 {
		rd.ahead = startPipeline(rd.fr, rd.op, o.ReadAhead)
	}
	return rd, nil
}

// opener opens the frames of one object: authentication and decryption in
// place, then decompression. Its zstd decoder makes it usable by one
// goroutine at a time.
type opener struct {
	hdr    HeaderInfo
	aadSum [sha256.Size]byte
	aead   cipher.AEAD
	zdec   *zstd.Decoder
}

func newOpener(hdr HeaderInfo, rawHeader []byte, k Keys) (opener, error) {
	op := opener{hdr: hdr, aadSum: sha256.Sum256(rawHeader)}
	var err error
	if hdr.Encryption == EncryptionAESGCM {
		key, err := UnwrapKey(hdr.KeyWrap, k)
		if err != nil {
			return opener{}, fmt.Errorf("open object %s: %w", hdr.BackupID, err)
		}
		if op.aead, err = newAEAD(key); err != nil {
			return opener{}, fmt.Errorf("open object %s: %w", hdr.BackupID, err)
		}
	}
	if hdr.Compression == CompressionZstd {
		op.zdec, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			// a chunk never needs more than its own size, rounded up to a window
			zstd.WithDecoderMaxMemory(uint64(zstdWindow(hdr.ChunkSize))),
			zstd.WithDecoderMaxWindow(uint64(zstdWindow(hdr.ChunkSize))),
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return opener{}, fmt.Errorf("open object: zstd: %w", err)
		}
	}
	return op, nil
}

// compressed reports whether a frame's plaintext needs a buffer of its own;
// without compression it is opened in place, in the frame's body.
func (op opener) compressed() bool { return op.hdr.Compression != CompressionNone }

// close releases the zstd decoder's goroutines and buffers.
func (op opener) close() {
	if op.zdec != nil {
		op.zdec.Close()
	}
}

// open authenticates and decrypts f's body in place and decompresses it
// into plain (capacity ChunkSize, unused without compression). The result
// aliases f.body or plain.
func (op opener) open(f frame, plain []byte) ([]byte, error) {
	body := f.body
	var err error
	if op.aead != nil {
		var nonce [12]byte
		var aad [aadLen]byte
		buildNonceAAD(&nonce, &aad, op.hdr.NoncePrefix, op.aadSum, f.index, f.final)
		if body, err = op.aead.Open(body[:0], nonce[:], body, aad[:]); err != nil {
			return nil, fmt.Errorf("%w: frame %d: authentication failed (tampered, reordered or wrong key)", ErrCorrupt, f.index)
		}
	}
	switch op.hdr.Compression {
	case CompressionNone:
		plain = body
	case CompressionSnappy:
		n, err := snappy.DecodedLen(body)
		if err != nil || n > op.hdr.ChunkSize {
			return nil, fmt.Errorf("%w: frame %d: snappy block does not decode to at most %d bytes", ErrCorrupt, f.index, op.hdr.ChunkSize)
		}
		if plain, err = snappy.Decode(plain[:n], body); err != nil {
			return nil, fmt.Errorf("%w: frame %d: snappy: %v", ErrCorrupt, f.index, err)
		}
	case CompressionZstd:
		if plain, err = op.zdec.DecodeAll(body, plain[:0]); err != nil {
			return nil, fmt.Errorf("%w: frame %d: zstd: %v", ErrCorrupt, f.index, err)
		}
	}
	if len(plain) > op.hdr.ChunkSize {
		return nil, fmt.Errorf("%w: frame %d: chunk of %d bytes exceeds chunk size %d", ErrCorrupt, f.index, len(plain), op.hdr.ChunkSize)
	}
	return plain, nil
}

// Header returns the object's header.
func (rd *Reader) Header() HeaderInfo { return rd.hdr }

// Read implements io.Reader over the object's plaintext.
func (rd *Reader) Read(p []byte) (int, error) {
	if rd.ahead != nil && rd.err == nil && rd.ahead.closed.Load() {
		// what is left of the frame at hand goes too: Close ends reading
		rd.err, rd.pending = errClosed, nil
	}
	for len(rd.pending) == 0 {
		if rd.err != nil {
			return 0, rd.err
		}
		var err error
		if rd.ahead != nil {
			err = rd.nextAhead()
		} else {
			err = rd.nextChunk()
		}
		if err != nil {
			rd.err = err
			if rd.ahead == nil {
				rd.op.close()
			}
		}
	}
	n := copy(p, rd.pending)
	rd.pending = rd.pending[n:]
	return n, nil
}

// nextChunk reads, opens and decompresses the next frame into pending.
func (rd *Reader) nextChunk() error {
	f, err := rd.fr.nextFrame()
	if err != nil {
		return err // io.EOF stays bare
	}
	if rd.plain == nil && rd.op.compressed() {
		rd.plain = make([]byte, 0, rd.hdr.ChunkSize)
	}
	plain, err := rd.op.open(f, rd.plain)
	if err != nil {
		return err
	}
	rd.plainSHA.Write(plain)
	rd.bytes += int64(len(plain))
	rd.pending = plain
	return nil
}

// Close stops a read-ahead Reader's goroutines and waits for them (see
// Reader for a read in flight on r); later Reads fail. It is a no-op for a
// sequential Reader, and may be called more than once.
func (rd *Reader) Close() error {
	if rd.ahead != nil {
		rd.ahead.close()
	}
	return nil
}

// Stats returns counts and digests of what was read; complete after Read
// returned io.EOF.
func (rd *Reader) Stats() ReadStats {
	if rd.ahead != nil {
		return rd.ahead.stats()
	}
	return ReadStats{
		Frames:          rd.fr.frames,
		Bytes:           rd.bytes,
		StoredBytes:     rd.fr.storedLen,
		PlaintextSHA256: hex.EncodeToString(rd.plainSHA.Sum(nil)),
		StoredSHA256:    rd.fr.storedSum(),
	}
}
