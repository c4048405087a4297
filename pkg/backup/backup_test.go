package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
)

// put stores a real (unencrypted) backup of plan with the verify status
// given, created at minute min.
func put(t *testing.T, st storage.Storage, plan, id string, min int, status string) {
	t.Helper()
	ctx := context.Background()
	s, err := format.NewSealer(id, format.Options{Compression: "none", Encryption: "none", ChunkSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("backup " + id)
	var buf bytes.Buffer
	w := format.NewWriter(&buf, s, 1)
	_, _ = w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	key := format.ObjectKey(plan, id)
	if _, err := st.Put(ctx, key, bytes.NewReader(buf.Bytes()), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	at := time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)
	m := format.Manifest{
		FormatVersion: format.Version, BackupID: id, Plan: plan, RunID: id, Trigger: "cli",
		Created: at, Started: at, Finished: at.Add(time.Second), Source: format.Source{Type: "command"},
		Chain: s.Chain(), ChunkSize: s.ChunkSize(), KeyWrap: s.KeyWrap(),
		Bytes: int64(len(data)), StoredBytes: int64(buf.Len()), Frames: 1,
		PlaintextSHA256: sum(data), StoredSHA256: sum(buf.Bytes()), ObjectKey: key,
		Verify: format.VerifyResult{Status: status},
	}
	switch status {
	case format.VerifyVerified:
		m.Verify.Mode, m.Verify.At = format.VerifyModeFull, at.Add(time.Minute)
	case format.VerifyFailed:
		m.Verify.Mode, m.Verify.At, m.Verify.Error = format.VerifyModeFull, at.Add(time.Minute), "run failed in hook: hook:db/unlock: exit status 1"
	}
	if err := backup.SaveManifest(ctx, st, m); err != nil {
		t.Fatal(err)
	}
}

// TestFailedBackupsAreNeverTakenForGoodOnes: a backup whose run failed
// after its object was complete is refused by id, never "latest", and
// still found by FindFailed.
func TestFailedBackupsAreNeverTakenForGoodOnes(t *testing.T) {
	ctx := context.Background()
	st, err := filesystem.New(ctx, filesystem.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	put(t, st, "p", "01AAAAAAAAAAAAAAAAAAAAAAAA", 1, format.VerifyVerified)
	put(t, st, "p", "01BBBBBBBBBBBBBBBBBBBBBBBB", 2, format.VerifyFailed)
	put(t, st, "q", "01CCCCCCCCCCCCCCCCCCCCCCCC", 3, format.VerifyFailed)
	tests := []struct {
		ref     string
		want    string
		wantErr error
	}{
		{"p/latest", "01AAAAAAAAAAAAAAAAAAAAAAAA", nil},
		{"p/01AAAAAAAAAAAAAAAAAAAAAAAA", "01AAAAAAAAAAAAAAAAAAAAAAAA", nil},
		{"p/01BBBBBBBBBBBBBBBBBBBBBBBB", "", backup.ErrFailed},
		{"01BBBBBBBBBBBBBBBBBBBBBBBB", "", backup.ErrFailed},
		{"q/latest", "", backup.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			m, err := backup.Find(ctx, st, tt.ref)
			if !errors.Is(err, tt.wantErr) || m.BackupID != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", m.BackupID, err, tt.want, tt.wantErr)
			}
		})
	}
	if m, err := backup.FindFailed(ctx, st, "p/01BBBBBBBBBBBBBBBBBBBBBBBB"); err != nil || !backup.Failed(m) {
		t.Errorf("FindFailed: %+v %v", m.Verify, err)
	}
	if _, err := backup.FindFailed(ctx, st, "q/latest"); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("FindFailed q/latest: %v, want not found", err)
	}
}

