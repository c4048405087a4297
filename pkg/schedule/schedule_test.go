package schedule

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func mustParse(t *testing.T, s Spec) *Schedule {
	t.Helper()
	sch, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%+v): %v", s, err)
	}
	return sch
}

func rfc(ts []time.Time) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Format(time.RFC3339)
	}
	return out
}

func TestParseDefaults(t *testing.T) {
	got := mustParse(t, Spec{Cron: "@daily"}).Spec()
	want := Spec{Cron: "@daily", Timezone: "UTC", StartingDeadline: DefaultStartingDeadline, MissedRunPolicy: MissedRunOnce, ConcurrencyPolicy: ConcurrencyForbid}
	if got != want {
		t.Errorf("Spec() = %+v, want %+v", got, want)
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name  string
		give  Spec
		field string
	}{
		{"empty cron", Spec{}, "cron: required"},
		{"six fields", Spec{Cron: "0 0 2 * * *"}, "cron"},
		{"bad field", Spec{Cron: "61 * * * *"}, "cron"},
		{"never fires", Spec{Cron: "0 0 30 2 *"}, "never fires"},
		{"zone in expression", Spec{Cron: "CRON_TZ=Europe/Berlin 0 2 * * *"}, "timezone"},
		{"every too short", Spec{Cron: "@every 10s"}, "@every"},
		{"bad every", Spec{Cron: "@every soon"}, "cron"},
		{"unknown descriptor", Spec{Cron: "@fortnightly"}, "cron"},
		{"bad zone", Spec{Cron: "@daily", Timezone: "Mars/Olympus"}, "timezone"},
		{"local zone", Spec{Cron: "@daily", Timezone: "Local"}, "timezone"},
		{"negative jitter", Spec{Cron: "@daily", Jitter: -time.Second}, "jitter"},
		{"negative deadline", Spec{Cron: "@daily", StartingDeadline: -time.Second}, "startingDeadline"},
		{"missed policy", Spec{Cron: "@daily", MissedRunPolicy: "catch-up"}, "missedRunPolicy"},
		{"concurrency policy", Spec{Cron: "@daily", ConcurrencyPolicy: "queue"}, "concurrencyPolicy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.give)
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Parse = %v, want ErrInvalidSpec", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Parse = %v, does not mention %q", err, tt.field)
			}
		})
	}
}

func TestSlots(t *testing.T) {
	tests := []struct {
		name     string
		spec     Spec
		from, to string
		want     []string
	}{
		{"five fields", Spec{Cron: "15 3 * * 1-5"}, "2024-06-07T00:00:00Z", "2024-06-11T00:00:00Z",
			[]string{"2024-06-07T03:15:00Z", "2024-06-10T03:15:00Z"}},
		{"@hourly", Spec{Cron: "@hourly"}, "2024-06-07T00:00:00Z", "2024-06-07T03:00:00Z",
			[]string{"2024-06-07T01:00:00Z", "2024-06-07T02:00:00Z", "2024-06-07T03:00:00Z"}},
		{"@daily in Berlin", Spec{Cron: "@daily", Timezone: "Europe/Berlin"}, "2024-06-07T00:00:00Z", "2024-06-09T00:00:00Z",
			[]string{"2024-06-08T00:00:00+02:00", "2024-06-09T00:00:00+02:00"}},
		{"@midnight", Spec{Cron: "@midnight"}, "2024-06-07T00:00:00Z", "2024-06-08T00:00:00Z",
			[]string{"2024-06-08T00:00:00Z"}},
		{"@weekly (Sunday)", Spec{Cron: "@weekly"}, "2024-06-01T00:00:00Z", "2024-06-16T00:00:00Z",
			[]string{"2024-06-02T00:00:00Z", "2024-06-09T00:00:00Z", "2024-06-16T00:00:00Z"}},
		{"@monthly", Spec{Cron: "@monthly"}, "2024-01-15T00:00:00Z", "2024-03-15T00:00:00Z",
			[]string{"2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"}},
		{"@yearly", Spec{Cron: "@yearly"}, "2023-06-01T00:00:00Z", "2025-06-01T00:00:00Z",
			[]string{"2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"}},
		{"@annually", Spec{Cron: "@annually"}, "2023-06-01T00:00:00Z", "2024-06-01T00:00:00Z",
			[]string{"2024-01-01T00:00:00Z"}},
		{"@every anchors at the epoch", Spec{Cron: "@every 90m"}, "2024-06-07T00:10:00Z", "2024-06-07T04:00:00Z",
			[]string{"2024-06-07T01:30:00Z", "2024-06-07T03:00:00Z"}},
		{"@every ignores the zone's wall clock", Spec{Cron: "@every 6h", Timezone: "Asia/Kolkata"}, "2024-06-07T00:00:00Z", "2024-06-07T12:00:00Z",
			[]string{"2024-06-07T11:30:00+05:30", "2024-06-07T17:30:00+05:30"}},
		{"from is excluded, to is included", Spec{Cron: "@hourly"}, "2024-06-07T01:00:00Z", "2024-06-07T02:00:00Z",
			[]string{"2024-06-07T02:00:00Z"}},
		{"empty range", Spec{Cron: "@daily"}, "2024-06-07T01:00:00Z", "2024-06-07T02:00:00Z", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sch := mustParse(t, tt.spec)
			from, _ := time.Parse(time.RFC3339, tt.from)
			to, _ := time.Parse(time.RFC3339, tt.to)
			got := rfc(sch.Slots(from, to))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("Slots = %v, want %v", got, tt.want)
			}
		})
	}
}

