package format_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/golang/snappy"
	"github.com/klauspost/compress/zstd"
)

var update = flag.Bool("update", false, "write the missing test vectors under testdata/vectors, then every manifest and vectors.json")

const vectorDir = "testdata/vectors"

// vector is one entry of testdata/vectors/vectors.json.
type vector struct {
	File            string   `json:"file"`
	Identity        string   `json:"identity,omitempty"`   // file holding the age identity
	Passphrase      string   `json:"passphrase,omitempty"` // file holding the passphrase
	BackupID        string   `json:"backupId"`
	Chain           []string `json:"chain"`
	ChunkSize       int      `json:"chunkSize"`
	Frames          uint64   `json:"frames"`
	Bytes           int64    `json:"bytes"` // the plaintext is the first Bytes bytes of plaintext.txt
	StoredBytes     int64    `json:"storedBytes"`
	StoredSHA256    string   `json:"storedSha256"`
	PlaintextSHA256 string   `json:"plaintextSha256"`
	Manifest        string   `json:"manifest"` // file holding the manifest a pipeline writes beside it
}

// vectorPlaintext is short text so the vectors stay small and readable.
func vectorPlaintext() []byte {
	var b strings.Builder
	for i := 0; b.Len() < 2600; i++ {
		b.WriteString("INSERT INTO `orders` VALUES (")
		b.WriteString(strings.Repeat("7", i%5+1))
		b.WriteString(",'backstream test vector','2025-03-01 02:00:00');\n")
	}
	return []byte(b.String())
}

// vectorSpec is how one vector object is made.
type vectorSpec struct {
	file string
	o    format.Options
	v    vector // key files
	n    int    // plaintext bytes: a prefix of plaintext.txt, -1 for all of it
	// aligned seals chunk by chunk as the pipeline does (services/snapshot
	// publishes every full chunk at once, so a dump of k whole chunks ends
	// with an empty final frame); otherwise format.Writer, which makes the
	// last full chunk final.
	aligned bool
}

func vectorSpecs(t *testing.T, recipient, pass string) []vectorSpec {
	return []vectorSpec{
		{"zstd-aes-x25519.bsf", format.Options{Compression: "zstd", Recipients: []string{recipient}, ChunkSize: 1024}, vector{Identity: "identity.txt"}, -1, false},
		{"zstd-aes-scrypt.bsf", format.Options{Compression: "zstd", Passphrase: pass, ScryptWorkFactor: 10, ChunkSize: 1024}, vector{Passphrase: "passphrase.txt"}, -1, false},
		{"snappy-none.bsf", format.Options{Compression: "snappy", Encryption: "none", ChunkSize: 1024}, vector{}, -1, false},
		{"empty-zstd-aes-x25519.bsf", format.Options{Compression: "zstd", Recipients: []string{recipient}, ChunkSize: 1024}, vector{Identity: "identity.txt"}, 0, false},
		{"aligned-snappy-none.bsf", format.Options{Compression: "snappy", Encryption: "none", ChunkSize: 1024}, vector{}, 2048, true},
		{"zstd-aes-keyring.bsf", format.Options{Compression: "zstd", Keyring: vectorKeyring(t, pass), ChunkSize: 1024}, vector{Passphrase: "passphrase.txt"}, -1, false},
	}
}

// vectorKeyring is a plan keyring for the vectors' passphrase, at work
// factor 2^10 like the scrypt vector.
func vectorKeyring(t *testing.T, pass string) *format.Keyring {
	k, err := format.NewKeyring(pass, 10)
	if err != nil {
		t.Fatal(err)
	}
	return &k
}

// generateVectors writes the vectors missing from dir, then every manifest
// and vectors.json. Objects and the identity already there are kept:
// sealed again, an encrypted object gets a new key and new bytes, and the
// examples in docs/format.md would have to be copied again. Delete an
// object to make it anew.
func generateVectors(t *testing.T, dir string) {
	plain := vectorPlaintext()
	const pass = "backstream test vector passphrase"
	var id *age.X25519Identity
	if ids, err := format.ParseIdentityFile(filepath.Join(dir, "identity.txt")); err == nil && len(ids) == 1 {
		id = ids[0].(*age.X25519Identity)
	} else {
		if id, err = age.GenerateX25519Identity(); err != nil {
			t.Fatal(err)
		}
		writeVectorFile(t, dir, "identity.txt", []byte("# test vector identity; never use it for anything else\n# public key: "+id.Recipient().String()+"\n"+id.String()+"\n"))
	}
	writeVectorFile(t, dir, "plaintext.txt", plain)
	writeVectorFile(t, dir, "passphrase.txt", []byte(pass+"\n"))
	var vs []vector
	for _, sp := range vectorSpecs(t, id.Recipient().String(), pass) {
		vs = append(vs, makeVector(t, dir, sp, plain))
	}
	writeVectorIndex(t, dir, vs)
}

