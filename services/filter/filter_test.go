package filter_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/filter"
	"github.com/backstream/backstream/services/restore"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
	"github.com/backstream/backstream/services/upload"
)

const kib = 1 << 10

// rig is one plan with a filesystem destination "local", its stages' deps
// and the age identity its backups are sealed for.
type rig struct {
	t        *testing.T
	d        *stage.Deps
	p        *plan.Plan
	dir      string
	identity *age.X25519Identity
}

func newRig(t *testing.T, chunkSize, frameSize string) *rig {
	t.Helper()
	return newRigEncrypted(t, chunkSize, frameSize, "")
}

// newRigEncrypted is newRig with the plan's encryption given as YAML
// ("" for the rig's identity's recipient).
func newRigEncrypted(t *testing.T, chunkSize, frameSize, encryption string) *rig {
	t.Helper()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if encryption == "" {
		encryption = fmt.Sprintf("{recipients: [%s]}", id.Recipient())
	}
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: framed}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  chunkSize: %s
  filters:
    compression: zstd
    frameSize: %s
    encryption: %s
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, chunkSize, frameSize, encryption, dir))
	return &rig{t: t, d: d, p: p, dir: dir, identity: id}
}

// dump publishes data on the run's raw stream as the snapshot stage does:
// a chunk as soon as it holds chunkSize bytes, the rest (maybe nothing) in
// the final chunk with the trailer.
func (r *rig) dump(ctx context.Context, id string, data []byte) error {
	w, err := r.d.Bus.NewChunkWriter(ctx, stage.DataKey(id), bus.KindRaw, []string{bus.RawReader}, r.d.DataFor(r.p))
	if err != nil {
		return err
	}
	cs := int(r.p.Spec.ChunkSize)
	rest := data
	for len(rest) >= cs {
		if err := w.Write(ctx, rest[:cs:cs]); err != nil {
			return err
		}
		rest = rest[cs:]
	}
	sum := sha256.Sum256(data)
	chunks := int64(len(data)/cs + 1)
	return w.Close(ctx, rest, bus.RawEnd{Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Chunks: chunks, Source: "command"}.Trailer())
}

// sealed is what the filter published on the sealed stream.
type sealed struct {
	object   []byte
	messages int
	largest  int
	meta     bus.SealedEnd
	done     events.FilterCompletedData
}

// seal runs the filter stage over data and reads the sealed stream as
// destination "local" would.
func (r *rig) seal(data []byte) sealed {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, e := stagetest.StartBackup(r.t, r.d, r.p)
	dumped := make(chan error, 1)
	go func() { dumped <- r.dump(ctx, id, data) }()
	type read struct {
		s   sealed
		err error
	}
	got := make(chan read, 1)
	go func() {
		var s sealed
		in, err := r.d.Bus.NewChunkReader(ctx, stage.DataKey(id), bus.KindSealed, "local", r.d.DataFor(r.p))
		if err != nil {
			got <- read{err: err}
			return
		}
		defer in.Close(ctx)
		for {
			c, err := in.Next(ctx)
			if err != nil {
				got <- read{err: err}
				return
			}
			s.object = append(s.object, c.Data...)
			s.messages++
			s.largest = max(s.largest, len(c.Data))
			if err := c.Ack(); err != nil {
				got <- read{err: err}
				return
			}
			if c.Final {
				var err error
				s.meta, err = bus.ParseSealedEnd(c.Trailer)
				got <- read{s: s, err: err}
				return
			}
		}
	}()
	out, err := filter.New(r.d).Consumers()[0].Handler(ctx, e)
	if err != nil {
		r.t.Fatalf("filter: %v", err)
	}
	if err := <-dumped; err != nil {
		r.t.Fatalf("dump: %v", err)
	}
	res := <-got
	if res.err != nil {
		r.t.Fatalf("read the sealed stream: %v", res.err)
	}
	if len(out) != 1 || out[0].Type() != events.FilterCompleted {
		r.t.Fatalf("filter returned %v, want one filter.completed", out)
	}
	if err := out[0].DataAs(&res.s.done); err != nil {
		r.t.Fatal(err)
	}
	return res.s
}

// open reads a sealed object back with the rig's identity.
func (r *rig) open(object []byte) ([]byte, format.ReadStats) {
	r.t.Helper()
	rd, err := format.NewReader(bytes.NewReader(object), format.Keys{Identities: []age.Identity{r.identity}})
	if err != nil {
		r.t.Fatal(err)
	}
	plain, err := io.ReadAll(rd)
	if err != nil {
		r.t.Fatalf("read the object: %v", err)
	}
	return plain, rd.Stats()
}

