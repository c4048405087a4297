package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
)

// Copy is one destination's copy of a backup: the same backup id is the
// same backup in every destination.
type Copy struct {
	Destination string
	Manifest    format.Manifest
}

// String names the copy the way the CLI and the logs say it.
func (c Copy) String() string {
	return fmt.Sprintf("backup %s of plan %s from destination %s", c.Manifest.BackupID, c.Manifest.Plan, c.Destination)
}

// Held is what one destination holds of a plan: its manifests as
// backup.List returns them. A destination that could not be listed has Err
// set and holds nothing.
type Held struct {
	Destination string
	Manifests   []format.Manifest
	Err         error
}

// Choice says which backup to restore.
type Choice struct {
	// ID is a backup id, or "latest" (or "") for the newest backup verified
	// in at least one destination.
	ID string
	// FallbackOlder also tries the older verified backups, newest first,
	// once every copy of the chosen one failed.
	FallbackOlder bool
	// AllowFailed also takes the copies of a backup named by id whose
	// manifest says failed (never for latest, never for older ones).
	AllowFailed bool
}

func (c Choice) latest() bool { return c.ID == "" || c.ID == "latest" }

// Candidates orders the copies a restore tries, given what each
// destination holds in order of preference (the preferred destination
// first, then the others in plan order): every copy of the chosen backup
// first, then, with FallbackOlder, the copies of each older verified
// backup. "latest" is the newest backup verified in at least one
// destination, so a destination that missed a run does not hide it. A copy
// of the chosen backup is taken when its manifest says verified, or, for a
// backup named by id, when it is not failed (a plan without verify, or a
// copy verify has not reached yet); older backups only when verified.
// A backup named by id that no destination holds, or holds only failed,
// is an error wrapping backup.ErrNotFound or backup.ErrFailed.
func Candidates(held []Held, c Choice) ([]Copy, error) {
	type backupOf struct {
		id     string
		at     format.Manifest // any copy, for the order
		copies []Copy
	}
	byID := map[string]*backupOf{}
	var failed *Copy
	for _, h := range held {
		for _, m := range h.Manifests {
			b := byID[m.BackupID]
			if b == nil {
				b = &backupOf{id: m.BackupID, at: m}
				byID[m.BackupID] = b
			}
			b.copies = append(b.copies, Copy{Destination: h.Destination, Manifest: m})
			if backup.Failed(m) && m.BackupID == c.ID && failed == nil {
				failed = &Copy{Destination: h.Destination, Manifest: m}
			}
		}
	}
	verified := func(b *backupOf) []Copy {
		var out []Copy
		for _, cp := range b.copies {
			if cp.Manifest.Verify.Status == format.VerifyVerified {
				out = append(out, cp)
			}
		}
		return out
	}
	// Every backup with a verified copy, newest first.
	var good []*backupOf
	for _, b := range byID {
		if len(verified(b)) > 0 {
			good = append(good, b)
		}
	}
	sort.Slice(good, func(i, j int) bool { return older(good[j].at, good[i].at) })
	var out []Copy
	var chosen *backupOf
	if c.latest() {
		if len(good) == 0 {
			return nil, fmt.Errorf("%w: no destination holds a verified backup", backup.ErrNotFound)
		}
		chosen = good[0]
		out = verified(chosen)
	} else {
		chosen = byID[c.ID]
		if chosen == nil {
			return nil, fmt.Errorf("%w: no destination holds backup %s", backup.ErrNotFound, c.ID)
		}
		for _, cp := range chosen.copies {
			if c.AllowFailed || !backup.Failed(cp.Manifest) {
				out = append(out, cp)
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%w: backup %s of plan %s in destination %s: %s", backup.ErrFailed,
				failed.Manifest.BackupID, failed.Manifest.Plan, failed.Destination, failed.Manifest.Verify.Error)
		}
	}
	if c.FallbackOlder {
		for _, b := range good {
			if older(b.at, chosen.at) {
				out = append(out, verified(b)...)
			}
		}
	}
	return out, nil
}

// older orders backups as backup.List does: by creation, then by id.
func older(a, b format.Manifest) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.BackupID < b.BackupID
}

// Opener opens a destination's storage by name; the caller closes it.
type Opener func(ctx context.Context, destination string) (storage.Storage, error)

