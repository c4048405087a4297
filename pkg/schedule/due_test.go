package schedule

import (
	"fmt"
	"testing"
	"time"
)

func TestDue(t *testing.T) {
	base := time.Date(2024, 6, 7, 0, 0, 0, 0, time.UTC)
	h := func(hours float64) time.Time { return base.Add(time.Duration(hours * float64(time.Hour))) }
	const plan = "orders"
	jit := Jitter(plan, time.Time{}, 30*time.Minute)
	tests := []struct {
		name        string
		spec        Spec
		lastFired   time.Time
		now         time.Time
		wantFire    []time.Time
		wantSkipped []time.Time
	}{
		{
			name:      "on time",
			spec:      Spec{Cron: "@hourly"},
			lastFired: h(1), now: h(2).Add(10 * time.Second),
			wantFire: []time.Time{h(2)},
		},
		{
			name:      "nothing due yet",
			spec:      Spec{Cron: "@hourly"},
			lastFired: h(2), now: h(2.5),
		},
		{
			name:      "3-hour outage, run-once fires the newest slot once",
			spec:      Spec{Cron: "@hourly", MissedRunPolicy: MissedRunOnce},
			lastFired: h(1), now: h(4.33),
			wantFire:    []time.Time{h(4)},
			wantSkipped: []time.Time{h(2), h(3)},
		},
		{
			name:      "3-hour outage, skip fires nothing",
			spec:      Spec{Cron: "@hourly", MissedRunPolicy: MissedSkip, StartingDeadline: 5 * time.Minute},
			lastFired: h(1), now: h(4.33),
			wantSkipped: []time.Time{h(2), h(3), h(4)},
		},
		{
			name:      "3-hour outage ending within the deadline, skip fires the newest",
			spec:      Spec{Cron: "@hourly", MissedRunPolicy: MissedSkip, StartingDeadline: 5 * time.Minute},
			lastFired: h(1), now: h(4).Add(4 * time.Minute),
			wantFire:    []time.Time{h(4)},
			wantSkipped: []time.Time{h(2), h(3)},
		},
		{
			name:      "run-once ignores the deadline",
			spec:      Spec{Cron: "@daily", MissedRunPolicy: MissedRunOnce, StartingDeadline: time.Minute},
			lastFired: h(-48), now: h(20),
			wantFire:    []time.Time{h(0)},
			wantSkipped: []time.Time{h(-24)},
		},
		{
			name:      "jitter delays the slot",
			spec:      Spec{Cron: "@hourly", Jitter: 30 * time.Minute},
			lastFired: h(1), now: h(2).Add(jit - time.Second),
		},
		{
			name:      "jitter reached",
			spec:      Spec{Cron: "@hourly", Jitter: 30 * time.Minute},
			lastFired: h(1), now: h(2).Add(jit),
			wantFire: []time.Time{h(2)},
		},
		{
			name:      "skip measures lateness from slot plus jitter",
			spec:      Spec{Cron: "@hourly", Jitter: 30 * time.Minute, MissedRunPolicy: MissedSkip, StartingDeadline: time.Minute},
			lastFired: h(1), now: h(2).Add(jit + 59*time.Second),
			wantFire: []time.Time{h(2)},
		},
		{
			name:      "paused skips everything",
			spec:      Spec{Cron: "@hourly", Paused: true},
			lastFired: h(1), now: h(3.1),
			wantSkipped: []time.Time{h(2), h(3)},
		},
		{
			name:      "zero lastFired: nothing before the plan existed",
			spec:      Spec{Cron: "@hourly"},
			lastFired: time.Time{}, now: h(3.1),
		},
		{
			name:      "lastFired ahead of now (clock skew)",
			spec:      Spec{Cron: "@hourly"},
			lastFired: h(5), now: h(3.1),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sch := mustParse(t, tt.spec)
			fire, skipped := Due(sch, plan, tt.lastFired, tt.now)
			if fmt.Sprint(rfc(fire)) != fmt.Sprint(rfc(tt.wantFire)) {
				t.Errorf("fire = %v, want %v", rfc(fire), rfc(tt.wantFire))
			}
			if fmt.Sprint(rfc(skipped)) != fmt.Sprint(rfc(tt.wantSkipped)) {
				t.Errorf("skipped = %v, want %v", rfc(skipped), rfc(tt.wantSkipped))
			}
		})
	}
}

// schedulerLoop plays a scheduler on a fake clock that ticks every tick from
// start to end, storing the newest handled slot as lastFired, and returns the
// fired slots.
func schedulerLoop(t *testing.T, sch *Schedule, plan string, clock *FakeClock, tick time.Duration, end time.Time) (fired, skipped []time.Time) {
	t.Helper()
	lastFired := clock.Now()
	for clock.Now().Before(end) {
		now := clock.Advance(tick)
		fire, skip := Due(sch, plan, lastFired, now)
		fired = append(fired, fire...)
		skipped = append(skipped, skip...)
		for _, s := range append(fire, skip...) {
			if s.After(lastFired) {
				lastFired = s
			}
		}
	}
	return fired, skipped
}

func TestDueLoopFiresEverySlotOnce(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		from time.Time
		days int
		want int
	}{
		{"Berlin 02:30 over both 2024 transitions", Spec{Cron: "30 2 * * *", Timezone: "Europe/Berlin", Jitter: 20 * time.Minute}, time.Date(2024, 3, 29, 0, 0, 0, 0, time.UTC), 213, 213},
		{"New York hourly over fall back", Spec{Cron: "@hourly", Timezone: "America/New_York", Jitter: 10 * time.Minute}, time.Date(2024, 11, 2, 0, 0, 0, 0, time.UTC), 2, 48},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sch := mustParse(t, tt.spec)
			clock := NewFakeClock(tt.from)
			end := tt.from.AddDate(0, 0, tt.days)
			fired, skipped := schedulerLoop(t, sch, "orders", clock, 7*time.Minute, end)
			if len(skipped) != 0 {
				t.Errorf("skipped %v", rfc(skipped))
			}
			want := sch.Slots(tt.from, clock.Now().Add(-Jitter("orders", time.Time{}, tt.spec.Jitter)))
			if len(want) < tt.want-1 || len(want) > tt.want {
				t.Errorf("%d slots in the period, want about %d", len(want), tt.want)
			}
			if fmt.Sprint(rfc(fired)) != fmt.Sprint(rfc(want)) {
				t.Errorf("fired %v\nwant %v", rfc(fired), rfc(want))
			}
			ids := map[string]bool{}
			for _, s := range fired {
				ids[TriggerID("orders", s)] = true
			}
			if len(ids) != len(fired) {
				t.Errorf("%d fired slots, %d distinct trigger ids", len(fired), len(ids))
			}
		})
	}
}
