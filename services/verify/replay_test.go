package verify

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// TestAVerifyOverlappingAReplayRecordsNothingInIt: the run fails (a hook
// after the snapshot) while verify reads its copy, and the operator
// replays it from the start before that verify ends. Its result is
// attempt 1's: landing in attempt 2's fresh record, it would make attempt
// 2's verify find the copy verified without reading it (and a
// verify.completed of attempt 1 would drive attempt 2).
func TestAVerifyOverlappingAReplayRecordsNothingInIt(t *testing.T) {
	ctx := context.Background()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	dir := t.TempDir()
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: replayed}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, dir))
	st, err := filesystem.New(ctx, filesystem.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	id := events.NewID()
	key, manifestKey := storeBackup(t, st, p.Name(), id)
	if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: p.Name(), Kind: runs.KindBackup, Trigger: events.TriggerCLI, Phase: runs.Running, SHA256: zeros,
		Destinations: map[string]*runs.Destination{"local": {Phase: runs.Succeeded, Key: key, ManifestKey: manifestKey, SHA256: zeros}}}); err != nil {
		t.Fatal(err)
	}

	s := New(d)
	var once sync.Once
	calls := 0
	d.Now = func() time.Time {
		// The second reading of the clock is verify's, after it loaded
		// the manifest: the run fails there and is replayed.
		calls++
		if calls == 2 {
			once.Do(func() {
				cause, _ := events.New(b.Meta(p.Name(), id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
				if _, err := d.FailRun(ctx, p.Name(), id, "hook", "hook:db/unlock", "unlock failed", cause); err != nil {
					t.Errorf("fail run: %v", err)
				}
				if _, _, err := d.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: id, Step: runs.ReplayStart, Owner: "cli:test"}); err != nil {
					t.Errorf("replay: %v", err)
				}
			})
		}
		return time.Now()
	}
	e, err := events.New(b.Meta(p.Name(), id, uploadStep("local")), events.UploadCompletedData{
		Destination: "local", Key: key, ManifestKey: manifestKey, Size: 1, SHA256: zeros})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Consumers()[0].Handler(ctx, e)
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
