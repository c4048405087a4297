package stage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// storedTypes lists the types of the events stored for runID.
func storedTypes(t *testing.T, b *bus.Bus, runID string) []string {
	t.Helper()
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if e, err := bus.Decode(m.Data); err == nil && events.RunID(e) == runID {
			out = append(out, strings.TrimPrefix(e.Type(), events.TypePrefix))
		}
	}
	return out
}

func TestFailStuckFailsARunWhoseStepOutlivedItsDeadline(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	clock := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Log: bustest.Logger(t), Instance: "dead-replica", Now: func() time.Time { return clock }}

	stuck, err := d.Runs.Ensure(ctx, runs.Run{ID: events.NewID(), Plan: "db", Kind: runs.KindBackup})
	if err != nil {
		t.Fatal(err)
	}
	if _, c, err := d.Claim(ctx, stuck.ID, "hook:db/lock", time.Minute); err != nil || !c.Start {
		t.Fatalf("claim: %+v %v", c, err)
	}
	// A step without a deadline (the snapshot streams as long as it must)
	// is never overdue.
	open, err := d.Runs.Ensure(ctx, runs.Run{ID: events.NewID(), Plan: "db", Kind: runs.KindBackup})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Claim(ctx, open.ID, "snapshot", 0); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		now       time.Time
		wantRuns  int
		wantPhase runs.Phase
	}{
		{"before the deadline nothing fails", clock.Add(59 * time.Second), 0, runs.Running},
		{"past the deadline the run fails", clock.Add(61 * time.Second), 1, runs.Failed},
		{"a repeat finds nothing more", clock.Add(time.Hour), 0, runs.Failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := stage.FailStuck(ctx, d, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.wantRuns {
				t.Fatalf("failed runs %v, want %d", got, tt.wantRuns)
			}
			r, err := d.Runs.Get(ctx, stuck.ID)
			if err != nil {
				t.Fatal(err)
			}
			if r.Phase != tt.wantPhase {
				t.Fatalf("run phase %s, want %s", r.Phase, tt.wantPhase)
			}
		})
	}

	r, _ := d.Runs.Get(ctx, stuck.ID)
	st := r.FindStep("hook:db/lock")
	if st.Phase != runs.Failed || !strings.Contains(st.Error, "dead-replica") || r.FailedStage != "hook" {
		t.Errorf("step %+v, run failed in %q: %q", st, r.FailedStage, r.Error)
	}
	if got := strings.Join(storedTypes(t, b, stuck.ID), ","); got != "step.failed,backup.failed" {
		t.Errorf("events of the stuck run: %s, want step.failed,backup.failed", got)
	}
	if o, _ := d.Runs.Get(ctx, open.ID); o.Phase != runs.Running {
		t.Errorf("a run whose step has no deadline became %s", o.Phase)
	}
}
