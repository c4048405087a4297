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

// owner answers every request with one record, as the owner of run state
// answers an accepted request with the run as the transition left it.
type owner struct{ r *runs.Run }

func (o owner) Ask(context.Context, string, runs.Request) (*runs.Run, runs.Outcome, error) {
	return o.r, runs.Outcome{}, nil
}

// TestEventsBelongToTheAttemptOfTheirTransition: what a handler emits
// about its run carries the attempt its last accepted transition happened
// in, whatever other goroutines of the process noted since: an end
// accepted just before a replay is the old attempt's (its consumers ack
// it as stale; labelled with the new attempt, a snapshot.completed would
// have the new attempt's unlock run before its lock), and an end the
// replay took over is the new attempt's (it drives the new attempt's
// verify). Before any request, the handler's event decides; outside a
// handler, the latest attempt noted.
func TestEventsBelongToTheAttemptOfTheirTransition(t *testing.T) {
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	emitAfter := func(ctx context.Context, id string, record int) int {
		t.Helper()
		if record > 0 {
			d.Owner = owner{&runs.Run{ID: id, Attempt: record}}
			if _, err := d.FinishStep(ctx, id, "snapshot", runs.Succeeded, 1, "", nil); err != nil {
				t.Fatal(err)
			}
		}
		ev, err := d.Emit(ctx, "p", id, "snapshot", events.StepCompletedData{Step: "snapshot"})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ev.ID(), events.AttemptEventID(id, events.StepCompleted, "snapshot", events.Attempt(ev)); got != want {
			t.Errorf("id %s, want %s: the id and the attribute disagree", got, want)
		}
		return events.Attempt(ev)
	}
	tests := []struct {
		name          string
		event, record int // the handled event's attempt (0: no handler), the accepted record's (0: no request)
		noted         int // what another goroutine noted meanwhile
		want          int
	}{
		{"an end accepted before a replay noted elsewhere", 1, 1, 2, 1},
		{"an end the replay took over", 1, 2, 2, 2},
		{"no request yet: the event's attempt", 2, 0, 3, 2},
		{"outside a handler: the latest noted", 0, 0, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := events.NewID()
			ctx := context.Background()
			if tt.event > 0 {
				ctx = stage.WithAttempt(ctx, id, tt.event)
			}
			stage.NoteRun(&runs.Run{ID: id, Attempt: tt.noted})
			if got := emitAfter(ctx, id, tt.record); got != tt.want {
				t.Errorf("emitted in attempt %d, want %d", got, tt.want)
			}
		})
	}
}