// Gather lists what each destination holds of plan, in the order given. A
// destination that cannot be opened or listed holds nothing (Err says
// why): the others may still hold a copy.
func Gather(ctx context.Context, open Opener, destinations []string, plan string) []Held {
	out := make([]Held, 0, len(destinations))
	for _, d := range destinations {
		h := Held{Destination: d}
		st, err := open(ctx, d)
		if err == nil {
			h.Manifests, _, err = backup.List(ctx, st, plan)
			st.Close()
		}
		h.Err = err
		out = append(out, h)
	}
	return out
}

// Unlisted says which destinations could not be listed, for an error
// saying that no copy was found ("" when every one was).
func Unlisted(held []Held) string {
	var s []string
	for _, h := range held {
		if h.Err != nil {
			s = append(s, fmt.Sprintf("%s: %v", h.Destination, h.Err))
		}
	}
	if len(s) == 0 {
		return ""
	}
	return " (not listed: " + strings.Join(s, "; ") + ")"
}

// Order puts preferred first, then the other destinations in plan order.
// An unknown preferred name is an error naming it.
func Order(destinations []string, preferred string) ([]string, error) {
	if preferred == "" {
		return destinations, nil
	}
	out := []string{preferred}
	found := false
	for _, d := range destinations {
		if d == preferred {
			found = true
			continue
		}
		out = append(out, d)
	}
	if !found {
		return nil, fmt.Errorf("destination %q: not a destination of the plan (%s)", preferred, strings.Join(destinations, ", "))
	}
	return out, nil
}

// ErrCopyBad wraps the failure of a copy that was read but did not check:
// a frame CRC, an AEAD tag, a truncated object, the final digest, or the
// storage failing mid-read. Another copy may be good.
var ErrCopyBad = errors.New("copy failed its checks")

// Attempt is one try of one copy.
type Attempt struct {
	Copy Copy
	Err  error
}

// Consume hands the verified plaintext of a copy to the target, once its
// first frame checked out (Stream). attempt counts the copies handed to the
// target before this one, from 0 — a copy that failed before it reached
// the target does not count: a later attempt must first undo what an
// earlier one wrote (a temporary file started again, a database restored
// with Clean).
type Consume func(ctx context.Context, attempt int, c Copy, r io.Reader) error

// Fallback restores the first copy of copies that reads whole and checks,
// in order. A copy whose data fails (ErrCopyBad: its object cannot be
// opened, a frame fails its CRC or authentication, it is cut short, or the
// plaintext's digest differs) makes it start again with the next copy; a
// failure of the target (consume failing while the data was good) or of
// ctx ends it there, since another copy would fail the same way. It
// returns the copy used and every failed attempt before it; with no copy
// left the error says why each failed.
func Fallback(ctx context.Context, open Opener, copies []Copy, keys format.Keys, consume Consume) (Copy, format.ReadStats, []Attempt, error) {
	var failed []Attempt
	attempt := 0 // copies handed to consume so far
	for _, c := range copies {
		stats, err := tryCopy(ctx, open, c, keys, func(r io.Reader) error {
			attempt++
			return consume(ctx, attempt-1, c, r)
		})
		if err == nil {
			return c, stats, failed, nil
		}
		failed = append(failed, Attempt{Copy: c, Err: err})
		if !errors.Is(err, ErrCopyBad) || ctx.Err() != nil {
			if len(failed) > 1 {
				err = fmt.Errorf("%w (after %s)", err, attempts(failed[:len(failed)-1]))
			}
			return Copy{}, stats, failed, err
		}
	}
	if len(failed) == 0 {
		return Copy{}, format.ReadStats{}, nil, fmt.Errorf("%w: no copy to restore", backup.ErrNotFound)
	}
	return Copy{}, format.ReadStats{}, failed, fmt.Errorf("every copy failed: %s", attempts(failed))
}

func attempts(failed []Attempt) string {
	var why []string
	for _, a := range failed {
		why = append(why, fmt.Sprintf("%s: %v", a.Copy, a.Err))
	}
	return strings.Join(why, "; ")
}

