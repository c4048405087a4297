package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
)

// corrupt flips one byte in the middle of the stored object of backup id
// of plan in st: inside a frame, so the restore fails that frame's
// authentication after the frames before it reached the target.
func corrupt(t *testing.T, st storage.Storage, planName, id string) {
	t.Helper()
	ctx := context.Background()
	m, err := backup.Find(ctx, st, planName+"/"+id)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := st.Open(ctx, m.ObjectKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if _, err := st.Put(ctx, m.ObjectKey, bytes.NewReader(b), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreFallsBackToAGoodCopy: a plan writes its backups to MinIO and
// to a filesystem; the MinIO copy of the newest backup is corrupted inside
// a frame. A restore that prefers MinIO — offline with the CLI from the
// plan file, and inside the platform from a restore request — fails that
// copy mid-stream, starts again from the filesystem copy, restores the
// same bytes and names the copy it used. With both copies of the newest
// backup corrupted, a restore fails (naming both) unless it may fall back
// to older backups, when it restores the previous one and says so.
func TestRestoreFallsBackToAGoodCopy(t *testing.T) {
	keys := newKeyring(t)
	m := testenv.MinIO(t)
	bucket := m.NewBucket(t, "fallback")
	t.Setenv("BS_FB_S3_ACCESS", m.AccessKey)
	t.Setenv("BS_FB_S3_SECRET", m.SecretKey)
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.IdentityFile = keys.idFile }})
	dir := t.TempDir()
	fsDir := filepath.Join(dir, "backups")
	src := filepath.Join(dir, "source.bin")
	target := filepath.Join(dir, "restored-in-platform.bin")
	source := fmt.Sprintf("type: command\ncommand: {argv: [cat, %q], restoreArgv: [sh, -c, 'cat > %s']}", src, target)
	// Frames of one chunk, so that the corruption in the middle of an
	// object is in a later frame: the copy reaches the target and fails
	// mid-stream (one bad from its first frame never reaches it:
	// TestATargetIsTouchedOnlyOnceACopyYieldsACheckedByte).
	enc := fmt.Sprintf("frameSize: 64KiB\nencryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient())
	dests := fmt.Sprintf(`- name: minio
  type: s3
  s3: {endpoint: %s, bucket: %s, insecure: true, accessKey: {env: BS_FB_S3_ACCESS}, secretKey: {env: BS_FB_S3_SECRET}}
- name: local
  type: filesystem
  filesystem: {path: %s}`, m.Endpoint, bucket, fsDir)
	planText := plan("fallback", source, "zstd", enc, dests, "")
	planFile := filepath.Join(dir, "fallback.yaml")
	if err := os.WriteFile(planFile, []byte(planText), 0o600); err != nil {
		t.Fatal(err)
	}
	env.Apply(planText)

	// Two backups of different data: old, then new.
	backupOf := func(seed byte) ([]byte, string) {
		data := make([]byte, 9*chunk+123)
		for i := range data {
			data[i] = byte(i*31) ^ seed
		}
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		id := env.Trigger("fallback")
		if r := env.Wait(id, time.Minute); r.Phase != runs.Succeeded {
			t.Fatalf("backup %s: %s (%s)", id, r.Phase, r.Error)
		}
		return data, id
	}
	oldData, oldID := backupOf(1)
	newData, newID := backupOf(2)

	ctx := context.Background()
	fs, err := filesystem.New(ctx, filesystem.Config{Path: fsDir})
	if err != nil {
		t.Fatal(err)
	}
	s3st, err := s3.New(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: bucket, Insecure: true,
		AccessKey: secret.Ref{Env: "BS_FB_S3_ACCESS"}, SecretKey: secret.Ref{Env: "BS_FB_S3_SECRET"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]storage.Storage{"local": fs, "minio": s3st} {
		if m, err := backup.Find(ctx, st, "fallback/latest"); err != nil || m.BackupID != newID || m.Verify.Status != format.VerifyVerified {
			t.Fatalf("%s: latest %q %s (%v), want %s verified", name, m.BackupID, m.Verify.Status, err, newID)
		}
	}
	corrupt(t, s3st, "fallback", newID)

	cli := func(t *testing.T, extra ...string) (string, int, []byte) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "restored.bin")
		args := append([]string{"restore", "fallback/latest", "--plan-file", planFile, "--identity", keys.idFile, "--to", out}, extra...)
		text, code := harness.Run(t, dir, nil, args...)
		got, _ := os.ReadFile(out)
		return text, code, got
	}
	request := func(t *testing.T, fallbackOlder bool) *runs.Run {
		t.Helper()
		if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		id, err := requestRestore(env, "fallback", events.RestoreRequestedData{BackupID: "latest", Destination: "minio", FallbackOlder: fallbackOlder})
		if err != nil {
			t.Fatal(err)
		}
		return env.Wait(id, time.Minute)
	}
	same := func(t *testing.T, what string, got, want []byte) {
		t.Helper()
		if sha256.Sum256(got) != sha256.Sum256(want) || len(got) != len(want) {
			t.Errorf("%s: %d bytes restored, not the %d bytes backed up", what, len(got), len(want))
		}
	}

	t.Run("cli falls back to the filesystem copy", func(t *testing.T) {
		text, code, got := cli(t)
		if code != 0 {
			t.Fatalf("restore exit %d:\n%s", code, text)
		}
		same(t, "cli", got, newData)
		for _, want := range []string{
			"copy failed: backup " + newID + " of plan fallback from destination minio",
			"restored backup " + newID + " of plan fallback from destination local",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("output lacks %q:\n%s", want, text)
			}
		}
	})
	t.Run("platform falls back to the filesystem copy", func(t *testing.T) {
		r := request(t, false)
		if r.Phase != runs.Succeeded || r.BackupID != newID || r.RestoredFrom != "local" {
			t.Fatalf("restore run: %s backup %s from %q (%s), want Succeeded %s from local", r.Phase, r.BackupID, r.RestoredFrom, r.Error, newID)
		}
		got, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		same(t, "platform", got, newData)
		var started []string
		for _, e := range env.Events(r.ID) {
			var d events.RestoreStartedData
			if e.Type() == events.RestoreStarted && e.DataAs(&d) == nil {
				started = append(started, d.Destination+":"+d.BackupID)
			}
		}
		if want := []string{"minio:" + newID, "local:" + newID}; strings.Join(started, " ") != strings.Join(want, " ") {
			t.Errorf("restore.started %v, want %v", started, want)
		}
	})

	// Both copies of the newest backup bad.
	corrupt(t, fs, "fallback", newID)
	t.Run("cli without fallback-older fails naming both copies", func(t *testing.T) {
		text, code, got := cli(t)
		if code == 0 || got != nil {
			t.Fatalf("restore exit %d, %d bytes written:\n%s", code, len(got), text)
		}
		for _, want := range []string{"every copy failed", "destination minio", "destination local"} {
			if !strings.Contains(text, want) {
				t.Errorf("output lacks %q:\n%s", want, text)
			}
		}
	})
	t.Run("cli with fallback-older restores the previous backup", func(t *testing.T) {
		text, code, got := cli(t, "--fallback-older")
		if code != 0 {
			t.Fatalf("restore exit %d:\n%s", code, text)
		}
		same(t, "cli", got, oldData)
		if want := "restored backup " + oldID + " of plan fallback from destination minio"; !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	})
	t.Run("platform without fallbackOlder fails", func(t *testing.T) {
		r := request(t, false)
		if r.Phase != runs.Failed || !strings.Contains(r.Error, "every copy failed") {
			t.Fatalf("restore run: %s (%s), want Failed: every copy failed", r.Phase, r.Error)
		}
	})
	t.Run("platform with fallbackOlder restores the previous backup", func(t *testing.T) {
		r := request(t, true)
		if r.Phase != runs.Succeeded || r.BackupID != oldID || r.RestoredFrom != "minio" || !r.FallbackOlder {
			t.Fatalf("restore run: %s backup %s from %q (%s), want Succeeded %s from minio", r.Phase, r.BackupID, r.RestoredFrom, r.Error, oldID)
		}
		got, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		same(t, "platform", got, oldData)
	})
}
