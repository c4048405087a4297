package format_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/format"
)

const testPass = "correct horse battery staple"

var (
	idOnce sync.Once
	testID *age.X25519Identity

	keyringOnce sync.Once
	testKeyring format.Keyring
)

// identity returns one X25519 identity shared by the tests.
func identity(t testing.TB) *age.X25519Identity {
	t.Helper()
	idOnce.Do(func() {
		var err error
		if testID, err = age.GenerateX25519Identity(); err != nil {
			panic(err)
		}
	})
	return testID
}

// keyring returns one plan keyring for testPass shared by the tests, at a
// work factor that keeps them fast.
func keyring(t testing.TB) format.Keyring {
	t.Helper()
	keyringOnce.Do(func() {
		var err error
		if testKeyring, err = format.NewKeyring(testPass, 10); err != nil {
			panic(err)
		}
	})
	return testKeyring
}

// scheme is one way to protect the data key.
type scheme struct {
	name string
	opts func(t testing.TB, o format.Options) format.Options
	keys func(t testing.TB) format.Keys
}

var schemes = []scheme{
	{"none",
		func(t testing.TB, o format.Options) format.Options { o.Encryption = format.EncryptionNone; return o },
		func(t testing.TB) format.Keys { return format.Keys{} }},
	{"x25519",
		func(t testing.TB, o format.Options) format.Options {
			o.Recipients = []string{identity(t).Recipient().String()}
			return o
		},
		func(t testing.TB) format.Keys { return format.Keys{Identities: []age.Identity{identity(t)}} }},
	{"scrypt",
		func(t testing.TB, o format.Options) format.Options {
			o.Passphrase, o.ScryptWorkFactor = testPass, 10
			return o
		},
		func(t testing.TB) format.Keys { return format.Keys{Passphrase: testPass} }},
	{"keyring",
		func(t testing.TB, o format.Options) format.Options {
			k := keyring(t)
			o.Keyring = &k
			return o
		},
		func(t testing.TB) format.Keys { return format.Keys{Passphrase: testPass} }},
}

var compressions = []string{format.CompressionNone, format.CompressionSnappy, format.CompressionZstd}

// seal writes data as an object with NewWriter.
func seal(t testing.TB, id string, o format.Options, data []byte) []byte {
	t.Helper()
	s, err := format.NewSealer(id, o)
	if err != nil {
		t.Fatalf("new sealer: %v", err)
	}
	var obj bytes.Buffer
	w := format.NewWriter(&obj, s, 3)
	// odd write sizes, so chunk cutting is exercised across writes
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 7777)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if w.Written() != int64(obj.Len()) {
		t.Fatalf("Written %d, object %d bytes", w.Written(), obj.Len())
	}
	return obj.Bytes()
}

