package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
)

// TestRunCountersCountCancelledOnItsOwn feeds the Prometheus figures a
// success, a cancellation (twice: a redelivery) and a failure of one plan
// and a cancelled restore: each outcome has its own status label, and the
// cancellation moves neither the last-success figures nor the stage
// failures.
func TestRunCountersCountCancelledOnItsOwn(t *testing.T) {
	t0 := at("2026-01-01T10:00:00Z")
	p := newProm()
	p.now = func() time.Time { return t0.Add(time.Hour) }
	sha := strings.Repeat("a", 64)
	meta := func(id string, minutes int) events.Meta {
		return events.Meta{ID: id, Source: "backstream/test/x", Plan: "orders", RunID: "01JNR4S7T0000000000000000A", Time: t0.Add(time.Duration(minutes) * time.Minute)}
	}
	feed := func(e events.Event, r *runs.Run) {
		t.Helper()
		pts, err := Points(e, r)
		if err != nil {
			t.Fatal(err)
		}
		p.observe(e, pts)
	}
	feed(events.MustNew(meta("ok", 1), events.BackupSucceededData{BackupID: "b1", Bytes: 100, StoredBytes: 25, PlaintextSHA256: sha, Chunks: 1,
		Started: t0, DurationMs: 2000, Source: "command", Objects: []events.BackupObject{{Destination: "a", Key: "k", ManifestKey: "m", SHA256: sha}}}), nil)
	cancelled := events.MustNew(meta("cancel", 20), events.BackupCancelledData{By: "cli:alice", Steps: []string{events.StepSnapshot}})
	rec := &runs.Run{Trigger: "schedule", Created: t0.Add(10 * time.Minute), Finished: t0.Add(19 * time.Minute), Phase: runs.Cancelled}
	feed(cancelled, rec)
	feed(cancelled, rec)
	feed(events.MustNew(meta("fail", 30), events.BackupFailedData{Stage: "upload", Reason: "disk full"}), nil)
	feed(events.MustNew(meta("rcancel", 40), events.RestoreCancelledData{By: "api:ops"}), nil)

	for status, want := range map[string]float64{StatusSucceeded: 1, StatusFailed: 1, StatusCancelled: 1} {
		if got := testutil.ToFloat64(p.runsTotal.WithLabelValues("orders", status)); got != want {
			t.Errorf("backup runs{status=%s} = %v, want %v", status, got, want)
		}
	}
	if got := testutil.ToFloat64(p.restoresTotal.WithLabelValues("orders", StatusCancelled)); got != 1 {
		t.Errorf("restore runs{status=cancelled} = %v, want 1", got)
	}
	if got, want := testutil.ToFloat64(p.lastSuccess.WithLabelValues("orders")), float64(t0.Add(2*time.Second).Unix()); got != want {
		t.Errorf("last success %v, want the success's end %v, not the cancellation's", got, want)
	}
	if got := testutil.ToFloat64(p.lastDuration.WithLabelValues("orders")); got != 2 {
		t.Errorf("last duration %v, want the success's 2 s", got)
	}
	if got := testutil.ToFloat64(p.lastBytes.WithLabelValues("orders", "in")); got != 100 {
		t.Errorf("last bytes in %v, want the success's 100", got)
	}
	if n := testutil.CollectAndCount(p.stageFailures); n != 1 {
		t.Errorf("%d stage-failure series, want only the failed run's upload", n)
	}
	if got := testutil.ToFloat64(p.stageFailures.WithLabelValues("orders", "upload")); got != 1 {
		t.Errorf("stage failures{upload} = %v, want 1", got)
	}
}

// TestWatchdogCancelledRunCoversNoSlot: a run of a slot that an operator
// cancelled is no success, so the watchdog reports the slot missed and the
// last-success gauge stays unset; a later success covers its own slot.
func TestWatchdogCancelledRunCoversNoSlot(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	b := d.Bus
	if _, err := d.Plans.Put(ctx, testPlan(t, "  schedule: {cron: '@hourly'}\n  alert: {grace: 10m}\n")); err != nil {
		t.Fatal(err)
	}
	clock := sched.NewFakeClock(at("2026-01-01T10:00:30Z"))
	s := New(d)
	s.Clock = clock
	pass := func(until time.Time) {
		t.Helper()
		for clock.Now().Before(until) {
			if err := s.Watch(ctx); err != nil {
				t.Fatalf("watch at %v: %v", clock.Now(), err)
			}
			clock.Advance(5 * time.Minute)
		}
	}
	// ended records a run that ended in phase at finished the way the run
	// store sees it end: a record that turns final, which is when the store
	// updates its success index.
	ended := func(phase runs.Phase, finished time.Time) {
		t.Helper()
		id := events.NewID()
		if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: "hourly", Kind: runs.KindBackup, Trigger: "schedule", Created: finished.Add(-2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error {
			r.Phase, r.Finished = phase, finished
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	pass(at("2026-01-01T11:03:00Z"))
	ended(runs.Cancelled, at("2026-01-01T11:03:00Z"))
	pass(at("2026-01-01T11:30:00Z"))
	missed := missedEvents(t, b, "hourly")
	if len(missed) != 1 || !missed[0].Slot.Equal(at("2026-01-01T11:00:00Z")) || missed[0].LastSuccess != nil {
		t.Fatalf("after the 11:00 run was cancelled: backup.missed %+v, want one for 11:00 without a last success", missed)
	}
	if n := testutil.CollectAndCount(s.prom.lastSuccess); n != 0 {
		t.Errorf("a cancelled run set the last-success gauge (%d series)", n)
	}

	pass(at("2026-01-01T12:03:00Z"))
	ended(runs.Succeeded, at("2026-01-01T12:03:00Z"))
	pass(at("2026-01-01T12:30:00Z"))
	if got := missedEvents(t, b, "hourly"); len(got) != 1 {
		t.Errorf("after the 12:00 run succeeded: %d backup.missed, want still 1: %+v", len(got), got)
	}
	if got, want := testutil.ToFloat64(s.prom.lastSuccess.WithLabelValues("hourly")), float64(at("2026-01-01T12:03:00Z").Unix()); got != want {
		t.Errorf("last-success gauge %v, want the 12:03 success %v", got, want)
	}
}
