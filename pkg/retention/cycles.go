package retention

import "time"

// Cycle names, least significant first. They are the values of the object
// tag CycleTag.
const (
	CycleNone      = "none"
	CycleHourly    = "hourly"
	CycleDaily     = "daily"
	CycleWeekly    = "weekly"
	CycleMonthly   = "monthly"
	CycleQuarterly = "quarterly"
	CycleYearly    = "yearly"
)

// CycleTag is the object tag key carrying a backup's most significant cycle,
// which storage lifecycle rules select on.
const CycleTag = "backstream-cycle"

var cycleBuckets = []struct {
	name string
	b    bucket
}{
	{CycleHourly, bucketHour},
	{CycleDaily, bucketDay},
	{CycleWeekly, bucketWeek},
	{CycleMonthly, bucketMonth},
	{CycleQuarterly, bucketQuarter},
	{CycleYearly, bucketYear},
}

// Cycles labels a backup taken at t with every cycle (hourly, daily, weekly,
// monthly, quarterly, yearly, in that order) it is the first backup of, in
// loc. prev holds the times of the plan's earlier backups; entries after t
// are ignored, entries equal to t count as earlier. The result is empty when
// t is not the first of its hour.
//
// Cycles is known when a backup is written, so it can become an object tag.
// It labels the first backup of a period, where the engine keeps the newest:
// that is why lifecycle rules only approximate the policy.
func Cycles(t time.Time, loc *time.Location, prev []time.Time) []string {
	if loc == nil {
		loc = time.UTC
	}
	var out []string
	for _, c := range cycleBuckets {
		key := c.b.key(t, loc, 0)
		first := true
		for _, p := range prev {
			if !p.After(t) && c.b.key(p, loc, 0) == key {
				first = false
				break
			}
		}
		if first {
			out = append(out, c.name)
		}
	}
	return out
}

// MostSignificant returns the last (most significant) of cycles as Cycles
// orders them, or CycleNone for none.
func MostSignificant(cycles []string) string {
	if len(cycles) == 0 {
		return CycleNone
	}
	return cycles[len(cycles)-1]
}

// LifecycleRule expires storage objects tagged CycleTag=Cycle after
// ExpireAfterDays days.
type LifecycleRule struct {
	Cycle           string `json:"cycle"`
	ExpireAfterDays int    `json:"expireAfterDays"`
}

// LifecycleRules maps p to per-cycle expiry ages for storage lifecycle rules,
// an approximation of the count-based policy that assumes one backup in
// every period and months of 31, quarters of 92 and years of 366 days. A
// count N of a period of D days gives D*(N+1) days (hourly: ceil(N/24)+1);
// keepWithin<Period> gives its length in days plus one; keepWithin sets a
// floor for every cycle. Because an object tagged with a cycle also belongs
// to the less significant ones before it, each cycle gets at least the age of
// those. A cycle with an Unlimited count, and every more significant one, gets
// no rule (never expires), and so does a cycle no age-based rule covers
// (keepLast and keepTags have no age): those objects are removed by the
// retention engine only. Lifecycle rules are a backstop; the engine stays
// authoritative.
func LifecycleRules(p Policy) []LifecycleRule {
	base := map[string]struct {
		count  int
		days   int
		within Duration
	}{
		CycleHourly:    {p.KeepHourly, 0, p.KeepWithinHourly},
		CycleDaily:     {p.KeepDaily, 1, p.KeepWithinDaily},
		CycleWeekly:    {p.KeepWeekly, 7, p.KeepWithinWeekly},
		CycleMonthly:   {p.KeepMonthly, 31, p.KeepWithinMonthly},
		CycleQuarterly: {p.KeepQuarterly, 92, p.KeepWithinQuarterly},
		CycleYearly:    {p.KeepYearly, 366, p.KeepWithinYearly},
	}
	age := 0
	if !p.KeepWithin.IsZero() {
		age = p.KeepWithin.approxDays() + 1
	}
	var rules []LifecycleRule
	if age > 0 {
		rules = append(rules, LifecycleRule{Cycle: CycleNone, ExpireAfterDays: age})
	}
	for _, c := range cycleBuckets {
		b := base[c.name]
		if b.count == Unlimited {
			break
		}
		if b.count > 0 {
			if c.name == CycleHourly {
				age = max(age, (b.count+23)/24+1)
			} else {
				age = max(age, b.days*(b.count+1))
			}
		}
		if !b.within.IsZero() {
			age = max(age, b.within.approxDays()+1)
		}
		if age > 0 {
			rules = append(rules, LifecycleRule{Cycle: c.name, ExpireAfterDays: age})
		}
	}
	return rules
}
