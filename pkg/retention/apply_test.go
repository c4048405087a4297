package retention

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func bk(id, ts string, tags ...string) Backup {
	return Backup{ID: id, Time: at(ts), Tags: tags, Verified: true}
}

func unverified(b Backup) Backup { b.Verified = false; return b }

// kept maps the kept IDs to their reasons.
func kept(ds []Decision) map[string][]string {
	out := map[string][]string{}
	for _, d := range ds {
		if d.Keep {
			out[d.Backup.ID] = d.Reasons
		}
	}
	return out
}

func equalKept(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

var now = at("2024-06-30T12:00:00Z")

func TestApplyRules(t *testing.T) {
	daily := []Backup{
		bk("d1", "2024-06-05T01:00:00Z"),
		bk("d2", "2024-06-04T01:00:00Z"),
		bk("d3", "2024-06-03T01:00:00Z"),
		bk("d4", "2024-06-02T01:00:00Z"),
		bk("d5", "2024-06-01T01:00:00Z"),
	}
	tests := []struct {
		name    string
		policy  Policy
		backups []Backup
		want    map[string][]string
	}{
		{
			name:    "keepLast",
			policy:  Policy{KeepLast: 3},
			backups: daily,
			want: map[string][]string{
				"d1": {ReasonNewestVerified, "last #1"},
				"d2": {"last #2"},
				"d3": {"last #3"},
			},
		},
		{
			name:   "keepHourly keeps the newest of each hour",
			policy: Policy{KeepHourly: 2},
			backups: []Backup{
				bk("h10c", "2024-06-05T10:50:00Z"),
				bk("h10b", "2024-06-05T10:30:00Z"),
				bk("h10a", "2024-06-05T10:10:00Z"),
				bk("h9b", "2024-06-05T09:40:00Z"),
				bk("h9a", "2024-06-05T09:10:00Z"),
				bk("h8", "2024-06-05T08:10:00Z"),
			},
			want: map[string][]string{
				"h10c": {ReasonNewestVerified, "hourly #1"},
				"h9b":  {"hourly #2"},
			},
		},
		{
			name:   "keepDaily counts only days that hold a backup",
			policy: Policy{KeepDaily: 3},
			backups: []Backup{
				bk("a", "2024-06-20T01:00:00Z"),
				bk("b", "2024-06-10T23:00:00Z"),
				bk("c", "2024-06-10T01:00:00Z"),
				bk("d", "2024-06-01T01:00:00Z"),
				bk("e", "2024-05-01T01:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "daily #1"},
				"b": {"daily #2"},
				"d": {"daily #3"},
			},
		},
		{
			name:    "keepDaily unlimited",
			policy:  Policy{KeepDaily: Unlimited},
			backups: daily,
			want: map[string][]string{
				"d1": {ReasonNewestVerified, "daily #1"},
				"d2": {"daily #2"},
				"d3": {"daily #3"},
				"d4": {"daily #4"},
				"d5": {"daily #5"},
			},
		},
		{
			name:   "oldest is kept while counts are left",
			policy: Policy{KeepDaily: 5},
			backups: []Backup{
				bk("a", "2024-06-02T10:00:00Z"),
				bk("b", "2024-06-01T10:00:00Z"),
				bk("c", "2024-06-01T05:00:00Z"),
				bk("d", "2024-06-01T01:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "daily #1"},
				"b": {"daily #2"},
				"d": {"daily #3 (oldest)"},
			},
		},
		{
			name:   "keepWeekly uses ISO weeks (Sunday and Monday differ)",
			policy: Policy{KeepWeekly: 2},
			backups: []Backup{
				bk("mon", "2024-06-03T01:00:00Z"),
				bk("sun", "2024-06-02T23:00:00Z"),
				bk("sat", "2024-06-01T01:00:00Z"),
				bk("prev", "2024-05-20T01:00:00Z"),
			},
			want: map[string][]string{
				"mon": {ReasonNewestVerified, "weekly #1"},
				"sun": {"weekly #2"},
			},
		},
		{
			name:   "keepMonthly",
			policy: Policy{KeepMonthly: 2},
			backups: []Backup{
				bk("jun", "2024-06-01T01:00:00Z"),
				bk("may31", "2024-05-31T01:00:00Z"),
				bk("may1", "2024-05-01T01:00:00Z"),
				bk("apr", "2024-04-30T01:00:00Z"),
			},
			want: map[string][]string{
				"jun":   {ReasonNewestVerified, "monthly #1"},
				"may31": {"monthly #2"},
			},
		},
		{
			name:   "keepQuarterly uses calendar quarters",
			policy: Policy{KeepQuarterly: 3},
			backups: []Backup{
				bk("q2apr", "2024-04-01T01:00:00Z"),
				bk("q1mar", "2024-03-31T01:00:00Z"),
				bk("q1jan", "2024-01-01T01:00:00Z"),
				bk("q4dec", "2023-12-31T01:00:00Z"),
				bk("q4oct", "2023-10-01T01:00:00Z"),
				bk("q3sep", "2023-09-30T01:00:00Z"),
			},
			want: map[string][]string{
				"q2apr": {ReasonNewestVerified, "quarterly #1"},
				"q1mar": {"quarterly #2"},
				"q4dec": {"quarterly #3"},
			},
		},
		{
			name:   "keepYearly",
			policy: Policy{KeepYearly: 2},
			backups: []Backup{
				bk("y24", "2024-01-01T01:00:00Z"),
				bk("y23b", "2023-12-31T01:00:00Z"),
				bk("y23a", "2023-01-01T01:00:00Z"),
				bk("y22", "2022-06-01T01:00:00Z"),
			},
			want: map[string][]string{
				"y24":  {ReasonNewestVerified, "yearly #1"},
				"y23b": {"yearly #2"},
			},
		},
		{
			name:   "keepWithin counts back from the newest backup, not from now",
			policy: Policy{KeepWithin: MustParseDuration("2d")},
			backups: []Backup{
				bk("a", "2024-01-10T12:00:00Z"),
				bk("b", "2024-01-09T12:00:00Z"),
				bk("c", "2024-01-08T12:00:01Z"),
				bk("d", "2024-01-08T12:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "within 2d"},
				"b": {"within 2d"},
				"c": {"within 2d"},
			},
		},
		{
			name:   "keepWithinDaily keeps the newest of each day in the window",
			policy: Policy{KeepWithinDaily: MustParseDuration("2d")},
			backups: []Backup{
				bk("a", "2024-06-10T12:00:00Z"),
				bk("b", "2024-06-10T06:00:00Z"),
				bk("c", "2024-06-09T06:00:00Z"),
				bk("d", "2024-06-08T13:00:00Z"),
				bk("e", "2024-06-08T06:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "daily within 2d"},
				"c": {"daily within 2d"},
				"d": {"daily within 2d"},
			},
		},
		{
			name:   "keepWithinHourly, Weekly, Monthly, Quarterly and Yearly",
			policy: Policy{KeepWithinHourly: MustParseDuration("1h"), KeepWithinWeekly: MustParseDuration("1w"), KeepWithinMonthly: MustParseDuration("1m"), KeepWithinQuarterly: MustParseDuration("3m"), KeepWithinYearly: MustParseDuration("1y")},
			backups: []Backup{
				bk("a", "2024-06-10T12:00:00Z"),
				bk("b", "2024-06-10T11:30:00Z"),
				bk("c", "2024-06-09T11:30:00Z"),
				bk("d", "2024-05-20T11:30:00Z"),
				bk("e", "2024-03-20T11:30:00Z"),
				bk("f", "2023-12-20T11:30:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "hourly within 1h", "weekly within 1w", "monthly within 1m", "quarterly within 3m", "yearly within 1y"},
				"b": {"hourly within 1h"},
				"c": {"weekly within 1w"},
				"d": {"monthly within 1m"},
				"e": {"quarterly within 3m"},
				"f": {"yearly within 1y"},
			},
		},
		{
			name:   "keepTags, single and AND lists",
			policy: Policy{KeepTags: []string{"pinned", "release,prod"}},
			backups: []Backup{
				bk("a", "2024-06-05T01:00:00Z"),
				bk("b", "2024-06-04T01:00:00Z", "pinned"),
				bk("c", "2024-06-03T01:00:00Z", "release"),
				bk("d", "2024-06-02T01:00:00Z", "prod", "release", "pinned"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified},
				"b": {"tag pinned"},
				"d": {"tag pinned", "tag release,prod"},
			},
		},
		{
			name:   "rules are ORed",
			policy: Policy{KeepLast: 1, KeepMonthly: 2},
			backups: []Backup{
				bk("a", "2024-06-05T01:00:00Z"),
				bk("b", "2024-06-04T01:00:00Z"),
				bk("c", "2024-05-04T01:00:00Z"),
				bk("d", "2024-04-04T01:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified, "last #1", "monthly #1"},
				"c": {"monthly #2"},
			},
		},
		{
			name:   "ties in one bucket at the same time: the greater ID wins",
			policy: Policy{KeepDaily: 2},
			backups: []Backup{
				bk("01HA", "2024-06-05T01:00:00Z"),
				bk("01HC", "2024-06-05T01:00:00Z"),
				bk("01HB", "2024-06-05T01:00:00Z"),
				bk("01H0", "2024-06-04T01:00:00Z"),
				bk("01H1", "2024-06-04T01:00:00Z"),
			},
			want: map[string][]string{
				"01HC": {ReasonNewestVerified, "daily #1"},
				"01H1": {"daily #2"},
			},
		},
		{
			name:   "future-dated backups are kept and take no slot",
			policy: Policy{KeepLast: 1},
			backups: []Backup{
				bk("future", "2024-07-30T01:00:00Z"),
				bk("a", "2024-06-05T01:00:00Z"),
				bk("b", "2024-06-04T01:00:00Z"),
			},
			want: map[string][]string{
				"future": {ReasonFutureDated},
				"a":      {ReasonNewestVerified, "last #1"},
			},
		},
		{
			name:   "unverified: newer than the newest verified pending, older removed",
			policy: Policy{KeepLast: 2},
			backups: []Backup{
				unverified(bk("u1", "2024-06-06T01:00:00Z")),
				bk("a", "2024-06-05T01:00:00Z"),
				unverified(bk("u2", "2024-06-04T12:00:00Z")),
				bk("b", "2024-06-04T01:00:00Z"),
				bk("c", "2024-06-03T01:00:00Z"),
			},
			want: map[string][]string{
				"u1": {ReasonPendingVerify},
				"a":  {ReasonNewestVerified, "last #1"},
				"b":  {"last #2"},
			},
		},
		{
			name:   "no verified backup: every unverified one is pending",
			policy: Policy{KeepLast: 1},
			backups: []Backup{
				unverified(bk("u1", "2024-06-06T01:00:00Z")),
				unverified(bk("u2", "2024-06-05T01:00:00Z")),
			},
			want: map[string][]string{
				"u1": {ReasonPendingVerify},
				"u2": {ReasonPendingVerify},
			},
		},
		{
			name:   "newest verified survives a tags-only policy",
			policy: Policy{KeepTags: []string{"pinned"}},
			backups: []Backup{
				bk("a", "2024-06-05T01:00:00Z"),
				bk("b", "2024-06-04T01:00:00Z"),
			},
			want: map[string][]string{
				"a": {ReasonNewestVerified},
			},
		},
		{
			name:    "no backups",
			policy:  Policy{KeepLast: 1},
			backups: nil,
			want:    map[string][]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Apply(tt.policy, tt.backups, now, time.UTC)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if len(ds) != len(tt.backups) {
				t.Fatalf("got %d decisions for %d backups", len(ds), len(tt.backups))
			}
			if got := kept(ds); !equalKept(got, tt.want) {
				t.Errorf("kept:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestApplyRemoveReasons(t *testing.T) {
	ds, err := Apply(Policy{KeepLast: 1}, []Backup{
		bk("a", "2024-06-05T01:00:00Z"),
		unverified(bk("u", "2024-06-04T12:00:00Z")),
		bk("b", "2024-06-04T01:00:00Z"),
	}, now, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, d := range ds {
		if !d.Keep {
			got[d.Backup.ID] = d.Reasons
		}
	}
	want := map[string][]string{"u": {ReasonUnverified}, "b": {ReasonNoRule}}
	if !equalKept(got, want) {
		t.Errorf("removed: got %v, want %v", got, want)
	}
}

func TestApplyOrderNewestFirst(t *testing.T) {
	ds, err := Apply(Policy{KeepLast: Unlimited}, []Backup{
		bk("b", "2024-06-04T01:00:00Z"),
		bk("c", "2024-06-06T01:00:00Z"),
		bk("a", "2024-06-05T01:00:00Z"),
	}, now, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.Backup.ID)
	}
	if want := []string{"c", "a", "b"}; !slices.Equal(ids, want) {
		t.Errorf("order: got %v, want %v", ids, want)
	}
}

func TestApplyTimeZoneDayBoundary(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	backups := []Backup{
		bk("c", "2024-03-14T23:30:00Z"), // 00:30 on the 15th in Berlin
		bk("b", "2024-03-14T22:30:00Z"), // 23:30 on the 14th in Berlin
		bk("a", "2024-03-14T21:00:00Z"), // 22:00 on the 14th in Berlin
	}
	tests := []struct {
		name string
		loc  *time.Location
		want map[string][]string
	}{
		{"UTC: one day", time.UTC, map[string][]string{
			"c": {ReasonNewestVerified, "daily #1"},
			"a": {"daily #2 (oldest)"},
		}},
		{"Berlin: two days", berlin, map[string][]string{
			"c": {ReasonNewestVerified, "daily #1"},
			"b": {"daily #2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Apply(Policy{KeepDaily: 2}, backups, now, tt.loc)
			if err != nil {
				t.Fatal(err)
			}
			if got := kept(ds); !equalKept(got, tt.want) {
				t.Errorf("kept:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestApplyRefuses(t *testing.T) {
	good := bk("a", "2024-06-05T01:00:00Z")
	tests := []struct {
		name    string
		policy  Policy
		backups []Backup
		wantIs  error
	}{
		{"empty policy", Policy{}, []Backup{good}, ErrEmptyPolicy},
		{"negative count", Policy{KeepDaily: -2}, []Backup{good}, ErrInvalidPolicy},
		{"empty id", Policy{KeepLast: 1}, []Backup{{Time: good.Time, Verified: true}}, nil},
		{"zero time", Policy{KeepLast: 1}, []Backup{{ID: "x", Verified: true}}, nil},
		{"duplicate id", Policy{KeepLast: 1}, []Backup{good, good}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Apply(tt.policy, tt.backups, now, time.UTC)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
		})
	}
}

// randomPolicy draws a valid policy with a few rules set.
func randomPolicy(r *rand.Rand) Policy {
	var p Policy
	count := func() int { return []int{0, 0, 0, 1, 2, 3, 5, 9, Unlimited}[r.IntN(9)] }
	dur := func() Duration {
		return []Duration{{}, {}, {}, {Hours: 36}, {Days: 7}, {Weeks: 2}, {Months: 1}, {Years: 1, Months: 2, Days: 3}}[r.IntN(8)]
	}
	p.KeepLast, p.KeepHourly, p.KeepDaily, p.KeepWeekly = count(), count(), count(), count()
	p.KeepMonthly, p.KeepQuarterly, p.KeepYearly = count(), count(), count()
	p.KeepWithin, p.KeepWithinHourly, p.KeepWithinDaily, p.KeepWithinWeekly = dur(), dur(), dur(), dur()
	p.KeepWithinMonthly, p.KeepWithinQuarterly, p.KeepWithinYearly = dur(), dur(), dur()
	if r.IntN(4) == 0 {
		p.KeepTags = []string{"pinned"}
	}
	if p.Validate() != nil {
		p.KeepDaily = 1
	}
	return p
}

func randomHistory(r *rand.Rand, now time.Time) []Backup {
	n := r.IntN(120)
	out := make([]Backup, n)
	t := now.Add(time.Duration(r.IntN(48)) * time.Hour) // a few may be future-dated
	for i := range out {
		if r.IntN(10) > 0 { // some share a time with the previous backup
			t = t.Add(-time.Duration(r.Int64N(int64(72 * time.Hour))))
		}
		b := Backup{ID: fmt.Sprintf("b%03d", r.IntN(1000)*1000+i), Time: t, Verified: r.IntN(8) > 0}
		if r.IntN(10) == 0 {
			b.Tags = []string{"pinned"}
		}
		out[i] = b
	}
	return out
}

func TestApplyProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	zones := []string{"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"}
	for iter := range 2000 {
		loc, err := time.LoadLocation(zones[iter%len(zones)])
		if err != nil {
			t.Fatal(err)
		}
		p := randomPolicy(r)
		history := randomHistory(r, now)
		ds, err := Apply(p, history, now, loc)
		if err != nil {
			t.Fatalf("iteration %d: Apply: %v", iter, err)
		}
		var newestVerified *Decision
		var keep []Backup
		for i, d := range ds {
			if newestVerified == nil && d.Backup.Verified && !d.Backup.Time.After(now) {
				newestVerified = &ds[i]
			}
			if d.Keep {
				keep = append(keep, d.Backup)
			}
		}
		if newestVerified != nil && !newestVerified.Keep {
			t.Fatalf("iteration %d: newest verified backup %s removed (policy %+v)", iter, newestVerified.Backup.ID, p)
		}
		again, err := Apply(p, keep, now, loc)
		if err != nil {
			t.Fatalf("iteration %d: second Apply: %v", iter, err)
		}
		for _, d := range again {
			if !d.Keep {
				t.Fatalf("iteration %d: second pass removes %s (%v) with policy %+v", iter, d.Backup.ID, d.Reasons, p)
			}
		}
	}
}
