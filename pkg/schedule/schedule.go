package schedule

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// ErrInvalidSpec is wrapped by every error of Parse.
var ErrInvalidSpec = errors.New("invalid schedule")

// Missed-run policies: what Due does with slots that passed while no
// scheduler was running.
const (
	// MissedRunOnce fires the newest missed slot, however late, and skips the
	// older ones. It is the default: after an outage a plan gets one backup.
	MissedRunOnce = "run-once"
	// MissedSkip fires a slot only while it is at most StartingDeadline late.
	MissedSkip = "skip"
)

// Concurrency policies: what the scheduler service does when a slot fires
// while the previous run of the plan is still going. Parse only validates
// them; the service applies them.
const (
	ConcurrencyForbid  = "forbid" // default: skip the new slot
	ConcurrencyAllow   = "allow"
	ConcurrencyReplace = "replace" // cancel the running run, start the new one
)

// Defaults applied by Parse.
const (
	DefaultTimezone         = "UTC"
	DefaultStartingDeadline = 5 * time.Minute
	// MinEvery is the shortest @every interval.
	MinEvery = time.Minute
)

// dstScan bounds how far a daylight-saving shift can move a wall-clock slot;
// real shifts are one hour (30 minutes on Lord Howe Island).
const dstScan = 3 * time.Hour

// Spec is a plan's schedule block.
type Spec struct {
	// Cron is a 5-field expression (minute hour day-of-month month
	// day-of-week) or a descriptor: @hourly, @daily (@midnight), @weekly,
	// @monthly, @yearly (@annually), or @every <duration>.
	Cron string `json:"cron" yaml:"cron"`
	// Timezone is an IANA zone name the cron fields are read in; "" is UTC.
	Timezone string `json:"timezone,omitempty" yaml:"timezone,omitempty"`
	// Jitter is the upper bound (exclusive) of the per-plan delay added to
	// every slot. 0 disables it.
	Jitter time.Duration `json:"jitter,omitempty" yaml:"jitter,omitempty"`
	// StartingDeadline is how late a slot may fire under MissedSkip; 0
	// means DefaultStartingDeadline.
	StartingDeadline time.Duration `json:"startingDeadline,omitempty" yaml:"startingDeadline,omitempty"`
	// MissedRunPolicy is MissedSkip or MissedRunOnce (""): see Due.
	MissedRunPolicy string `json:"missedRunPolicy,omitempty" yaml:"missedRunPolicy,omitempty"`
	// ConcurrencyPolicy is ConcurrencyForbid (""), ConcurrencyAllow or
	// ConcurrencyReplace.
	ConcurrencyPolicy string `json:"concurrencyPolicy,omitempty" yaml:"concurrencyPolicy,omitempty"`
	// Paused plans fire nothing; Due reports their slots as skipped.
	Paused bool `json:"paused,omitempty" yaml:"paused,omitempty"`
}

// Schedule is a parsed Spec. It is immutable and safe for concurrent use.
type Schedule struct {
	spec     Spec
	loc      *time.Location
	cron     *cron.SpecSchedule // fields read on a wall clock kept in UTC
	every    time.Duration      // @every: slots at multiples since the Unix epoch
	allHours bool               // every hour selected: both passes of a repeated hour fire
}

