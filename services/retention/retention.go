// Package retention is the retention stage: after a plan's backup succeeded
// (which means it was verified), it lists every destination of the plan (the
// storage is the truth, not the catalog), labels the new backup with its
// policy cycles, applies each destination's effective retention policy
// (its own block, else the plan's) with pkg/retention and removes what the
// policy does not keep, object first, then manifest.
//
// It must never delete the newest verified backup, never delete anything
// while the newest backup of a destination is unverified or failed, never
// delete a verified copy another destination's policy still wants but that
// destination lacks (KeepLastCopies), never touch a key that is not a listed
// backup's object or manifest, and never undo a run's success: its own
// failure is reported as retention.failed.
package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/retention"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/services/stage"
)

// StepName is the step of a run's retention events for dest.
func StepName(dest string) string { return "retention:" + dest }

// Service is the retention stage.
type Service struct{ *stage.Deps }

// New builds the retention stage.
func New(d *stage.Deps) *Service { return &Service{Deps: d} }

// Name implements stage.Service.
func (s *Service) Name() string { return "retention" }

// Consumers implements stage.Service.
func (s *Service) Consumers() []bus.ConsumerSpec {
	return []bus.ConsumerSpec{s.Spec("retention", s.handle, events.BackupSucceeded)}
}

// record is the leases-bucket record of the last retention pass of a plan's
// destination: a redelivered backup.succeeded of the same run re-emits the
// same result instead of deciding again.
type record struct {
	RunID string                        `json:"runId"`
	At    time.Time                     `json:"at"`
	Data  events.RetentionCompletedData `json:"data"`
}

func recordKey(planName, dest string) string { return "retention." + planName + "." + dest }

func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	p, err := s.Plan(ctx, e)
	if err != nil {
		return nil, err
	}
	var d events.BackupSucceededData
	if err := e.DataAs(&d); err != nil {
		return nil, bus.Permanent(fmt.Errorf("retention: %w", err))
	}
	runID := events.RunID(e)
	v := NewView(s.Plugins, p)
	defer v.Close()
	var out []events.Event
	for _, o := range d.Objects {
		ev, err := s.destination(ctx, v, p, runID, d.BackupID, o.Destination)
		if err != nil {
			return out, err
		}
		if ev != nil {
			out = append(out, *ev)
		}
	}
	return out, nil
}

// destination runs retention on one destination and returns its
// retention.completed or retention.failed. Only an error building or
// storing bookkeeping is returned, to be retried.
func (s *Service) destination(ctx context.Context, v *View, p *plan.Plan, runID, backupID, dest string) (*events.Event, error) {
	log := s.Log.With("plan", p.Name(), "runid", runID, "step", StepName(dest))
	key := recordKey(p.Name(), dest)
	if entry, err := s.Bus.Leases.Get(ctx, key); err == nil {
		var rec record
		if json.Unmarshal(entry.Value(), &rec) == nil && rec.RunID == runID {
			ev, err := s.Emit(ctx, p.Name(), runID, StepName(dest), rec.Data)
			return &ev, err
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("retention record: %w", err)
	}

	failed := func(err error) (*events.Event, error) {
		log.Warn("retention failed", "destination", dest, "err", err)
		ev, eerr := s.Emit(ctx, p.Name(), runID, StepName(dest), events.RetentionFailedData{Destination: dest, Error: err.Error()})
		return &ev, eerr
	}
	st, err := v.Storage(ctx, dest)
	if err != nil {
		return failed(err)
	}
	now := s.Now()
	o, err := v.Decide(ctx, dest, backupID, now)
	if err != nil {
		return failed(err)
	}
	if err := o.Label(ctx, st, backupID); err != nil {
		return failed(err)
	}
	if o.Policy == nil {
		return nil, nil // no retention block: cycles only
	}
	err = o.Remove(ctx, st)
	v.Forget(dest, o.Removed)
	if err != nil {
		return failed(err)
	}
	data := o.Event()
	rec, _ := json.Marshal(record{RunID: runID, At: now.UTC(), Data: data})
	if _, err := s.Bus.Leases.Put(ctx, key, rec); err != nil {
		return nil, fmt.Errorf("retention record: %w", err)
	}
	log.Info("retention applied", "destination", dest, "kept", len(data.Kept), "removed", len(data.Removed), "held", o.Held, "lastCopies", o.LastCopies)
	ev, err := s.Emit(ctx, p.Name(), runID, StepName(dest), data)
	return &ev, err
}

// Outcome is the retention decision for one destination of a plan.
type Outcome struct {
	Plan        string
	Destination string
	// Location is the plan's time zone, which calendar buckets and cycles
	// are computed in.
	Location *time.Location
	// Policy is the destination's effective retention policy (its own
	// block, else the plan's); nil when it has none (nothing is removed).
	Policy *retention.Policy
	// Manifests are the destination's backups of the plan, oldest first.
	Manifests []format.Manifest
	// Unreadable lists manifest keys that could not be read, with why;
	// their backups are never touched.
	Unreadable map[string]error
	// Decisions are the engine's, newest first. When Held is set every
	// decision keeps its backup.
	Decisions []retention.Decision
	// Held says why nothing is removed although the policy would.
	Held string
	// LastCopies counts the backups kept beyond the policy because another
	// destination's policy wants them and that destination has no verified
	// copy (KeepLastCopies; their reasons start with LastCopyPrefix).
	LastCopies int
	// Removed lists the backups Remove deleted.
	Removed []string
}

// Reasons of the stage, besides the engine's.
const (
	// HeldPrefix starts the reason of every backup kept because the newest
	// backup of the destination is not verified.
	HeldPrefix = "held: "
)

// Location is the time zone of a plan's calendar: its schedule's, or UTC.
func Location(p *plan.Plan) (*time.Location, error) {
	if p.Spec.Schedule == nil || p.Spec.Schedule.Timezone == "" {
		return time.UTC, nil
	}
	loc, err := time.LoadLocation(p.Spec.Schedule.Timezone)
	if err != nil {
		return nil, fmt.Errorf("plan %s: timezone: %w", p.Name(), err)
	}
	return loc, nil
}

// Tags turns a manifest's tags into the engine's tag list: "key=value" for
// every tag and "key" alone when the value is empty or "true", so
// keepTags: [pinned] matches a tag pinned=true.
func Tags(m format.Manifest) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m.Tags)) {
		v := m.Tags[k]
		out = append(out, k+"="+v)
		if v == "" || v == "true" {
			out = append(out, k)
		}
	}
	return out
}

