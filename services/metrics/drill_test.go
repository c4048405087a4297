package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/schedule"
)

const hourlyDrill = "  drill:\n    schedule: {cron: '@hourly'}\n    check: {command: ['true']}\n    grace: 10m\n"

func TestDrillMissed(t *testing.T) {
	since := at("2026-01-01T10:00:30Z")
	slot11, slot12 := at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")
	own := func(slot time.Time, finished string) DrillSuccess {
		return DrillSuccess{ID: schedule.SideID("hourly", schedule.SideDrill, slot), At: at(finished)}
	}
	adHoc := func(finished string) DrillSuccess { return DrillSuccess{ID: events.NewID(), At: at(finished)} }
	tests := []struct {
		name      string
		give      string
		successes []DrillSuccess
		now       time.Time
		want      []time.Time
		wantLast  time.Time
	}{
		{name: "nothing due before slot plus grace", give: hourlyDrill, now: at("2026-01-01T11:09:59Z"), wantLast: since},
		{name: "two slots without drills", give: hourlyDrill, now: at("2026-01-01T12:10:00Z"),
			want: []time.Time{slot11, slot12}, wantLast: slot12},
		{name: "each slot's own drill covers it", give: hourlyDrill, now: at("2026-01-01T12:10:00Z"),
			successes: []DrillSuccess{own(slot11, "2026-01-01T11:04:00Z"), own(slot12, "2026-01-01T12:09:00Z")}, wantLast: slot12},
		{name: "the slot's own drill covers it however late it finished", give: hourlyDrill, now: at("2026-01-01T11:30:00Z"),
			successes: []DrillSuccess{own(slot11, "2026-01-01T11:25:00Z")}, wantLast: slot11},
		{name: "an ad hoc drill inside the window covers the slot", give: hourlyDrill, now: at("2026-01-01T11:30:00Z"),
			successes: []DrillSuccess{adHoc("2026-01-01T11:09:00Z")}, wantLast: slot11},
		{name: "an ad hoc drill after the window does not", give: hourlyDrill, now: at("2026-01-01T11:30:00Z"),
			successes: []DrillSuccess{adHoc("2026-01-01T11:11:00Z")}, want: []time.Time{slot11}, wantLast: slot11},
		{name: "another slot's drill does not cover a slot outside its window", give: hourlyDrill, now: at("2026-01-01T12:10:00Z"),
			successes: []DrillSuccess{own(slot12, "2026-01-01T12:01:00Z")}, want: []time.Time{slot11}, wantLast: slot12},
		{name: "default grace is an hour", give: "  drill:\n    schedule: {cron: '@hourly'}\n    check: {command: ['true']}\n",
			now: at("2026-01-01T11:59:59Z"), wantLast: since},
		{name: "a paused drill schedule expects nothing", give: "  drill:\n    schedule: {cron: '@hourly', paused: true}\n    check: {command: ['true']}\n",
			now: at("2026-01-01T18:00:00Z"), wantLast: at("2026-01-01T18:00:00Z")},
		{name: "a drill without a schedule expects nothing", give: "  drill:\n    check: {command: ['true']}\n",
			now: at("2026-01-01T18:00:00Z"), wantLast: since},
		{name: "the backup schedule is not the drill's", give: "  schedule: {cron: '@hourly'}\n", now: at("2026-01-01T18:00:00Z"), wantLast: since},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, last, err := DrillMissed(testPlan(t, tt.give), Expectation{Since: since, LastSlot: since}, DrillSuccesses{Successes: tt.successes}, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			var slots []time.Time
			for _, m := range got {
				slots = append(slots, m.Slot)
				if want := m.Slot.Add(10 * time.Minute); !m.ExpectedBy.Equal(want) {
					t.Errorf("slot %v expected by %v, want %v", m.Slot, m.ExpectedBy, want)
				}
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

// TestWatchdogDrills drives the watchdog on a fake clock against a real
// embedded NATS, with drill successes handed to the metrics handler as
// the restore stage would publish them: two hours without drills give two
// drill.missed, the hours whose scheduled (or ad hoc) drills succeed give
// none, a drill that failed is missed, a redelivered success is recorded
// once, and no slot is judged while the metrics consumer has events still
// to deliver.
func TestWatchdogDrills(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	b := d.Bus
	p := testPlan(t, hourlyDrill)
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
	handle := func(runID string, finished time.Time, data events.Payload) events.Event {
		t.Helper()
		e, err := events.New(events.Meta{Source: "backstream/restore/test", Plan: "hourly", RunID: runID, Time: finished}, data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.handle(ctx, e); err != nil {
			t.Fatalf("handle %s: %v", e.Type(), err)
		}
		return e
	}
	ok := events.DrillSucceededData{BackupID: "b1", Destination: "local", Target: "drill_1", DurationMs: 1000}

	pass(at("2026-01-01T12:30:00Z"))
	missed := drillMissedEvents(t, b)
	if len(missed) != 2 {
		t.Fatalf("after two hours without drills: %d drill.missed, want 2: %v", len(missed), missed)
	}
	for i, want := range []time.Time{at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")} {
		if !missed[i].Slot.Equal(want) || !missed[i].ExpectedBy.Equal(want.Add(10*time.Minute)) || missed[i].LastSuccess != nil {
			t.Errorf("missed[%d] = %+v, want slot %v expected by %v and no last success", i, missed[i], want, want.Add(10*time.Minute))
		}
	}

	// 13:00 and 14:00: the scheduled drills succeed (14:00's delivered
	// twice); 15:00: an ad hoc drill in the window; 16:00: the drill fails.
	for h := 13; h <= 16; h++ {
		slot := time.Date(2026, 1, 1, h, 0, 0, 0, time.UTC)
		finished := slot.Add(4 * time.Minute)
		pass(finished)
		id := schedule.SideID("hourly", schedule.SideDrill, slot)
		switch h {
		case 13:
			handle(id, finished, ok)
		case 14:
			e := handle(id, finished, ok)
			if _, err := s.handle(ctx, e); err != nil {
				t.Fatal(err)
			}
		case 15:
			handle(events.NewID(), finished, ok)
		case 16:
			handle(id, finished, events.DrillFailedData{Stage: events.DrillStageCheck, Error: "check: exit status 1"})
		}
	}
	pass(at("2026-01-01T16:30:00Z"))
	missed = drillMissedEvents(t, b)
	if len(missed) != 3 || !missed[2].Slot.Equal(at("2026-01-01T16:00:00Z")) {
		t.Fatalf("drill.missed %+v, want the two first and 16:00's, whose drill failed", missed)
	}
	if l := missed[2].LastSuccess; l == nil || !l.Equal(at("2026-01-01T15:04:00Z")) {
		t.Errorf("16:00's last success %v, want 15:04 (the ad hoc drill)", l)
	}
	rec, err := s.drillSuccesses(ctx, "hourly")
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Successes) != 3 {
		t.Errorf("success record %+v, want 3 (a redelivery recorded once)", rec.Successes)
	}

	// An event waiting for the metrics consumer holds the judgement back:
	// it may be the success of the slot being judged.
	spec := s.Consumers()[0]
	if _, err := b.EnsureConsumer(ctx, spec); err != nil {
		t.Fatal(err)
	}
	waiting := handleLater(t, b, "hourly", at("2026-01-01T17:05:00Z"), schedule.SideID("hourly", schedule.SideDrill, at("2026-01-01T17:00:00Z")), ok)
	pass(at("2026-01-01T18:30:00Z"))
	if got := drillMissedEvents(t, b); len(got) != 3 {
		t.Fatalf("while a success waits for delivery: %d drill.missed, want still 3", len(got))
	}
	// Delivered: 17:00 is covered, 18:00 is not.
	c, err := b.JS.Consumer(ctx, bus.EventsStream, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.FetchNoWait(100)
	if err != nil {
		t.Fatal(err)
	}
	for msg := range msgs.Messages() {
		e, err := bus.Decode(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		if e.ID() == waiting.ID() {
			if _, err := s.handle(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := msg.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	pass(at("2026-01-01T18:35:00Z"))
	missed = drillMissedEvents(t, b)
	if len(missed) != 4 || !missed[3].Slot.Equal(at("2026-01-01T18:00:00Z")) {
		t.Fatalf("drill.missed %+v, want 18:00's as the fourth and 17:00 covered", missed)
	}
}

// handleLater publishes a drill event of planName on the bus, for the
// metrics consumer to deliver.
func handleLater(t *testing.T, b *bus.Bus, planName string, finished time.Time, runID string, data events.Payload) events.Event {
	t.Helper()
	e, err := events.New(events.Meta{Source: "backstream/restore/test", Plan: planName, RunID: runID, Time: finished}, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	return e
}

// drillMissedEvents reads every drill.missed of plan hourly from the stream.
func drillMissedEvents(t *testing.T, b *bus.Bus) []events.DrillMissedData {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.JS.OrderedConsumer(ctx, bus.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.Subject(events.DrillMissed, "hourly")},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DrillMissedData
	for range info.NumPending {
		msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		e, err := bus.Decode(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		if id, want := e.ID(), DrillMissedID("hourly", mustDrillMissed(t, e).Slot); id != want {
			t.Errorf("drill.missed id %s, want %s", id, want)
		}
		out = append(out, mustDrillMissed(t, e))
	}
	return out
}

func mustDrillMissed(t *testing.T, e events.Event) events.DrillMissedData {
	t.Helper()
	d, err := events.DecodeAs[events.DrillMissedData](e)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestScrubAndDrillFigures: a scrub counts once however many destinations
// it reports, a redelivery counts nothing, an older scrub's late event
// does not overwrite a destination's unrepaired copies, and the last drill
// success only moves forward.
func TestScrubAndDrillFigures(t *testing.T) {
	p := newProm()
	t0 := at("2026-01-01T10:00:00Z")
	observe := func(id string, when time.Time, data events.Payload) {
		t.Helper()
		e := events.MustNew(events.Meta{ID: id, Source: "backstream/test/x", Plan: "orders", RunID: "01JNR4S7T0000000000000000A", Time: when}, data)
		pts, err := Points(e, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.observe(e, pts)
	}
	damaged := events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubDamaged, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 2, Corrupt: 1}, {Destination: "s3", Checked: 2, Verified: 2}}}
	clean := events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubClean, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 2, Verified: 2}}}
	observe("s2", t0.Add(time.Hour), clean)
	observe("s1", t0, damaged)
	observe("s1", t0, damaged)
	observe("d1", t0.Add(2*time.Hour), events.DrillSucceededData{BackupID: "b", Destination: "local", Target: "x"})
	observe("d0", t0, events.DrillSucceededData{BackupID: "b", Destination: "local", Target: "x"})
	observe("d2", t0.Add(3*time.Hour), events.DrillFailedData{Stage: events.DrillStageRestore, Error: "boom"})

	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"scrubs damaged", testutil.ToFloat64(p.scrubsTotal.WithLabelValues("orders", "damaged")), 1},
		{"scrubs clean", testutil.ToFloat64(p.scrubsTotal.WithLabelValues("orders", "clean")), 1},
		{"unrepaired local (the newer, clean scrub)", testutil.ToFloat64(p.scrubUnrepaired.WithLabelValues("orders", "local")), 0},
		{"unrepaired s3", testutil.ToFloat64(p.scrubUnrepaired.WithLabelValues("orders", "s3")), 0},
		{"drills succeeded", testutil.ToFloat64(p.drillsTotal.WithLabelValues("orders", "succeeded")), 2},
		{"drills failed", testutil.ToFloat64(p.drillsTotal.WithLabelValues("orders", "failed")), 1},
		{"last drill success", testutil.ToFloat64(p.drillLast.WithLabelValues("orders")), float64(t0.Add(2 * time.Hour).Unix())},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
	observe("s3", t0.Add(4*time.Hour), damaged)
	if got := testutil.ToFloat64(p.scrubUnrepaired.WithLabelValues("orders", "local")); got != 1 {
		t.Errorf("unrepaired local after a newer damaged scrub: %v, want 1", got)
	}
}