// tryCopy streams one copy, telling a bad copy (ErrCopyBad) from a
// failing target: a read error of the object's reader is remembered
// whatever the consumer makes of it (a child process may report only its
// own exit).
func tryCopy(ctx context.Context, open Opener, c Copy, keys format.Keys, consume func(io.Reader) error) (format.ReadStats, error) {
	st, err := open(ctx, c.Destination)
	if err != nil {
		return format.ReadStats{}, fmt.Errorf("%w: open destination %s: %w", ErrCopyBad, c.Destination, err)
	}
	defer st.Close()
	var rec *recorder
	stats, err := Stream(ctx, st, c.Manifest, keys, func(r io.Reader) error {
		rec = &recorder{r: r}
		if err := consume(rec); err != nil {
			return err
		}
		// Drain what the consumer left through rec, so that a bad
		// frame there counts against the copy too.
		_, err := io.Copy(io.Discard, rec)
		return err
	})
	switch {
	case err == nil:
		return stats, nil
	case ctx.Err() != nil, errors.Is(err, format.ErrWrongKey):
		// Another copy would fail the same way.
		return stats, err
	case rec == nil: // the object did not open
		return stats, fmt.Errorf("%w: %w", ErrCopyBad, err)
	case rec.err != nil:
		return stats, fmt.Errorf("%w: %w", ErrCopyBad, rec.err)
	case errors.Is(err, ErrDigestMismatch), isDataError(err):
		return stats, fmt.Errorf("%w: %w", ErrCopyBad, err)
	}
	return stats, err
}

func isDataError(err error) bool {
	return errors.Is(err, format.ErrCorrupt) || errors.Is(err, format.ErrTruncated) || errors.Is(err, format.ErrFormat) || errors.Is(err, io.ErrUnexpectedEOF)
}

// recorder remembers the first read error other than EOF.
type recorder struct {
	r   io.Reader
	err error
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// RetryOptions are the restore options of a later attempt into a plugin's
// target, after an earlier attempt wrote part of a bad copy, and whether a
// later attempt is safe at all. The rule: a later attempt never removes
// more than the restore was allowed to (docs/operations.md, "Restore
// fallback"; a restore without clean promises to leave what else is in
// its target alone):
//   - with Clean the operator already agreed that the target is replaced:
//     every plugin runs again with the same options (postgres drops and
//     makes the database again, mariadb drops it, mongodb drops the
//     backup's collections, files empties the directory);
//   - mariadb runs again as it was: a logical dump drops and makes each of
//     its tables again (mariadb-dump's DROP TABLE IF EXISTS), which the
//     first attempt did too; a physical one refuses its target once it is
//     not empty, which ends the fallback;
//   - redis runs again as it was: it renames its dump.rdb into place only
//     after a whole stream, so a failed attempt left nothing;
//   - command runs restoreArgv again on the new stream: it must replace
//     what it writes (cat > file does, >> does not);
//   - postgres, mongodb and files without Clean are not restartable: the
//     first attempt wrote into a database, collections or a directory
//     that may hold what is not the backup's, and only Clean (which
//     removes that too) would let pg_restore, the inserts or the unpacking
//     run again; nor is a plugin not named here.
func RetryOptions(sourceType string, o source.RestoreOptions) (source.RestoreOptions, bool) {
	if o.Clean {
		return o, true
	}
	switch sourceType {
	case "mariadb", "redis", "command":
		return o, true
	}
	return o, false
}

// ErrNotRestartable means a copy failed after the restore wrote part of it
// into a target that cannot be restored into again safely.
var ErrNotRestartable = errors.New("the target cannot be restored into again without clean")

// IntoSource is the Consume of a restore into a source plugin's target:
// the first attempt with o, a later one with RetryOptions.
func IntoSource(sourceType string, src source.Source, o source.RestoreOptions, wrap func(io.Reader) io.Reader) Consume {
	return func(ctx context.Context, attempt int, c Copy, r io.Reader) error {
		opts := o
		if attempt > 0 {
			var ok bool
			if opts, ok = RetryOptions(sourceType, o); !ok {
				return fmt.Errorf("%w: %s source, restore into it again with clean (--clean, \"clean\": true) to read %s", ErrNotRestartable, sourceType, c)
			}
		}
		if wrap != nil {
			r = wrap(r)
		}
		return src.Restore(ctx, r, opts)
	}
}