// open reads an object back whole with every reader of readModes and
// returns what the sequential one read, or, when another one read anything
// else (other bytes, stats or error), an error that says so and wraps no
// sentinel: every test that reads through open tests each reader.
func open(obj []byte, k format.Keys) ([]byte, format.ReadStats, error) {
	var first readResult
	for i, m := range readModes {
		got := readWith(obj, k, m.o)
		if i == 0 {
			first = got
			continue
		}
		if diff := first.diff(got); diff != "" {
			return nil, format.ReadStats{}, fmt.Errorf("the %s reader differs from the %s one: %s", m.name, readModes[0].name, diff)
		}
	}
	return first.plain, first.stats, first.err
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func gen(seed, size int64) []byte {
	b, err := io.ReadAll(datagen.New(seed, size))
	if err != nil {
		panic(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	const small = 1000
	sizes := []struct {
		name  string
		size  int
		chunk int
	}{
		{"0B", 0, small},
		{"1B", 1, small},
		{"chunk-1", small - 1, small},
		{"chunk", small, small},
		{"chunk+1", small + 1, small},
		{"50MiB", 50 << 20, 256 << 10},
	}
	for _, sc := range schemes {
		for _, comp := range compressions {
			for _, sz := range sizes {
				name := fmt.Sprintf("%s/%s/%s", sc.name, comp, sz.name)
				t.Run(name, func(t *testing.T) {
					if testing.Short() && sz.size > 1<<20 {
						t.Skip("large size in -short")
					}
					data := gen(int64(sz.size), int64(sz.size))
					o := sc.opts(t, format.Options{Compression: comp, ZstdLevel: format.ZstdFastest, ChunkSize: sz.chunk})
					obj := seal(t, "01JBACKUPROUNDTRIP", o, data)
					got, st, err := open(obj, sc.keys(t))
					if err != nil {
						t.Fatalf("open: %v", err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("plaintext differs: got %d bytes, want %d", len(got), len(data))
					}
					wantFrames := uint64(max(1, (sz.size+sz.chunk-1)/sz.chunk))
					want := format.ReadStats{Frames: wantFrames, Bytes: int64(sz.size), StoredBytes: int64(len(obj)), PlaintextSHA256: sum(data), StoredSHA256: sum(obj)}
					if st != want {
						t.Fatalf("stats %+v, want %+v", st, want)
					}
					ss, err := format.Scan(bytes.NewReader(obj))
					if err != nil {
						t.Fatalf("scan: %v", err)
					}
					if ss.Frames != wantFrames || ss.StoredBytes != int64(len(obj)) || ss.StoredSHA256 != sum(obj) {
						t.Fatalf("scan %+v, want %d frames, %d bytes", ss, wantFrames, len(obj))
					}
				})
			}
		}
	}
}

// TestSealConcurrent seals frames on many goroutines in reverse order and
// checks that the object assembled in index order reads back.
func TestSealConcurrent(t *testing.T) {
	data := gen(9, 3<<20)
	const chunk = 64 << 10
	// Concurrency 1 keeps one zstd encoder: callers sealing more frames at
	// once than that wait for it, and nothing is mixed up.
	for _, tc := range []struct {
		comp        string
		concurrency int
	}{{"none", 0}, {"snappy", 0}, {"zstd", 0}, {"zstd", 1}} {
		comp := tc.comp
		t.Run(fmt.Sprintf("%s/concurrency=%d", comp, tc.concurrency), func(t *testing.T) {
			s, err := format.NewSealer("01JCONCURRENT", format.Options{Compression: comp, Recipients: []string{identity(t).Recipient().String()}, ChunkSize: chunk, Concurrency: tc.concurrency})
			if err != nil {
				t.Fatal(err)
			}
			n := len(data) / chunk
			frames := make([][]byte, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := n - 1; i >= 0; i-- {
				wg.Go(func() {
					frames[i], errs[i] = s.Seal(nil, uint64(i), i == n-1, data[i*chunk:(i+1)*chunk])
				})
			}
			wg.Wait()
			obj := s.Header()
			for i := range frames {
				if errs[i] != nil {
					t.Fatalf("seal %d: %v", i, errs[i])
				}
				obj = append(obj, frames[i]...)
			}
			got, _, err := open(obj, format.Keys{Identities: []age.Identity{identity(t)}})
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("open: %v, equal %v", err, bytes.Equal(got, data))
			}
		})
	}
}

func TestSealerAccessors(t *testing.T) {
	s, err := format.NewSealer("01JACCESSORS", format.Options{Compression: "zstd", Recipients: []string{identity(t).Recipient().String()}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Chain(), ","); got != "zstd,aes-256-gcm" {
		t.Errorf("chain %q", got)
	}
	kw := s.KeyWrap()
	if kw.Scheme != format.SchemeAgeX25519 || len(kw.Recipients) != 1 || kw.Recipients[0] != identity(t).Recipient().String() {
		t.Errorf("key wrap %+v", kw)
	}
	// the wrapped key is a plain age file: age itself opens it
	r, err := age.Decrypt(bytes.NewReader(kw.Wrapped), identity(t))
	if err != nil {
		t.Fatalf("age decrypt: %v", err)
	}
	if key, _ := io.ReadAll(r); len(key) != format.DataKeySize {
		t.Errorf("data key %d bytes", len(key))
	}
	h, raw, err := format.ReadHeader(bytes.NewReader(s.Header()))
	if err != nil || !bytes.Equal(raw, s.Header()) || h.BackupID != "01JACCESSORS" || h.ChunkSize != format.DefaultChunkSize {
		t.Errorf("read header: %+v, %v", h, err)
	}
	if _, err := s.Seal(nil, 0, true, make([]byte, format.DefaultChunkSize+1)); !errors.Is(err, format.ErrInvalidOption) {
		t.Errorf("oversized chunk: %v", err)
	}
	if _, err := s.Seal(nil, format.MaxFrames, true, nil); !errors.Is(err, format.ErrInvalidOption) {
		t.Errorf("index past the counter: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	rcp := identity(t).Recipient().String()
	kr := keyring(t)
	tests := []struct {
		name string
		give format.Options
		want string // substring of the error, "" for valid
	}{
		{"defaults need a key", format.Options{}, "needs one of them"},
		{"recipient", format.Options{Recipients: []string{rcp}}, ""},
		{"passphrase", format.Options{Passphrase: "x"}, ""},
		{"plain", format.Options{Encryption: "none", Compression: "snappy"}, ""},
		{"keyring", format.Options{Keyring: &kr}, ""},
		{"both keys", format.Options{Recipients: []string{rcp}, Passphrase: "x"}, "set only one"},
		{"keyring and recipients", format.Options{Recipients: []string{rcp}, Keyring: &kr}, "recipients, keyring, passphrase: set only one"},
		{"keyring and passphrase", format.Options{Passphrase: "x", Keyring: &kr}, "set only one"},
		{"keyring without encryption", format.Options{Encryption: "none", Keyring: &kr}, "encryption: none"},
		{"bad keyring recipient", format.Options{Keyring: &format.Keyring{Recipient: "age1nope", Wrapped: kr.Wrapped}}, "keyring: recipient"},
		{"keyring not wrapped with a passphrase", format.Options{Keyring: &format.Keyring{Recipient: rcp, Wrapped: []byte("age-encryption.org/v1\n-> X25519 abc\nxyz\n--- mac\n")}}, "keyring: wrapped keyring has a \"X25519\" stanza"},
		{"keys without encryption", format.Options{Encryption: "none", Passphrase: "x"}, "encryption: none"},
		{"bad compression", format.Options{Encryption: "none", Compression: "lz4"}, "compression"},
		{"bad level", format.Options{Encryption: "none", ZstdLevel: "max"}, "zstdLevel"},
		{"bad encryption", format.Options{Encryption: "rot13"}, "encryption"},
		{"bad recipient", format.Options{Recipients: []string{"ssh-ed25519 AAAA"}}, "recipients[0]"},
		// One X25519 key in 1024 has data beginning "pq" (bech32 data after
		// the "age1"); an earlier prefix check took it for a post-quantum
		// recipient and refused it.
		{"recipient whose data begins pq", format.Options{Recipients: []string{"age1pq8zu2ks7ghux6j0necpsc4f3uks6rf4u0g7gs9g7r2a5maksdwqen9hy6"}}, ""},
		{"recipient with a bad checksum", format.Options{Recipients: []string{"age1pq8zu2ks7ghux6j0necpsc4f3uks6rf4u0g7gs9g7r2a5maksdwqen9hy7"}}, "recipients[0]"},
		{"chunk too big", format.Options{Encryption: "none", ChunkSize: format.MaxChunkSize + 1}, "chunkSize"},
		{"negative chunk", format.Options{Encryption: "none", ChunkSize: -1}, "chunkSize"},
		{"scrypt too hard", format.Options{Passphrase: "x", ScryptWorkFactor: 40}, "scryptWorkFactor"},
		{"negative concurrency", format.Options{Encryption: "none", Concurrency: -1}, "concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, format.ErrInvalidOption)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNewSealerBadBackupID(t *testing.T) {
	for _, id := range []string{"", "a/b", ".hidden", strings.Repeat("x", 129), "sp ace"} {
		if _, err := format.NewSealer(id, format.Options{Encryption: "none"}); !errors.Is(err, format.ErrInvalidOption) {
			t.Errorf("backup id %q: %v", id, err)
		}
	}
}

func TestParseChain(t *testing.T) {
	tests := []struct {
		give     []string
		comp     string
		enc      string
		wantFail bool
	}{
		{[]string{}, "none", "none", false},
		{[]string{"zstd"}, "zstd", "none", false},
		{[]string{"aes-256-gcm"}, "none", "aes-256-gcm", false},
		{[]string{"snappy", "aes-256-gcm"}, "snappy", "aes-256-gcm", false},
		{[]string{"aes-256-gcm", "zstd"}, "", "", true},
		{[]string{"none"}, "", "", true},
		{[]string{"zstd", "zstd"}, "", "", true},
	}
	for _, tt := range tests {
		c, e, err := format.ParseChain(tt.give)
		if (err != nil) != tt.wantFail || c != tt.comp || e != tt.enc {
			t.Errorf("ParseChain(%q) = %q, %q, %v", tt.give, c, e, err)
		}
	}
}

func TestParseIdentityFile(t *testing.T) {
	path := t.TempDir() + "/key.txt"
	content := "# created: now\n# public key: " + identity(t).Recipient().String() + "\n" + identity(t).String() + "\n"
	if err := writeFile(path, content); err != nil {
		t.Fatal(err)
	}
	ids, err := format.ParseIdentityFile(path)
	if err != nil || len(ids) != 1 {
		t.Fatalf("parse: %v (%d)", err, len(ids))
	}
	if _, err := format.ParseIdentityFile(t.TempDir() + "/missing"); err == nil {
		t.Fatal("missing file parsed")
	}
}
