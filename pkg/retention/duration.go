package retention

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidDuration is wrapped by every error of ParseDuration.
var ErrInvalidDuration = errors.New("invalid duration")

// Duration is a calendar duration in restic's style: "7d", "2w", "36h",
// "1y2m3d". Years, months and days are calendar units (added with
// time.AddDate in the plan's zone), hours are exact. The zero Duration means
// "not set".
type Duration struct {
	Years, Months, Weeks, Days, Hours int
}

// ParseDuration parses a sequence of <number><unit> pairs, units y (years),
// m (months), w (weeks), d (days) and h (hours), each at most once, numbers
// non-negative. The empty string is the zero Duration.
func ParseDuration(s string) (Duration, error) {
	var d Duration
	rest := strings.TrimSpace(s)
	seen := map[byte]bool{}
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return Duration{}, fmt.Errorf("%w %q: expected a number at %q", ErrInvalidDuration, s, rest)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n > 1_000_000 {
			return Duration{}, fmt.Errorf("%w %q: number %s out of range", ErrInvalidDuration, s, rest[:i])
		}
		if i == len(rest) {
			return Duration{}, fmt.Errorf("%w %q: no unit after %d (use y, m, w, d or h)", ErrInvalidDuration, s, n)
		}
		unit := rest[i]
		if seen[unit] {
			return Duration{}, fmt.Errorf("%w %q: unit %c given twice", ErrInvalidDuration, s, unit)
		}
		seen[unit] = true
		switch unit {
		case 'y':
			d.Years = n
		case 'm':
			d.Months = n
		case 'w':
			d.Weeks = n
		case 'd':
			d.Days = n
		case 'h':
			d.Hours = n
		default:
			return Duration{}, fmt.Errorf("%w %q: unknown unit %q (use y, m, w, d or h)", ErrInvalidDuration, s, unit)
		}
		rest = rest[i+1:]
	}
	return d, nil
}

// MustParseDuration is ParseDuration for constants in tests and examples; it
// panics on a malformed string.
func MustParseDuration(s string) Duration {
	d, err := ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
}

// IsZero reports whether d is unset.
func (d Duration) IsZero() bool { return d == Duration{} }

// String returns d in the form ParseDuration reads, "" for the zero Duration.
func (d Duration) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Weeks, "w"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if p.n != 0 {
			b.WriteString(strconv.Itoa(p.n))
			b.WriteString(p.unit)
		}
	}
	return b.String()
}

// Before returns the instant d before t, computed in loc so that a day across
// a DST change is a calendar day.
func (d Duration) Before(t time.Time, loc *time.Location) time.Time {
	return t.In(loc).AddDate(-d.Years, -d.Months, -(7*d.Weeks + d.Days)).Add(-time.Duration(d.Hours) * time.Hour)
}

// approxDays is d in whole days, rounding months to 31 and years to 366 days
// and hours up: an upper bound used for lifecycle ages.
func (d Duration) approxDays() int {
	return 366*d.Years + 31*d.Months + 7*d.Weeks + d.Days + (d.Hours+23)/24
}

// MarshalText implements encoding.TextMarshaler (JSON and YAML).
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (JSON and YAML).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
