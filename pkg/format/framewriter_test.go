package format_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/backstream/backstream/pkg/format"
)

// TestFrameWriter builds objects frame by frame from plaintext written in
// odd pieces, with one FrameWriter reused for every frame, and reads them
// back. Without zstd the frames are Seal's, byte for byte; with zstd they
// decode to the same plaintext (a streamed zstd frame does not state its
// content size, Seal's does).
func TestFrameWriter(t *testing.T) {
	const chunk = 64 << 10
	sizes := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one frame", chunk},
		{"frames and a short one", 3*chunk + 4321},
	}
	for _, sc := range schemes {
		for _, comp := range compressions {
			for _, sz := range sizes {
				t.Run(fmt.Sprintf("%s/%s/%s", sc.name, comp, sz.name), func(t *testing.T) {
					data := gen(int64(sz.size), int64(sz.size))
					s, err := format.NewSealer("01JFRAMEWRITER", sc.opts(t, format.Options{Compression: comp, ChunkSize: chunk}))
					if err != nil {
						t.Fatal(err)
					}
					fw, err := s.NewFrameWriter()
					if err != nil {
						t.Fatal(err)
					}
					obj, whole := s.Header(), s.Header()
					n := max(1, (len(data)+chunk-1)/chunk)
					for i := range n {
						plain := data[min(i*chunk, len(data)):min((i+1)*chunk, len(data))]
						fw.Reset(nil)
						for rest := plain; ; rest = rest[min(len(rest), 7777):] {
							if _, err := fw.Write(rest[:min(len(rest), 7777)]); err != nil {
								t.Fatalf("write frame %d: %v", i, err)
							}
							if len(rest) == 0 {
								break // an empty write too
							}
						}
						if fw.Len() != len(plain) {
							t.Fatalf("frame %d: Len %d, wrote %d", i, fw.Len(), len(plain))
						}
						f, err := fw.Seal(uint64(i), i == n-1)
						if err != nil {
							t.Fatalf("seal frame %d: %v", i, err)
						}
						obj = append(obj, f...)
						if whole, err = s.Seal(whole, uint64(i), i == n-1, plain); err != nil {
							t.Fatalf("seal frame %d whole: %v", i, err)
						}
					}
					got, st, err := open(obj, sc.keys(t))
					if err != nil || !bytes.Equal(got, data) || st.Frames != uint64(n) {
						t.Fatalf("read back %d bytes in %d frames (%v); wrote %d in %d", len(got), st.Frames, err, len(data), n)
					}
					if comp != format.CompressionZstd && !bytes.Equal(obj, whole) {
						t.Errorf("frames differ from Seal's of the same plaintext")
					}
				})
			}
		}
	}
}

// TestFrameWriterTooMuch: a frame takes at most the sealer's chunk size;
// the write beyond it fails, and so does the frame's Seal, and the next
// frame after Reset is whole again.
func TestFrameWriterTooMuch(t *testing.T) {
	const chunk = 1000
	s, err := format.NewSealer("01JFRAMEWRITER", format.Options{Compression: format.CompressionZstd, Encryption: format.EncryptionNone, ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	fw, err := s.NewFrameWriter()
	if err != nil {
		t.Fatal(err)
	}
	fw.Reset(nil)
	if _, err := fw.Write(make([]byte, chunk)); err != nil {
		t.Fatalf("a whole chunk: %v", err)
	}
	if _, err := fw.Write([]byte{1}); !errors.Is(err, format.ErrInvalidOption) {
		t.Fatalf("one byte more: %v, want ErrInvalidOption", err)
	}
	if _, err := fw.Seal(0, true); !errors.Is(err, format.ErrInvalidOption) {
		t.Fatalf("seal after the failed write: %v, want ErrInvalidOption", err)
	}
	fw.Reset(nil)
	if _, err := fw.Write([]byte("x")); err != nil {
		t.Fatalf("after Reset: %v", err)
	}
	f, err := fw.Seal(0, true)
	if err != nil {
		t.Fatalf("after Reset: seal: %v", err)
	}
	if got, _, err := open(append(s.Header(), f...), format.Keys{}); err != nil || string(got) != "x" {
		t.Fatalf("after Reset: read %q, %v", got, err)
	}
}
