package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"filippo.io/age"

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
