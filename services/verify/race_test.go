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
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// TestRunFailingWhileVerifyReadsLeavesTheManifestFailed: the run fails
// (a hook after the snapshot) while verify reads its object, and the
// verify-failed consumer marks the manifest failed before verify saves
// its result. The manifest must end marked failed, whichever wrote last:
// a "verified" manifest of a failed run would be restored as latest.
func TestRunFailingWhileVerifyReadsLeavesTheManifestFailed(t *testing.T) {
	ctx := context.Background()
	f := newUploaded(t, "racy")
	d, b, s, st, id, manifestKey := f.d, f.b, f.s, f.st, f.id, f.manifestKey
	f.whileVerifying(func() {
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
	if _, err := s.handle(ctx, f.completed); err != nil {
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

// uploaded is a run of a plan whose destinations (filesystems) hold the
// run's real backup, uploaded and about to be verified, with the
// upload.completed that has verify read it. st, key, manifestKey and
// completed are the first destination's.
type uploaded struct {
	d             *stage.Deps
	b             *bus.Bus
	s             *Service
	st            storage.Storage
	stores        map[string]storage.Storage
	plan, id, key string
	manifestKey   string
	completed     events.Event
}

// newUploaded makes the run, of plan name, on a fresh embedded server,
// with one filesystem destination of each name in dests ("local" when
// none is given).
func newUploaded(t *testing.T, name string, dests ...string) *uploaded {
	t.Helper()
	ctx := context.Background()
	if len(dests) == 0 {
		dests = []string{"local"}
	}
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b) // the owner keeps its own clock: tests hook d's
	f := &uploaded{d: d, b: b, s: New(d), stores: map[string]storage.Storage{}, plan: name, id: events.NewID()}
	yaml := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations:
`, name)
	held := map[string]*runs.Destination{}
	for _, dest := range dests {
		dir := t.TempDir()
		yaml += fmt.Sprintf("  - {name: %s, type: filesystem, filesystem: {path: %s}}\n", dest, dir)
		st, err := filesystem.New(ctx, filesystem.Config{Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		f.stores[dest] = st
		f.key, f.manifestKey = storeBackup(t, st, name, f.id)
		held[dest] = &runs.Destination{Phase: runs.Succeeded, Key: f.key, ManifestKey: f.manifestKey, SHA256: zeros}
	}
	stagetest.ApplyPlan(t, d, yaml)
	f.st = f.stores[dests[0]]
	if _, err := d.Runs.Ensure(ctx, runs.Run{ID: f.id, Plan: name, Kind: runs.KindBackup, Trigger: events.TriggerCLI, Phase: runs.Running, SHA256: zeros,
		Steps: []runs.Step{{Name: "snapshot", Phase: runs.Succeeded, Started: time.Now(), Finished: time.Now()}}, Destinations: held}); err != nil {
		t.Fatal(err)
	}
	f.completed = f.completedOf(t, dests[0])
	return f
}

// completedOf is the upload.completed of dest.
func (f *uploaded) completedOf(t *testing.T, dest string) events.Event {
	t.Helper()
	e, err := events.New(f.b.Meta(f.plan, f.id, uploadStep(dest)), events.UploadCompletedData{
		Destination: dest, Key: f.key, ManifestKey: f.manifestKey, Size: 1, SHA256: zeros})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// whileVerifying runs fn once, at the second reading of the stages'
// clock: verify's, after it loaded the manifest and while it reads.
func (f *uploaded) whileVerifying(fn func()) { f.atNow(2, fn) }

// atNow runs fn once, at the nth reading of the stages' clock from now on.
func (f *uploaded) atNow(n int, fn func()) {
	var once sync.Once
	calls := 0
	f.d.Now = func() time.Time {
		if calls++; calls == n {
			once.Do(fn)
		}
		return time.Now()
	}
}

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