// Daylight saving time. 2024 transitions: Berlin springs forward on 31 March
// at 02:00 and falls back on 27 October at 03:00; New York springs forward
// on 10 March at 02:00 and falls back on 3 November at 02:00.
func TestSlotsDST(t *testing.T) {
	tests := []struct {
		name     string
		cron     string
		zone     string
		from, to string // local dates, midnight to midnight
		want     []string
	}{
		{"Berlin 02:30 on spring-forward day runs once at 03:30", "30 2 * * *", "Europe/Berlin", "2024-03-30", "2024-04-02",
			[]string{"2024-03-30T02:30:00+01:00", "2024-03-31T03:30:00+02:00", "2024-04-01T02:30:00+02:00"}},
		{"Berlin 02:30 on fall-back day runs once", "30 2 * * *", "Europe/Berlin", "2024-10-26", "2024-10-29",
			[]string{"2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"}},
		{"New York 02:30 on spring-forward day runs once at 03:30", "30 2 * * *", "America/New_York", "2024-03-09", "2024-03-12",
			[]string{"2024-03-09T02:30:00-05:00", "2024-03-10T03:30:00-04:00", "2024-03-11T02:30:00-04:00"}},
		{"New York 01:30 on fall-back day runs once", "30 1 * * *", "America/New_York", "2024-11-02", "2024-11-05",
			[]string{"2024-11-02T01:30:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"}},
		{"Berlin fixed hour every 15 minutes, spring forward", "*/15 2 * * *", "Europe/Berlin", "2024-03-31", "2024-04-01",
			[]string{"2024-03-31T03:00:00+02:00", "2024-03-31T03:15:00+02:00", "2024-03-31T03:30:00+02:00", "2024-03-31T03:45:00+02:00"}},
		{"Berlin fixed hour every 15 minutes, fall back: first pass only", "*/15 2 * * *", "Europe/Berlin", "2024-10-27", "2024-10-28",
			[]string{"2024-10-27T02:00:00+02:00", "2024-10-27T02:15:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-27T02:45:00+02:00"}},
		{"New York hourly through fall back fires in both passes", "30 * * * *", "America/New_York", "2024-11-03T00:00:00", "2024-11-03T03:00:00",
			[]string{"2024-11-03T00:30:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-03T01:30:00-05:00", "2024-11-03T02:30:00-05:00"}},
		{"New York hourly through spring forward", "30 * * * *", "America/New_York", "2024-03-10T00:00:00", "2024-03-10T04:00:00",
			[]string{"2024-03-10T00:30:00-05:00", "2024-03-10T01:30:00-05:00", "2024-03-10T03:30:00-04:00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := mustLoc(t, tt.zone)
			sch := mustParse(t, Spec{Cron: tt.cron, Timezone: tt.zone})
			from, to := localTime(t, tt.from, loc), localTime(t, tt.to, loc)
			got := rfc(sch.Slots(from, to))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("Slots:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func localTime(t *testing.T, s string, loc *time.Location) time.Time {
	t.Helper()
	layout := "2006-01-02"
	if len(s) > len(layout) {
		layout = "2006-01-02T15:04:05"
	}
	v, err := time.ParseInLocation(layout, s, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSlotsPerDayAcrossDST(t *testing.T) {
	tests := []struct {
		name string
		cron string
		zone string
		day  string
		want int
	}{
		{"Berlin hourly on a 23-hour day", "0 * * * *", "Europe/Berlin", "2024-03-31", 23},
		{"Berlin hourly on a 25-hour day", "0 * * * *", "Europe/Berlin", "2024-10-27", 25},
		{"Berlin half-hourly on a 23-hour day", "0,30 * * * *", "Europe/Berlin", "2024-03-31", 46},
		{"Berlin half-hourly on a 25-hour day", "0,30 * * * *", "Europe/Berlin", "2024-10-27", 50},
		{"New York daily on spring-forward day", "30 2 * * *", "America/New_York", "2024-03-10", 1},
		{"New York daily on fall-back day", "30 1 * * *", "America/New_York", "2024-11-03", 1},
		{"Lord Howe (30-minute shift) daily", "15 2 * * *", "Australia/Lord_Howe", "2024-10-06", 1},
		{"Lord Howe (30-minute shift) daily, back", "45 1 * * *", "Australia/Lord_Howe", "2024-04-07", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := mustLoc(t, tt.zone)
			sch := mustParse(t, Spec{Cron: tt.cron, Timezone: tt.zone})
			from := localTime(t, tt.day, loc)
			to := time.Date(from.Year(), from.Month(), from.Day()+1, 0, 0, 0, 0, loc)
			if got := len(sch.Slots(from.Add(-time.Nanosecond), to.Add(-time.Nanosecond))); got != tt.want {
				t.Errorf("%d slots on %s, want %d", got, tt.day, tt.want)
			}
		})
	}
}

// Over a year in zones with DST, slots are strictly increasing, each Next is
// the following slot, and the scan never lets Next go backwards.
func TestSlotsMonotonic(t *testing.T) {
	specs := []string{"30 2 * * *", "0,30 * * * *", "*/20 1-3 * * *", "0 0 * * 0", "@hourly"}
	zones := []string{"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"}
	from := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(1, 0, 0)
	for _, zone := range zones {
		for _, c := range specs {
			sch := mustParse(t, Spec{Cron: c, Timezone: zone})
			slots := sch.Slots(from, to)
			for i := 1; i < len(slots); i++ {
				if !slots[i].After(slots[i-1]) {
					t.Fatalf("%s in %s: slot %v after %v", c, zone, slots[i], slots[i-1])
				}
				if mid := slots[i-1].Add(slots[i].Sub(slots[i-1]) / 2); !sch.Next(mid).Equal(slots[i]) {
					t.Fatalf("%s in %s: Next(%v) = %v, want %v", c, zone, mid, sch.Next(mid), slots[i])
				}
			}
		}
	}
}

func TestJitter(t *testing.T) {
	slot := time.Date(2024, 6, 7, 2, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		max  time.Duration
	}{
		{"zero", 0},
		{"negative", -time.Minute},
		{"sub-second", 500 * time.Millisecond},
		{"ten minutes", 10 * time.Minute},
		{"an hour", time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			distinct := map[time.Duration]bool{}
			for i := range 200 {
				plan := fmt.Sprintf("plan-%d", i)
				first := Jitter(plan, slot, tt.max)
				// A "restart" or another replica recomputes from the same inputs.
				if again := Jitter(plan, slot, tt.max); again != first {
					t.Fatalf("Jitter(%s) = %v, then %v", plan, first, again)
				}
				if other := Jitter(plan, slot.Add(24*time.Hour), tt.max); other != first {
					t.Fatalf("Jitter(%s) differs between slots: %v, %v", plan, first, other)
				}
				if first < 0 || (tt.max > 0 && first >= tt.max) || (tt.max <= 0 && first != 0) {
					t.Fatalf("Jitter(%s, %v) = %v, out of bounds", plan, tt.max, first)
				}
				distinct[first] = true
			}
			if tt.max >= time.Minute && len(distinct) < 20 {
				t.Errorf("200 plans share only %d jitter values", len(distinct))
			}
		})
	}
}

func TestFireTimeAndNextFire(t *testing.T) {
	sch := mustParse(t, Spec{Cron: "@hourly", Jitter: 10 * time.Minute})
	j := Jitter("orders", time.Time{}, 10*time.Minute)
	slot := time.Date(2024, 6, 7, 2, 0, 0, 0, time.UTC)
	if got := sch.FireTime("orders", slot); !got.Equal(slot.Add(j)) {
		t.Errorf("FireTime = %v, want %v", got, slot.Add(j))
	}
	// Just after 02:00 but before 02:00+jitter, the 02:00 slot is still to fire.
	gotSlot, gotFire := sch.NextFire("orders", slot.Add(j-time.Second))
	if !gotSlot.Equal(slot) || !gotFire.Equal(slot.Add(j)) {
		t.Errorf("NextFire = %v, %v; want %v, %v", gotSlot, gotFire, slot, slot.Add(j))
	}
	gotSlot, _ = sch.NextFire("orders", slot.Add(j))
	if want := slot.Add(time.Hour); !gotSlot.Equal(want) {
		t.Errorf("NextFire at the fire time = %v, want %v", gotSlot, want)
	}
}

func TestTriggerID(t *testing.T) {
	sch := mustParse(t, Spec{Cron: "*/5 * * * *", Timezone: "Europe/Berlin"})
	slots := sch.Slots(time.Date(2024, 10, 26, 23, 0, 0, 0, time.UTC), time.Date(2024, 10, 27, 23, 0, 0, 0, time.UTC))[:100]
	ids := map[string]bool{}
	for _, s := range slots {
		ids[TriggerID("orders", s)] = true
	}
	if len(ids) != 100 {
		t.Errorf("100 slots gave %d distinct trigger ids", len(ids))
	}
	slot := time.Date(2024, 6, 7, 2, 0, 0, 0, time.UTC)
	if got, want := TriggerID("orders", slot), "sched-orders-1717725600"; got != want {
		t.Errorf("TriggerID = %s, want %s", got, want)
	}
	berlin := mustLoc(t, "Europe/Berlin")
	if TriggerID("orders", slot) != TriggerID("orders", slot.In(berlin)) {
		t.Error("TriggerID depends on the zone the slot is shown in")
	}
}

func TestFakeClock(t *testing.T) {
	start := time.Date(2024, 6, 7, 2, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	if !c.Now().Equal(start) {
		t.Fatalf("Now = %v", c.Now())
	}
	if got := c.Advance(90 * time.Minute); !got.Equal(start.Add(90*time.Minute)) || !c.Now().Equal(got) {
		t.Errorf("Advance = %v, Now = %v", got, c.Now())
	}
	c.Set(start)
	if !c.Now().Equal(start) {
		t.Errorf("after Set, Now = %v", c.Now())
	}
}

// The fast path of Next (far from offset changes) agrees with the full scan.
func TestNextFastPathAgreesWithScan(t *testing.T) {
	specs := []string{"30 2 * * *", "0,30 * * * *", "*/20 1-3 * * *", "0 0 1 * *", "@hourly", "@yearly"}
	zones := []string{"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"}
	for _, zone := range zones {
		for _, c := range specs {
			sch := mustParse(t, Spec{Cron: c, Timezone: zone})
			for at := time.Date(2024, 1, 1, 0, 7, 0, 0, time.UTC); at.Year() == 2024; at = at.Add(181 * time.Minute) {
				if fast, scan := sch.Next(at), sch.nextScan(at); !fast.Equal(scan) {
					t.Fatalf("%s in %s: Next(%v) = %v, scan gives %v", c, zone, at, fast, scan)
				}
			}
		}
	}
}
