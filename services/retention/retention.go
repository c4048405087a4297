// Package retention is the retention stage: after a plan's backup succeeded
// (which means it was verified), it lists every destination of the plan (the
// storage is the truth, not the catalog), labels the new backup with its
// policy cycles, applies the plan's retention policy with pkg/retention and
// removes what the policy does not keep, object first, then manifest.
//
// It must never delete the newest verified backup, never delete anything
// while the newest backup of a destination is unverified or failed, never
// touch a key that is not a listed backup's object or manifest, and never
// undo a run's success: its own failure is reported as retention.failed.
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
	var out []events.Event
	for _, o := range d.Objects {
		ev, err := s.destination(ctx, p, runID, d.BackupID, o.Destination)
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
func (s *Service) destination(ctx context.Context, p *plan.Plan, runID, backupID, dest string) (*events.Event, error) {
	log := s.Log.With("plan", p.Name(), "runid", runID, "step", StepName(dest))
	key := recordKey(p.Name(), dest)
	if entry, err := s.Bus.Leases.Get(ctx, key); err == nil {
		var rec record
		if json.Unmarshal(entry.Value(), &rec) == nil && rec.RunID == runID {
			ev, err := s.Emit(p.Name(), runID, StepName(dest), rec.Data)
			return &ev, err
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("retention record: %w", err)
	}

	failed := func(err error) (*events.Event, error) {
		log.Warn("retention failed", "destination", dest, "err", err)
		ev, eerr := s.Emit(p.Name(), runID, StepName(dest), events.RetentionFailedData{Destination: dest, Error: err.Error()})
		return &ev, eerr
	}
	st, err := s.Plugins.Storage(ctx, p, dest)
	if err != nil {
		return failed(err)
	}
	defer st.Close()
	now := s.Now()
	o, err := Decide(ctx, st, p, dest, backupID, now)
	if err != nil {
		return failed(err)
	}
	if err := o.Label(ctx, st, backupID); err != nil {
		return failed(err)
	}
	if o.Policy == nil {
		return nil, nil // no retention block: cycles only
	}
	if err := o.Remove(ctx, st); err != nil {
		return failed(err)
	}
	data := o.Event()
	rec, _ := json.Marshal(record{RunID: runID, At: now.UTC(), Data: data})
	if _, err := s.Bus.Leases.Put(ctx, key, rec); err != nil {
		return nil, fmt.Errorf("retention record: %w", err)
	}
	log.Info("retention applied", "destination", dest, "kept", len(data.Kept), "removed", len(data.Removed), "held", o.Held)
	ev, err := s.Emit(p.Name(), runID, StepName(dest), data)
	return &ev, err
}

// Outcome is the retention decision for one destination of a plan.
type Outcome struct {
	Plan        string
	Destination string
	// Location is the plan's time zone, which calendar buckets and cycles
	// are computed in.
	Location *time.Location
	// Policy is the plan's retention policy; nil when the plan has none
	// (nothing is removed).
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

// Decide lists plan's backups in st and applies the plan's policy at now.
// backupID, when not empty, is the backup whose success started this pass:
// it must be listed and verified, or Decide fails and nothing is removed.
// When the newest backup (not dated after now) is not verified, the outcome
// is held: every backup is kept.
func Decide(ctx context.Context, st storage.Storage, p *plan.Plan, dest, backupID string, now time.Time) (Outcome, error) {
	loc, err := Location(p)
	if err != nil {
		return Outcome{}, err
	}
	o := Outcome{Plan: p.Name(), Destination: dest, Location: loc}
	if p.Spec.Retention != nil {
		pol := p.Spec.Retention.Policy
		o.Policy = &pol
	}
	o.Manifests, o.Unreadable, err = backup.List(ctx, st, p.Name())
	if err != nil {
		return o, fmt.Errorf("destination %s: %w", dest, err)
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
	in := make([]retention.Backup, len(o.Manifests))
	for i, m := range o.Manifests {
		in[i] = retention.Backup{ID: m.BackupID, Time: m.Created, Tags: Tags(m), Verified: m.Verify.Status == format.VerifyVerified}
	}
	o.Decisions, err = retention.Apply(*o.Policy, in, now, loc)
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
		m.Cycles = cycles
		if err := backup.SaveManifest(ctx, st, m); err != nil {
			return fmt.Errorf("label %s: %w", backupID, err)
		}
	}
	tg, ok := st.(storage.Tagger)
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
