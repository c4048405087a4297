package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/retention"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	svcretention "github.com/backstream/backstream/services/retention"
)

// A scrub (scrub.requested) reads every verified copy of a plan's backups
// in every destination back and checks it again, finds the copies a
// destination should hold and does not, and repairs both from a verified
// copy elsewhere (docs/scrub.md). It only ever writes a copy it found
// damaged or missing, and only with bytes that hash to the manifest's
// stored SHA-256; a copy it cannot repair has its manifest marked failed,
// so nothing damaged passes for a good backup. It is not a run: the
// request's runid is the scrub's id, and its result is one
// scrub.completed (or scrub.failed when it could not run at all).

// scrubSpec is the durable consumer of scrub requests. A request given up
// on (dead-lettered) has no run to fail; it ends in scrub.failed.
func (s *Service) scrubSpec() bus.ConsumerSpec {
	spec := s.Spec("scrub", s.handleScrub, events.ScrubRequested)
	spec.OnDead = func(ctx context.Context, e events.Event, reason string) ([]events.Event, error) {
		ev, err := s.Emit(ctx, e.Subject(), events.RunID(e), "", events.ScrubFailedData{Error: reason})
		if err != nil {
			return nil, err
		}
		return []events.Event{ev}, nil
	}
	return spec
}

// errScrubRefused marks what makes a scrub impossible to run: it ends in
// scrub.failed, not in a retry.
var errScrubRefused = errors.New("scrub refused")

func (s *Service) handleScrub(ctx context.Context, e events.Event) ([]events.Event, error) {
	var req events.ScrubRequestedData
	if err := e.DataAs(&req); err != nil {
		return nil, bus.Permanent(fmt.Errorf("scrub: %w", err))
	}
	id := events.RunID(e)
	failed := func(err error) ([]events.Event, error) {
		s.Log.Warn("scrub failed", "plan", e.Subject(), "scrub", id, "err", err)
		ev, eerr := s.Emit(ctx, e.Subject(), id, "", events.ScrubFailedData{Error: err.Error()})
		return []events.Event{ev}, eerr
	}
	p, err := s.Plans.Get(ctx, e.Subject())
	switch {
	case errors.Is(err, planstore.ErrNotFound), errors.Is(err, planstore.ErrInvalidPlan):
		return failed(fmt.Errorf("plan %s: %w", e.Subject(), err))
	case err != nil:
		return nil, err // retried
	}
	sc, err := s.newScrub(p, req, id)
	if err != nil {
		return failed(err)
	}
	defer sc.close()
	data := sc.run(ctx)
	if ctx.Err() != nil {
		return nil, ctx.Err() // stopped: done again on redelivery
	}
	s.Log.Info("scrub completed", "plan", p.Name(), "scrub", id, "mode", data.Mode, "status", data.Status,
		"damaged", len(data.Damaged), "elapsed", time.Duration(data.DurationMs)*time.Millisecond)
	ev, err := s.Emit(ctx, p.Name(), id, "", data)
	if err != nil {
		return nil, err
	}
	return []events.Event{ev}, nil
}

// scrub is one scrub of one plan.
type scrub struct {
	s      *Service
	p      *plan.Plan
	id     string
	mode   string
	keys   format.Keys
	repair bool
	// targets are the destinations scrubbed, in plan order; every
	// destination of the plan is listed, as a source of repairs.
	targets []string
	begin   time.Time
	now     time.Time
	loc     *time.Location

	stores   map[string]storage.Storage
	listings map[string]svcretention.Listing
	// checked holds the outcome of each copy read back in this pass, by
	// destination and backup id: nil passed.
	checked map[string]map[string]error
	results map[string]*events.ScrubDestination
}

func (s *Service) newScrub(p *plan.Plan, req events.ScrubRequestedData, id string) (*scrub, error) {
	sc := &scrub{s: s, p: p, id: id, mode: req.Mode, repair: p.Spec.Scrub.Repairs(), begin: time.Now(), now: s.Now(),
		stores: map[string]storage.Storage{}, listings: map[string]svcretention.Listing{},
		checked: map[string]map[string]error{}, results: map[string]*events.ScrubDestination{}}
	if sc.mode == "" {
		sc.mode = p.Spec.Scrub.EffectiveMode()
	}
	if sc.mode == events.ScrubFull {
		sc.keys = s.Keys
		if p.Spec.Filters.Encrypted() && len(s.Keys.Identities) == 0 && s.Keys.Passphrase == "" {
			return nil, fmt.Errorf("%w: mode full opens every frame, and the verify service here holds no key (serve --identity); scrub with mode ciphertext or give it the key", errScrubRefused)
		}
	}
	for _, d := range p.Spec.Destinations {
		if req.Destination == "" || req.Destination == d.Name {
			sc.targets = append(sc.targets, d.Name)
		}
	}
	if len(sc.targets) == 0 {
		return nil, fmt.Errorf("%w: destination %q is not one of plan %s's", errScrubRefused, req.Destination, p.Name())
	}
	loc, err := svcretention.Location(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errScrubRefused, err)
	}
	sc.loc = loc
	return sc, nil
}