func gen(n int) []byte {
	b, err := io.ReadAll(datagen.New(int64(n), int64(n)))
	if err != nil {
		panic(err)
	}
	return b
}

// TestFramesHoldSeveralChunks: with 64 KiB chunks and 256 KiB frames, a
// dump that is a multiple of neither is sealed into frames of four chunks
// (the last one short), published in pieces no larger than a sealed chunk,
// and reads back byte for byte; the frame count and size reach the meta.
func TestFramesHoldSeveralChunks(t *testing.T) {
	tests := []struct {
		name       string
		size       int
		wantFrames uint64
	}{
		{"empty", 0, 1},
		{"one byte", 1, 1},
		{"less than a chunk", 64*kib - 1, 1},
		{"one chunk", 64 * kib, 1},
		{"neither a multiple of chunk nor frame", 5*256*kib + 3*64*kib + 1000, 6},
		// The last full frame is not known to be last until the stream
		// ends: an empty final frame follows it, as with chunks.
		{"a multiple of the frame", 3 * 256 * kib, 4},
		{"a multiple of the chunk only", 2*256*kib + 64*kib, 3},
	}
	r := newRig(t, "64KiB", "256KiB")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.t = t
			data := gen(tt.size)
			s := r.seal(data)
			plain, stats := r.open(s.object)
			if !bytes.Equal(plain, data) {
				t.Fatalf("read back %d bytes, sealed %d: not the same", len(plain), len(data))
			}
			if stats.Frames != tt.wantFrames || s.meta.Frames != tt.wantFrames || s.done.Frames != int64(tt.wantFrames) {
				t.Errorf("frames: object %d, meta %d, filter.completed %d; want %d", stats.Frames, s.meta.Frames, s.done.Frames, tt.wantFrames)
			}
			if s.meta.ChunkSize != 256*kib {
				t.Errorf("meta chunk size %d, want the frame size %d", s.meta.ChunkSize, 256*kib)
			}
			if limit := format.MaxFrameLen(64 * kib); s.largest > limit {
				t.Errorf("largest sealed message %d bytes, above a sealed chunk's %d", s.largest, limit)
			}
			if s.done.BytesOut != int64(len(s.object))-headerLen(t, s.object) {
				t.Errorf("filter.completed bytesOut %d for an object of %d bytes", s.done.BytesOut, len(s.object))
			}
		})
	}
}

// TestFrameOfOneChunkIsOneMessage: a frame size equal to the chunk size
// seals and publishes every chunk on its own, one message per frame.
func TestFrameOfOneChunkIsOneMessage(t *testing.T) {
	r := newRig(t, "64KiB", "64KiB")
	data := gen(10*64*kib + 17)
	s := r.seal(data)
	plain, stats := r.open(s.object)
	if !bytes.Equal(plain, data) {
		t.Fatal("read back other bytes")
	}
	// The header is a message of its own.
	if stats.Frames != 11 || s.messages != 12 {
		t.Errorf("%d frames in %d messages, want 11 in 12", stats.Frames, s.messages)
	}
}

// headerLen is the length of an object's header.
func headerLen(t *testing.T, object []byte) int64 {
	t.Helper()
	_, raw, err := format.ReadHeader(bytes.NewReader(object))
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(raw))
}

