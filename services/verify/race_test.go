package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// TestRunFailingWhileVerifyReadsLeavesTheManifestFailed: the run fails
// (a hook after the snapshot) while verify reads its object, and the
// verify-failed consumer marks the manifest failed before verify saves
// its result. The manifest must end marked failed, whichever wrote last:
// a "verified" manifest of a failed run would be restored as latest.
func TestRunFailingWhileVerifyReadsLeavesTheManifestFailed(t *testing.T) {
	ctx := context.Background()
	_, b := bustest.Start(t)
	dir := t.TempDir()
	d := stagetest.Deps(t, b) // the owner keeps its own clock: this test hooks d's
	stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: racy}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, dir))
	st, err := filesystem.New(ctx, filesystem.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	id := events.NewID()
	key, manifestKey := storeBackup(t, st, "racy", id)
	if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: "racy", Kind: runs.KindBackup}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error {
		r.Phase, r.SHA256 = runs.Running, zeros
		dd := r.Dest("local")
		dd.Phase, dd.Key, dd.ManifestKey, dd.SHA256 = runs.Succeeded, key, manifestKey, zeros
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	s := New(d)
	var once sync.Once
	calls := 0
	d.Now = func() time.Time {
		// The second reading of the clock is verify's, after it loaded
		// the manifest: the run fails there and verify-failed marks it.
		calls++
		if calls == 2 {
			once.Do(func() {
				cause, _ := events.New(b.Meta("racy", id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
				if _, err := d.FailRun(ctx, "racy", id, "hook", "hook:db/unlock", "unlock failed", cause); err != nil {
					t.Errorf("fail run: %v", err)
					return
				}
				failed, err := events.New(b.Meta("racy", id, ""), events.BackupFailedData{Stage: "hook", Reason: "unlock failed"})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := s.handleFailed(ctx, failed); err != nil {
					t.Errorf("verify-failed: %v", err)
				}
			})
		}
		return time.Now()
	}
	e, err := events.New(b.Meta("racy", id, uploadStep("local")), events.UploadCompletedData{
		Destination: "local", Key: key, ManifestKey: manifestKey, Size: 1, SHA256: zeros})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.handle(ctx, e); err != nil {
		t.Fatal(err)
	}
	m, err := backup.LoadManifest(ctx, st, manifestKey)
	if err != nil {
		t.Fatal(err)
	}
	if !backup.Failed(m) {
		t.Fatalf("the manifest of the failed run says %q", m.Verify.Status)
	}
	if _, err := backup.Find(ctx, st, "racy/latest"); err == nil {
		t.Error("latest found the failed run's backup")
	}
	r, err := d.Runs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if step := r.FindStep(StepName("local")); step == nil || step.Phase == runs.Running {
		t.Errorf("verify step left %+v in a failed run", step)
	}
}

var zeros = hex.EncodeToString(make([]byte, 32))

// uploadStep is the step attribute upload gives its events.
func uploadStep(dest string) string { return "upload:" + dest }

// storeBackup writes a real unencrypted backup object and its pending
// manifest, as upload leaves them.
func storeBackup(t *testing.T, st storage.Storage, planName, id string) (key, manifestKey string) {
	t.Helper()
	ctx := context.Background()
	s, err := format.NewSealer(id, format.Options{Compression: "none", Encryption: "none", ChunkSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a backup of " + id)
	var buf bytes.Buffer
	w := format.NewWriter(&buf, s, 1)
	_, _ = w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	key = format.ObjectKey(planName, id)
	if _, err := st.Put(ctx, key, bytes.NewReader(buf.Bytes()), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	now := time.Now().UTC()
	m := format.Manifest{
		FormatVersion: format.Version, BackupID: id, Plan: planName, RunID: id, Trigger: "cli",
		Created: now, Started: now, Finished: now, Source: format.Source{Type: "command"},
		Chain: s.Chain(), ChunkSize: s.ChunkSize(), KeyWrap: s.KeyWrap(),
		Bytes: int64(len(data)), StoredBytes: int64(buf.Len()), Frames: 1,
		PlaintextSHA256: sum(data), StoredSHA256: sum(buf.Bytes()), ObjectKey: key,
		Verify: format.VerifyResult{Status: format.VerifyPending},
	}
	if err := backup.SaveManifest(ctx, st, m); err != nil {
		t.Fatal(err)
	}
	return key, format.ManifestKey(planName, id)
}