func (sc *scrub) close() {
	for _, st := range sc.stores {
		_ = st.Close()
	}
}

func (sc *scrub) log() []any { return []any{"plan", sc.p.Name(), "scrub", sc.id} }

// run scrubs every target and repairs what it can. It returns the result
// even when ctx ended (the caller drops it then).
func (sc *scrub) run(ctx context.Context) events.ScrubCompletedData {
	for _, d := range sc.p.Spec.Destinations {
		sc.list(ctx, d.Name)
	}
	var damage []events.ScrubDamage
	for _, dest := range sc.targets {
		damage = append(damage, sc.check(ctx, dest)...)
	}
	for _, dest := range sc.targets {
		damage = append(damage, sc.missing(ctx, dest)...)
	}
	for i := range damage {
		if ctx.Err() != nil {
			break
		}
		sc.mend(ctx, &damage[i])
	}
	data := events.ScrubCompletedData{Mode: sc.mode, DurationMs: time.Since(sc.begin).Milliseconds()}
	status := events.ScrubClean
	for _, dest := range sc.targets {
		r := sc.results[dest]
		if r.Error != "" {
			status = events.ScrubIncomplete
		}
		data.Destinations = append(data.Destinations, *r)
	}
	for _, d := range damage {
		switch {
		case d.RepairedFrom == "":
			status = events.ScrubDamaged
		case status == events.ScrubClean:
			status = events.ScrubRepaired
		}
	}
	data.Status = status
	if len(damage) > events.MaxScrubDamage {
		damage = damage[:events.MaxScrubDamage]
	}
	data.Damaged = damage
	return data
}

// result is the entry of dest in the scrub's result.
func (sc *scrub) result(dest string) *events.ScrubDestination {
	r := sc.results[dest]
	if r == nil {
		r = &events.ScrubDestination{Destination: dest}
		sc.results[dest] = r
	}
	return r
}

// fault notes that dest could not be scrubbed fully.
func (sc *scrub) fault(dest string, err error) {
	r := sc.result(dest)
	if r.Error == "" {
		r.Error = err.Error()
	} else if len(r.Error) < 1000 {
		r.Error += "; " + err.Error()
	}
}

// list opens and lists dest once.
func (sc *scrub) list(ctx context.Context, dest string) {
	sc.result(dest)
	st, err := sc.s.Plugins.Storage(ctx, sc.p, dest)
	if err != nil {
		sc.listings[dest] = svcretention.Listing{Destination: dest, Err: fmt.Errorf("destination %s: %w", dest, err)}
		return
	}
	sc.stores[dest] = st
	sc.listings[dest] = svcretention.List(ctx, st, sc.p.Name(), dest)
}

// problemOf classifies what reading a copy back found: a missing object, a
// corrupt one, or "" when the copy could not be checked (the storage
// failed, no key opens it), which says nothing about the copy.
func problemOf(err error) string {
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return events.CopyMissing
	case errors.Is(err, format.ErrCorrupt), errors.Is(err, format.ErrTruncated),
		errors.Is(err, format.ErrFormat), errors.Is(err, format.ErrVersion):
		return events.CopyCorrupt
	}
	return ""
}

