package format_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"io"
	"testing"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/format"
)

const benchChunk = 256 << 10

// benchChunks is 16 MiB of datagen output (about 2:1 with zstd fastest) cut
// into 256 KiB chunks, the pipeline's default.
func benchChunks(b *testing.B) [][]byte {
	data, err := io.ReadAll(datagen.New(1, 16<<20))
	if err != nil {
		b.Fatal(err)
	}
	var cs [][]byte
	for off := 0; off < len(data); off += benchChunk {
		cs = append(cs, data[off:off+benchChunk])
	}
	return cs
}

// BenchmarkSeal seals one chunk per iteration on one goroutine, per
// compression, encrypted; stored/plain ratio is reported.
func BenchmarkSeal(b *testing.B) {
	cs := benchChunks(b)
	rcp := identity(b).Recipient().String()
	cases := []struct {
		name string
		o    format.Options
	}{
		{"none", format.Options{Compression: "none"}},
		{"snappy", format.Options{Compression: "snappy"}},
		{"zstd-fastest", format.Options{Compression: "zstd", ZstdLevel: "fastest"}},
		{"zstd-default", format.Options{Compression: "zstd", ZstdLevel: "default"}},
		{"zstd-better", format.Options{Compression: "zstd", ZstdLevel: "better"}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			c.o.Recipients, c.o.ChunkSize = []string{rcp}, benchChunk
			s, err := format.NewSealer("01JBENCH", c.o)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 0, s.MaxFrameLen())
			var in, out int64
			b.SetBytes(benchChunk)
			i := 0
			for b.Loop() {
				buf, err = s.Seal(buf[:0], uint64(i), false, cs[i%len(cs)])
				if err != nil {
					b.Fatal(err)
				}
				in, out = in+benchChunk, out+int64(len(buf))
				i++
			}
			b.ReportMetric(float64(in)/float64(out), "ratio")
		})
	}
}

// BenchmarkOpen reads a whole zstd-fastest, encrypted object, hashing the
// plaintext and the stored bytes as a restore or full verify does.
func BenchmarkOpen(b *testing.B) {
	data, _ := io.ReadAll(datagen.New(2, 32<<20))
	obj := seal(b, "01JBENCHOPEN", format.Options{Compression: "zstd", ZstdLevel: "fastest", Recipients: []string{identity(b).Recipient().String()}}, data)
	keys := format.Keys{Identities: []age.Identity{identity(b)}}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r, err := format.NewReader(bytes.NewReader(obj), keys)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScan is the ciphertext-only verify: CRCs and one SHA-256.
func BenchmarkScan(b *testing.B) {
	data, _ := io.ReadAll(datagen.New(2, 32<<20))
	obj := seal(b, "01JBENCHSCAN", format.Options{Compression: "zstd", ZstdLevel: "fastest", Recipients: []string{identity(b).Recipient().String()}}, data)
	b.SetBytes(int64(len(obj)))
	for b.Loop() {
		if _, err := format.Scan(bytes.NewReader(obj)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriter seals a stream with the parallel Writer on all cores.
func BenchmarkWriter(b *testing.B) {
	cs := benchChunks(b)
	s, err := format.NewSealer("01JBENCHW", format.Options{Compression: "zstd", ZstdLevel: "fastest", Recipients: []string{identity(b).Recipient().String()}, ChunkSize: benchChunk})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(cs) * benchChunk))
	for b.Loop() {
		w := format.NewWriter(io.Discard, s, 0)
		for _, c := range cs {
			w.Write(c)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAESGCM is the cipher alone on the same chunks, the floor of Seal.
func BenchmarkAESGCM(b *testing.B) {
	cs := benchChunks(b)
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	nonce := make([]byte, 12)
	buf := make([]byte, 0, benchChunk+16)
	b.SetBytes(benchChunk)
	i := 0
	for b.Loop() {
		buf = aead.Seal(buf[:0], nonce, cs[i%len(cs)], nonce)
		i++
	}
}

// BenchmarkSHA256 is the digest alone: the slowest step on CPUs without SHA-NI.
func BenchmarkSHA256(b *testing.B) {
	cs := benchChunks(b)
	b.SetBytes(benchChunk)
	i := 0
	for b.Loop() {
		sha256.Sum256(cs[i%len(cs)])
		i++
	}
}