// Listing is what one destination holds of a plan, as its storage lists
// it.
type Listing struct {
	Destination string
	// Manifests are the plan's backups there, oldest first.
	Manifests []format.Manifest
	// Unreadable lists manifest keys that could not be read, with why.
	Unreadable map[string]error
	// Err is why the destination could not be opened or listed.
	Err error
}

// List lists plan's backups in st, the storage of destination dest.
func List(ctx context.Context, st storage.Storage, planName, dest string) Listing {
	l := Listing{Destination: dest}
	var err error
	l.Manifests, l.Unreadable, err = backup.List(ctx, st, planName)
	if err != nil {
		l.Err = fmt.Errorf("destination %s: %w", dest, err)
	}
	return l
}

// Decide applies dest's effective policy (plan.Spec.RetentionFor) to its
// listing l at now. backupID, when not empty, is the backup whose success
// started this pass: it must be listed and verified, or Decide fails and
// nothing is removed. When the newest backup (not dated after now) is not
// verified, the outcome is held: every backup is kept. The last-copy rule
// is not applied here: it needs the other destinations (View.Decide).
func Decide(p *plan.Plan, l Listing, backupID string, now time.Time) (Outcome, error) {
	dest := l.Destination
	loc, err := Location(p)
	if err != nil {
		return Outcome{}, err
	}
	o := Outcome{Plan: p.Name(), Destination: dest, Location: loc, Manifests: l.Manifests, Unreadable: l.Unreadable}
	if r := p.Spec.RetentionFor(dest); r != nil {
		pol := r.Policy
		o.Policy = &pol
	}
	if l.Err != nil {
		return o, l.Err
	}
	if backupID != "" {
		i := slices.IndexFunc(o.Manifests, func(m format.Manifest) bool { return m.BackupID == backupID })
		switch {
		case i < 0:
			return o, fmt.Errorf("destination %s: backup %s is not in the listing: nothing removed", dest, backupID)
		case o.Manifests[i].Verify.Status != format.VerifyVerified:
			return o, fmt.Errorf("destination %s: backup %s is %s, not verified: nothing removed", dest, backupID, o.Manifests[i].Verify.Status)
		}
	}
	if o.Policy == nil {
		return o, nil
	}
	o.Decisions, err = retention.Apply(*o.Policy, engineBackups(o.Manifests), now, loc)
	if err != nil {
		return o, fmt.Errorf("destination %s: %w", dest, err)
	}
	// The newest backup that is not future-dated decides whether anything
	// may go: an unverified or failed one may mean the source or the
	// pipeline is broken, and retention must not thin out the good history
	// while that is so.
	for _, d := range o.Decisions {
		if d.Backup.Time.After(now) {
			continue
		}
		if !d.Backup.Verified {
			m := o.manifest(d.Backup.ID)
			o.Held = fmt.Sprintf("newest backup %s is %s", d.Backup.ID, m.Verify.Status)
		}
		break
	}
	if o.Held != "" {
		for i := range o.Decisions {
			if !o.Decisions[i].Keep {
				o.Decisions[i].Keep = true
				o.Decisions[i].Reasons = append([]string{HeldPrefix + o.Held}, o.Decisions[i].Reasons...)
			}
		}
	}
	return o, nil
}

