// Package schedule tests the scheduler service on a real embedded NATS with a
// fake clock: every test calls Service.Once at fake ticks instead of sleeping.
package schedule

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/schedule"
	"github.com/backstream/backstream/services/stage"
)

// world is one NATS server, a fake clock and the connections of the test.
type world struct {
	t     *testing.T
	url   string
	clock *sched.FakeClock
	bus   *bus.Bus
	plans *planstore.Store
	runs  *runs.Store
}

func newWorld(t *testing.T, start time.Time) *world {
	srv, b := bustest.Start(t)
	return &world{
		t: t, url: srv.URL(), clock: sched.NewFakeClock(start), bus: b,
		plans: planstore.New(b.Plans, plugins.Default()), runs: runs.NewStore(b.Runs),
	}
}

// replica starts a scheduler replica with a connection of its own, as a
// separate process would have. A new replica is also what a restart is.
func (w *world) replica(name string) *schedule.Service {
	b := bustest.Connect(w.t, w.url, "schedule-"+name)
	reg := plugins.Default()
	d := &stage.Deps{
		Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(w.t), Instance: "schedule-" + name, Now: w.clock.Now,
	}
	d.Owner = control.New(d) // replace fails runs through the owner of run state
	s := schedule.New(d)
	s.Clock = w.clock
	return s
}

// apply stores a plan with the given schedule block (YAML flow mapping).
func (w *world) apply(name, scheduleBlock string) {
	w.t.Helper()
	y := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
    type: command
    command: {argv: ["true"]}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: /tmp/backstream-schedule-test}
  schedule: %s
