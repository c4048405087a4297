package stage_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// TestAStageWorksForTheAttemptOfItsEvent: an event of an attempt its run
// was replayed past is acked without its handler changing anything; an
// event of the current attempt binds the handler's requests about its own
// run to that attempt, and only those (a schedule replacing another run
// asks about that run as of no attempt). An event of an attempt no replay
// made is dead-lettered, and fails its run as any poison event does.
func TestAStageWorksForTheAttemptOfItsEvent(t *testing.T) {
	ctx := context.Background()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: attempts}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, t.TempDir()))
	atAttempt := func(n int) string {
		id, _ := stagetest.StartBackup(t, d, p)
		if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error { r.Attempt = n; return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	replayed, other := atAttempt(2), atAttempt(3)

	reached := 0
	spec := d.Spec("upload", func(ctx context.Context, e events.Event) ([]events.Event, error) {
		if _, _, err := d.RunPlan(ctx, "upload", e); err != nil {
			return nil, err
		}
		reached++
		if _, c, err := d.Claim(ctx, replayed, "upload:local", 0); err != nil || !c.Start {
			return nil, fmt.Errorf("claim in its own run: %+v %w", c, err)
		}
		if _, c, err := d.Claim(ctx, other, "upload:local", 0); err != nil || !c.Start {
			return nil, fmt.Errorf("claim in another run: %+v %w", c, err)
		}
		return nil, nil
	}, events.UploadCompleted)
	completed := func(attempt int) events.Event {
		m := b.Meta(p.Name(), replayed, "upload:local")
		m.Attempt = attempt
		e, err := events.New(m, events.UploadCompletedData{Destination: "local", Key: "k", ManifestKey: "k.manifest.json",
			Size: 1, SHA256: strings.Repeat("0", 64)})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	if out, err := spec.Handler(ctx, completed(1)); err != nil || len(out) != 0 || reached != 0 {
		t.Fatalf("an event of attempt 1 of a run at attempt 2: %d events, %v, handler went on: %v; want it acked, nothing done", len(out), err, reached != 0)
	}
	if _, err := spec.Handler(ctx, completed(2)); err != nil {
		t.Fatalf("an event of the current attempt: %v", err)
	}
	ahead := completed(3)
	if _, err := spec.Handler(ctx, ahead); !bus.IsPermanent(err) || !strings.Contains(err.Error(), "attempt 3: run "+replayed+" is at attempt 2") {
		t.Errorf("an event of an attempt no replay made: %v, want it dead-lettered with why", err)
	}
	if _, err := spec.OnDead(ctx, ahead, "forged"); err != nil {
		t.Fatal(err)
	}
	if r, err := d.Runs.Get(ctx, replayed); err != nil || r.Phase != runs.Failed {
		t.Errorf("the run of a dead-lettered event of a forged attempt: %v %v, want it failed as any poison event's", r.Phase, err)
	}
	for id, want := range map[string]int{replayed: 2, other: 3} {
		r, err := d.Runs.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st := r.FindStep("upload:local"); st == nil || st.Attempt != want {
			t.Errorf("run at attempt %d: step %+v, want claimed in attempt %d", want, st, want)
		}
	}
}

// TestARecordOfAnEarlierAttemptNotedLateChangesNothing: a goroutine that
// read a run's record before a replay notes it after another goroutine
// noted the replay. The process must keep the later attempt: the earlier
// one would label the new attempt's events as the old one's (which its
// consumers then ack as stale, leaving the replay stuck) and name its
// chunk streams as the old attempt's.
func TestARecordOfAnEarlierAttemptNotedLateChangesNothing(t *testing.T) {
	id := events.NewID()
	stage.NoteRun(&runs.Run{ID: id, Attempt: 3})
	stage.NoteRun(&runs.Run{ID: id, Attempt: 2})
	stage.NoteRun(&runs.Run{ID: id})
	if n := stage.AttemptOf(id); n != 3 {
		t.Errorf("after records of attempts 3, 2 and 1 in that order: attempt %d, want 3", n)
	}
	if k := stage.DataKey(id); k != id+"a3" {
		t.Errorf("data key %s, want attempt 3's", k)
	}
	stage.NoteRun(&runs.Run{ID: id, Attempt: 4})
	if n := stage.AttemptOf(id); n != 4 {
		t.Errorf("after a record of attempt 4: attempt %d, want 4", n)
	}
}