// check reads back every verified copy dest holds and returns the damaged
// ones. A copy that fails is read a second time before it is called
// damaged: a storage that hiccups mid-read must not make a good copy look
// corrupt.
func (sc *scrub) check(ctx context.Context, dest string) []events.ScrubDamage {
	l, r := sc.listings[dest], sc.result(dest)
	if l.Err != nil {
		sc.fault(dest, l.Err)
		return nil
	}
	st := sc.stores[dest]
	sc.checked[dest] = map[string]error{}
	var damage []events.ScrubDamage
	for key, err := range l.Unreadable {
		_, id, _, perr := format.ParseKey(key)
		if perr != nil {
			continue
		}
		if _, err2 := backup.LoadManifest(ctx, st, key); err2 == nil || errors.Is(err2, backup.ErrNotFound) {
			continue // readable now, or removed meanwhile (retention)
		}
		r.Checked++
		r.Corrupt++
		sc.checked[dest][id] = err
		damage = append(damage, events.ScrubDamage{Destination: dest, BackupID: id, Problem: events.CopyCorrupt, Error: "manifest: " + err.Error()})
	}
	for _, m := range l.Manifests {
		if ctx.Err() != nil {
			return damage
		}
		if m.Verify.Status != format.VerifyVerified {
			continue // failed (not a backup) or pending (its run may be going)
		}
		if sc.mode == events.ScrubFull && !backup.CanOpen(m, sc.keys) {
			sc.fault(dest, fmt.Errorf("backup %s: no key here opens it, checked ciphertext only", m.BackupID))
		}
		res, err := backup.Verify(ctx, st, m, sc.keys, sc.s.Now())
		if err != nil && ctx.Err() == nil && problemOf(err) != "" {
			sc.s.Log.Warn("scrub: a copy failed its check, reading it again", append(sc.log(), "destination", dest, "backup", m.BackupID, "err", err)...)
			res, err = backup.Verify(ctx, st, m, sc.keys, sc.s.Now())
		}
		if ctx.Err() != nil {
			return damage
		}
		r.Bytes += res.StoredBytes
		problem := problemOf(err)
		if err != nil && problem == events.CopyMissing {
			if _, merr := backup.LoadManifest(ctx, st, format.ManifestKey(m.Plan, m.BackupID)); errors.Is(merr, backup.ErrNotFound) {
				continue // removed meanwhile by retention (object first, then manifest)
			}
		}
		switch {
		case err == nil:
			r.Checked++
			r.Verified++
			sc.checked[dest][m.BackupID] = nil
		case problem == "":
			sc.fault(dest, fmt.Errorf("backup %s: %w", m.BackupID, err))
		default:
			r.Checked++
			if problem == events.CopyMissing {
				r.Missing++
			} else {
				r.Corrupt++
			}
			sc.checked[dest][m.BackupID] = err
			sc.s.Log.Warn("scrub: damaged copy", append(sc.log(), "destination", dest, "backup", m.BackupID, "problem", problem, "err", err)...)
			damage = append(damage, events.ScrubDamage{Destination: dest, BackupID: m.BackupID, Problem: problem, Error: err.Error()})
		}
	}
	return damage
}

// good returns the copies of backup id that may serve as the source of a
// repair: verified in their destination and not found damaged in this
// pass, those read back in this pass first, then plan order.
func (sc *scrub) good(id, except string) []string {
	var read, unread []string
	for _, d := range sc.p.Spec.Destinations {
		l := sc.listings[d.Name]
		if d.Name == except || l.Err != nil {
			continue
		}
		i := slices.IndexFunc(l.Manifests, func(m format.Manifest) bool { return m.BackupID == id })
		if i < 0 || l.Manifests[i].Verify.Status != format.VerifyVerified {
			continue
		}
		err, read1 := sc.checked[d.Name][id]
		switch {
		case read1 && err == nil:
			read = append(read, d.Name)
		case !read1:
			unread = append(unread, d.Name)
		}
	}
	return append(read, unread...)
}

// manifestIn is dest's manifest of backup id, as listed.
func (sc *scrub) manifestIn(dest, id string) (format.Manifest, bool) {
	for _, m := range sc.listings[dest].Manifests {
		if m.BackupID == id {
			return m, true
		}
	}
	return format.Manifest{}, false
}

// missing returns the backups dest should hold and does not hold at all:
// verified elsewhere, their run over, and kept by dest's own retention
// policy were the copy there (the same rule that makes retention keep a
// last copy elsewhere). A destination added to a plan is so filled with
// what its policy keeps; one whose retention removed a backup is not.
func (sc *scrub) missing(ctx context.Context, dest string) []events.ScrubDamage {
	l := sc.listings[dest]
	if l.Err != nil {
		return nil
	}
	held := map[string]bool{}
	for _, m := range l.Manifests {
		held[m.BackupID] = true
	}
	for key := range l.Unreadable {
		if _, id, _, err := format.ParseKey(key); err == nil {
			held[id] = true
		}
	}
	other := svcretention.OtherOf(sc.p, l)
	seen := map[string]bool{}
	var damage []events.ScrubDamage
	for _, d := range sc.p.Spec.Destinations {
		for _, m := range sc.listings[d.Name].Manifests {
			if held[m.BackupID] || seen[m.BackupID] || m.Verify.Status != format.VerifyVerified || len(sc.good(m.BackupID, dest)) == 0 {
				continue
			}
			seen[m.BackupID] = true
			if r, err := sc.s.Runs.Get(ctx, m.RunID); err == nil && !r.Phase.Done() {
				continue // its run is still writing its copies
			} else if err != nil && !errors.Is(err, runs.ErrNotFound) {
				sc.fault(dest, fmt.Errorf("backup %s: run %s: %w", m.BackupID, m.RunID, err))
				continue
			}
			b := retention.Backup{ID: m.BackupID, Time: m.Created, Tags: svcretention.Tags(m), Verified: true}
			why, err := other.Wants(b, sc.now, sc.loc)
			if err != nil {
				sc.fault(dest, err)
				continue
			}
			if why == "" {
				continue
			}
			r := sc.result(dest)
			r.Missing++
			damage = append(damage, events.ScrubDamage{Destination: dest, BackupID: m.BackupID, Problem: events.CopyMissing,
				Error: fmt.Sprintf("not in %s, verified in %s, and %s's retention keeps it", dest, d.Name, dest)})
		}
	}
	return damage
}