`, name, scheduleBlock)
	p, err := plan.Parse(name+".yaml", []byte(y))
	if err != nil {
		w.t.Fatalf("parse plan: %v", err)
	}
	if _, err := w.plans.Put(context.Background(), p); err != nil {
		w.t.Fatalf("put plan: %v", err)
	}
}

// once runs one pass of every replica at the clock's now, all at the same
// time, as replicas ticking together would.
func (w *world) once(reps ...*schedule.Service) {
	w.t.Helper()
	var g errgroup.Group
	for _, r := range reps {
		g.Go(func() error { return r.Once(context.Background()) })
	}
	if err := g.Wait(); err != nil {
		w.t.Fatalf("once at %s: %v", w.clock.Now().Format(time.RFC3339), err)
	}
}

// run advances the clock by step up to to, calling once at every tick and
// at to itself.
func (w *world) run(to time.Time, step time.Duration, reps ...*schedule.Service) {
	w.t.Helper()
	for now := w.clock.Now(); now.Before(to); now = w.clock.Advance(step) {
		w.once(reps...)
	}
	w.clock.Set(to)
	w.once(reps...)
}

// stored lists every event of type typ about planName in the events stream.
func (w *world) stored(typ, planName string) []events.Event {
	w.t.Helper()
	ctx := context.Background()
	s, err := w.bus.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		w.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []events.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		e, err := bus.Decode(m.Data)
		if err == nil && e.Type() == typ && e.Subject() == planName {
			out = append(out, e)
		}
	}
	return out
}

// slots returns the slots of the stored triggers of planName, in zone loc,
// formatted as RFC 3339.
func (w *world) slots(planName string, loc *time.Location) []string {
	w.t.Helper()
	var out []string
	for _, e := range w.stored(events.BackupRequested, planName) {
		var d events.BackupRequestedData
		if err := e.DataAs(&d); err != nil || d.Slot == nil {
			w.t.Fatalf("trigger %s: slot missing (%v)", e.ID(), err)
		}
		if e.ID() != sched.TriggerID(planName, *d.Slot) || events.RunID(e) != schedule.SlotRunID(planName, *d.Slot) {
			w.t.Errorf("trigger of slot %s has id %s run %s, want deterministic ids", d.Slot, e.ID(), events.RunID(e))
		}
		out = append(out, d.Slot.In(loc).Format(time.RFC3339))
	}
	return out
}

func mustLoc(t *testing.T, name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestDaylightSavingChangesThroughTheService(t *testing.T) {
	tests := []struct {
		name     string
		zone     string
		cron     string
		from, to string // local dates, the clock runs from 'from' 00:00 to 'to' 00:00
		want     []string
	}{
		{
			name: "berlin spring forward: 02:30 runs at 03:30 once", zone: "Europe/Berlin", cron: "30 2 * * *",
			from: "2024-03-30", to: "2024-04-02",
			want: []string{"2024-03-30T02:30:00+01:00", "2024-03-31T03:30:00+02:00", "2024-04-01T02:30:00+02:00"},
		},
		{
			name: "berlin fall back: 02:30 runs once, in the first pass", zone: "Europe/Berlin", cron: "30 2 * * *",
			from: "2024-10-26", to: "2024-10-29",
			want: []string{"2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"},
		},
		{
			name: "new york spring forward: 02:30 runs at 03:30 once", zone: "America/New_York", cron: "30 2 * * *",
			from: "2024-03-09", to: "2024-03-12",
			want: []string{"2024-03-09T02:30:00-05:00", "2024-03-10T03:30:00-04:00", "2024-03-11T02:30:00-04:00"},
		},
		{
			name: "new york fall back: 01:30 runs once, in the first pass", zone: "America/New_York", cron: "30 1 * * *",
			from: "2024-11-02", to: "2024-11-05",
			want: []string{"2024-11-02T01:30:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"},
		},
		{
			name: "berlin fall back: an hourly job stays hourly (25 slots)", zone: "Europe/Berlin", cron: "30 * * * *",
			from: "2024-10-27", to: "2024-10-28",
			want: hourly(t, "2024-10-27T00:30:00+02:00", 25),
		},
		{
			name: "new york spring forward: an hourly job has 23 slots", zone: "America/New_York", cron: "30 * * * *",
			from: "2024-03-10", to: "2024-03-11",
			want: hourly(t, "2024-03-10T00:30:00-05:00", 23),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := mustLoc(t, tt.zone)
			from, _ := time.ParseInLocation(time.DateOnly, tt.from, loc)
			to, _ := time.ParseInLocation(time.DateOnly, tt.to, loc)
			w := newWorld(t, from.Add(-time.Minute))
			w.apply("dst", fmt.Sprintf(`{cron: %q, timezone: %s}`, tt.cron, tt.zone))
			s := w.replica("a")
			w.once(s) // first sight
			w.run(to, 10*time.Minute, s)
			if got := w.slots("dst", loc); !slices.Equal(got, tt.want) {
				t.Errorf("fired slots:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// hourly lists n slots an hour apart in real time, starting at first,
// shown in first's zone offset as the wall clock of loc would show them.
func hourly(t *testing.T, first string, n int) []string {
	start, err := time.Parse(time.RFC3339, first)
	if err != nil {
		t.Fatal(err)
	}
	loc := mustLoc(t, map[bool]string{true: "Europe/Berlin", false: "America/New_York"}[strings.HasSuffix(first, "+02:00")])
	var out []string
	for i := range n {
		out = append(out, start.Add(time.Duration(i)*time.Hour).In(loc).Format(time.RFC3339))
	}
	return out
}

func TestThreeReplicasOverHundredSlotsTriggerEachOnce(t *testing.T) {
	loc := mustLoc(t, "Europe/Berlin")
	start := time.Date(2024, 10, 25, 0, 0, 0, 0, loc) // crosses the fall-back night
	w := newWorld(t, start)
	w.apply("orders", `{cron: "17 * * * *", timezone: Europe/Berlin, jitter: 20m}`)
	reps := []*schedule.Service{w.replica("a"), w.replica("b"), w.replica("c")}
	sc, err := sched.Parse(sched.Spec{Cron: "17 * * * *", Timezone: "Europe/Berlin", Jitter: 20 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	want := sc.Slots(start, start.Add(99*time.Hour+30*time.Minute))
	if len(want) != 100 {
		t.Fatalf("test setup: %d slots, want 100", len(want))
	}
	end := sc.FireTime("orders", want[99])
	// Ticks of 7 minutes: several ticks fall between a slot and its fire
	// time, and every replica sees every tick. Half-way through, replica b
	// restarts: a fresh instance with a fresh connection.
	half := start.Add(50 * time.Hour)
	w.run(half, 7*time.Minute, reps...)
	reps[1] = w.replica("b-restarted")
	w.run(end, 7*time.Minute, reps...)

	got := w.slots("orders", loc)
	if len(got) != 100 {
		for _, slot := range want {
			if !slices.Contains(got, slot.In(loc).Format(time.RFC3339)) {
				t.Errorf("slot %s not triggered", slot.In(loc).Format(time.RFC3339))
			}
		}
		t.Fatalf("%d triggers in the events stream, want 100", len(got))
	}
	for i, slot := range want {
		if got[i] != slot.In(loc).Format(time.RFC3339) {
			t.Fatalf("trigger %d is for slot %s, want %s", i, got[i], slot.In(loc).Format(time.RFC3339))
		}
	}
}

func TestJitterIsStableAcrossRestarts(t *testing.T) {
	const name = "jittered"
	jitter := sched.Jitter(name, time.Time{}, 30*time.Minute)
	if jitter == 0 {
		t.Fatal("test setup: choose a plan name with a non-zero jitter")
	}
	slot1 := time.Date(2025, 1, 6, 2, 0, 0, 0, time.UTC)
	w := newWorld(t, slot1.Add(-time.Hour))
	w.apply(name, `{cron: "0 2 * * *", jitter: 30m}`)
	tests := []struct {
		slot time.Time
	}{{slot1}, {slot1.AddDate(0, 0, 1)}, {slot1.AddDate(0, 0, 2)}}
	w.once(w.replica("first-sight"))
	for i, tt := range tests {
		// Every slot is handled by a new instance: a restart.
		s := w.replica(fmt.Sprintf("restart-%d", i))
		w.clock.Set(tt.slot.Add(jitter - time.Second))
		w.once(s)
		if n := len(w.stored(events.BackupRequested, name)); n != i {
			t.Fatalf("slot %s fired before slot+jitter (%s): %d triggers", tt.slot, jitter, n)
		}
		w.clock.Set(tt.slot.Add(jitter))
		w.once(s)
		if n := len(w.stored(events.BackupRequested, name)); n != i+1 {
			t.Fatalf("slot %s did not fire at slot+jitter (%s): %d triggers", tt.slot, jitter, n)
		}
	}
}

func TestOutageGivesOneCatchUpRunWithRunOnceAndNoneWithSkip(t *testing.T) {
	tests := []struct {
		policy       string
		wantAfterGap []string // triggers for the slots at 11:00..13:00 when the clock comes back at 13:20
	}{
		{"run-once", []string{"2025-03-03T13:00:00Z"}},
		{"skip", nil},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			ten := time.Date(2025, 3, 3, 10, 0, 0, 0, time.UTC)
			w := newWorld(t, ten.Add(-5*time.Minute))
			w.apply("hourly", fmt.Sprintf(`{cron: "@hourly", missedRunPolicy: %s, startingDeadline: 5m}`, tt.policy))
			s := w.replica("a")
			w.run(ten.Add(time.Minute), time.Minute, s)
			if got := w.slots("hourly", time.UTC); !slices.Equal(got, []string{"2025-03-03T10:00:00Z"}) {
				t.Fatalf("before the outage: %v", got)
			}
			// Three hours pass with no scheduler running; a new one starts.
			w.clock.Set(ten.Add(3*time.Hour + 20*time.Minute))
			s = w.replica("after-outage")
			w.once(s)
			w.once(s)
			want := append([]string{"2025-03-03T10:00:00Z"}, tt.wantAfterGap...)
			if got := w.slots("hourly", time.UTC); !slices.Equal(got, want) {
				t.Fatalf("after the outage: %v, want %v", got, want)
			}
			// Either way the schedule goes on with the next slot.
			w.run(ten.Add(4*time.Hour+time.Minute), time.Minute, s)
			want = append(want, "2025-03-03T14:00:00Z")
			if got := w.slots("hourly", time.UTC); !slices.Equal(got, want) {
				t.Fatalf("next slot: %v, want %v", got, want)
			}
		})
	}
}

func TestPausedPlanFiresNothingAndResumesWithoutBacklog(t *testing.T) {
	start := time.Date(2025, 3, 3, 9, 30, 0, 0, time.UTC)
	w := newWorld(t, start)
	w.apply("pausable", `{cron: "@hourly", paused: true}`)
	s := w.replica("a")
	w.run(start.Add(5*time.Hour), 10*time.Minute, s)
	if got := w.slots("pausable", time.UTC); len(got) != 0 {
		t.Fatalf("paused plan fired %v", got)
	}
	w.apply("pausable", `{cron: "@hourly", paused: false}`)
	w.run(start.Add(7*time.Hour), 10*time.Minute, s)
	want := []string{"2025-03-03T15:00:00Z", "2025-03-03T16:00:00Z"}
	if got := w.slots("pausable", time.UTC); !slices.Equal(got, want) {
		t.Fatalf("after resuming: %v, want %v (no slot of the pause)", got, want)
	}
}

func TestConcurrencyPolicyHeldByTheLease(t *testing.T) {
	first := time.Date(2025, 3, 3, 10, 0, 0, 0, time.UTC)
	second := first.Add(time.Hour)
	tests := []struct {
		policy        string
		wantTriggers  int
		wantFirstRun  runs.Phase
		wantReason    string
		wantFailedEvs int
	}{
		{policy: "forbid", wantTriggers: 1, wantFirstRun: runs.Running},
		{policy: "allow", wantTriggers: 2, wantFirstRun: runs.Running},
		{policy: "replace", wantTriggers: 2, wantFirstRun: runs.Failed, wantReason: schedule.ReplacedReason(second), wantFailedEvs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			w := newWorld(t, first.Add(-5*time.Minute))
			w.apply("busy", fmt.Sprintf(`{cron: "@hourly", concurrencyPolicy: %s}`, tt.policy))
			reps := []*schedule.Service{w.replica("a"), w.replica("b")}
			w.run(first.Add(time.Minute), time.Minute, reps...)
			runID := schedule.SlotRunID("busy", first)
			// The stages picked the first run up and it is still going.
			ctx := context.Background()
			if _, err := w.runs.Ensure(ctx, runs.Run{ID: runID, Plan: "busy", Kind: runs.KindBackup, Phase: runs.Running}); err != nil {
				t.Fatal(err)
			}
			w.run(second.Add(time.Minute), time.Minute, reps...)

			if got := len(w.stored(events.BackupRequested, "busy")); got != tt.wantTriggers {
				t.Errorf("%d triggers, want %d", got, tt.wantTriggers)
			}
			r, err := w.runs.Get(ctx, runID)
			if err != nil {
				t.Fatal(err)
			}
			if r.Phase != tt.wantFirstRun || r.Error != tt.wantReason {
				t.Errorf("first run: %s %q, want %s %q", r.Phase, r.Error, tt.wantFirstRun, tt.wantReason)
			}
			failed := w.stored(events.BackupFailed, "busy")
			if len(failed) != tt.wantFailedEvs {
				t.Fatalf("%d backup.failed events, want %d", len(failed), tt.wantFailedEvs)
			}
			for _, e := range failed {
				var d events.BackupFailedData
				_ = e.DataAs(&d)
				if events.RunID(e) != runID || d.Stage != "schedule" || d.Cause != sched.TriggerID("busy", second) {
					t.Errorf("backup.failed: run %s stage %s cause %s", events.RunID(e), d.Stage, d.Cause)
				}
			}
		})
	}
}

func TestForbidReleasesTheLeaseWhenTheRunEnds(t *testing.T) {
	first := time.Date(2025, 3, 3, 10, 0, 0, 0, time.UTC)
	w := newWorld(t, first.Add(-5*time.Minute))
	w.apply("busy", `{cron: "@hourly"}`)
	s := w.replica("a")
	w.run(first.Add(time.Minute), time.Minute, s)
	ctx := context.Background()
	runID := schedule.SlotRunID("busy", first)
	if _, err := w.runs.Ensure(ctx, runs.Run{ID: runID, Plan: "busy", Kind: runs.KindBackup, Phase: runs.Running}); err != nil {
		t.Fatal(err)
	}
	w.run(first.Add(2*time.Hour+time.Minute), time.Minute, s) // 11:00 and 12:00 skipped
	if _, err := w.runs.Update(ctx, runID, func(r *runs.Run) error { r.Phase = runs.Succeeded; return nil }); err != nil {
		t.Fatal(err)
	}
	w.run(first.Add(3*time.Hour+time.Minute), time.Minute, s)
	want := []string{"2025-03-03T10:00:00Z", "2025-03-03T13:00:00Z"}
	if got := w.slots("busy", time.UTC); !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
}

// A trigger no stage picked up holds the plan for Grace only: a stopped
// hook stage cannot block the schedule for ever.
func TestUnclaimedTriggerHoldsThePlanForGraceOnly(t *testing.T) {
	first := time.Date(2025, 3, 3, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		grace time.Duration
		want  int
	}{
		{schedule.DefaultGrace, 2}, // the 10:00 trigger no longer holds at 11:00
		{90 * time.Minute, 1},      // still holds at 11:00: forbid skips
	}
	for _, tt := range tests {
		t.Run(tt.grace.String(), func(t *testing.T) {
			w := newWorld(t, first.Add(-5*time.Minute))
			w.apply("idle", `{cron: "@hourly"}`)
			s := w.replica("a")
			s.Grace = tt.grace
			w.run(first.Add(time.Hour+time.Minute), time.Minute, s)
			if got := len(w.stored(events.BackupRequested, "idle")); got != tt.want {
				t.Fatalf("%d triggers, want %d", got, tt.want)
			}
		})
	}
}

// TestScrubAndDrillSlotsFireOnTheirOwnSchedules: a plan's scrub and drill
// schedules fire scrub.requested and drill.requested once per slot with
// deterministic ids, apart from its backup schedule, with two replicas,
// and a slot missed during an outage is fired once (run-once).
func TestScrubAndDrillSlotsFireOnTheirOwnSchedules(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	w := newWorld(t, start)
	y := `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: side}