// engineBackups turns manifests into the engine's backups.
func engineBackups(ms []format.Manifest) []retention.Backup {
	in := make([]retention.Backup, len(ms))
	for i, m := range ms {
		in[i] = retention.Backup{ID: m.BackupID, Time: m.Created, Tags: Tags(m), Verified: m.Verify.Status == format.VerifyVerified}
	}
	return in
}

// OtherOf is what the last-copy rule needs of destination l of plan p.
func OtherOf(p *plan.Plan, l Listing) Other {
	o := Other{Destination: l.Destination, Err: l.Err, Backups: engineBackups(l.Manifests), Unreadable: map[string]bool{}}
	if r := p.Spec.RetentionFor(l.Destination); r != nil {
		pol := r.Policy
		o.Policy = &pol
	}
	for k := range l.Unreadable {
		if _, id, _, err := format.ParseKey(k); err == nil {
			o.Unreadable[id] = true
		}
	}
	return o
}

// removes reports whether any decision removes its backup.
func (o *Outcome) removes() bool {
	return slices.ContainsFunc(o.Decisions, func(d retention.Decision) bool { return !d.Keep })
}

// StorageOpener opens a destination's storage of a plan; *plugins.Registry
// is one.
type StorageOpener interface {
	Storage(ctx context.Context, p *plan.Plan, dest string) (storage.Storage, error)
}

// View is one retention pass's view of every destination of a plan: each
// storage is opened and listed at most once, when first needed, so the
// last-copy rule of one destination sees the others. It is not safe for
// concurrent use. Close closes the storages.
type View struct {
	opener   StorageOpener
	plan     *plan.Plan
	stores   map[string]storage.Storage
	openErr  map[string]error
	listings map[string]Listing
}

// NewView returns an empty view of plan p's destinations.
func NewView(opener StorageOpener, p *plan.Plan) *View {
	return &View{opener: opener, plan: p, stores: map[string]storage.Storage{}, openErr: map[string]error{}, listings: map[string]Listing{}}
}

// Storage opens dest's storage once; the view closes it.
func (v *View) Storage(ctx context.Context, dest string) (storage.Storage, error) {
	if st, ok := v.stores[dest]; ok {
		return st, nil
	}
	if err, ok := v.openErr[dest]; ok {
		return nil, err
	}
	st, err := v.opener.Storage(ctx, v.plan, dest)
	if err != nil {
		v.openErr[dest] = err
		return nil, err
	}
	v.stores[dest] = st
	return st, nil
}

// Listing lists dest once.
func (v *View) Listing(ctx context.Context, dest string) Listing {
	if l, ok := v.listings[dest]; ok {
		return l
	}
	l := Listing{Destination: dest}
	if st, err := v.Storage(ctx, dest); err != nil {
		l.Err = err
	} else {
		l = List(ctx, st, v.plan.Name(), dest)
	}
	v.listings[dest] = l
	return l
}

// Forget drops removed backups from dest's listing, so the destinations
// decided after it in the same pass do not count those copies.
func (v *View) Forget(dest string, removed []string) {
	l, ok := v.listings[dest]
	if !ok || len(removed) == 0 {
		return
	}
	l.Manifests = slices.DeleteFunc(slices.Clone(l.Manifests), func(m format.Manifest) bool { return slices.Contains(removed, m.BackupID) })
	v.listings[dest] = l
}

// Decide decides for dest at now (see the function Decide) and then
// applies the last-copy rule against every other destination of the plan,
// which it lists only when something would be removed.
func (v *View) Decide(ctx context.Context, dest, backupID string, now time.Time) (Outcome, error) {
	o, err := Decide(v.plan, v.Listing(ctx, dest), backupID, now)
	if err != nil || !o.removes() {
		return o, err
	}
	var others []Other
	for _, d := range v.plan.Spec.Destinations {
		if d.Name != dest {
			others = append(others, OtherOf(v.plan, v.Listing(ctx, d.Name)))
		}
	}
	o.LastCopies, err = KeepLastCopies(o.Decisions, others, now, o.Location)
	if err != nil {
		return o, fmt.Errorf("destination %s: last copies: %w", dest, err)
	}
	return o, nil
}

// Close closes every storage the view opened.
func (v *View) Close() {
	for _, st := range v.stores {
		_ = st.Close()
	}
}