func writeVectorFile(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeVector seals the object of sp into dir, unless it is there already,
// and returns its entry, without the manifest.
func makeVector(t *testing.T, dir string, sp vectorSpec, plain []byte) vector {
	t.Helper()
	data := plain
	if sp.n >= 0 {
		data = plain[:sp.n]
	}
	id := "01JVECTOR" + strings.ToUpper(strings.NewReplacer("-", "", ".bsf", "").Replace(sp.file))
	obj, err := os.ReadFile(filepath.Join(dir, sp.file))
	switch {
	case err == nil:
	case !os.IsNotExist(err):
		t.Fatal(err)
	case sp.aligned:
		s, err := format.NewSealer(id, sp.o)
		if err != nil {
			t.Fatal(err)
		}
		obj = s.Header()
		cs := s.ChunkSize()
		if len(data)%cs != 0 {
			t.Fatalf("%s: %d bytes are not whole chunks of %d", sp.file, len(data), cs)
		}
		for i := 0; i <= len(data)/cs; i++ {
			last := i == len(data)/cs
			if obj, err = s.Seal(obj, uint64(i), last, data[i*cs:min(len(data), (i+1)*cs)]); err != nil {
				t.Fatal(err)
			}
		}
		writeVectorFile(t, dir, sp.file, obj)
	default:
		obj = seal(t, id, sp.o, data)
		writeVectorFile(t, dir, sp.file, obj)
	}
	ss, err := format.Scan(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	v := sp.v
	v.File, v.BackupID, v.Chain, v.ChunkSize = sp.file, ss.Header.BackupID, ss.Header.Chain(), ss.Header.ChunkSize
	v.Frames, v.Bytes, v.StoredBytes, v.StoredSHA256, v.PlaintextSHA256 = ss.Frames, int64(len(data)), ss.StoredBytes, ss.StoredSHA256, sum(data)
	return v
}

// writeVectorIndex writes each vector's manifest and vectors.json.
func writeVectorIndex(t *testing.T, dir string, vs []vector) {
	t.Helper()
	for i, v := range vs {
		obj := mustRead(t, filepath.Join(dir, v.File))
		h, _, err := format.ReadHeader(bytes.NewReader(obj))
		if err != nil {
			t.Fatal(err)
		}
		b, err := format.MarshalManifest(vectorManifest(v, h))
		if err != nil {
			t.Fatal(err)
		}
		vs[i].Manifest = strings.TrimSuffix(v.File, format.ObjectSuffix) + format.ManifestSuffix
		writeVectorFile(t, dir, vs[i].Manifest, b)
	}
	j, _ := json.MarshalIndent(vs, "", "  ")
	writeVectorFile(t, dir, "vectors.json", append(j, '\n'))
}

// vectorManifest is the manifest a pipeline run would write for vector v:
// every field set, fixed times, a verified full verify.
func vectorManifest(v vector, h format.HeaderInfo) format.Manifest {
	at := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	return format.Manifest{
		FormatVersion: format.Version, BackupID: v.BackupID, Plan: "orders-db", RunID: "01JNR4S7T0000000000000000R", Trigger: "schedule",
		Created: at.Add(time.Minute), Started: at, Finished: at.Add(time.Minute),
		Source: format.Source{Type: "mariadb", Describe: map[string]string{"server": "11.4.2", "databases": "orders"}},
		Chain:  v.Chain, ChunkSize: v.ChunkSize, KeyWrap: h.KeyWrap,
		Bytes: v.Bytes, StoredBytes: v.StoredBytes, Frames: v.Frames,
		PlaintextSHA256: v.PlaintextSHA256, StoredSHA256: v.StoredSHA256,
		ObjectKey: format.ObjectKey("orders-db", v.BackupID),
		Verify:    format.VerifyResult{Status: format.VerifyVerified, Mode: format.VerifyModeFull, At: at.Add(2 * time.Minute)},
		Cycles:    []string{"daily", "weekly"},
		Tags:      map[string]string{"env": "test"},
	}
}

func loadVectors(t *testing.T) []vector {
	b, err := os.ReadFile(filepath.Join(vectorDir, "vectors.json"))
	if err != nil {
		t.Fatalf("read vectors (regenerate with go test -run TestVectors -update): %v", err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

func vectorKeys(t *testing.T, v vector) format.Keys {
	var k format.Keys
	if v.Identity != "" {
		ids, err := format.ParseIdentityFile(filepath.Join(vectorDir, v.Identity))
		if err != nil {
			t.Fatal(err)
		}
		k.Identities = ids
	}
	if v.Passphrase != "" {
		b, err := os.ReadFile(filepath.Join(vectorDir, v.Passphrase))
		if err != nil {
			t.Fatal(err)
		}
		k.Passphrase = strings.TrimSuffix(string(b), "\n")
	}
	return k
}

// TestVectors decodes the committed vectors with this package and checks
// every recorded fact. With -update it first writes the vectors that are
// missing (see generateVectors).
func TestVectors(t *testing.T) {
	if *update {
		generateVectors(t, vectorDir)
	}
	plain, err := os.ReadFile(filepath.Join(vectorDir, "plaintext.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range loadVectors(t) {
		t.Run(v.File, func(t *testing.T) {
			obj, err := os.ReadFile(filepath.Join(vectorDir, v.File))
			if err != nil {
				t.Fatal(err)
			}
			want := plain[:v.Bytes]
			got, st, err := open(obj, vectorKeys(t, v))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("plaintext differs")
			}
			if st.Frames != v.Frames || st.StoredBytes != v.StoredBytes || st.StoredSHA256 != v.StoredSHA256 || st.PlaintextSHA256 != v.PlaintextSHA256 {
				t.Fatalf("stats %+v, vector %+v", st, v)
			}
			chunks := independentRead(t, obj, v)
			if !bytes.Equal(bytes.Join(chunks, nil), want) {
				t.Fatalf("independent reader: plaintext differs")
			}
			// docs/format.md, "The final frame and empty chunks": the
			// pipeline's layout for aligned-*, format.Writer's for the rest.
			b, c := len(want), v.ChunkSize
			wantFrames := max(1, (b+c-1)/c)
			if strings.HasPrefix(v.File, "aligned-") {
				wantFrames = b/c + 1
			}
			var lens []int
			for _, ch := range chunks {
				lens = append(lens, len(ch))
			}
			for i, n := range lens {
				if i < len(lens)-1 && n != c || i == len(lens)-1 && n != b-c*(len(lens)-1) {
					t.Fatalf("chunk lengths %v for %d bytes at chunk size %d", lens, b, c)
				}
			}
			if len(lens) != wantFrames {
				t.Fatalf("%d frames (%v), docs/format.md says %d for %d bytes at chunk size %d", len(lens), lens, wantFrames, b, c)
			}
		})
	}
}

// independentRead decodes an object following docs/format.md only, with the
// standard library, age, snappy and zstd, and none of this package's code:
// it is the check that the document describes the bytes. It returns the
// chunks, one per frame.
func independentRead(t *testing.T, obj []byte, v vector) [][]byte {
	t.Helper()
	be := binary.BigEndian
	c := crc32.MakeTable(crc32.Castagnoli)
	// Header.
	if string(obj[0:8]) != "\x89BSF\r\n\x1a\n" || obj[8] != 1 || obj[11] != 0 || obj[23] != 0 {
		t.Fatalf("header fixed part % x", obj[:28])
	}
	comp, enc := obj[9], obj[10]
	chunkSize := int(be.Uint32(obj[12:16]))
	prefix := obj[16:23]
	varLen := int(be.Uint32(obj[24:28]))
	hdrLen := 28 + varLen + 4
	hdr := obj[:hdrLen]
	if be.Uint32(hdr[hdrLen-4:]) != crc32.Checksum(hdr[:hdrLen-4], c) {
		t.Fatal("header crc")
	}
	var fields [][]byte
	for p := hdr[28 : hdrLen-4]; len(p) > 0; {
		n := int(be.Uint32(p))
		fields, p = append(fields, p[4:4+n]), p[4+n:]
	}
	// Four fields, five with age-keyring (its keyring).
	if len(fields) < 4 || (len(fields) == 5) != (string(fields[1]) == "age-keyring") || len(fields) > 5 || string(fields[0]) != v.BackupID || chunkSize != v.ChunkSize {
		t.Fatalf("header fields %q", fields[:2])
	}
	scheme, recipients, wrapped := string(fields[1]), string(fields[2]), fields[3]
	var aead cipher.AEAD
	switch enc {
	case 0:
		if scheme != "none" || len(recipients)+len(wrapped) != 0 {
			t.Fatalf("plain object with key scheme %q", scheme)
		}
	case 1:
		var id age.Identity
		switch scheme {
		case "age-scrypt":
			sid, _ := age.NewScryptIdentity(vectorKeys(t, v).Passphrase)
			id = sid
		case "age-keyring":
			// `age -d` of the keyring with the passphrase prints the
			// identity of the key reference's recipient.
			sid, _ := age.NewScryptIdentity(vectorKeys(t, v).Passphrase)
			r, err := age.Decrypt(bytes.NewReader(fields[4]), sid)
			if err != nil {
				t.Fatalf("unlock keyring: %v", err)
			}
			idStr, _ := io.ReadAll(r)
			x, err := age.ParseX25519Identity(string(idStr))
			if err != nil || x.Recipient().String() != recipients {
				t.Fatalf("keyring holds %v (%v), key reference %q", x, err, recipients)
			}
			id = x
		default:
			ids, _ := age.ParseIdentities(bytes.NewReader(mustRead(t, filepath.Join(vectorDir, v.Identity))))
			id = ids[0]
			if x := id.(*age.X25519Identity).Recipient().String(); recipients != x {
				t.Fatalf("key reference %q, want %q", recipients, x)
			}
		}
		r, err := age.Decrypt(bytes.NewReader(wrapped), id)
		if err != nil {
			t.Fatalf("unwrap: %v", err)
		}
		key, _ := io.ReadAll(r)
		block, _ := aes.NewCipher(key)
		aead, _ = cipher.NewGCM(block)
	}
	hdrSum := sha256.Sum256(hdr)
	// Frames.
	var out [][]byte
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	rest := obj[hdrLen:]
	for i := uint32(0); ; i++ {
		l := be.Uint32(rest[0:4])
		fh, body := rest[:16], rest[16:16+l]
		rest = rest[16+l:]
		crc := crc32.Update(crc32.Update(crc32.Update(0, c, hdr[hdrLen-4:]), c, fh[:12]), c, body)
		final := fh[8] == 1
		if be.Uint32(fh[4:8]) != i || fh[8]&^1 != 0 || be.Uint32(fh[12:16]) != crc {
			t.Fatalf("frame %d header % x", i, fh)
		}
		if aead != nil {
			nonce := append(append(append([]byte{}, prefix...), fh[4:8]...), fh[8])
			aad := append(append(hdrSum[:], fh[4:8]...), fh[8])
			var err error
			if body, err = aead.Open(nil, nonce, body, aad); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		var chunk []byte
		var err error
		switch comp {
		case 0:
			chunk = body
		case 1:
			chunk, err = snappy.Decode(nil, body)
		case 2:
			chunk, err = dec.DecodeAll(body, nil)
		}
		if err != nil || len(chunk) > chunkSize {
			t.Fatalf("frame %d: decompress: %v (%d bytes)", i, err, len(chunk))
		}
		out = append(out, chunk)
		if final {
			if len(rest) != 0 || uint64(i+1) != v.Frames {
				t.Fatalf("final frame %d with %d bytes after it", i, len(rest))
			}
			return out
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDocLayoutExample checks the annotated bytes in docs/format.md against
// the vector they claim to show.
func TestDocLayoutExample(t *testing.T) {
	doc := string(mustRead(t, filepath.Join(testenv.RepoRoot(t), "docs", "format.md")))
	_, after, ok := strings.Cut(doc, "Start of `snappy-none.bsf`, annotated:\n\n```\n")
	if !ok {
		t.Fatal("docs/format.md: annotated example not found")
	}
	block, _, _ := strings.Cut(after, "```")
	var want []byte
lines:
	for _, line := range strings.Split(block, "\n") {
		data, _, _ := strings.Cut(line, "  ")
		for _, tok := range strings.Fields(data) {
			switch {
			case tok == "...":
				break lines
			case strings.HasPrefix(tok, `"`):
				want = append(want, strings.Trim(tok, `"`)...)
			default:
				b, err := hex.DecodeString(tok)
				if err != nil {
					t.Fatalf("docs/format.md: bad byte %q in %q", tok, line)
				}
				want = append(want, b...)
			}
		}
	}
	got := mustRead(t, filepath.Join(vectorDir, "snappy-none.bsf"))
	if len(want) < 64 || !bytes.HasPrefix(got, want) {
		t.Fatalf("docs/format.md shows\n% x\nsnappy-none.bsf starts\n% x", want, got[:min(len(got), len(want))])
	}
}
