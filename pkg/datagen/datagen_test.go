package datagen_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/backstream/backstream/pkg/datagen"
	"github.com/klauspost/compress/zstd"
)

func TestReproducible(t *testing.T) {
	tests := []struct {
		name string
		seed int64
		size int64
	}{
		{"empty", 1, 0},
		{"one byte", 1, 1},
		{"odd size", 7, 123457},
		{"several MiB", 42, 5 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := io.ReadAll(datagen.New(tt.seed, tt.size))
			if err != nil {
				t.Fatal(err)
			}
			// read the second copy in odd-sized pieces: output must not depend on them
			var b bytes.Buffer
			if _, err := io.CopyBuffer(&b, struct{ io.Reader }{datagen.New(tt.seed, tt.size)}, make([]byte, 1031)); err != nil {
				t.Fatal(err)
			}
			if int64(len(a)) != tt.size || !bytes.Equal(a, b.Bytes()) {
				t.Fatalf("len %d/%d, equal %v", len(a), b.Len(), bytes.Equal(a, b.Bytes()))
			}
		})
	}
}

func TestSeedsDiffer(t *testing.T) {
	a, _ := io.ReadAll(datagen.New(1, 1<<16))
	b, _ := io.ReadAll(datagen.New(2, 1<<16))
	if sha256.Sum256(a) == sha256.Sum256(b) {
		t.Fatal("seeds 1 and 2 gave the same data")
	}
}

// TestRatio checks the promise of the package: about 2:1 with zstd fastest
// on 256 KiB chunks.
func TestRatio(t *testing.T) {
	data, _ := io.ReadAll(datagen.New(3, 16<<20))
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	var out int
	for off := 0; off < len(data); off += 256 << 10 {
		out += len(enc.EncodeAll(data[off:off+256<<10], nil))
	}
	ratio := float64(len(data)) / float64(out)
	t.Logf("zstd fastest ratio %.2f", ratio)
	if ratio < 1.7 || ratio > 2.4 {
		t.Fatalf("ratio %.2f, want about 2", ratio)
	}
}

func BenchmarkRead(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	r := datagen.New(1, 1<<62)
	for b.Loop() {
		if _, err := io.ReadFull(r, buf); err != nil {
			b.Fatal(err)
		}
	}
}
