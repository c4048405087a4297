package format_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/backstream/backstream/pkg/format"
)

// FuzzReader feeds arbitrary bytes to NewReader, Read and Scan: they may
// fail, but must not panic, hang or allocate without bound.
func FuzzReader(f *testing.F) {
	for _, name := range []string{"snappy-none.bsf", "zstd-aes-x25519.bsf", "empty-zstd-aes-x25519.bsf"} {
		if b, err := os.ReadFile(filepath.Join(vectorDir, name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(format.Magic))
	f.Add([]byte{})
	ids, err := format.ParseIdentityFile(filepath.Join(vectorDir, "identity.txt"))
	if err != nil {
		f.Fatal(err)
	}
	keys := format.Keys{Identities: ids, Passphrase: "backstream test vector passphrase", MaxScryptWorkFactor: 12}
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := format.NewReader(bytes.NewReader(b), keys); err == nil {
			io.Copy(io.Discard, r)
			r.Stats()
		}
		format.Scan(bytes.NewReader(b))
	})
}
