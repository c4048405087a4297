package format

import (
	"fmt"
	"slices"

	"github.com/golang/snappy"
	"github.com/klauspost/compress/zstd"
)

// FrameWriter builds one frame from plaintext written to it in pieces: it
// compresses each piece as it comes (zstd as a stream, no compression by
// copying), so a frame of many transport chunks is never gathered as
// plaintext first and each chunk can be released as soon as it is written.
// Seal then encrypts the frame in place. The frame is the same frame Seal
// makes of the whole plaintext at once, byte for byte where the
// compression is none or snappy; with zstd its body is one zstd frame that
// does not state its content size (RFC 8878 allows either), which every
// reader of the format decodes alike.
//
// A FrameWriter belongs to one goroutine at a time and builds one frame at
// a time: Reset, Write any number of times, Seal; then Reset again for the
// next frame. Frames of one Sealer may be built by several FrameWriters at
// once.
type FrameWriter struct {
	s     *Sealer
	zw    *zstd.Encoder // streaming, this FrameWriter's own
	dst   []byte        // the frame so far: its header's place, then the body
	start int           // where the frame begins in dst
	n     int           // plaintext bytes written
	plain []byte        // snappy only: the plaintext, compressed at Seal
	err   error
}

// NewFrameWriter returns a FrameWriter for frames of s. It holds a zstd
// encoder's history (about one frame) for as long as it lives: keep it
// for the next frame rather than making a new one per frame.
func (s *Sealer) NewFrameWriter() (*FrameWriter, error) {
	fw := &FrameWriter{s: s}
	if s.hdr.Compression == CompressionZstd {
		zw, err := newZstdEncoder(s.zlevel, 1, s.hdr.ChunkSize)
		if err != nil {
			return nil, fmt.Errorf("new frame writer: %w", err)
		}
		fw.zw = zw
	}
	return fw, nil
}

// Reset starts a new frame, appended to dst.
func (fw *FrameWriter) Reset(dst []byte) {
	fw.start, fw.n, fw.err = len(dst), 0, nil
	fw.dst = append(dst, make([]byte, frameHeaderLen)...)
	fw.plain = fw.plain[:0]
	if fw.zw != nil {
		fw.zw.Reset((*appender)(fw))
	}
}

// appender is the zstd stream's destination: the frame's body.
type appender FrameWriter

func (a *appender) Write(p []byte) (int, error) {
	a.dst = append(a.dst, p...)
	return len(p), nil
}

// Write adds p to the frame's plaintext; p may be reused once Write
// returns. A frame holds at most the Sealer's ChunkSize bytes.
func (fw *FrameWriter) Write(p []byte) (int, error) {
	if fw.err != nil {
		return 0, fw.err
	}
	if fw.n+len(p) > fw.s.hdr.ChunkSize {
		fw.err = fmt.Errorf("%w: frame of more than %d bytes (its chunk size)", ErrInvalidOption, fw.s.hdr.ChunkSize)
		return 0, fw.err
	}
	fw.n += len(p)
	switch fw.s.hdr.Compression {
	case CompressionNone:
		fw.dst = append(fw.dst, p...)
	case CompressionSnappy:
		fw.plain = append(fw.plain, p...)
	case CompressionZstd:
		if _, err := fw.zw.Write(p); err != nil {
			fw.err = fmt.Errorf("zstd: %w", err)
			return 0, fw.err
		}
	}
	return len(p), nil
}

// Len returns the plaintext bytes written to the frame so far.
func (fw *FrameWriter) Len() int { return fw.n }

// Seal ends the frame as frame number index (final marks the object's
// last) and returns dst of Reset with the whole frame appended. The
// FrameWriter is then ready for Reset.
func (fw *FrameWriter) Seal(index uint64, final bool) ([]byte, error) {
	dst := fw.dst
	fw.dst = nil
	if fw.err != nil {
		return dst[:fw.start], fmt.Errorf("seal frame %d: %w", index, fw.err)
	}
	if index >= MaxFrames {
		return dst[:fw.start], fmt.Errorf("seal frame %d: %w: an object holds at most %d frames", index, ErrInvalidOption, uint64(MaxFrames))
	}
	bodyStart := fw.start + frameHeaderLen
	switch fw.s.hdr.Compression {
	case CompressionSnappy:
		dst = slices.Grow(dst, snappy.MaxEncodedLen(len(fw.plain)))
		enc := snappy.Encode(dst[bodyStart:cap(dst)], fw.plain)
		dst = dst[:bodyStart+len(enc)] // enc is dst's spare capacity
	case CompressionZstd:
		fw.dst = dst
		err := fw.zw.Close()
		dst, fw.dst = fw.dst, nil
		if err != nil {
			return dst[:fw.start], fmt.Errorf("seal frame %d: zstd: %w", index, err)
		}
	}
	dst = slices.Grow(dst, tagLen) // GCM seals in place, its tag included
	return fw.s.finishFrame(dst, fw.start, index, final)
}