spec:
  source: {type: postgres, postgres: {host: 127.0.0.1, databases: [app]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /tmp/backstream-schedule-test}}]
  schedule: {cron: "0 * * * *"}
  scrub: {schedule: {cron: "30 2 * * *"}, mode: full}
  drill: {schedule: {cron: "0 4 * * 0"}, check: {sql: "SELECT 1"}}
`
	p, err := plan.Parse("side.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.plans.Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	reps := []*schedule.Service{w.replica("a"), w.replica("b")}
	w.run(start.Add(8*24*time.Hour), 20*time.Minute, reps...)

	check := func(typ, side string, want int) {
		t.Helper()
		got := w.stored(typ, "side")
		if len(got) != want {
			t.Fatalf("%d %s events, want %d", len(got), typ, want)
		}
		for _, e := range got {
			var slot *time.Time
			switch typ {
			case events.ScrubRequested:
				var d events.ScrubRequestedData
				_ = e.DataAs(&d)
				slot = d.Slot
			default:
				var d events.DrillRequestedData
				_ = e.DataAs(&d)
				slot = d.Slot
			}
			if slot == nil {
				t.Fatalf("%s %s has no slot", typ, e.ID())
			}
			if id := schedule.SideID("side", side, *slot); e.ID() != id || events.RunID(e) != id {
				t.Errorf("%s of slot %s: id %s runid %s, want %s", typ, slot, e.ID(), events.RunID(e), id)
			}
		}
	}
	check(events.ScrubRequested, schedule.SideScrub, 8) // 02:30 on Mar 1..8
	check(events.DrillRequested, schedule.SideDrill, 2) // Sundays Mar 1 and 8
	if n := len(w.stored(events.BackupRequested, "side")); n != 8*24 {
		t.Errorf("%d backup triggers, want %d", n, 8*24)
	}

	// An outage over two scrub slots fires one catch-up scrub (run-once).
	w.clock.Set(start.Add(10*24*time.Hour + 3*time.Hour))
	w.once(reps...)
	check(events.ScrubRequested, schedule.SideScrub, 9)
}

// A replica that cannot record that it fired a slot says so — only a lost
// compare-and-set is another replica's win — and the slot stays due: the
// next pass fires it again with the same event id, and one trigger is
// stored.
func TestAScheduleStateThatCannotBeRecordedIsAnError(t *testing.T) {
	start := time.Date(2025, 3, 1, 10, 30, 0, 0, time.UTC)
	w := newWorld(t, start)
	w.apply("orders", `{cron: "0 * * * *"}`)
	r := w.replica("a")
	w.once(r)
	w.clock.Set(start.Add(time.Hour))
	leases := r.Bus.Leases
	r.Bus.Leases = bustest.UpdatesFail(leases)
	err := r.Once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "record schedule state") {
		t.Fatalf("pass whose state write failed: %v, want the failure to record the schedule state", err)
	}
	r.Bus.Leases = leases
	w.once(r)
	w.once(r)
	if got := w.slots("orders", time.UTC); !slices.Equal(got, []string{"2025-03-01T11:00:00Z"}) {
		t.Fatalf("triggers stored: %v, want the 11:00 slot once", got)
	}
}