var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse validates s, applies the defaults and returns its Schedule. Errors
// name the field and wrap ErrInvalidSpec.
func Parse(s Spec) (*Schedule, error) {
	s.Cron = strings.TrimSpace(s.Cron)
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if s.Timezone == "" {
		s.Timezone = DefaultTimezone
	}
	loc, err := time.LoadLocation(s.Timezone)
	if err != nil {
		bad("timezone: %q: %v", s.Timezone, err)
	} else if s.Timezone == "Local" {
		bad("timezone: Local depends on the machine; name a zone")
	}
	if s.Jitter < 0 {
		bad("jitter: must be >= 0, got %v", s.Jitter)
	}
	if s.StartingDeadline < 0 {
		bad("startingDeadline: must be >= 0, got %v", s.StartingDeadline)
	}
	if s.StartingDeadline == 0 {
		s.StartingDeadline = DefaultStartingDeadline
	}
	switch s.MissedRunPolicy {
	case "":
		s.MissedRunPolicy = MissedRunOnce
	case MissedRunOnce, MissedSkip:
	default:
		bad("missedRunPolicy: %q is not one of skip, run-once", s.MissedRunPolicy)
	}
	switch s.ConcurrencyPolicy {
	case "":
		s.ConcurrencyPolicy = ConcurrencyForbid
	case ConcurrencyForbid, ConcurrencyAllow, ConcurrencyReplace:
	default:
		bad("concurrencyPolicy: %q is not one of forbid, allow, replace", s.ConcurrencyPolicy)
	}

	sch := &Schedule{spec: s, loc: loc}
	switch {
	case s.Cron == "":
		bad("cron: required")
	case strings.HasPrefix(s.Cron, "TZ=") || strings.HasPrefix(s.Cron, "CRON_TZ="):
		bad("cron: %q: set the zone in timezone, not in the expression", s.Cron)
	default:
		parsed, err := parser.Parse(s.Cron)
		if err != nil {
			bad("cron: %q: %v", s.Cron, err)
			break
		}
		switch c := parsed.(type) {
		case *cron.SpecSchedule:
			cp := *c
			cp.Location = time.UTC
			sch.cron = &cp
			const hours = 1<<24 - 1
			sch.allHours = cp.Hour&hours == hours
			if cp.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
				bad("cron: %q never fires", s.Cron)
			}
		case cron.ConstantDelaySchedule:
			sch.every = c.Delay
			if c.Delay < MinEvery {
				bad("cron: %q: @every must be at least %v", s.Cron, MinEvery)
			}
		default:
			bad("cron: %q: unsupported schedule type %T", s.Cron, parsed)
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidSpec, strings.Join(problems, "; "))
	}
	return sch, nil
}

// Spec returns the spec with Parse's defaults applied.
func (s *Schedule) Spec() Spec { return s.spec }

// Location returns the zone the schedule is read in.
func (s *Schedule) Location() *time.Location { return s.loc }

// Next returns the first slot strictly after after, in the schedule's zone,
// or the zero time if there is none within five years.
//
// Cron fields are wall-clock times in the zone. On a spring-forward day a
// wall time in the skipped hour fires as much later as the clock jumped
// (02:30 becomes 03:30); on a fall-back day a wall time in the repeated hour
// fires once, in its first pass, unless the expression selects every hour,
// in which case both passes fire (an hourly job stays hourly). @every slots
// are multiples of the interval since the Unix epoch and ignore the zone's
// wall clock.
func (s *Schedule) Next(after time.Time) time.Time {
	if s.every > 0 {
		d := int64(s.every / time.Second)
		sec := after.Unix()
		k := sec / d
		if sec%d < 0 {
			k--
		}
		return time.Unix((k+1)*d, 0).In(s.loc)
	}
	// Fast path: far from any offset change, wall time maps to one instant.
	local := after.In(s.loc)
	start, end := local.ZoneBounds()
	if start.IsZero() || after.Sub(start) > dstScan {
		_, off := local.Zone()
		if w := s.cron.Next(wall(after, s.loc)); !w.IsZero() {
			in := w.Add(-time.Duration(off) * time.Second)
			if end.IsZero() || in.Before(end.Add(-dstScan)) {
				return in.In(s.loc)
			}
		}
	}
	return s.nextScan(after)
}

// nextScan is Next for a cron expression near an offset change.
func (s *Schedule) nextScan(after time.Time) time.Time {
	// A wall-clock slot can move by up to dstScan, and the mapping from wall
	// time to instants is not monotonic across a gap: scan wall slots from a
	// little before after's wall time and keep the earliest instant past it.
	w := wall(after, s.loc).Add(-dstScan)
	var best time.Time
	for {
		w = s.cron.Next(w)
		if w.IsZero() {
			return best
		}
		if !best.IsZero() && w.Sub(wall(best, s.loc)) > dstScan {
			return best
		}
		for _, in := range s.instants(w) {
			if in.After(after) && (best.IsZero() || in.Before(best)) {
				best = in
			}
		}
	}
}

// Slots returns the slots t with from < t <= to, in order, each exactly once.
func (s *Schedule) Slots(from, to time.Time) []time.Time {
	var out []time.Time
	for t := s.Next(from); !t.IsZero() && !t.After(to); t = s.Next(t) {
		out = append(out, t)
	}
	return out
}

// wall returns t's wall-clock reading in loc as a UTC time with the same
// fields.
func wall(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}

