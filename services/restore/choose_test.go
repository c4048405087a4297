package restore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/restore"
)

func man(id string, min int, status string) format.Manifest {
	return format.Manifest{BackupID: id, Plan: "p", Created: time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC), Verify: format.VerifyResult{Status: status}}
}

const (
	ok   = format.VerifyVerified
	pend = format.VerifyPending
	bad  = format.VerifyFailed
)

// names renders copies as dest:id for comparison.
func names(cs []restore.Copy) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Destination+":"+c.Manifest.BackupID)
	}
	return strings.Join(s, " ")
}

func TestCandidates(t *testing.T) {
	held := func(dests ...[]format.Manifest) []restore.Held {
		var out []restore.Held
		for i, ms := range dests {
			out = append(out, restore.Held{Destination: fmt.Sprintf("d%d", i+1), Manifests: ms})
		}
		return out
	}
	tests := []struct {
		name    string
		give    []restore.Held
		choice  restore.Choice
		want    string
		wantErr error
	}{
		{"latest in every destination, preference order",
			held([]format.Manifest{man("A", 1, ok), man("B", 2, ok)}, []format.Manifest{man("A", 1, ok), man("B", 2, ok)}),
			restore.Choice{ID: "latest"}, "d1:B d2:B", nil},
		{"latest verified in one destination only is still latest",
			held([]format.Manifest{man("A", 1, ok), man("B", 2, pend)}, []format.Manifest{man("A", 1, ok), man("B", 2, ok)}),
			restore.Choice{ID: "latest"}, "d2:B", nil},
		{"a newer backup verified nowhere is not latest",
			held([]format.Manifest{man("A", 1, ok), man("B", 2, bad)}, []format.Manifest{man("A", 1, ok), man("B", 2, pend)}),
			restore.Choice{ID: ""}, "d1:A d2:A", nil},
		{"latest held by the second destination alone",
			held(nil, []format.Manifest{man("A", 1, ok)}),
			restore.Choice{ID: "latest"}, "d2:A", nil},
		{"fallback older: every older verified backup, newest first, each in preference order",
			held([]format.Manifest{man("A", 1, ok), man("B", 2, ok), man("C", 3, ok)}, []format.Manifest{man("A", 1, ok), man("B", 2, pend), man("C", 3, ok)}),
			restore.Choice{ID: "latest", FallbackOlder: true}, "d1:C d2:C d1:B d1:A d2:A", nil},
		{"by id: a pending copy is taken, a failed one is not",
			held([]format.Manifest{man("A", 1, bad)}, []format.Manifest{man("A", 1, pend)}),
			restore.Choice{ID: "A"}, "d2:A", nil},
		{"by id with fallback older: only older backups follow",
			held([]format.Manifest{man("A", 1, ok), man("B", 2, ok), man("C", 3, ok)}),
			restore.Choice{ID: "B", FallbackOlder: true}, "d1:B d1:A", nil},
		{"by id, failed everywhere",
			held([]format.Manifest{man("A", 1, bad)}, []format.Manifest{man("A", 1, bad)}),
			restore.Choice{ID: "A"}, "", backup.ErrFailed},
		{"by id, failed everywhere, allowed",
			held([]format.Manifest{man("A", 1, bad)}, []format.Manifest{man("A", 1, bad)}),
			restore.Choice{ID: "A", AllowFailed: true}, "d1:A d2:A", nil},
		{"by id, held nowhere",
			held([]format.Manifest{man("A", 1, ok)}),
			restore.Choice{ID: "Z"}, "", backup.ErrNotFound},
		{"latest, nothing verified",
			held([]format.Manifest{man("A", 1, pend)}, []format.Manifest{man("A", 1, bad)}),
			restore.Choice{ID: "latest", FallbackOlder: true}, "", backup.ErrNotFound},
		{"a destination that could not be listed holds nothing",
			[]restore.Held{{Destination: "d1", Err: errors.New("down")}, {Destination: "d2", Manifests: []format.Manifest{man("A", 1, ok)}}},
			restore.Choice{ID: "latest"}, "d2:A", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := restore.Candidates(tt.give, tt.choice)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if names(got) != tt.want {
				t.Errorf("candidates %q, want %q", names(got), tt.want)
			}
		})
	}
}

