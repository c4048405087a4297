package format_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"filippo.io/age"

	"github.com/backstream/backstream/pkg/format"
)

// TestSkipStoredDigest: without the stored digest a Reader, sequential or
// reading ahead, reads the same plaintext and the same stats but an empty
// StoredSHA256, and still refuses a damaged object.
func TestSkipStoredDigest(t *testing.T) {
	data := gen(3, 3<<20+123)
	o := format.Options{Compression: format.CompressionZstd, Recipients: []string{identity(t).Recipient().String()}, ChunkSize: 256 << 10}
	obj := seal(t, "01JSKIPSTORED", o, data)
	keys := format.Keys{Identities: []age.Identity{identity(t)}}
	_, want, err := open(obj, keys)
	if err != nil {
		t.Fatal(err)
	}
	want.StoredSHA256 = ""
	damaged := bytes.Clone(obj)
	damaged[len(damaged)/2] ^= 1
	for _, ahead := range []int{0, 2} {
		t.Run(fmt.Sprintf("readAhead=%d", ahead), func(t *testing.T) {
			read := func(obj []byte) ([]byte, format.ReadStats, error) {
				rd, err := format.NewReaderWith(bytes.NewReader(obj), keys, format.ReadOptions{ReadAhead: ahead, SkipStoredDigest: true})
				if err != nil {
					return nil, format.ReadStats{}, err
				}
				defer rd.Close()
				got, err := io.ReadAll(rd)
				return got, rd.Stats(), err
			}
			got, st, err := read(obj)
			if err != nil || !bytes.Equal(got, data) || st != want {
				t.Fatalf("read %d bytes (%v), stats %+v; want %d bytes, stats %+v", len(got), err, st, len(data), want)
			}
			if _, _, err := read(damaged); !errors.Is(err, format.ErrCorrupt) {
				t.Fatalf("damaged object: %v, want ErrCorrupt", err)
			}
		})
	}
}
