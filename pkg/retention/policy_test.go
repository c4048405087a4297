package retention

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		give    string
		want    Duration
		wantErr bool
	}{
		{give: "7d", want: Duration{Days: 7}},
		{give: "2w", want: Duration{Weeks: 2}},
		{give: "36h", want: Duration{Hours: 36}},
		{give: "1y2m3d", want: Duration{Years: 1, Months: 2, Days: 3}},
		{give: "1y2m1w3d4h", want: Duration{Years: 1, Months: 2, Weeks: 1, Days: 3, Hours: 4}},
		{give: "", want: Duration{}},
		{give: "7", wantErr: true},
		{give: "d", wantErr: true},
		{give: "-1d", wantErr: true},
		{give: "1x", wantErr: true},
		{give: "1d2d", wantErr: true},
		{give: "1.5d", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			got, err := ParseDuration(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseDuration(%q) error %v, wantErr %v", tt.give, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidDuration) {
				t.Errorf("error %v is not ErrInvalidDuration", err)
			}
			if got != tt.want {
				t.Errorf("ParseDuration(%q) = %+v, want %+v", tt.give, got, tt.want)
			}
		})
	}
}

func TestDurationBeforeIsCalendarAware(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// 2024-03-31 has 23 hours in Berlin: one calendar day back is 23 h back.
	end := time.Date(2024, 4, 1, 0, 0, 0, 0, berlin)
	got := MustParseDuration("1d").Before(end, berlin)
	if want := time.Date(2024, 3, 31, 0, 0, 0, 0, berlin); !got.Equal(want) {
		t.Errorf("Before = %v, want %v", got, want)
	}
	if end.Sub(got) != 23*time.Hour {
		t.Errorf("a calendar day across spring-forward is %v, want 23h", end.Sub(got))
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name      string
		give      Policy
		wantErr   error
		wantField string
	}{
		{name: "counts", give: Policy{KeepDaily: 7, KeepMonthly: Unlimited}},
		{name: "within only", give: Policy{KeepWithin: Duration{Days: 3}}},
		{name: "within daily only", give: Policy{KeepWithinDaily: Duration{Days: 3}}},
		{name: "tags only", give: Policy{KeepTags: []string{"pinned"}}},
		{name: "empty", give: Policy{}, wantErr: ErrEmptyPolicy},
		{name: "negative last", give: Policy{KeepLast: -2}, wantErr: ErrInvalidPolicy, wantField: "keepLast"},
		{name: "negative hourly", give: Policy{KeepHourly: -5, KeepDaily: 1}, wantErr: ErrInvalidPolicy, wantField: "keepHourly"},
		{name: "negative daily", give: Policy{KeepDaily: -3}, wantErr: ErrInvalidPolicy, wantField: "keepDaily"},
		{name: "negative weekly", give: Policy{KeepWeekly: -3}, wantErr: ErrInvalidPolicy, wantField: "keepWeekly"},
		{name: "negative monthly", give: Policy{KeepMonthly: -3}, wantErr: ErrInvalidPolicy, wantField: "keepMonthly"},
		{name: "negative quarterly", give: Policy{KeepQuarterly: -3}, wantErr: ErrInvalidPolicy, wantField: "keepQuarterly"},
		{name: "negative yearly", give: Policy{KeepYearly: -3}, wantErr: ErrInvalidPolicy, wantField: "keepYearly"},
		{name: "empty tag", give: Policy{KeepTags: []string{"a,"}}, wantErr: ErrInvalidPolicy, wantField: "keepTags[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("Validate = %v, does not name %s", err, tt.wantField)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	err := Policy{KeepDaily: -2, KeepYearly: -9}.Validate()
	for _, field := range []string{"keepDaily", "keepYearly"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate = %v, does not name %s", err, field)
		}
	}
}

func TestPolicyEncodings(t *testing.T) {
	want := Policy{KeepDaily: 9, KeepQuarterly: 8, KeepWithin: Duration{Days: 7}, KeepWithinDaily: Duration{Weeks: 2}, KeepTags: []string{"pinned"}}
	tests := []struct {
		name      string
		marshal   func(any) ([]byte, error)
		unmarshal func([]byte, any) error
		wantText  string
	}{
		{"json", json.Marshal, json.Unmarshal, `{"keepDaily":9,"keepQuarterly":8,"keepWithin":"7d","keepWithinDaily":"2w","keepTags":["pinned"]}`},
		{"yaml", yaml.Marshal, yaml.Unmarshal, "keepDaily: 9\nkeepQuarterly: 8\nkeepWithin: 7d\nkeepWithinDaily: 2w\nkeepTags:\n    - pinned\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.wantText {
				t.Errorf("marshal = %s, want %s", b, tt.wantText)
			}
			var got Policy
			if err := tt.unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip = %+v, want %+v", got, want)
			}
		})
	}
}
