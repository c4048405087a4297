package retention

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrInvalidPolicy is wrapped by every error of Policy.Validate.
	ErrInvalidPolicy = errors.New("invalid retention policy")
	// ErrEmptyPolicy means a policy sets no rule at all. restic keeps every
	// snapshot for such a policy; backstream refuses it, because an empty
	// retention block is far more often a typo than an intent.
	ErrEmptyPolicy = errors.New("policy keeps nothing: set at least one keep rule")
)

// Unlimited as a count keeps one backup of every bucket, as restic's -1.
const Unlimited = -1

// Policy is the retention block of a plan. Counts are the number of buckets
// (hours, days, ISO weeks, months, calendar quarters, years, or single
// backups for KeepLast) to keep the newest backup of; Unlimited keeps every
// bucket; 0 disables the rule. KeepWithin* durations are measured back from
// the newest verified backup, not from now. Rules are ORed: a backup is kept
// when any rule keeps it.
type Policy struct {
	KeepLast      int `json:"keepLast,omitempty" yaml:"keepLast,omitempty"`
	KeepHourly    int `json:"keepHourly,omitempty" yaml:"keepHourly,omitempty"`
	KeepDaily     int `json:"keepDaily,omitempty" yaml:"keepDaily,omitempty"`
	KeepWeekly    int `json:"keepWeekly,omitempty" yaml:"keepWeekly,omitempty"`
	KeepMonthly   int `json:"keepMonthly,omitempty" yaml:"keepMonthly,omitempty"`
	KeepQuarterly int `json:"keepQuarterly,omitempty" yaml:"keepQuarterly,omitempty"`
	KeepYearly    int `json:"keepYearly,omitempty" yaml:"keepYearly,omitempty"`

	KeepWithin          Duration `json:"keepWithin,omitzero" yaml:"keepWithin,omitempty"`
	KeepWithinHourly    Duration `json:"keepWithinHourly,omitzero" yaml:"keepWithinHourly,omitempty"`
	KeepWithinDaily     Duration `json:"keepWithinDaily,omitzero" yaml:"keepWithinDaily,omitempty"`
	KeepWithinWeekly    Duration `json:"keepWithinWeekly,omitzero" yaml:"keepWithinWeekly,omitempty"`
	KeepWithinMonthly   Duration `json:"keepWithinMonthly,omitzero" yaml:"keepWithinMonthly,omitempty"`
	KeepWithinQuarterly Duration `json:"keepWithinQuarterly,omitzero" yaml:"keepWithinQuarterly,omitempty"`
	KeepWithinYearly    Duration `json:"keepWithinYearly,omitzero" yaml:"keepWithinYearly,omitempty"`

	// KeepTags keeps every verified backup carrying one of the entries. An
	// entry "a,b" requires both tags a and b (restic's tag lists).
	KeepTags []string `json:"keepTags,omitempty" yaml:"keepTags,omitempty"`
}

// counts lists the count rules in evaluation order with their field names.
func (p Policy) counts() []struct {
	field string
	n     int
	b     bucket
} {
	return []struct {
		field string
		n     int
		b     bucket
	}{
		{"keepLast", p.KeepLast, bucketLast},
		{"keepHourly", p.KeepHourly, bucketHour},
		{"keepDaily", p.KeepDaily, bucketDay},
		{"keepWeekly", p.KeepWeekly, bucketWeek},
		{"keepMonthly", p.KeepMonthly, bucketMonth},
		{"keepQuarterly", p.KeepQuarterly, bucketQuarter},
		{"keepYearly", p.KeepYearly, bucketYear},
	}
}

// withins lists the within-bucket rules in evaluation order.
func (p Policy) withins() []struct {
	field string
	d     Duration
	b     bucket
} {
	return []struct {
		field string
		d     Duration
		b     bucket
	}{
		{"keepWithinHourly", p.KeepWithinHourly, bucketHour},
		{"keepWithinDaily", p.KeepWithinDaily, bucketDay},
		{"keepWithinWeekly", p.KeepWithinWeekly, bucketWeek},
		{"keepWithinMonthly", p.KeepWithinMonthly, bucketMonth},
		{"keepWithinQuarterly", p.KeepWithinQuarterly, bucketQuarter},
		{"keepWithinYearly", p.KeepWithinYearly, bucketYear},
	}
}

// Validate reports every problem of p with its field name: counts below
// Unlimited, empty tag entries, and a policy without any rule
// (ErrEmptyPolicy). All errors wrap ErrInvalidPolicy.
func (p Policy) Validate() error {
	var problems []string
	empty := p.KeepWithin.IsZero() && len(p.KeepTags) == 0
	for _, c := range p.counts() {
		if c.n < Unlimited {
			problems = append(problems, fmt.Sprintf("%s: must be >= -1 (-1 keeps every bucket), got %d", c.field, c.n))
		}
		if c.n != 0 {
			empty = false
		}
	}
	for _, w := range p.withins() {
		if !w.d.IsZero() {
			empty = false
		}
	}
	for i, tag := range p.KeepTags {
		for _, part := range strings.Split(tag, ",") {
			if strings.TrimSpace(part) == "" {
				problems = append(problems, fmt.Sprintf("keepTags[%d]: %q has an empty tag", i, tag))
				break
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidPolicy, strings.Join(problems, "; "))
	}
	if empty {
		return fmt.Errorf("%w: %w", ErrInvalidPolicy, ErrEmptyPolicy)
	}
	return nil
}
