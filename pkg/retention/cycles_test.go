package retention

import (
	"reflect"
	"testing"
	"time"
)

func TestCycles(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	all := []string{CycleHourly, CycleDaily, CycleWeekly, CycleMonthly, CycleQuarterly, CycleYearly}
	tests := []struct {
		name string
		t    string
		loc  *time.Location
		prev []string
		want []string
		most string
	}{
		{name: "first ever", t: "2024-06-05T10:00:00Z", loc: time.UTC, want: all, most: CycleYearly},
		{name: "second in its hour", t: "2024-06-05T10:30:00Z", loc: time.UTC, prev: []string{"2024-06-05T10:00:00Z"}, want: nil, most: CycleNone},
		{name: "first of hour", t: "2024-06-05T11:00:00Z", loc: time.UTC, prev: []string{"2024-06-05T10:00:00Z"}, want: []string{CycleHourly}, most: CycleHourly},
		{name: "first of day", t: "2024-06-06T00:10:00Z", loc: time.UTC, prev: []string{"2024-06-05T10:00:00Z"}, want: []string{CycleHourly, CycleDaily}, most: CycleDaily},
		{name: "first of ISO week (Monday)", t: "2024-06-10T00:10:00Z", loc: time.UTC, prev: []string{"2024-06-09T10:00:00Z"}, want: []string{CycleHourly, CycleDaily, CycleWeekly}, most: CycleWeekly},
		{name: "first of month, not of week", t: "2024-05-01T00:10:00Z", loc: time.UTC, prev: []string{"2024-04-29T10:00:00Z"}, want: []string{CycleHourly, CycleDaily, CycleMonthly}, most: CycleMonthly},
		{name: "first of quarter", t: "2024-04-01T00:10:00Z", loc: time.UTC, prev: []string{"2024-03-31T10:00:00Z"}, want: []string{CycleHourly, CycleDaily, CycleWeekly, CycleMonthly, CycleQuarterly}, most: CycleQuarterly},
		{name: "first of year", t: "2025-01-01T00:10:00Z", loc: time.UTC, prev: []string{"2024-12-31T10:00:00Z"}, want: []string{CycleHourly, CycleDaily, CycleMonthly, CycleQuarterly, CycleYearly}, most: CycleYearly},
		{name: "later backups are ignored", t: "2024-06-05T10:30:00Z", loc: time.UTC, prev: []string{"2024-06-05T10:40:00Z"}, want: all, most: CycleYearly},
		{name: "same day in UTC, new day in Berlin", t: "2024-06-05T22:30:00Z", loc: berlin, prev: []string{"2024-06-05T21:30:00Z"}, want: []string{CycleHourly, CycleDaily}, most: CycleDaily},
		{name: "same day in UTC, same in UTC zone", t: "2024-06-05T22:30:00Z", loc: time.UTC, prev: []string{"2024-06-05T21:30:00Z"}, want: []string{CycleHourly}, most: CycleHourly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prev []time.Time
			for _, p := range tt.prev {
				prev = append(prev, at(p))
			}
			got := Cycles(at(tt.t), tt.loc, prev)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Cycles = %v, want %v", got, tt.want)
			}
			if m := MostSignificant(got); m != tt.most {
				t.Errorf("MostSignificant = %s, want %s", m, tt.most)
			}
		})
	}
}

func TestLifecycleRules(t *testing.T) {
	tests := []struct {
		name string
		give Policy
		want []LifecycleRule
	}{
		{
			name: "worked example",
			give: Policy{KeepDaily: 9, KeepWeekly: 5, KeepMonthly: 12, KeepQuarterly: 8, KeepYearly: 10},
			want: []LifecycleRule{
				{CycleDaily, 10},
				{CycleWeekly, 42},
				{CycleMonthly, 403},
				{CycleQuarterly, 828},
				{CycleYearly, 4026},
			},
		},
		{
			name: "a more significant cycle never expires before a lesser one",
			give: Policy{KeepDaily: 40, KeepWeekly: 2},
			want: []LifecycleRule{{CycleDaily, 41}, {CycleWeekly, 41}, {CycleMonthly, 41}, {CycleQuarterly, 41}, {CycleYearly, 41}},
		},
		{
			name: "hourly rounds up to days",
			give: Policy{KeepHourly: 30},
			want: []LifecycleRule{{CycleHourly, 3}, {CycleDaily, 3}, {CycleWeekly, 3}, {CycleMonthly, 3}, {CycleQuarterly, 3}, {CycleYearly, 3}},
		},
		{
			name: "keepWithin is a floor for every cycle, none included",
			give: Policy{KeepWithin: Duration{Days: 7}, KeepMonthly: 1},
			want: []LifecycleRule{{CycleNone, 8}, {CycleHourly, 8}, {CycleDaily, 8}, {CycleWeekly, 8}, {CycleMonthly, 62}, {CycleQuarterly, 62}, {CycleYearly, 62}},
		},
		{
			name: "keepWithinDaily",
			give: Policy{KeepWithinDaily: Duration{Weeks: 2}},
			want: []LifecycleRule{{CycleDaily, 15}, {CycleWeekly, 15}, {CycleMonthly, 15}, {CycleQuarterly, 15}, {CycleYearly, 15}},
		},
		{
			name: "unlimited stops the rules",
			give: Policy{KeepDaily: 7, KeepMonthly: Unlimited},
			want: []LifecycleRule{{CycleDaily, 8}, {CycleWeekly, 8}},
		},
		{
			name: "keepLast has no age",
			give: Policy{KeepLast: 5},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LifecycleRules(tt.give); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LifecycleRules = %v, want %v", got, tt.want)
			}
		})
	}
}