func TestCanOpen(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	pass := format.Keys{Passphrase: "p"}
	ids := format.Keys{Identities: []age.Identity{id}}
	tests := []struct {
		name   string
		scheme string
		keys   format.Keys
		want   bool
	}{
		{"none needs nothing", format.SchemeNone, format.Keys{}, true},
		{"x25519 with an identity", format.SchemeAgeX25519, ids, true},
		{"x25519 with a passphrase", format.SchemeAgeX25519, pass, false},
		{"scrypt with a passphrase", format.SchemeAgeScrypt, pass, true},
		{"scrypt with an identity", format.SchemeAgeScrypt, ids, false},
		{"keyring with a passphrase", format.SchemeAgeKeyring, pass, true},
		{"keyring with an identity", format.SchemeAgeKeyring, ids, true},
		{"keyring with nothing", format.SchemeAgeKeyring, format.Keys{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := format.Manifest{KeyWrap: format.KeyWrap{Scheme: tt.scheme}}
			if got := backup.CanOpen(m, tt.keys); got != tt.want {
				t.Fatalf("CanOpen(%s, %+v) = %v, want %v", tt.scheme, tt.keys, got, tt.want)
			}
		})
	}
}

// TestUpdateManifestLosesNoChange: writers changing one manifest at the
// same time (each its own field, as verify, scrub and retention do) all
// find their change in it afterwards, and the object's tags (retention's
// label, which lifecycle rules expire it by) survive every write.
func TestUpdateManifestLosesNoChange(t *testing.T) {
	ctx := context.Background()
	st, err := filesystem.New(ctx, filesystem.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	id := "01HX0000000000000000000001"
	put(t, st, "p", id, 0, format.VerifyPending)
	key := format.ManifestKey("p", id)
	if err := st.(storage.Tagger).SetTags(ctx, key, map[string]string{"cycle": "daily"}); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var g errgroup.Group
	for i := range writers {
		g.Go(func() error {
			_, err := backup.UpdateManifest(ctx, st, key, func(m *format.Manifest) (bool, error) {
				if m.Tags == nil {
					m.Tags = map[string]string{}
				}
				m.Tags[fmt.Sprint("writer", i)] = "was here"
				return true, nil
			})
			return err
		})
	}
	g.Go(func() error {
		_, err := backup.UpdateManifest(ctx, st, key, func(m *format.Manifest) (bool, error) {
			m.Verify = format.VerifyResult{Status: format.VerifyVerified, Mode: format.VerifyModeFull, At: time.Now().UTC()}
			return true, nil
		})
		return err
	})
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	m, err := backup.LoadManifest(ctx, st, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Tags) != writers || m.Verify.Status != format.VerifyVerified {
		t.Errorf("manifest after %d concurrent writers: tags %v, verify %q; a change was lost", writers+1, m.Tags, m.Verify.Status)
	}
	if tags, err := st.(storage.Tagger).GetTags(ctx, key); err != nil || tags["cycle"] != "daily" {
		t.Errorf("the manifest's object tags after updates: %v %v, want cycle=daily kept", tags, err)
	}
}

func TestUpdateManifestRefuses(t *testing.T) {
	ctx := context.Background()
	st, err := filesystem.New(ctx, filesystem.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	id := "01HX0000000000000000000002"
	put(t, st, "p", id, 0, format.VerifyPending)
	key := format.ManifestKey("p", id)
	_, before, err := st.ReadVersion(ctx, key, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.UpdateManifest(ctx, st, key, func(*format.Manifest) (bool, error) { return false, nil }); err != nil {
		t.Errorf("no change: %v", err)
	}
	boom := errors.New("boom")
	if _, err := backup.UpdateManifest(ctx, st, key, func(*format.Manifest) (bool, error) { return true, boom }); !errors.Is(err, boom) {
		t.Errorf("a change that fails: %v, want its error", err)
	}
	if _, err := backup.UpdateManifest(ctx, st, key, func(m *format.Manifest) (bool, error) { m.BackupID = "other"; return true, nil }); err == nil {
		t.Error("a change that makes it another backup's manifest was written")
	}
	if _, after, err := st.ReadVersion(ctx, key, 1<<20); err != nil || after != before {
		t.Errorf("refused changes wrote the manifest: version %s → %s, %v", before, after, err)
	}
	if _, err := backup.UpdateManifest(ctx, st, format.ManifestKey("p", "01HX0000000000000000000003"), func(*format.Manifest) (bool, error) { return true, nil }); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("absent manifest: %v, want ErrNotFound", err)
	}
}