// instants returns the instants at which loc's clock shows the wall time w
// (fields read from UTC): one normally; none exists in a spring-forward gap,
// so w is shifted by the gap (read with the offset before it); two exist in
// a fall-back overlap, and the first is taken unless every hour is selected.
func (s *Schedule) instants(w time.Time) []time.Time {
	var offsets []int
	for _, probe := range []time.Duration{-14 * time.Hour, 0, 14 * time.Hour} {
		_, off := w.Add(probe).In(s.loc).Zone()
		if !slices.Contains(offsets, off) {
			offsets = append(offsets, off)
		}
	}
	var out []time.Time
	for _, off := range offsets {
		in := w.Add(-time.Duration(off) * time.Second).In(s.loc)
		if wall(in, s.loc).Equal(w) && !slices.ContainsFunc(out, in.Equal) {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, time.Time.Compare)
	switch {
	case len(out) == 0:
		_, before := w.Add(-14 * time.Hour).In(s.loc).Zone()
		return []time.Time{w.Add(-time.Duration(before) * time.Second).In(s.loc)}
	case len(out) > 1 && !s.allHours:
		return out[:1]
	}
	return out
}

// Jitter returns the delay in [0, max) that plan's slots fire after their
// nominal time: a hash of the plan name, so every replica and every restart
// computes the same value and plans spread over the window. The slot is not
// part of the hash on purpose: one constant delay per plan keeps slots in
// order and evenly spaced, so "the newest slot fired" is always a valid
// resume point. The result is whole seconds when max is at least a second.
func Jitter(plan string, slot time.Time, max time.Duration) time.Duration {
	_ = slot
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(plan))
	d := time.Duration(h.Sum64() % uint64(max))
	if max >= time.Second {
		d = d.Truncate(time.Second)
	}
	return d
}

// FireTime is when slot of plan fires: the slot plus the plan's jitter.
func (s *Schedule) FireTime(plan string, slot time.Time) time.Time {
	return slot.Add(Jitter(plan, slot, s.spec.Jitter))
}

// NextFire returns the slot of plan that fires next after now and when it
// fires, so a scheduler knows how long it may sleep.
func (s *Schedule) NextFire(plan string, now time.Time) (slot, fireAt time.Time) {
	slot = s.Next(now.Add(-Jitter(plan, time.Time{}, s.spec.Jitter)))
	if slot.IsZero() {
		return time.Time{}, time.Time{}
	}
	return slot, s.FireTime(plan, slot)
}

// Due returns which slots of plan to fire at now, given lastFired, the
// newest slot already handled (fired or skipped) or, for a plan never
// scheduled before, the time the scheduler first saw it. The zero lastFired
// is treated as now: nothing is due, so a new plan never fires a slot from
// before it existed.
//
// A slot is due when lastFired < slot and slot+jitter <= now. At most one
// slot fires per call, the newest due one, so backups never pile up after an
// outage:
//   - a paused schedule fires nothing and reports every due slot skipped;
//   - MissedRunOnce fires the newest due slot however late it is;
//   - MissedSkip fires it only if it is at most StartingDeadline late
//     (measured from slot+jitter).
//
// Every other due slot is returned in skipped, oldest first. The caller
// stores the newest of fire and skipped as the next lastFired.
func Due(s *Schedule, plan string, lastFired time.Time, now time.Time) (fire []time.Time, skipped []time.Time) {
	if lastFired.IsZero() {
		return nil, nil
	}
	j := Jitter(plan, time.Time{}, s.spec.Jitter)
	due := s.Slots(lastFired, now.Add(-j))
	if len(due) == 0 {
		return nil, nil
	}
	newest := due[len(due)-1]
	older := due[:len(due)-1]
	switch {
	case s.spec.Paused:
		return nil, due
	case s.spec.MissedRunPolicy == MissedSkip && now.Sub(newest.Add(j)) > s.spec.StartingDeadline:
		return nil, due
	default:
		return []time.Time{newest}, older
	}
}

// TriggerID is the deterministic CloudEvent id (and Nats-Msg-Id) of the
// backup.requested event for plan's slot: replicas that fire the same slot
// publish the same id, and JetStream's duplicate window keeps one.
func TriggerID(plan string, slot time.Time) string {
	return "sched-" + plan + "-" + strconv.FormatInt(slot.Unix(), 10)
}
