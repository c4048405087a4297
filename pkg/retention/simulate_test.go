package retention

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSimulate(t *testing.T) {
	backups := `[
		{"id": "a", "time": "2024-06-05T01:00:00Z"},
		{"id": "u", "time": "2024-06-06T01:00:00+02:00", "verified": false},
		{"id": "b", "time": "2024-06-04T01:00:00Z", "tags": ["pinned"]},
		{"id": "c", "time": "2024-06-03T01:00:00Z", "verified": true}
	]`
	want := []SimulatedDecision{
		{ID: "u", Time: "2024-06-05T23:00:00Z", Action: "keep", Reasons: []string{ReasonPendingVerify}},
		{ID: "a", Time: "2024-06-05T01:00:00Z", Action: "keep", Reasons: []string{ReasonNewestVerified, "last #1"}},
		{ID: "b", Time: "2024-06-04T01:00:00Z", Action: "keep", Reasons: []string{"tag pinned"}},
		{ID: "c", Time: "2024-06-03T01:00:00Z", Action: "remove", Reasons: []string{ReasonNoRule}},
	}
	tests := []struct {
		name   string
		policy string
	}{
		{"yaml", "keepLast: 1\nkeepTags: [pinned]\n"},
		{"json", `{"keepLast": 1, "keepTags": ["pinned"]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Simulate([]byte(tt.policy), []byte(backups), now, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			var got []SimulatedDecision
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d decisions, want %d:\n%s", len(got), len(want), out)
			}
			for i := range want {
				if got[i].ID != want[i].ID || got[i].Time != want[i].Time || got[i].Action != want[i].Action || strings.Join(got[i].Reasons, "|") != strings.Join(want[i].Reasons, "|") {
					t.Errorf("decision %d = %+v, want %+v", i, got[i], want[i])
				}
			}
		})
	}
}

func TestSimulateErrors(t *testing.T) {
	const okPolicy = "keepDaily: 3"
	const okBackups = `[{"id": "a", "time": "2024-06-05T01:00:00Z"}]`
	tests := []struct {
		name     string
		policy   string
		backups  string
		wantText string
		wantIs   error
	}{
		{"empty policy text", "", okBackups, "keeps nothing", ErrEmptyPolicy},
		{"policy without rules", "{}", okBackups, "keeps nothing", ErrEmptyPolicy},
		{"negative count", "keepWeekly: -4", okBackups, "keepWeekly", ErrInvalidPolicy},
		{"unknown field", "keepDayly: 3", okBackups, "keepDayly", nil},
		{"bad duration", "keepWithin: 7x", okBackups, "7x", ErrInvalidDuration},
		{"backups not a list", okPolicy, `{"id": "a"}`, "parse backups", nil},
		{"missing id", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00Z"}, {"time": "2024-06-05T01:00:00Z"}]`, "backups[1].id", nil},
		{"missing time", okPolicy, `[{"id": "a"}]`, "backups[0].time: required", nil},
		{"bad time", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00Z"}, {"id": "b", "time": "yesterday"}]`, "backups[1].time", nil},
		{"time without zone", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00"}]`, "backups[0].time", nil},
		{"bad verified", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00Z", "verified": "yes"}]`, "backups[0]", nil},
		{"unknown backup field", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00Z", "size": 3}]`, "backups[0]", nil},
		{"duplicate id", okPolicy, `[{"id": "a", "time": "2024-06-05T01:00:00Z"}, {"id": "a", "time": "2024-06-04T01:00:00Z"}]`, "backups[1].id", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Simulate([]byte(tt.policy), []byte(tt.backups), now, time.UTC)
			if err == nil {
				t.Fatal("Simulate succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not contain %q", err, tt.wantText)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
		})
	}
}

// The worked example of docs/retention.md: one verified backup a day at
// 02:00 Berlin time for three years, policy 9 daily, 5 weekly, 12 monthly,
// 8 quarterly, 10 yearly.
func TestWorkedExample(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{KeepDaily: 9, KeepWeekly: 5, KeepMonthly: 12, KeepQuarterly: 8, KeepYearly: 10}
	var backups []Backup
	end := time.Date(2025, 6, 18, 2, 0, 0, 0, berlin) // a Wednesday
	for i := 0; ; i++ {
		d := time.Date(2022, 6, 18+i, 2, 0, 0, 0, berlin)
		if d.After(end) {
			break
		}
		backups = append(backups, Backup{ID: d.Format("2006-01-02"), Time: d, Verified: true})
	}
	ds, err := Apply(p, backups, end.Add(time.Hour), berlin)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, d := range ds {
		if d.Keep {
			lines = append(lines, d.Backup.ID+" "+strings.Join(d.Reasons, ", "))
		}
	}
	want := strings.TrimSpace(workedExample)
	if got := strings.Join(lines, "\n"); got != want {
		t.Errorf("kept:\n%s\nwant:\n%s", got, want)
	}
}

const workedExample = `
2025-06-18 newest verified, daily #1, weekly #1, monthly #1, quarterly #1, yearly #1
2025-06-17 daily #2
2025-06-16 daily #3
2025-06-15 daily #4, weekly #2
2025-06-14 daily #5
2025-06-13 daily #6
2025-06-12 daily #7
2025-06-11 daily #8
2025-06-10 daily #9
2025-06-08 weekly #3
2025-06-01 weekly #4
2025-05-31 monthly #2
2025-05-25 weekly #5
2025-04-30 monthly #3
2025-03-31 monthly #4, quarterly #2
2025-02-28 monthly #5
2025-01-31 monthly #6
2024-12-31 monthly #7, quarterly #3, yearly #2
2024-11-30 monthly #8
2024-10-31 monthly #9
2024-09-30 monthly #10, quarterly #4
2024-08-31 monthly #11
2024-07-31 monthly #12
2024-06-30 quarterly #5
2024-03-31 quarterly #6
2023-12-31 quarterly #7, yearly #3
2023-09-30 quarterly #8
2022-12-31 yearly #4
2022-06-18 yearly #5 (oldest)
`