// TestFramedBackupRestores: 256 KiB chunks in 1 MiB frames through the
// filter and upload stages into a filesystem destination; the manifest
// counts the frames, and a restore from the storage alone gives the dump
// back byte for byte.
func TestFramedBackupRestores(t *testing.T) {
	r := newRig(t, "256KiB", "1MiB")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := gen(9*1024*kib + 3*256*kib + 12345)
	id := r.backup(ctx, data)
	st, err := filesystem.New(ctx, filesystem.Config{Path: r.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := backup.Find(ctx, st, r.p.Name()+"/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Frames != 10 || m.ChunkSize != 1024*kib || m.Bytes != int64(len(data)) {
		t.Errorf("manifest: %d frames of %d bytes, %d bytes; want 10 of %d, %d", m.Frames, m.ChunkSize, m.Bytes, 1024*kib, len(data))
	}
	var out bytes.Buffer
	stats, err := restore.Stream(ctx, st, m, format.Keys{Identities: []age.Identity{r.identity}}, func(rd io.Reader) error {
		_, err := io.Copy(&out, rd)
		return err
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if !bytes.Equal(out.Bytes(), data) || stats.Frames != 10 {
		t.Errorf("restored %d bytes in %d frames: not the %d bytes dumped", out.Len(), stats.Frames, len(data))
	}
}

// TestFrameLargerThanTheWindow: 8 MiB frames of 64 KiB chunks hold twice
// the chunks the raw stream's window lets the snapshot run ahead by (64 at
// the default 8 MiB, i.e. 4 MiB of them). A frame keeps no window tokens
// (its chunks are acked as they are gathered), so it fills, and the object
// reads back in whole frames; were the chunks held until the frame is
// published, the snapshot would stop at the window and the run would hang.
func TestFrameLargerThanTheWindow(t *testing.T) {
	r := newRig(t, "64KiB", "8MiB")
	if w := r.d.DataFor(r.p).Window; w != 64 {
		t.Fatalf("raw window %d chunks, this test assumes 64", w)
	}
	data := gen(9*1024*kib + 99)
	s := r.seal(data)
	plain, stats := r.open(s.object)
	if !bytes.Equal(plain, data) {
		t.Fatal("read back other bytes")
	}
	if stats.Frames != 2 || s.meta.ChunkSize != 8*1024*kib {
		t.Errorf("%d frames, header's frame size %d; want 2 (8 MiB, the rest) of at most 8 MiB", stats.Frames, s.meta.ChunkSize)
	}
}

// TestPassphraseSealsWithThePlanKeyring: a plan encrypted with a passphrase
// seals every backup with the plan's keyring (scheme age-keyring, no scrypt
// per backup): two backups share its recipient, each restores from the
// storage with the passphrase alone, and a changed passphrase brings a new
// keyring while the backups before keep opening with the old one.
func TestPassphraseSealsWithThePlanKeyring(t *testing.T) {
	const env = "BS_FILTER_TEST_PASSPHRASE"
	t.Setenv(env, "correct horse battery staple")
	r := newRigEncrypted(t, "64KiB", "256KiB", "{type: aes-256-gcm, passphrase: {env: "+env+"}}")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	header := func(object []byte) format.HeaderInfo {
		t.Helper()
		h, _, err := format.ReadHeader(bytes.NewReader(object))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	first, second := gen(300*kib+5), gen(70*kib)
	a, id := r.seal(first), r.backup(ctx, second)
	st, err := filesystem.New(ctx, filesystem.Config{Path: r.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := backup.Find(ctx, st, r.p.Name()+"/"+id)
	if err != nil {
		t.Fatal(err)
	}
	ha := header(a.object)
	if ha.KeyWrap.Scheme != format.SchemeAgeKeyring || m.KeyWrap.Scheme != format.SchemeAgeKeyring || a.meta.KeyWrap.Scheme != format.SchemeAgeKeyring {
		t.Fatalf("schemes: object %s, manifest %s, meta %s; want %s", ha.KeyWrap.Scheme, m.KeyWrap.Scheme, a.meta.KeyWrap.Scheme, format.SchemeAgeKeyring)
	}
	if len(m.KeyWrap.Recipients) != 1 || m.KeyWrap.Recipients[0] != ha.KeyWrap.Recipients[0] || !bytes.Equal(m.KeyWrap.Keyring, ha.KeyWrap.Keyring) {
		t.Fatalf("two backups of one plan: keyrings %q and %q, want one", ha.KeyWrap.Recipients, m.KeyWrap.Recipients)
	}
	e, err := r.d.Bus.Keyrings.Get(ctx, r.p.Name())
	if err != nil || !bytes.Contains(e.Value(), []byte(ha.KeyWrap.Recipients[0])) {
		t.Fatalf("the keyrings bucket holds %s (%v), the objects %s", e.Value(), err, ha.KeyWrap.Recipients[0])
	}
	pass := format.Keys{Passphrase: "correct horse battery staple"}
	if plain, err := readAll(a.object, pass); err != nil || !bytes.Equal(plain, first) {
		t.Fatalf("the first backup with the passphrase: %v", err)
	}
	var out bytes.Buffer
	if _, err := restore.Stream(ctx, st, m, pass, func(rd io.Reader) error {
		_, err := io.Copy(&out, rd)
		return err
	}); err != nil || !bytes.Equal(out.Bytes(), second) {
		t.Fatalf("restore of the second backup from the storage with the passphrase: %v", err)
	}
	if _, err := readAll(a.object, format.Keys{Passphrase: "not the passphrase"}); !errors.Is(err, format.ErrWrongKey) {
		t.Fatalf("a wrong passphrase: %v", err)
	}

	t.Setenv(env, "a new passphrase")
	c := r.seal(first)
	hc := header(c.object)
	if hc.KeyWrap.Scheme != format.SchemeAgeKeyring || hc.KeyWrap.Recipients[0] == ha.KeyWrap.Recipients[0] {
		t.Fatalf("after the passphrase changed: keyring %q, before %q; want a new one", hc.KeyWrap.Recipients, ha.KeyWrap.Recipients)
	}
	if plain, err := readAll(c.object, format.Keys{Passphrase: "a new passphrase"}); err != nil || !bytes.Equal(plain, first) {
		t.Fatalf("the new backup with the new passphrase: %v", err)
	}
	if plain, err := readAll(a.object, pass); err != nil || !bytes.Equal(plain, first) {
		t.Fatalf("the old backup with the old passphrase: %v", err)
	}
}

// backup runs filter and upload over data into the rig's destination and
// returns the run id.
func (r *rig) backup(ctx context.Context, data []byte) string {
	r.t.Helper()
	id, e := stagetest.StartBackup(r.t, r.d, r.p)
	dumped := make(chan error, 1)
	go func() { dumped <- r.dump(ctx, id, data) }()
	uploaded := make(chan error, 1)
	go func() {
		_, err := upload.New(r.d).Consumers()[0].Handler(ctx, e)
		uploaded <- err
	}()
	if _, err := filter.New(r.d).Consumers()[0].Handler(ctx, e); err != nil {
		r.t.Fatalf("filter: %v", err)
	}
	if err := <-dumped; err != nil {
		r.t.Fatalf("dump: %v", err)
	}
	if err := <-uploaded; err != nil {
		r.t.Fatalf("upload: %v", err)
	}
	return id
}

// readAll reads a sealed object back with keys.
func readAll(object []byte, keys format.Keys) ([]byte, error) {
	rd, err := format.NewReader(bytes.NewReader(object), keys)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(rd)
}

// TestRecipientsFileSealsForEveryRecipient: a plan naming an age
// recipients file (a comment, a blank line, the rig's recipient and a
// second one) seals each backup for both; either identity opens it.
func TestRecipientsFileSealsForEveryRecipient(t *testing.T) {
	other, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "recipients.txt")
	r := newRigEncrypted(t, "64KiB", "256KiB", "{recipientsFile: "+file+"}")
	text := "# the backup keys of the ops team\n\n" + r.identity.Recipient().String() + "\n" + other.Recipient().String() + "\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	data := gen(200*kib + 7)
	s := r.seal(data)
	want := []string{r.identity.Recipient().String(), other.Recipient().String()}
	if !slices.Equal(s.meta.KeyWrap.Recipients, want) {
		t.Fatalf("sealed for %q, want %q", s.meta.KeyWrap.Recipients, want)
	}
	for _, id := range []*age.X25519Identity{r.identity, other} {
		if plain, err := readAll(s.object, format.Keys{Identities: []age.Identity{id}}); err != nil || !bytes.Equal(plain, data) {
			t.Fatalf("open with %s: %v", id.Recipient(), err)
		}
	}
}

// TestBadRecipientsFileFailsTheRun: a recipients file whose line is not a
// recipient fails the run in filter, with the file and the line in the
// reason, before anything is sealed.
func TestBadRecipientsFileFailsTheRun(t *testing.T) {
	file := filepath.Join(t.TempDir(), "recipients.txt")
	r := newRigEncrypted(t, "64KiB", "256KiB", "{recipientsFile: "+file+"}")
	if err := os.WriteFile(file, []byte(r.identity.Recipient().String()+"\nssh-ed25519 AAAA not-age\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, e := stagetest.StartBackup(t, r.d, r.p)
	if _, err := filter.New(r.d).Consumers()[0].Handler(ctx, e); err != nil {
		t.Fatalf("filter: %v", err)
	}
	run, err := r.d.Runs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if run.Phase != runs.Failed || run.FailedStage != "filter" || !strings.Contains(run.Error, file+" line 2") || !strings.Contains(run.Error, "recipientsFile") {
		t.Fatalf("run %s in stage %q: %q; want failed in filter, naming %s line 2", run.Phase, run.FailedStage, run.Error, file)
	}
}
