package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/format"
)

// layout splits an object into its header and frames.
func layout(t testing.TB, obj []byte) (hdr []byte, frames [][]byte) {
	t.Helper()
	h, _, err := format.ReadHeader(bytes.NewReader(obj))
	if err != nil {
		t.Fatalf("layout: %v", err)
	}
	rest := obj[h.Size:]
	for len(rest) > 0 {
		n := 16 + int(binary.BigEndian.Uint32(rest))
		frames = append(frames, rest[:n])
		rest = rest[n:]
	}
	return obj[:h.Size], frames
}

func join(hdr []byte, frames ...[]byte) []byte {
	return slices.Concat(append([][]byte{hdr}, frames...)...)
}

// reCRC recomputes a frame's CRC-32C the way a forger would (docs/format.md).
func reCRC(hdr, frame []byte) []byte {
	f := slices.Clone(frame)
	c := crc32.Update(0, crc32.MakeTable(crc32.Castagnoli), hdr[len(hdr)-4:])
	c = crc32.Update(c, crc32.MakeTable(crc32.Castagnoli), f[:12])
	c = crc32.Update(c, crc32.MakeTable(crc32.Castagnoli), f[16:])
	binary.BigEndian.PutUint32(f[12:16], c)
	return f
}

func reHeaderCRC(hdr []byte) []byte {
	h := slices.Clone(hdr)
	binary.BigEndian.PutUint32(h[len(h)-4:], crc32.Checksum(h[:len(h)-4], crc32.MakeTable(crc32.Castagnoli)))
	return h
}

func flip(b []byte, i int) []byte { b = slices.Clone(b); b[i] ^= 0x40; return b }

type damage struct {
	name    string
	give    func(hdr []byte, f [][]byte) []byte
	want    error
	msg     string
	scanToo bool // Scan, which has no key, must see it too
}

// accidents are damage without intent: both encryption modes must catch
// each, and Scan too.
var accidents = []damage{
	{"empty object", func(h []byte, f [][]byte) []byte { return nil }, format.ErrFormat, "empty object", true},
	{"not an object", func(h []byte, f [][]byte) []byte { return []byte("-- MariaDB dump 10.19\n") }, format.ErrFormat, "bad magic", true},
	{"flipped magic", func(h []byte, f [][]byte) []byte { return join(flip(h, 1), f...) }, format.ErrFormat, "bad magic", true},
	{"flipped version", func(h []byte, f [][]byte) []byte { return join(flip(h, 8), f...) }, format.ErrVersion, "format version 65", true},
	{"flipped backup id", func(h []byte, f [][]byte) []byte { return join(flip(h, 33), f...) }, format.ErrCorrupt, "header: checksum mismatch", true},
	{"flipped header tail", func(h []byte, f [][]byte) []byte { return join(flip(h, len(h)-10), f...) }, format.ErrCorrupt, "header: checksum mismatch", true},
	{"cut inside header", func(h []byte, f [][]byte) []byte { return h[:20] }, format.ErrTruncated, "inside the header", true},
	{"cut after header", func(h []byte, f [][]byte) []byte { return h }, format.ErrTruncated, "without any frame", true},
	{"flipped frame body", func(h []byte, f [][]byte) []byte {
		return join(h, f[0], f[1], f[2], flip(f[3], 40), f[4], f[5])
	}, format.ErrCorrupt, "frame 3: checksum mismatch", true},
	{"flipped frame index", func(h []byte, f [][]byte) []byte {
		return join(h, f[0], f[1], f[2], flip(f[3], 7), f[4], f[5])
	}, format.ErrCorrupt, "frame 3: checksum mismatch", true},
	{"flipped frame length", func(h []byte, f [][]byte) []byte {
		return join(h, f[0], f[1], f[2], flip(f[3], 0), f[4], f[5])
	}, format.ErrCorrupt, "frame 3: body length", true},
	{"dropped frame", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[3], f[4], f[5]) },
		format.ErrCorrupt, "frame 2: found frame 3 in its place (dropped", true},
	{"swapped frames", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[2], f[1], f[3], f[4], f[5]) },
		format.ErrCorrupt, "frame 1: found frame 2", true},
	{"duplicated frame", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2], f[2], f[3], f[4], f[5]) },
		format.ErrCorrupt, "frame 3: found frame 2 in its place (duplicated", true},
	{"duplicated final frame", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2], f[3], f[4], f[5], f[5]) },
		format.ErrCorrupt, "data follows the final frame 5", true},
	{"cut before final frame", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2], f[3], f[4]) },
		format.ErrTruncated, "object ends after frame 4 without the final frame", true},
	{"cut after first frame", func(h []byte, f [][]byte) []byte { return join(h, f[0]) },
		format.ErrTruncated, "object ends after frame 0 without the final frame", true},
	{"cut inside frame header", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2][:9]) },
		format.ErrTruncated, "frame 2: object ends inside the frame header", true},
	{"cut inside frame body", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2][:30]) },
		format.ErrTruncated, "frame 2: object ends inside the frame body", true},
	{"cut inside final frame", func(h []byte, f [][]byte) []byte { return join(h, f[0], f[1], f[2], f[3], f[4], f[5][:len(f[5])-1]) },
		format.ErrTruncated, "frame 5: object ends inside the frame body", true},
}

