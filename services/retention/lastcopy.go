package retention

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/backstream/backstream/pkg/retention"
)

// LastCopyPrefix starts the reason of every backup kept beyond its
// destination's policy because it is the verified copy another
// destination's policy still wants (KeepLastCopies).
const LastCopyPrefix = "last copy: "

// Other is what the last-copy rule knows of another destination of the
// plan.
type Other struct {
	Destination string
	// Policy is the destination's effective policy (plan.Spec.RetentionFor);
	// nil keeps everything.
	Policy *retention.Policy
	// Backups are its backups of the plan, Verified as its manifests say.
	Backups []retention.Backup
	// Unreadable holds the ids of its backups whose manifest could not be
	// read: whether that copy is good is unknown.
	Unreadable map[string]bool
	// Err is why the destination could not be opened or listed; nothing of
	// it is known then.
	Err error
}

// KeepLastCopies applies the last-copy rule to one destination's
// decisions: a backup verified here that the decisions remove is kept
// instead when some other destination
//
//   - could not be listed, or cannot read its own manifest of the backup
//     (unknown counts as not holding a copy: keep), or
//   - holds no verified copy of it (none at all, or a failed or pending
//     one) while its own policy would keep the backup were it verified
//     there.
//
// The copy here then stands in for the one the other destination lacks,
// for as long as that destination's policy wants the backup. When every
// destination's policy lets a backup go, it goes everywhere: the rule
// protects a copy still wanted, it does not keep every backup forever in
// the destination that happens to remove it last. An other destination
// that holds a verified copy decides about it itself (its own pass, with
// this same rule).
//
// Backups the decisions keep, and unverified ones (they are not a verified
// copy), are left as they are. It returns how many backups it kept, and
// fails only when an other destination's policy is invalid.
func KeepLastCopies(ds []retention.Decision, others []Other, now time.Time, loc *time.Location) (int, error) {
	kept := 0
	for i := range ds {
		d := &ds[i]
		if d.Keep || !d.Backup.Verified {
			continue
		}
		var why []string
		for _, o := range others {
			w, err := o.Wants(d.Backup, now, loc)
			if err != nil {
				return kept, err
			}
			if w != "" {
				why = append(why, w)
			}
		}
		if len(why) == 0 {
			continue
		}
		d.Keep = true
		d.Reasons = append([]string{LastCopyPrefix + strings.Join(why, "; ")}, d.Reasons...)
		kept++
	}
	return kept, nil
}

// Wants says why o needs a copy of b it does not hold verified — kept
// elsewhere by retention, or written to it by a scrub's repair — or ""
// when it does not.
func (o Other) Wants(b retention.Backup, now time.Time, loc *time.Location) (string, error) {
	switch {
	case o.Err != nil:
		return fmt.Sprintf("destination %s could not be listed (%v)", o.Destination, o.Err), nil
	case o.Unreadable[b.ID]:
		return fmt.Sprintf("destination %s cannot read its manifest of it", o.Destination), nil
	}
	i := slices.IndexFunc(o.Backups, func(x retention.Backup) bool { return x.ID == b.ID })
	if i >= 0 && o.Backups[i].Verified {
		return "", nil
	}
	what := "has no copy"
	if i >= 0 {
		what = "has no verified copy"
	}
	if o.Policy == nil {
		return fmt.Sprintf("destination %s %s and keeps every backup", o.Destination, what), nil
	}
	// Would o keep b, were its copy there and verified?
	hypo := slices.Clone(o.Backups)
	b.Verified = true
	if i >= 0 {
		hypo[i] = b
	} else {
		hypo = append(hypo, b)
	}
	ds, err := retention.Apply(*o.Policy, hypo, now, loc)
	if err != nil {
		return "", fmt.Errorf("destination %s: %w", o.Destination, err)
	}
	for _, d := range ds {
		if d.Backup.ID == b.ID && d.Keep {
			return fmt.Sprintf("destination %s %s and its policy keeps it (%s)", o.Destination, what, strings.Join(d.Reasons, ", ")), nil
		}
	}
	return "", nil
}
