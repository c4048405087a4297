package format_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/format"
)

var errDisk = errors.New("disk full")

// failAfter accepts n bytes, then fails every write.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errDisk
	}
	f.n -= len(p)
	return len(p), nil
}

// TestWriterSinkFails: a failing destination surfaces from Write or Close,
// names what it was writing, and leaves no goroutine blocked.
func TestWriterSinkFails(t *testing.T) {
	tests := []struct {
		name string
		give int // bytes the sink accepts
		want string
	}{
		{"header", 0, "write header"},
		{"a frame", 5000, "write frame"},
	}
	data := gen(3, 200_000)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := format.NewSealer("01JFAIL", format.Options{Encryption: "none", Compression: "none", ChunkSize: 1000})
			if err != nil {
				t.Fatal(err)
			}
			w := format.NewWriter(&failAfter{n: tt.give}, s, 2)
			var werr error
			for off := 0; off < len(data) && werr == nil; off += 999 {
				_, werr = w.Write(data[off:min(off+999, len(data))])
			}
			cerr := w.Close()
			err = errors.Join(werr, cerr)
			if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("write %v, close %v; want %v from %q", werr, cerr, errDisk, tt.want)
			}
			if _, err := w.Write([]byte("x")); !errors.Is(err, format.ErrClosed) {
				t.Fatalf("write after close: %v", err)
			}
		})
	}
}