// forgeries are deliberate: the forger fixes every CRC. Only encryption
// catches them, at the frame that was touched.
var forgeries = []damage{
	{"reordered with fixed indexes", func(h []byte, f [][]byte) []byte {
		a, b := slices.Clone(f[2]), slices.Clone(f[1])
		binary.BigEndian.PutUint32(a[4:8], 1)
		binary.BigEndian.PutUint32(b[4:8], 2)
		return join(h, f[0], reCRC(h, a), reCRC(h, b), f[3], f[4], f[5])
	}, format.ErrCorrupt, "frame 1: authentication failed (tampered, reordered or wrong key)", false},
	{"flipped body with fixed CRC", func(h []byte, f [][]byte) []byte {
		return join(h, f[0], f[1], f[2], reCRC(h, flip(f[3], 40)), f[4], f[5])
	}, format.ErrCorrupt, "frame 3: authentication failed", false},
	{"truncated with a forged final flag", func(h []byte, f [][]byte) []byte {
		g := slices.Clone(f[4])
		g[8] = 1
		return join(h, f[0], f[1], f[2], f[3], reCRC(h, g))
	}, format.ErrCorrupt, "frame 4: authentication failed", false},
	{"header field changed with fixed CRCs", func(h []byte, f [][]byte) []byte {
		h2 := reHeaderCRC(flip(h, 33)) // a byte of the backup id
		fixed := make([][]byte, len(f))
		for i := range f {
			fixed[i] = reCRC(h2, f[i])
		}
		return join(h2, fixed...)
	}, format.ErrCorrupt, "frame 0: authentication failed", false},
}

func checkDamage(t *testing.T, obj []byte, keys format.Keys, tests []damage) {
	t.Helper()
	hdr, frames := layout(t, obj)
	if len(frames) != 6 {
		t.Fatalf("fixture has %d frames, want 6", len(frames))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := tt.give(hdr, frames)
			_, _, err := open(bad, keys)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("read: %v; want %v mentioning %q", err, tt.want, tt.msg)
			}
			_, err = format.Scan(bytes.NewReader(bad))
			switch {
			case tt.scanToo && (!errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg)):
				t.Errorf("scan: %v; want %v mentioning %q", err, tt.want, tt.msg)
			case !tt.scanToo && err != nil:
				t.Errorf("scan: %v; a forgery with valid CRCs passes a keyless scan", err)
			}
		})
	}
}

