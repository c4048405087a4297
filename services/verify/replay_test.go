package verify

import (
	"bytes"
	"context"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/storagetest"
	"github.com/backstream/backstream/services/stage"
)

// TestAVerifyOverlappingAReplayRecordsNothingInIt: the run fails (a hook
// after the snapshot) while verify reads its copy, and the operator
// replays it from the start before that verify ends. Its result is
// attempt 1's: landing in attempt 2's fresh record, it would make attempt
// 2's verify find the copy verified without reading it (and a
// verify.completed of attempt 1 would drive attempt 2).
func TestAVerifyOverlappingAReplayRecordsNothingInIt(t *testing.T) {
	ctx := context.Background()
	f := newUploaded(t, "replayed")
	d, id := f.d, f.id
	f.whileVerifying(func() {
		cause, _ := events.New(f.b.Meta("replayed", id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
		if _, err := d.FailRun(ctx, "replayed", id, "hook", "hook:db/unlock", "unlock failed", cause); err != nil {
			t.Errorf("fail run: %v", err)
		}
		if _, _, err := d.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: id, Step: runs.ReplayStart, Owner: "cli:test"}); err != nil {
			t.Errorf("replay: %v", err)
		}
	})
	out, err := f.s.Consumers()[0].Handler(ctx, f.completed)
	if err != nil || len(out) != 0 {
		t.Fatalf("attempt 1's verify: %d events, %v; want it acked with nothing emitted", len(out), err)
	}
	r, err := d.Runs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.CurrentAttempt() != 2 {
		t.Fatalf("run at attempt %d, want 2", r.CurrentAttempt())
	}
	if st := r.FindStep(StepName("local")); st != nil {
		t.Errorf("attempt 1's verify left step %+v in attempt 2", *st)
	}
	if ds := r.Destinations["local"]; ds != nil && ds.Verified {
		t.Errorf("attempt 2's copy recorded verified by attempt 1's verify: %+v", *ds)
	}
	_, c, err := d.Claim(stage.WithAttempt(ctx, id, 2), id, StepName("local"), 0)
	if err != nil || !c.Start {
		t.Errorf("attempt 2's verify claims %+v %v, want to start: read its own copy", c, err)
	}
}

// TestReplayOfAFailedVerifyVerifiesEveryCopyAgain: of two copies, b's is
// damaged, so its verify fails the run after a's passed, and the failure
// marks both manifests failed (nothing of a failed run passes for a good
// backup). The operator repairs b and replays the run from verify: both
// copies must end verified in their manifests. A copy verified by
// attempt 1 and marked failed with the run is no backup to any reader
// (not listed, never latest, removed by retention) until it is verified
// again.
func TestReplayOfAFailedVerifyVerifiesEveryCopyAgain(t *testing.T) {
	ctx := context.Background()
	f := newUploaded(t, "twice", "a", "b")
	good := storagetest.Read(t, f.stores["b"], f.key)
	if _, err := f.stores["b"].Put(ctx, f.key, bytes.NewReader(bytes.Repeat([]byte{'x'}, len(good))), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.handle(ctx, f.completedOf(t, "b")); err != nil {
		t.Fatal(err)
	}
	r, err := f.d.Runs.Get(ctx, f.id)
	if err != nil || r.Phase != runs.Failed || r.FailedStage != "verify" {
		t.Fatalf("verify of a damaged copy left the run %s (%s), %v; want failed in verify", r.Phase, r.Error, err)
	}
	failed, err := events.New(f.b.Meta(f.plan, f.id, ""), events.BackupFailedData{Stage: "verify", Reason: r.Error})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.handleFailed(ctx, failed); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"a", "b"} {
		if m := loadManifest(t, f.stores[dest], f.manifestKey); !backup.Failed(m) {
			t.Fatalf("after the run failed, %s's manifest says %q, want failed", dest, m.Verify.Status)
		}
	}

	if _, err := f.stores["b"].Put(ctx, f.key, bytes.NewReader(good), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, o, err := f.d.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: f.id, Owner: "cli:test"})
	if err != nil || o.Stage != runs.ReplayVerify {
		t.Fatalf("replay: %+v, %v; want it from verify", o, err)
	}
	again := f.completedOf(t, "b") // as the replay re-emits it
	again.SetExtension(events.ExtAttempt, 2)
	if _, err := f.s.handle(stage.WithAttempt(ctx, f.id, 2), again); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"a", "b"} {
		if m := loadManifest(t, f.stores[dest], f.manifestKey); m.Verify.Status != format.VerifyVerified {
			t.Errorf("after the replay, %s's manifest says %q (%s), want verified", dest, m.Verify.Status, m.Verify.Error)
		}
	}
	if r, err = f.d.Runs.Get(ctx, f.id); err != nil {
		t.Fatal(err)
	}
	if r.Phase != runs.Succeeded {
		t.Errorf("replayed run %s (%s), want Succeeded", r.Phase, r.Error)
	}
}

func loadManifest(t *testing.T, st storage.Storage, key string) format.Manifest {
	t.Helper()
	m, err := backup.LoadManifest(context.Background(), st, key)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAFailuresMarkingLandingAfterTheReplaysVerifyMarksNothing: the
// verify-failed consumer reads the manifest and the failed run, and is
// about to write "failed" into it, when the operator replays the run and
// the replay's verify writes "verified" (session 13's note 1). The
// marking must not land over it: the replayed run succeeded on that
// copy, and a manifest saying failed would hide the backup from every
// reader and have retention remove it.
func TestAFailuresMarkingLandingAfterTheReplaysVerifyMarksNothing(t *testing.T) {
	ctx := context.Background()
	f := newUploaded(t, "marked")
	cause, _ := events.New(f.b.Meta(f.plan, f.id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if _, err := f.d.FailRun(ctx, f.plan, f.id, "verify", StepName("local"), "storage down", cause); err != nil {
		t.Fatal(err)
	}
	failed, err := events.New(f.b.Meta(f.plan, f.id, ""), events.BackupFailedData{Stage: "verify", Reason: "storage down"})
	if err != nil {
		t.Fatal(err)
	}
	replayed := false
	f.atNow(1, func() { // the marking's clock: manifest and run read, the write next
		_, o, err := f.d.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: f.id, Owner: "cli:test"})
		if err != nil || o.Stage != runs.ReplayVerify {
			t.Errorf("replay: %+v, %v; want it from verify", o, err)
			return
		}
		again := f.completedOf(t, "local")
		again.SetExtension(events.ExtAttempt, 2)
		if _, err := f.s.handle(stage.WithAttempt(ctx, f.id, 2), again); err != nil {
			t.Errorf("the replay's verify: %v", err)
		}
		replayed = true
	})
	if _, err := f.s.handleFailed(ctx, failed); err != nil {
		t.Fatal(err)
	}
	if !replayed {
		t.Fatal("the marking read no clock: the replay never ran inside it")
	}
	r, err := f.d.Runs.Get(ctx, f.id)
	if err != nil || r.Phase != runs.Succeeded {
		t.Fatalf("the replayed run %s (%s), %v; want Succeeded", r.Phase, r.Error, err)
	}
	if m := loadManifest(t, f.st, f.manifestKey); m.Verify.Status != format.VerifyVerified {
		t.Errorf("the succeeded run's manifest says %q (%s), want verified", m.Verify.Status, m.Verify.Error)
	}
	if _, err := backup.Find(ctx, f.st, f.plan+"/latest"); err != nil {
		t.Errorf("latest of the replayed run: %v", err)
	}
}