func TestOrder(t *testing.T) {
	tests := []struct {
		name      string
		preferred string
		want      string
		wantErr   bool
	}{
		{"plan order", "", "a b c", false},
		{"preferred first, the others in plan order", "b", "b a c", false},
		{"unknown", "x", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := restore.Order([]string{"a", "b", "c"}, tt.preferred)
			if (err != nil) != tt.wantErr || strings.Join(got, " ") != tt.want {
				t.Errorf("Order: %v %v, want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestRetryOptions(t *testing.T) {
	plain := source.RestoreOptions{Target: "t"}
	cleaned := source.RestoreOptions{Target: "t", Clean: true}
	tests := []struct {
		name   string
		typ    string
		give   source.RestoreOptions
		want   source.RestoreOptions
		wantOK bool
	}{
		{"postgres with clean drops and makes the database again", "postgres", cleaned, cleaned, true},
		{"postgres without clean is not restartable", "postgres", plain, plain, false},
		{"mongodb without clean is not restartable", "mongodb", plain, plain, false},
		{"mongodb with clean drops the restored collections", "mongodb", cleaned, cleaned, true},
		{"mariadb dumps drop their tables themselves", "mariadb", plain, plain, true},
		{"redis wrote nothing", "redis", plain, plain, true},
		{"command runs restoreArgv again", "command", plain, plain, true},
		{"files without clean is not restartable", "files", plain, plain, false},
		{"files with clean is", "files", cleaned, cleaned, true},
		{"an unknown plugin is not", "other", plain, plain, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := restore.RetryOptions(tt.typ, tt.give)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("RetryOptions(%s, %+v) = %+v, %v; want %+v, %v", tt.typ, tt.give, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// putBackup stores a real unencrypted backup of data in st, verified,
// and returns its manifest.
func putBackup(t *testing.T, st storage.Storage, id string, min int, data []byte) format.Manifest {
	t.Helper()
	ctx := context.Background()
	s, err := format.NewSealer(id, format.Options{Compression: "none", Encryption: "none", ChunkSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := format.NewWriter(&buf, s, 1)
	_, _ = w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	key := format.ObjectKey("p", id)
	if _, err := st.Put(ctx, key, bytes.NewReader(buf.Bytes()), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	at := time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)
	m := format.Manifest{
		FormatVersion: format.Version, BackupID: id, Plan: "p", RunID: id, Trigger: "cli",
		Created: at, Started: at, Finished: at.Add(time.Second), Source: format.Source{Type: "command"},
		Chain: s.Chain(), ChunkSize: s.ChunkSize(), KeyWrap: s.KeyWrap(),
		Bytes: int64(len(data)), StoredBytes: int64(buf.Len()), Frames: 1,
		PlaintextSHA256: sum(data), StoredSHA256: sum(buf.Bytes()), ObjectKey: key,
		Verify: format.VerifyResult{Status: format.VerifyVerified, Mode: format.VerifyModeFull, At: at.Add(time.Minute)},
	}
	if err := backup.SaveManifest(ctx, st, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// flip flips one byte of the stored object of m, n bytes before its end
// (inside the last frame).
func flip(t *testing.T, st storage.Storage, m format.Manifest, n int) {
	t.Helper()
	ctx := context.Background()
	rc, err := st.Open(ctx, m.ObjectKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-n] ^= 0x40
	if _, err := st.Put(ctx, m.ObjectKey, bytes.NewReader(b), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestFallback reads real objects from two filesystem destinations: a
// copy that fails its checks mid-stream makes the restore start again
// from the next copy, telling the consumer it is a later attempt; a
// failing target ends it at once.
func TestFallback(t *testing.T) {
	ctx := context.Background()
	stores := map[string]string{"one": t.TempDir(), "two": t.TempDir()}
	open := func(ctx context.Context, d string) (storage.Storage, error) {
		return filesystem.New(ctx, filesystem.Config{Path: stores[d]})
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	var ms []format.Manifest
	for _, d := range []string{"one", "two"} {
		st, err := open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, putBackup(t, st, "01B", 2, data))
		if d == "one" {
			flip(t, st, ms[0], 40)
		}
		st.Close()
	}
	copies := []restore.Copy{{Destination: "one", Manifest: ms[0]}, {Destination: "two", Manifest: ms[1]}}

	var got bytes.Buffer
	var attempts []int
	used, stats, failed, err := restore.Fallback(ctx, open, copies, format.Keys{}, func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		attempts = append(attempts, attempt)
		got.Reset()
		_, err := io.Copy(&got, r)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if used.Destination != "two" || stats.Bytes != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("used %s, %d bytes, same data %v", used, stats.Bytes, bytes.Equal(got.Bytes(), data))
	}
	if len(failed) != 1 || failed[0].Copy.Destination != "one" || !errors.Is(failed[0].Err, restore.ErrCopyBad) || !errors.Is(failed[0].Err, format.ErrCorrupt) {
		t.Fatalf("failed attempts %+v, want one corrupt copy in one", failed)
	}
	if fmt.Sprint(attempts) != "[0 1]" {
		t.Errorf("attempts %v, want [0 1]", attempts)
	}

	// A target that fails is not the copy's fault: no second attempt.
	attempts = nil
	_, _, _, err = restore.Fallback(ctx, open, []restore.Copy{copies[1], copies[0]}, format.Keys{}, func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		attempts = append(attempts, attempt)
		return errors.New("disk full")
	})
	if err == nil || errors.Is(err, restore.ErrCopyBad) || len(attempts) != 1 {
		t.Errorf("failing target: %v after attempts %v, want one attempt and its error", err, attempts)
	}

	// Every copy bad: the error names each.
	_, _, failed, err = restore.Fallback(ctx, open, []restore.Copy{copies[0], copies[0]}, format.Keys{}, func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	})
	if err == nil || len(failed) != 2 || !strings.Contains(err.Error(), "every copy failed") || !strings.Contains(err.Error(), "destination one") {
		t.Errorf("every copy bad: %v (%d failed)", err, len(failed))
	}

	// A target that cannot be restored into again ends the fallback.
	cons := restore.IntoSource("files", nil, source.RestoreOptions{}, nil)
	if err := cons(ctx, 1, copies[1], bytes.NewReader(nil)); !errors.Is(err, restore.ErrNotRestartable) {
		t.Errorf("files retry without clean: %v", err)
	}
}

func formatKeys() format.Keys { return format.Keys{} }

// TestATargetIsTouchedOnlyOnceACopyYieldsACheckedByte: a copy whose first
// frame fails its checks fails before the consumer is called — a plugin
// restoring with clean would have dropped the database first, a loader
// reading a pipe would have taken an empty dump — and the next copy is
// read as the first attempt on the target; a backup that is empty still
// reaches the consumer, empty.
func TestATargetIsTouchedOnlyOnceACopyYieldsACheckedByte(t *testing.T) {
	ctx := context.Background()
	stores := map[string]string{"one": t.TempDir(), "two": t.TempDir()}
	open := func(ctx context.Context, d string) (storage.Storage, error) {
		return filesystem.New(ctx, filesystem.Config{Path: stores[d]})
	}
	put := func(id string, data []byte, spoil bool) []restore.Copy {
		t.Helper()
		var copies []restore.Copy
		for _, d := range []string{"one", "two"} {
			st, err := open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			m := putBackup(t, st, id, 2, data)
			if spoil && d == "one" {
				flip(t, st, m, 30) // inside its only frame
			}
			st.Close()
			copies = append(copies, restore.Copy{Destination: d, Manifest: m})
		}
		return copies
	}
	var calls []string
	consume := func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		calls = append(calls, fmt.Sprintf("%s:%d", c.Destination, attempt))
		_, err := io.Copy(io.Discard, r)
		return err
	}

	data := []byte("one frame of a dump, less than a chunk")
	used, _, failed, err := restore.Fallback(ctx, open, put("01C", data, true), format.Keys{}, consume)
	if err != nil || used.Destination != "two" {
		t.Fatalf("used %s: %v", used, err)
	}
	if len(failed) != 1 || !errors.Is(failed[0].Err, restore.ErrCopyBad) {
		t.Errorf("failed attempts %+v, want the bad copy in one", failed)
	}
	// Attempt 0: the target saw no copy before it, so a plugin restores
	// with the options it was given, not those of a retry.
	if fmt.Sprint(calls) != "[two:0]" {
		t.Errorf("the consumer was called for %v, want only for the good copy, as the first attempt [two:0]", calls)
	}

	calls = nil
	used, stats, _, err := restore.Fallback(ctx, open, put("01D", nil, false), format.Keys{}, consume)
	if err != nil || used.Destination != "one" || stats.Bytes != 0 || fmt.Sprint(calls) != "[one:0]" {
		t.Errorf("an empty backup: %v, used %s, %d bytes, consumer called for %v; want it called once, for one", err, used, stats.Bytes, calls)
	}
}
