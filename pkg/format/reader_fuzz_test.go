package format_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/format"
)

// maxReaderAlloc bounds what reading one object with o may allocate
// whatever its length fields say: ReadAhead+1 frame buffers and as many
// plaintext buffers (one of each when sequential) and a zstd window, each
// bounded by MaxChunkSize (the largest chunk size a header may claim), plus
// a 1 MiB header. Bytes beyond that must come from the input itself.
func maxReaderAlloc(o format.ReadOptions) uint64 {
	return uint64(2*(o.ReadAhead+1)+2)*format.MaxChunkSize + 8<<20
}

// fuzzKeys opens the committed vectors; the scrypt cap keeps a hostile
// header from making each run spend seconds in scrypt.
func fuzzKeys(f testing.TB) format.Keys {
	f.Helper()
	ids, err := format.ParseIdentityFile(filepath.Join(vectorDir, "identity.txt"))
	if err != nil {
		f.Fatal(err)
	}
	return format.Keys{Identities: ids, Passphrase: "backstream test vector passphrase", MaxScryptWorkFactor: 12}
}

// readerSeeds are the committed vectors and small objects of every
// compression without encryption (deterministic: no key, no nonce), cut
// into several frames.
func readerSeeds(f testing.TB) [][]byte {
	f.Helper()
	var seeds [][]byte
	for _, v := range []string{"snappy-none.bsf", "zstd-aes-x25519.bsf", "zstd-aes-scrypt.bsf", "empty-zstd-aes-x25519.bsf", "aligned-snappy-none.bsf", "zstd-aes-keyring.bsf"} {
		b, err := os.ReadFile(filepath.Join(vectorDir, v))
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	plain := []byte(strings.Repeat("INSERT INTO t VALUES (1,'backstream');\n", 8))
	for _, c := range compressions {
		seeds = append(seeds, seal(f, "01JFUZZ"+strings.ToUpper(c), format.Options{Compression: c, Encryption: format.EncryptionNone, ChunkSize: 100}, plain))
	}
	return append(seeds, []byte(format.Magic), nil)
}

// wrapsSentinel reports whether err wraps one of the package's sentinels,
// as errors.go promises for every bad object.
func wrapsSentinel(err error) bool {
	for _, s := range []error{format.ErrFormat, format.ErrVersion, format.ErrCorrupt, format.ErrTruncated, format.ErrWrongKey} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// allocated returns the bytes allocated on the heap so far; runtime/metrics
// reads it without stopping the world, unlike runtime.ReadMemStats, which
// made each run forty times slower.
func allocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// readOutcome is what reading and scanning one input found.
type readOutcome struct {
	plain   []byte
	stats   format.ReadStats
	hdr     format.HeaderInfo
	readErr error
	scan    format.ScanStats
	scanErr error
}

// readAndScan reads b with every reader of readModes and with Scan and
// checks what must hold for any input: no panic, errors that wrap a
// sentinel, allocation within maxReaderAlloc beyond the input's own size,
// the readers agreeing byte for byte, stat for stat and error for error,
// and Reader and Scan agreeing (a restore never accepts an object a
// ciphertext verify rejects).
func readAndScan(t *testing.T, b []byte, k format.Keys) readOutcome {
	t.Helper()
	var o readOutcome
	var first readResult
	for i, m := range readModes {
		before := allocated()
		res := readWith(b, k, m.o)
		if got, bound := allocated()-before, maxReaderAlloc(m.o)+16*uint64(len(b)); got > bound {
			t.Fatalf("%s: reading %d bytes allocated %d bytes (bound %d)", m.name, len(b), got, bound)
		}
		if i == 0 {
			first = res
			continue
		}
		if diff := first.diff(res); diff != "" {
			t.Fatalf("the %s reader differs from the %s one: %s", m.name, readModes[0].name, diff)
		}
	}
	o.plain, o.stats, o.readErr = first.plain, first.stats, first.err
	if h, _, err := format.ReadHeader(bytes.NewReader(b)); err == nil {
		o.hdr = h
	}
	o.scan, o.scanErr = format.Scan(bytes.NewReader(b))
	for _, err := range []error{o.readErr, o.scanErr} {
		if err != nil && !wrapsSentinel(err) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
	}
	if o.readErr == nil {
		switch {
		case o.scanErr != nil:
			t.Fatalf("Reader accepts what Scan refuses: %v", o.scanErr)
		case o.stats.StoredBytes != int64(len(b)) || o.scan.StoredBytes != int64(len(b)):
			t.Fatalf("accepted %d (Reader) and %d (Scan) of %d bytes", o.stats.StoredBytes, o.scan.StoredBytes, len(b))
		case o.stats.Frames != o.scan.Frames || o.stats.StoredSHA256 != o.scan.StoredSHA256:
			t.Fatalf("Reader and Scan differ: %+v, %+v", o.stats, o.scan)
		case o.stats.Bytes != int64(len(o.plain)) || o.stats.PlaintextSHA256 != sum(o.plain):
			t.Fatalf("stats %+v do not describe the %d bytes read", o.stats, len(o.plain))
		}
	}
	return o
}

// FuzzReader feeds arbitrary bytes to NewReader, Read and Scan.
func FuzzReader(f *testing.F) {
	for _, s := range readerSeeds(f) {
		f.Add(s)
	}
	keys := fuzzKeys(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		readAndScan(t, b, keys)
	})
}

// forgeCRCs recomputes the header's and every frame's CRC-32C of b, as
// anyone can (docs/format.md): without it nearly every mutation dies at the
// header checksum and the fuzzer never reaches the fields behind it.
func forgeCRCs(b []byte) []byte {
	b = slices.Clone(b)
	const fixed = 28
	if len(b) < fixed {
		return b
	}
	end := uint64(fixed) + uint64(binary.BigEndian.Uint32(b[24:28])) + 4
	if end > uint64(len(b)) {
		return b
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	binary.BigEndian.PutUint32(b[end-4:end], crc32.Checksum(b[:end-4], tab))
	hdrCRC := b[end-4 : end]
	for rest := b[end:]; len(rest) >= 16; {
		n := uint64(binary.BigEndian.Uint32(rest)) + 16
		if n > uint64(len(rest)) {
			break
		}
		c := crc32.Update(0, tab, hdrCRC)
		c = crc32.Update(c, tab, rest[:12])
		c = crc32.Update(c, tab, rest[16:n])
		binary.BigEndian.PutUint32(rest[12:16], c)
		rest = rest[n:]
	}
	return b
}

// FuzzReaderForged is FuzzReader on inputs whose checksums were recomputed,
// as a forger would: the header fields, the key wrap, frame lengths, flags,
// indexes and the decompressors all see hostile values. An encrypted object
// must still open only as it was sealed: whatever opens under AES-GCM is
// byte for byte one of the committed vectors, with its plaintext.
func FuzzReaderForged(f *testing.F) {
	for _, s := range readerSeeds(f) {
		f.Add(s)
	}
	keys := fuzzKeys(f)
	vs := loadVectorsFuzz(f)
	plain, err := os.ReadFile(filepath.Join(vectorDir, "plaintext.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = forgeCRCs(b)
		o := readAndScan(t, b, keys)
		if o.readErr != nil || o.hdr.Encryption == format.EncryptionNone {
			return
		}
		stored := sum(b)
		for _, v := range vs {
			if v.StoredSHA256 != stored {
				continue
			}
			want := plain[:v.Bytes]
			if !bytes.Equal(o.plain, want) {
				t.Fatalf("vector %s opened to other plaintext", v.File)
			}
			return
		}
		t.Fatalf("a forged encrypted object opened: %d bytes of plaintext from %x", len(o.plain), b)
	})
}

func loadVectorsFuzz(f *testing.F) []vector {
	f.Helper()
	b, err := os.ReadFile(filepath.Join(vectorDir, "vectors.json"))
	if err != nil {
		f.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		f.Fatal(err)
	}
	return vs
}

// frameBounds returns the offsets where obj's frames start, and its end.
func frameBounds(t *testing.T, obj []byte) []int {
	h, _, err := format.ReadHeader(bytes.NewReader(obj))
	if err != nil {
		t.Fatalf("read header: %v", err)
	}
	var at []int
	for i := h.Size; i < len(obj); i += 16 + int(binary.BigEndian.Uint32(obj[i:])) {
		at = append(at, i)
	}
	return append(at, len(obj))
}

// damageOnce applies one of the accidents and attacks docs/format.md says a
// reader catches: op picks which, at where.
func damageOnce(t *testing.T, obj []byte, op uint8, at uint32) (string, []byte) {
	b := frameBounds(t, obj)
	frames := len(b) - 1
	i := int(at % uint32(frames))
	frame := func(j int) []byte { return obj[b[j]:b[j+1]] }
	switch op % 7 {
	case 0:
		return "cut", slices.Clone(obj[:int(at%uint32(len(obj)))])
	case 1:
		return "cut at a frame boundary", slices.Clone(obj[:b[i]])
	case 2:
		bad := slices.Clone(obj)
		bad[int(at%uint32(len(obj)))] ^= byte(at>>24) | 1
		return "changed byte", bad
	case 3:
		return "dropped frame", slices.Concat(obj[:b[i]], obj[b[i+1]:])
	case 4:
		return "duplicated frame", slices.Concat(obj[:b[i+1]], frame(i), obj[b[i+1]:])
	case 5:
		if frames < 2 {
			return "appended byte", append(slices.Clone(obj), 0)
		}
		i = min(i, frames-2)
		return "swapped frames", slices.Concat(obj[:b[i]], frame(i+1), frame(i), obj[b[i+2]:])
	default:
		return "appended frame", slices.Concat(obj, frame(i))
	}
}

// FuzzSealOpen seals arbitrary data with a filter chain and chunk size the
// input picks, opens it and requires exactly the data back; then it damages
// the object once (a byte changed, cut short, a frame dropped, duplicated,
// swapped or appended) and requires Reader and Scan both to refuse it. A
// wrong identity must fail with ErrWrongKey.
func FuzzSealOpen(f *testing.F) {
	f.Add([]byte("hello, backstream"), uint16(4), uint8(5), uint32(40), uint8(2))
	f.Add([]byte(strings.Repeat("0123456789", 300)), uint16(999), uint8(2), uint32(1), uint8(1))
	f.Add([]byte{}, uint16(0), uint8(3), uint32(0), uint8(0))
	f.Add(gen(7, 5000), uint16(511), uint8(4), uint32(77777), uint8(5))
	f.Add(gen(8, 3000), uint16(1023), uint8(1), uint32(2), uint8(3))
	f.Add(gen(9, 3000), uint16(1023), uint8(0), uint32(1), uint8(4))
	f.Add(gen(10, 300), uint16(99), uint8(3), uint32(0), uint8(6))
	ids := fuzzKeys(f).Identities
	recipient := ids[0].(*age.X25519Identity).Recipient().String()
	other, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	comps := []string{format.CompressionNone, format.CompressionSnappy, format.CompressionZstd}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16, chain uint8, at uint32, op uint8) {
		o := format.Options{Compression: comps[int(chain)%3], ZstdLevel: format.ZstdFastest, ChunkSize: 1 + int(chunk)%4096, Encryption: format.EncryptionNone}
		keys := format.Keys{}
		if chain/3%2 == 1 {
			o.Encryption, o.Recipients = format.EncryptionAESGCM, []string{recipient}
			keys.Identities = ids
		}
		s, err := format.NewSealer("01JFUZZSEAL", o)
		if err != nil {
			t.Fatalf("new sealer: %v", err)
		}
		var buf bytes.Buffer
		w := format.NewWriter(&buf, s, 2)
		if _, err := w.Write(data); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		obj := buf.Bytes()
		got := readAndScan(t, obj, keys)
		if got.readErr != nil || got.scanErr != nil {
			t.Fatalf("a sealed object does not open: %v; scan: %v", got.readErr, got.scanErr)
		}
		wantFrames := uint64(max(1, (len(data)+o.ChunkSize-1)/o.ChunkSize))
		if !bytes.Equal(got.plain, data) || got.stats.Frames != wantFrames || got.stats.StoredSHA256 != sum(obj) {
			t.Fatalf("opened %d bytes in %d frames, sealed %d bytes in %d frames", len(got.plain), got.stats.Frames, len(data), wantFrames)
		}
		if o.Encryption != format.EncryptionNone {
			if _, err := format.NewReader(bytes.NewReader(obj), format.Keys{Identities: []age.Identity{other}}); !errors.Is(err, format.ErrWrongKey) {
				t.Fatalf("a wrong identity: %v, want ErrWrongKey", err)
			}
		}
		what, bad := damageOnce(t, obj, op, at)
		dmg := readAndScan(t, bad, keys)
		if dmg.readErr == nil || dmg.scanErr == nil {
			t.Fatalf("%s (op %d at %d, %d frames) is accepted: read %v, scan %v", what, op, at, wantFrames, dmg.readErr, dmg.scanErr)
		}
	})
}