// mend repairs damaged copy d from a good copy elsewhere, or, when it
// cannot, marks its manifest failed so it no longer passes for a backup.
func (sc *scrub) mend(ctx context.Context, d *events.ScrubDamage) {
	to := sc.stores[d.Destination]
	old, hadManifest := sc.manifestIn(d.Destination, d.BackupID)
	defer func() {
		if cur, ok := sc.manifestIn(d.Destination, d.BackupID); d.RepairedFrom == "" && ok {
			sc.markFailed(ctx, to, cur, d)
		}
	}()
	if !sc.repair {
		d.RepairError = "repair is off (spec.scrub.repair: false)"
		return
	}
	sources := sc.good(d.BackupID, d.Destination)
	if len(sources) == 0 {
		d.RepairError = "no verified copy in another destination"
		return
	}
	if hadManifest {
		// Honest while the repair runs: a crash leaves a copy marked
		// failed, never a damaged one marked verified.
		sc.markFailed(ctx, to, old, d)
	}
	var errs []string
	for _, from := range sources {
		if err := sc.copyFrom(ctx, from, d, old, hadManifest); err != nil {
			errs = append(errs, fmt.Sprintf("from %s: %v", from, err))
			continue
		}
		d.RepairedFrom = from
		sc.result(d.Destination).Repaired++
		sc.s.Log.Info("scrub: copy repaired", append(sc.log(), "destination", d.Destination, "backup", d.BackupID, "from", from, "problem", d.Problem)...)
		return
	}
	d.RepairError = fmt.Sprint(errs)
}

// copyFrom copies backup d.BackupID from destination from into d's
// destination and reads the new copy back before its manifest says
// verified. The destination's own retention labels (cycles, tags) of a
// copy it held are kept.
func (sc *scrub) copyFrom(ctx context.Context, from string, d *events.ScrubDamage, old format.Manifest, hadManifest bool) error {
	src, _ := sc.manifestIn(from, d.BackupID)
	to := sc.stores[d.Destination]
	if hadManifest {
		src.Cycles, src.Tags = old.Cycles, old.Tags
	}
	_, m, err := backup.Copy(ctx, sc.stores[from], to, src)
	if err != nil {
		return err
	}
	res, err := backup.Verify(ctx, to, m, sc.keys, sc.s.Now())
	if _, uerr := backup.UpdateManifest(ctx, to, format.ManifestKey(m.Plan, m.BackupID), func(m *format.Manifest) (bool, error) {
		m.Verify = res.VerifyResult
		return true, nil
	}); uerr != nil && err == nil {
		err = uerr
	}
	return err
}

// markFailed records in dest's manifest of a damaged copy that the scrub
// found it so (once; a manifest already failed is left as it is).
func (sc *scrub) markFailed(ctx context.Context, st storage.Storage, m format.Manifest, d *events.ScrubDamage) {
	if backup.Failed(m) || st == nil {
		return
	}
	reason := fmt.Sprintf("scrub %s: %s: %s", sc.id, d.Problem, d.Error)
	m, err := backup.UpdateManifest(context.WithoutCancel(ctx), st, format.ManifestKey(m.Plan, m.BackupID), func(m *format.Manifest) (bool, error) {
		return backup.MarkFailed(m, sc.s.Now(), reason), nil
	})
	if err != nil {
		sc.fault(d.Destination, fmt.Errorf("backup %s: mark damaged copy failed: %w", d.BackupID, err))
		return
	}
	// Later calls see it marked.
	l := sc.listings[d.Destination]
	for i := range l.Manifests {
		if l.Manifests[i].BackupID == m.BackupID {
			l.Manifests[i] = m
		}
	}
}
