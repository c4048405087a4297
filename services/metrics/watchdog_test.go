package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

func testPlan(t *testing.T, extra string) *plan.Plan {
	t.Helper()
	p, err := plan.Parse("test.yaml", []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: hourly}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /tmp/x}}]
`+extra))
	if err != nil {
		t.Fatalf("parse plan: %v", err)
	}
	p.Defaults()
	return p
}

// newDeps connects the dependencies of a metrics service, its own run
// owner included, to a fresh embedded server.
func newDeps(t *testing.T) *stage.Deps {
	t.Helper()
	_, b := bustest.Start(t)
	return stagetest.Deps(t, b)
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestMissed(t *testing.T) {
	hourly := "  schedule: {cron: '@hourly'}\n  alert: {grace: 10m}\n"
	every := "  alert: {expectEvery: 6h, grace: 30m}\n"
	since := at("2026-01-01T10:00:30Z")
	tests := []struct {
		name      string
		give      string
		successes []time.Time
		lastSlot  time.Time
		now       time.Time
		want      []time.Time // missed slots
		wantLast  time.Time
	}{
		{name: "schedule, nothing due yet", give: hourly, now: at("2026-01-01T11:09:59Z"), wantLast: since},
		{name: "schedule, two slots without runs", give: hourly, now: at("2026-01-01T12:10:00Z"),
			want: []time.Time{at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")}, wantLast: at("2026-01-01T12:00:00Z")},
		{name: "schedule, successes cover their slots", give: hourly, now: at("2026-01-01T12:30:00Z"),
			successes: []time.Time{at("2026-01-01T11:02:00Z"), at("2026-01-01T12:09:00Z")}, wantLast: at("2026-01-01T12:00:00Z")},
		{name: "schedule, a success after the grace is late", give: hourly, now: at("2026-01-01T11:30:00Z"),
			successes: []time.Time{at("2026-01-01T11:20:00Z")}, want: []time.Time{at("2026-01-01T11:00:00Z")}, wantLast: at("2026-01-01T11:00:00Z")},
		{name: "schedule, slots already judged stay judged", give: hourly, lastSlot: at("2026-01-01T12:00:00Z"), now: at("2026-01-01T12:50:00Z"),
			wantLast: at("2026-01-01T12:00:00Z")},
		{name: "paused schedule expects nothing", give: "  schedule: {cron: '@hourly', paused: true}\n", now: at("2026-01-01T18:00:00Z"),
			wantLast: at("2026-01-01T18:00:00Z")},
		{name: "expectEvery, no success since first seen", give: every, now: at("2026-01-01T23:00:00Z"),
			want: []time.Time{since.Add(6 * time.Hour), since.Add(12 * time.Hour)}, wantLast: since.Add(12 * time.Hour)},
		{name: "expectEvery counts from the newest success", give: every, now: at("2026-01-01T22:29:00Z"),
			successes: []time.Time{at("2026-01-01T16:00:00Z")}, wantLast: since},
		{name: "expectEvery, overdue after the newest success", give: every, now: at("2026-01-01T22:30:00Z"),
			successes: []time.Time{at("2026-01-01T16:00:00Z")}, want: []time.Time{at("2026-01-01T22:00:00Z")}, wantLast: at("2026-01-01T22:00:00Z")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Expectation{Since: since, LastSlot: tt.lastSlot}
			if st.LastSlot.IsZero() {
				st.LastSlot = since
			}
			got, last, err := Missed(testPlan(t, tt.give), st, tt.successes, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			var slots []time.Time
			for _, m := range got {
				slots = append(slots, m.Slot)
			}
			if len(slots) != len(tt.want) {
				t.Fatalf("missed %v, want %v", slots, tt.want)
			}
			for i := range slots {
				if !slots[i].Equal(tt.want[i]) {
					t.Fatalf("missed %v, want %v", slots, tt.want)
				}
			}
			if !last.Equal(tt.wantLast) {
				t.Errorf("newest slot judged %v, want %v", last, tt.wantLast)
			}
		})
	}
}

// TestWatchdogHourlyPlan drives the watchdog on a fake clock against a real
// embedded NATS: two hours without runs give exactly two backup.missed, and
// the hours whose runs succeed give none.
func TestWatchdogHourlyPlan(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	b := d.Bus
	p := testPlan(t, "  schedule: {cron: '@hourly'}\n  alert: {grace: 10m}\n")
	if _, err := d.Plans.Put(ctx, p); err != nil {
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
	pass(at("2026-01-01T12:30:00Z"))
	missed := missedEvents(t, b, "hourly")
	if len(missed) != 2 {
		t.Fatalf("after two hours without runs: %d backup.missed, want 2: %v", len(missed), missed)
	}
	for i, want := range []time.Time{at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")} {
		if !missed[i].Slot.Equal(want) || !missed[i].ExpectedBy.Equal(want.Add(10*time.Minute)) || missed[i].LastSuccess != nil {
			t.Errorf("missed[%d] = %+v, want slot %v expected by %v", i, missed[i], want, want.Add(10*time.Minute))
		}
	}

	// From now on every slot's run succeeds a few minutes after the slot.
	for h := 13; h <= 16; h++ {
		finished := time.Date(2026, 1, 1, h, 3, 0, 0, time.UTC)
		pass(finished)
		id := events.NewID()
		if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: "hourly", Kind: runs.KindBackup, Created: finished.Add(-2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error {
			r.Phase, r.Finished = runs.Succeeded, finished
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	pass(at("2026-01-01T16:30:00Z"))
	if got := missedEvents(t, b, "hourly"); len(got) != 2 {
		t.Fatalf("while runs succeed: %d backup.missed in all, want still 2: %v", len(got), got)
	}
}

// missedEvents reads every backup.missed of planName from the stream.
func missedEvents(t *testing.T, b *bus.Bus, planName string) []events.BackupMissedData {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.JS.OrderedConsumer(ctx, bus.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.Subject(events.BackupMissed, planName)},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.BackupMissedData
	for range info.NumPending {
		msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		e, err := bus.Decode(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		d, err := events.DecodeAs[events.BackupMissedData](e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// A watchdog pass that cannot record the slots it judged says so (only a
// lost compare-and-set is another replica's judgement), and the next pass
// judges them again: the same ids, which the duplicate window keeps once.
func TestWatchdogStateThatCannotBeRecordedIsAnError(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	b := d.Bus
	if _, err := d.Plans.Put(ctx, testPlan(t, "  schedule: {cron: '@hourly'}\n  alert: {grace: 10m}\n")); err != nil {
		t.Fatal(err)
	}
	clock := sched.NewFakeClock(at("2026-01-01T10:00:30Z"))
	s := New(d)
	s.Clock = clock
	if err := s.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Set(at("2026-01-01T11:30:00Z"))
	leases := b.Leases
	b.Leases = bustest.UpdatesFail(leases)
	if err := s.Watch(ctx); err == nil || !strings.Contains(err.Error(), "record watchdog state") {
		t.Fatalf("pass whose state write failed: %v, want the failure to record the watchdog state", err)
	}
	b.Leases = leases
	for range 2 {
		if err := s.Watch(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if missed := missedEvents(t, b, "hourly"); len(missed) != 1 || !missed[0].Slot.Equal(at("2026-01-01T11:00:00Z")) {
		t.Fatalf("backup.missed stored: %+v, want the 11:00 slot once", missed)
	}
}