func TestDamageEncrypted(t *testing.T) {
	data := gen(5, 5500)
	obj := seal(t, "01JTAMPER", format.Options{Compression: "zstd", Recipients: []string{identity(t).Recipient().String()}, ChunkSize: 1000}, data)
	keys := format.Keys{Identities: []age.Identity{identity(t)}}
	checkDamage(t, obj, keys, accidents)
	checkDamage(t, obj, keys, forgeries)
}

func TestDamagePlain(t *testing.T) {
	data := gen(5, 5500)
	obj := seal(t, "01JTAMPER", format.Options{Compression: "snappy", Encryption: "none", ChunkSize: 1000}, data)
	checkDamage(t, obj, format.Keys{}, accidents)
}

// TestFrameFromAnotherObject: a frame of another backup fails its CRC even
// without encryption, since frame CRCs chain from the header's.
func TestFrameFromAnotherObject(t *testing.T) {
	o := format.Options{Compression: "none", Encryption: "none", ChunkSize: 1000}
	data := gen(5, 5500)
	h1, f1 := layout(t, seal(t, "01JFIRST", o, data))
	_, f2 := layout(t, seal(t, "01JSECOND", o, data))
	_, _, err := open(join(h1, f1[0], f2[1], f1[2], f1[3], f1[4], f1[5]), format.Keys{})
	if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), "frame 1: checksum mismatch") {
		t.Fatalf("read: %v", err)
	}
}

func TestWrongKeys(t *testing.T) {
	other, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	data := gen(1, 3000)
	byRecipient := seal(t, "01JKEYS", format.Options{Recipients: []string{identity(t).Recipient().String()}, ChunkSize: 1000}, data)
	byPassphrase := seal(t, "01JKEYS", format.Options{Passphrase: testPass, ScryptWorkFactor: 10, ChunkSize: 1000}, data)
	hard := seal(t, "01JKEYS", format.Options{Passphrase: testPass, ScryptWorkFactor: 12, ChunkSize: 1000}, data)
	tests := []struct {
		name string
		obj  []byte
		keys format.Keys
		msg  string
	}{
		{"other identity", byRecipient, format.Keys{Identities: []age.Identity{other}}, "no identity opens the data key"},
		{"no identity", byRecipient, format.Keys{Passphrase: testPass}, "no identity was given"},
		{"wrong passphrase", byPassphrase, format.Keys{Passphrase: "Tr0ub4dor&3"}, "passphrase does not open the data key"},
		{"no passphrase", byPassphrase, format.Keys{Identities: []age.Identity{identity(t)}}, "none was given"},
		{"work factor above the cap", hard, format.Keys{Passphrase: testPass, MaxScryptWorkFactor: 11}, "scrypt work factor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := format.NewReader(bytes.NewReader(tt.obj), tt.keys)
			if !errors.Is(err, format.ErrWrongKey) && !errors.Is(err, format.ErrFormat) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewReader: %v; want the key error mentioning %q", err, tt.msg)
			}
		})
	}
	// and the right keys still work, with a second, unrelated identity first
	got, _, err := open(byRecipient, format.Keys{Identities: []age.Identity{other, identity(t)}})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open with the right identity: %v", err)
	}
}

// TestReaderErrorSticks: after a failure, Read keeps failing the same way
// and never yields bytes of the bad frame, with every reader.
func TestReaderErrorSticks(t *testing.T) {
	data := gen(2, 5500)
	obj := seal(t, "01JSTICKY", format.Options{Compression: "none", Encryption: "none", ChunkSize: 1000}, data)
	h, f := layout(t, obj)
	for _, m := range readModes {
		t.Run(m.name, func(t *testing.T) {
			r, err := format.NewReaderWith(bytes.NewReader(join(h, f[0], flip(f[1], 30))), format.Keys{}, m.o)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if !errors.Is(err, format.ErrCorrupt) || !bytes.Equal(got, data[:1000]) {
				t.Fatalf("first read: %d bytes, %v", len(got), err)
			}
			if n, err2 := r.Read(make([]byte, 10)); n != 0 || err2 != err {
				t.Fatalf("second read: %d, %v", n, err2)
			}
		})
	}
}