func (o *Outcome) manifest(id string) format.Manifest {
	for _, m := range o.Manifests {
		if m.BackupID == id {
			return m
		}
	}
	return format.Manifest{}
}

// Label records backupID's policy cycles (retention.Cycles among the
// destination's verified backups, in the plan's zone) in its manifest and,
// on a storage.Tagger, as the tag retention.CycleTag on its object and its
// manifest, so lifecycle rules expire both together. It is idempotent.
func (o *Outcome) Label(ctx context.Context, st storage.Storage, backupID string) error {
	if backupID == "" {
		return nil
	}
	m := o.manifest(backupID)
	if m.BackupID == "" {
		return fmt.Errorf("label %s: not listed", backupID)
	}
	var prev []time.Time
	for _, x := range o.Manifests {
		if x.BackupID != backupID && x.Verify.Status == format.VerifyVerified {
			prev = append(prev, x.Created)
		}
	}
	cycles := retention.Cycles(m.Created, o.Location, prev)
	if !slices.Equal(m.Cycles, cycles) {
		if _, err := backup.UpdateManifest(ctx, st, format.ManifestKey(m.Plan, m.BackupID), func(m *format.Manifest) (bool, error) {
			if slices.Equal(m.Cycles, cycles) {
				return false, nil
			}
			m.Cycles = cycles
			return true, nil
		}); err != nil {
			return fmt.Errorf("label %s: %w", backupID, err)
		}
	}
	tg, ok := storage.As[storage.Tagger](st)
	if !ok {
		return nil
	}
	cycle := retention.MostSignificant(cycles)
	for _, key := range []string{m.ObjectKey, format.ManifestKey(m.Plan, m.BackupID)} {
		tags, err := tg.GetTags(ctx, key)
		if err != nil {
			return fmt.Errorf("label %s: %w", key, err)
		}
		if tags[retention.CycleTag] == cycle {
			continue
		}
		tags[retention.CycleTag] = cycle
		if err := tg.SetTags(ctx, key, tags); err != nil {
			return fmt.Errorf("label %s: %w", key, err)
		}
	}
	return nil
}

// Remove deletes every backup the decisions do not keep: its object, then
// its manifest, so a backup whose object delete fails stays listed and is
// removed by a later pass. Deleting an absent key is no error, so Remove is
// idempotent. It stops at the first error.
func (o *Outcome) Remove(ctx context.Context, st storage.Storage) error {
	for _, d := range o.Decisions {
		if d.Keep {
			continue
		}
		m := o.manifest(d.Backup.ID)
		if err := st.Delete(ctx, m.ObjectKey); err != nil {
			return fmt.Errorf("remove %s: %w", m.ObjectKey, err)
		}
		mk := format.ManifestKey(m.Plan, m.BackupID)
		if err := st.Delete(ctx, mk); err != nil {
			return fmt.Errorf("remove %s: %w", mk, err)
		}
		o.Removed = append(o.Removed, d.Backup.ID)
	}
	return nil
}

// Event is the retention.completed payload of the outcome.
func (o *Outcome) Event() events.RetentionCompletedData {
	data := events.RetentionCompletedData{Destination: o.Destination, Kept: []events.RetentionDecision{}, Removed: []events.RetentionDecision{}}
	for _, d := range o.Decisions {
		rd := events.RetentionDecision{BackupID: d.Backup.ID, Time: d.Backup.Time.UTC(), Reasons: d.Reasons}
		if d.Keep {
			data.Kept = append(data.Kept, rd)
		} else {
			data.Removed = append(data.Removed, rd)
		}
	}
	return data
}

// Table renders the decisions as a text table, newest first.
func (o *Outcome) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "destination %s: %d backups", o.Destination, len(o.Manifests))
	if o.Held != "" {
		fmt.Fprintf(&b, ", HELD (%s): nothing would be removed", o.Held)
	}
	if o.LastCopies > 0 {
		fmt.Fprintf(&b, ", %d kept as the last verified copy another destination wants", o.LastCopies)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "%-26s  %-25s  %-8s  %-6s  %s\n", "BACKUP", "TIME", "VERIFY", "ACTION", "REASONS")
	for _, d := range o.Decisions {
		action := "keep"
		if !d.Keep {
			action = "remove"
		}
		m := o.manifest(d.Backup.ID)
		fmt.Fprintf(&b, "%-26s  %-25s  %-8s  %-6s  %s\n", d.Backup.ID, d.Backup.Time.In(o.Location).Format(time.RFC3339), m.Verify.Status, action, strings.Join(d.Reasons, ", "))
	}
	for _, k := range slices.Sorted(maps.Keys(o.Unreadable)) {
		fmt.Fprintf(&b, "unreadable manifest %s (never touched): %v\n", k, o.Unreadable[k])
	}
	return b.String()
}
