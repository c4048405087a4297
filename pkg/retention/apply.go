package retention

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Reasons that are not a rule with a counter.
const (
	ReasonNewestVerified = "newest verified"
	ReasonFutureDated    = "future-dated"
	ReasonPendingVerify  = "pending verify"
	ReasonUnverified     = "unverified, older than the newest verified backup"
	ReasonNoRule         = "no rule matched"
)

// Backup is what the engine needs to know of one backup.
type Backup struct {
	ID       string
	Time     time.Time
	Tags     []string
	Verified bool
}

// Decision is the verdict on one backup. Reasons name every rule that keeps
// it ("daily #3", "within 7d", "tag pinned", "newest verified"), or why it is
// removed.
type Decision struct {
	Backup  Backup
	Keep    bool
	Reasons []string
}

// Apply decides for every backup whether p keeps it.
//
// The backups are ordered newest first, ties in time broken by ID, the
// greater ID counting as newer (ULIDs sort by creation). Then:
//   - a backup dated after now is kept ("future-dated") and takes no bucket;
//   - only verified backups are candidates for the rules;
//   - an unverified backup newer than the newest verified one is kept
//     ("pending verify"), an older one is removed;
//   - the newest verified backup is always kept ("newest verified");
//   - the candidates go through restic's forget rules: for each count rule
//     the newest backup of each bucket is kept until the count is used up
//     (and the oldest candidate too when counts are left); keepWithin keeps
//     every candidate younger than the duration measured back from the newest
//     candidate; keepWithin<Period> keeps the newest of each period in that
//     window; keepTags keeps candidates with the tags. Buckets are computed
//     in loc (nil means UTC).
//
// The decisions come back in that order, one per backup. Apply refuses an
// invalid policy, a backup without ID or time, and duplicate IDs. Applying the
// same policy to the kept backups again keeps all of them.
func Apply(p Policy, backups []Backup, now time.Time, loc *time.Location) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("apply retention: %w", err)
	}
	if loc == nil {
		loc = time.UTC
	}
	seen := make(map[string]int, len(backups))
	for i, b := range backups {
		if b.ID == "" {
			return nil, fmt.Errorf("apply retention: backups[%d]: empty id", i)
		}
		if b.Time.IsZero() {
			return nil, fmt.Errorf("apply retention: backups[%d] (%s): zero time", i, b.ID)
		}
		if j, dup := seen[b.ID]; dup {
			return nil, fmt.Errorf("apply retention: backups[%d]: id %s duplicates backups[%d]", i, b.ID, j)
		}
		seen[b.ID] = i
	}

	sorted := slices.Clone(backups)
	slices.SortFunc(sorted, func(a, b Backup) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})

	decisions := make([]Decision, len(sorted))
	var candidates []int // indexes into sorted, newest first
	for i, b := range sorted {
		decisions[i].Backup = b
		if b.Time.After(now) {
			decisions[i].keep(ReasonFutureDated)
			continue
		}
		if !b.Verified {
			if len(candidates) == 0 {
				decisions[i].keep(ReasonPendingVerify)
			} else {
				decisions[i].Reasons = []string{ReasonUnverified}
			}
			continue
		}
		candidates = append(candidates, i)
	}
	if len(candidates) == 0 {
		return decisions, nil
	}
	decisions[candidates[0]].keep(ReasonNewestVerified)
	applyRules(p, sorted, candidates, decisions, loc)
	for i := range decisions {
		if !decisions[i].Keep && len(decisions[i].Reasons) == 0 {
			decisions[i].Reasons = []string{ReasonNoRule}
		}
	}
	return decisions, nil
}

func (d *Decision) keep(reason string) {
	d.Keep = true
	d.Reasons = append(d.Reasons, reason)
}

// applyRules runs restic's forget loop over the candidates (newest first).
func applyRules(p Policy, sorted []Backup, candidates []int, decisions []Decision, loc *time.Location) {
	type countRule struct {
		left, kept int
		b          bucket
		last       int
		started    bool
	}
	var counts []*countRule
	for _, c := range p.counts() {
		if c.n != 0 {
			counts = append(counts, &countRule{left: c.n, b: c.b})
		}
	}
	type withinRule struct {
		since   time.Time
		d       Duration
		b       bucket
		last    int
		started bool
	}
	latest := sorted[candidates[0]].Time
	var withins []*withinRule
	for _, w := range p.withins() {
		if !w.d.IsZero() {
			withins = append(withins, &withinRule{since: w.d.Before(latest, loc), d: w.d, b: w.b})
		}
	}
	var within time.Time
	if !p.KeepWithin.IsZero() {
		within = p.KeepWithin.Before(latest, loc)
	}
	tagLists := make([][]string, len(p.KeepTags))
	for i, t := range p.KeepTags {
		for _, part := range strings.Split(t, ",") {
			tagLists[i] = append(tagLists[i], strings.TrimSpace(part))
		}
	}

	for nr, i := range candidates {
		b := sorted[i]
		d := &decisions[i]
		for j, list := range tagLists {
			if hasAll(b.Tags, list) {
				d.keep("tag " + p.KeepTags[j])
			}
		}
		if !within.IsZero() && b.Time.After(within) {
			d.keep("within " + p.KeepWithin.String())
		}
		oldest := nr == len(candidates)-1
		for _, r := range counts {
			if r.left == 0 {
				continue
			}
			key := r.b.key(b.Time, loc, nr)
			switch {
			case !r.started || key != r.last:
				r.started, r.last = true, key
				r.kept++
				d.keep(fmt.Sprintf("%s #%d", r.b.name(), r.kept))
			case oldest:
				// restic keeps the oldest snapshot while counts are left,
				// to make the kept history as long as possible.
				r.kept++
				d.keep(fmt.Sprintf("%s #%d (oldest)", r.b.name(), r.kept))
			default:
				continue
			}
			if r.left > 0 {
				r.left--
			}
		}
		for _, r := range withins {
			if !b.Time.After(r.since) {
				continue
			}
			key := r.b.key(b.Time, loc, nr)
			if !r.started || key != r.last {
				r.started, r.last = true, key
				d.keep(fmt.Sprintf("%s within %s", r.b.name(), r.d))
			}
		}
	}
}

// hasAll reports whether tags holds every entry of want.
func hasAll(tags, want []string) bool {
	for _, w := range want {
		if !slices.Contains(tags, w) {
			return false
		}
	}
	return true
}
