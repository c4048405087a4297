package verify

import (
	"context"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
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
