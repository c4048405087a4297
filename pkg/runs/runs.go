// Package runs keeps the state of backup and restore runs in the JetStream KV
// bucket of runs: a phase per run and per step, what each destination holds,
// and which compensations ran. Every change is a compare-and-set on the
// record's revision, so stages and replicas that update one run at the same
// time never lose each other's writes.
//
// The record is an index for operators and for the stages' own idempotence
// checks; the storage remains the truth about which backups exist.
package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/secret"
)

// Kinds of run.
const (
	KindBackup  = "backup"
	KindRestore = "restore"
)

// Phase is where a run or a step stands.
type Phase string

// Run and step phases. A restore run starts Initializing; a backup run starts
// Pending.
const (
	Pending      Phase = "Pending"
	Initializing Phase = "Initializing"
	Running      Phase = "Running"
	Succeeded    Phase = "Succeeded"
	Failed       Phase = "Failed"
	// Skipped is a step whose failure was tolerated (onError: continue) or
	// that never ran because the run failed first.
	Skipped Phase = "Skipped"
	// Cancelled is a run an operator cancelled: neither a success nor a
	// failure, compensated like a failure. A step is Cancelled when its
	// stage stopped it for the cancel (a dump killed, an upload aborted).
	Cancelled Phase = "Cancelled"
)

// Done reports whether p is final.
func (p Phase) Done() bool { return p == Succeeded || p == Failed || p == Skipped || p == Cancelled }

// Unsuccessful reports whether a final run ended without a backup or
// restore: failed or cancelled.
func (p Phase) Unsuccessful() bool { return p == Failed || p == Cancelled }

// Sentinel errors.
var (
	ErrNotFound = errors.New("run not found")
	// ErrNoChange, returned by an Update mutator, leaves the record as it is.
	ErrNoChange = errors.New("no change")
)

// Step is one workflow step or data stage of a run.
type Step struct {
	Name     string    `json:"name"`
	Phase    Phase     `json:"phase"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Bytes    int64     `json:"bytes,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Owner is the instance that runs the step; a redelivery to another
	// owner while the step is Running means the first one died mid-step.
	Owner string `json:"owner,omitempty"`
	// Deadline is when a Running step is overdue (the watchdog fails it).
	Deadline time.Time `json:"deadline,omitzero"`
	// Attempt is the attempt of the run that claimed the step (0: not
	// claimed, or claimed before records kept it). A step is claimed at
	// most once per attempt, so (step, attempt) names one claim: its end
	// is accepted only from that claim (Request.Attempt).
	Attempt int `json:"attempt,omitempty"`
	// Proc says where the step's op runs, recorded before the op can take
	// effect (hook ops), so whoever finds the owner dead can make sure the
	// op is dead too before undoing it.
	Proc *Proc `json:"proc,omitempty"`
}

// Proc is where a running op runs: a process group on a machine (exec and
// kubernetes ops), or a session on a database server (sql ops).
type Proc struct {
	// Host names the machine for people; Machine tells machines apart
	// exactly (boot id and pid namespace: equal only within one running
	// system).
	Host    string `json:"host,omitempty"`
	Machine string `json:"machine,omitempty"`
	// PGID is the op's process group (its supervisor's pid) on Machine;
	// PGIDStart is the group leader's start time in clock ticks since boot,
	// which tells a reused pid apart.
	PGID      int    `json:"pgid,omitempty"`
	PGIDStart uint64 `json:"pgidStart,omitempty"`
	// Server is an sql op's server ("mariadb 127.0.0.1:3306"), ConnID its
	// session there (MariaDB connection id, PostgreSQL backend pid), and
	// ConnStart when that session (PostgreSQL) or server (MariaDB) started,
	// which tells a reused id apart.
	Server    string    `json:"server,omitempty"`
	ConnID    int64     `json:"connId,omitempty"`
	ConnStart time.Time `json:"connStart,omitzero"`
}

// Duration of the step, or of its progress so far.
func (s Step) Duration(now time.Time) time.Duration {
	if s.Started.IsZero() {
		return 0
	}
	if s.Finished.IsZero() {
		return now.Sub(s.Started)
	}
	return s.Finished.Sub(s.Started)
}

// Destination is what one destination holds of a backup run.
type Destination struct {
	Phase       Phase  `json:"phase"`
	Key         string `json:"key,omitempty"`
	ManifestKey string `json:"manifestKey,omitempty"`
	Size        int64  `json:"size,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	// Verified is set once verify matched the object with its manifest.
	Verified   bool   `json:"verified,omitempty"`
	VerifyMode string `json:"verifyMode,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Compensation is one inverse op a run owes or owed: run by compensation
// after the run failed, retried while it fails, or still owed because a
// forward run of it failed with onError continue. There is one entry per
// inverse op.
type Compensation struct {
	Step string `json:"step"`
	// Undoes is the op whose effect the inverse undoes (the newest that
	// owes it), as a step name.
	Undoes string `json:"undoes,omitempty"`
	// Phase is Running while a delivery or the owed-inverse loop runs it,
	// Succeeded once it completed (the debt is paid), Failed while it is
	// owed.
	Phase    Phase     `json:"phase"`
	Owner    string    `json:"owner,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	// Attempts counts the times the op ran to pay this debt, retries
	// included.
	Attempts int `json:"attempts,omitempty"`
	// RetryAt is when the owed-inverse loop tries a Failed entry again.
	RetryAt time.Time `json:"retryAt,omitzero"`
	// Until is the deadline of automatic retries (the hook's
	// compensationDeadline after the first failure): past it the entry
	// stays Failed, owed, until an operator acts.
	Until time.Time `json:"until,omitzero"`
	// Lease is when a Running entry claimed by the owed-inverse loop is
	// taken to belong to a process that died: another replica may claim it.
	Lease time.Time `json:"lease,omitzero"`
	// GaveUp is set once the final compensation.failed (deadline passed)
	// was announced.
	GaveUp bool `json:"gaveUp,omitempty"`
}

// Run is the record of one run.
type Run struct {
	ID   string `json:"id"`
	Plan string `json:"plan"`
	// PlanRevision is the revision of the plan the run started with
	// (its key's revision in the plans bucket): every stage reads that
	// one, so editing or deleting the plan does not change a running run.
	PlanRevision uint64    `json:"planRevision,omitempty"`
	Kind         string    `json:"kind"`
	Trigger      string    `json:"trigger,omitempty"`
	RequestedBy  string    `json:"requestedBy,omitempty"`
	Phase        Phase     `json:"phase"`
	Created      time.Time `json:"created"`
	Updated      time.Time `json:"updated"`
	Finished     time.Time `json:"finished,omitzero"`
	// Deadline is when a run not yet final fails as timed out
	// (spec.runTimeout after it was created).
	Deadline time.Time `json:"deadline,omitzero"`
	// Steps holds workflow steps ("hook:db/lock", "snapshot") and data
	// stages ("filter", "upload:<dest>", "verify:<dest>") as they start.
	Steps        []Step                  `json:"steps"`
	Destinations map[string]*Destination `json:"destinations,omitempty"`
	// Bytes, SHA256 and Chunks are the snapshot's plaintext figures.
	Bytes       int64  `json:"bytes,omitempty"`
	StoredBytes int64  `json:"storedBytes,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	Chunks      int64  `json:"chunks,omitempty"`
	// BackupID is the backup a restore run reads, or the backup a backup run makes.
	BackupID string `json:"backupId,omitempty"`
	// Destination and Target say where a restore run reads from and what it
	// restores into (empty: the plan's first destination, the plan's source).
	Destination string `json:"destination,omitempty"`
	Target      string `json:"target,omitempty"`
	// Create and Clean are a restore run's target options.
	Create bool `json:"create,omitempty"`
	Clean  bool `json:"clean,omitempty"`
	// FallbackOlder lets a restore run go on to older verified backups
	// once every copy of the one asked for failed its checks.
	FallbackOlder bool `json:"fallbackOlder,omitempty"`
	// RestoredFrom is the destination whose copy of BackupID a restore run
	// read last: the copy it restored, once it succeeded.
	RestoredFrom string `json:"restoredFrom,omitempty"`
	// FailedStage and Error say why a run failed.
	FailedStage  string         `json:"failedStage,omitempty"`
	Error        string         `json:"error,omitempty"`
	Compensation []Compensation `json:"compensation,omitempty"`
	// CompensationDone is set once compensation's first pass over a failed
	// run ended: every inverse op due ran, with its retries, and either
	// completed or is owed (a Failed entry the owed-inverse loop retries).
	CompensationDone bool `json:"compensationDone,omitempty"`
	// Announced records which final events were emitted, so a redelivered
	// event re-emits them with the same ids instead of deciding again.
	Announced map[string]bool `json:"announced,omitempty"`
	// Degraded names the destinations a succeeded run is missing a copy
	// in: it held the copies spec.require asks for, not all.
	Degraded []string `json:"degraded,omitempty"`
	// Attempt is the current attempt's number (0 and 1 both mean the
	// first); a replay starts the next. Events of attempt n > 1 carry it
	// in their ids (events.AttemptEventID).
	Attempt int `json:"attempt,omitempty"`
	// Attempts are the attempts so far, oldest first, once there was a
	// replay: what each started at, what it reused, how it ended.
	Attempts []Attempt `json:"attempts,omitempty"`
}

// Attempt is one attempt of a run: the first, or a replay.
type Attempt struct {
	Number int `json:"number"`
	// Stage is where it started: "start" for the first and for a replay
	// from the start, else the replayed step ("verify", "hook:db/unlock",
	// "retention").
	Stage string `json:"stage"`
	// Reused are the steps it did not run again because an earlier
	// attempt did them.
	Reused  []string  `json:"reused,omitempty"`
	By      string    `json:"by,omitempty"`
	Started time.Time `json:"started"`
	// Phase, Finished and Error are its outcome once it ended.
	Phase    Phase     `json:"phase,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// CurrentAttempt is the number of the run's current attempt (1 for a run
// never replayed).
func (r *Run) CurrentAttempt() int { return max(1, r.Attempt) }

// Step returns the step named name, adding it as Pending when absent.
func (r *Run) Step(name string) *Step {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	r.Steps = append(r.Steps, Step{Name: name, Phase: Pending})
	return &r.Steps[len(r.Steps)-1]
}

// FindStep returns the step named name, or nil.
func (r *Run) FindStep(name string) *Step {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	return nil
}

// FindCompensation returns the compensation entry of inverse step name, or
// nil.
func (r *Run) FindCompensation(name string) *Compensation {
	for i := range r.Compensation {
		if r.Compensation[i].Step == name {
			return &r.Compensation[i]
		}
	}
	return nil
}

// Owed returns the inverse ops the run still owes once compensation's
// first pass is over (or the run succeeded with a debt): its compensation
// entries that did not complete. While the first pass runs, nothing is
// reported owed yet.
func (r *Run) Owed() []Compensation {
	if !r.CompensationDone && r.Phase != Succeeded {
		return nil
	}
	var out []Compensation
	for _, c := range r.Compensation {
		if c.Phase != Succeeded {
			out = append(out, c)
		}
	}
	return out
}

// Stamp returns now, or a moment just after the latest time the record
// holds when now is not later than it. Step and inverse times of one run
// are compared to decide which inverse paid which op; stamping every claim
// and end this way keeps them in the order the record saw them, even when
// replicas' clocks disagree.
func (r *Run) Stamp(now time.Time) time.Time {
	latest := time.Time{}
	see := func(t time.Time) {
		if t.After(latest) {
			latest = t
		}
	}
	for _, s := range r.Steps {
		see(s.Started)
		see(s.Finished)
	}
	for _, c := range r.Compensation {
		see(c.Started)
		see(c.Finished)
	}
	for _, a := range r.Attempts {
		see(a.Started)
	}
	if now.After(latest) {
		return now
	}
	return latest.Add(time.Microsecond)
}

// Dest returns the destination named name, adding it as Pending when absent.
func (r *Run) Dest(name string) *Destination {
	if r.Destinations == nil {
		r.Destinations = map[string]*Destination{}
	}
	d, ok := r.Destinations[name]
	if !ok {
		d = &Destination{Phase: Pending}
		r.Destinations[name] = d
	}
	return d
}

// Fail marks the run Failed with its first cause; a later failure does not
// overwrite the first. It reports whether this call failed the run.
func (r *Run) Fail(stage, reason string, now time.Time) bool {
	if r.Phase.Done() {
		return false
	}
	r.Phase = Failed
	r.FailedStage = stage
	r.Error = reason
	r.Finished = now
	for i := range r.Steps {
		if r.Steps[i].Phase == Pending {
			r.Steps[i].Phase = Skipped
		}
	}
	return true
}

// Apply applies req to its run's record with a compare-and-set (retried on
// conflict) and returns the record after it and the transition's outcome.
// now is the owner's clock. Only the owner of run state calls it; stages
// ask the owner (Owner).
func (s *Store) Apply(ctx context.Context, req Request, now time.Time) (*Run, Outcome, error) {
	switch req.Op {
	case OpCreate:
		r, err := s.Ensure(ctx, *req.Seed)
		return r, Outcome{}, err
	case OpInverseClaim, OpDebt, OpRetryOwed:
		// Indexed before any debt is recorded: the index holds at least
		// every run that owes an inverse op.
		if err := s.MarkOwing(ctx, req.Run); err != nil {
			return nil, Outcome{}, err
		}
	}
	var o Outcome
	r, err := s.Update(ctx, req.Run, func(r *Run) error {
		var err error
		o, err = Apply(r, req, now)
		return err
	})
	return r, o, err
}

// Store reads and writes run records.
type Store struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewStore wraps the runs bucket.
func NewStore(kv jetstream.KeyValue) *Store { return &Store{kv: kv, now: time.Now} }

// Get returns the run with id, or ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*Run, error) {
	r, _, err := s.get(ctx, id)
	return r, err
}

func (s *Store) get(ctx context.Context, id string) (*Run, uint64, error) {
	e, err := s.entry(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	r, err := decodeRun(id, e.Value())
	if err != nil {
		return nil, 0, err
	}
	return r, e.Revision(), nil
}

func decodeRun(id string, record []byte) (*Run, error) {
	var r Run
	if err := json.Unmarshal(record, &r); err != nil {
		return nil, fmt.Errorf("decode run %s: %w", id, err)
	}
	return &r, nil
}

// Ensure creates the run record when it does not exist yet and returns the
// current record. Several stages and replicas may call it for one run.
func (s *Store) Ensure(ctx context.Context, seed Run) (*Run, error) {
	now := s.now().UTC()
	if seed.Created.IsZero() {
		seed.Created = now
	}
	seed.Updated = now
	if seed.Phase == "" {
		seed.Phase = Pending
	}
	data, err := json.Marshal(seed)
	if err != nil {
		return nil, fmt.Errorf("encode run %s: %w", seed.ID, err)
	}
	data = secret.RedactJSON(data) // a run's errors may quote a secret
	// The list index first: a crash between the two leaves an entry List
	// skips, never a run a listing misses.
	if _, err := s.kv.Put(ctx, listKey(seed.Plan, seed.ID), nil); err != nil {
		return nil, fmt.Errorf("index run %s: %w", seed.ID, err)
	}
	_, err = bus.Create(ctx, s.kv, seed.ID, data)
	switch {
	case err == nil:
		if _, err := s.kv.Put(ctx, activeKey(seed.ID), nil); err != nil {
			return nil, fmt.Errorf("index run %s: %w", seed.ID, err)
		}
	case !errors.Is(err, jetstream.ErrKeyExists):
		return nil, fmt.Errorf("create run %s: %w", seed.ID, err)
	}
	return s.Get(ctx, seed.ID)
}

// Update applies mutate to the current record and writes it back if nothing
// changed it meanwhile, retrying on conflict. mutate may be called several
// times and must depend only on the record it is given. If it returns
// ErrNoChange nothing is written and Update returns the record and nil.
func (s *Store) Update(ctx context.Context, id string, mutate func(*Run) error) (*Run, error) {
	for attempt := 0; ; attempt++ {
		r, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, err
		}
		prev := r.Phase
		if err := mutate(r); err != nil {
			if errors.Is(err, ErrNoChange) {
				return r, nil
			}
			return r, err
		}
		r.Updated = s.now().UTC()
		data, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode run %s: %w", id, err)
		}
		data = secret.RedactJSON(data) // a run's errors may quote a secret
		_, err = s.kv.Update(ctx, id, data, rev)
		if err == nil {
			return r, s.index(ctx, prev, r)
		}
		if !bus.Conflict(err) || attempt > 100 {
			return nil, fmt.Errorf("update run %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt%10) * time.Millisecond):
		}
	}
}

// The runs bucket also holds indexes, under keys no run id can take, so
// the watchdog and a listing never have to read every run: the runs not yet
// final, the newest success times of each plan, and the runs of each day
// and plan. The first two are written right after the run record that
// changes them; a crash in between leaves an active entry that Active drops
// when it finds the run final. A run's list entry is written before its
// record (and again when a replay makes it active, so it lives as long as
// the record under the bucket's TTL); runsIndexedKey says that every record
// older than the list entries has one too (IndexRuns).
const (
	indexPrefix = "_idx."
	// SuccessesKept bounds the success times kept per plan.
	SuccessesKept = 200
)

func activeKey(id string) string        { return indexPrefix + "active." + id }
func owedKey(id string) string          { return indexPrefix + "owed." + id }
func successKey(planName string) string { return indexPrefix + "success." + planName }

// listKey indexes run id under the UTC day its id was made (run ids sort
// by that time) and its plan (a DNS label: one key token), so that a page
// of every plan lists the entries of the days it shows, not the bucket's
// keys, and a page of one plan lists that plan's entries only.
func listKey(planName, id string) string { return dayPrefix(idDay(id)) + planName + "." + id }
func dayPrefix(day string) string        { return indexPrefix + "day." + day + "." }

// planEntries is the filter of every list entry of plan.
func planEntries(planName string) string { return indexPrefix + "day.*." + planName + ".*" }

// idDay is the UTC day (20060102) run id was made, from its ULID time.
func idDay(id string) string {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return "00000000" // not a run id: a listing never reads it
	}
	return dayOf(ulid.Time(u.Time())).Format(dayLayout)
}

// dayOf is the start of t's UTC day.
func dayOf(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

const dayLayout = "20060102"

// runsIndexedKey is there while every run record has its list entry.
const runsIndexedKey = indexPrefix + "runs-indexed"

// plansIndexedKey marked, for the release before the list entries, that
// every record had an entry _idx.plan.<plan>.<run>, which that release's
// listings of one plan read alone. This release writes no such entries (they
// expire with the bucket's TTL), so IndexRuns deletes the mark: an earlier
// release's replica still serving during an upgrade then reads the records
// and misses no run of this release.
const plansIndexedKey = indexPrefix + "plans-indexed"

// index keeps the indexes in step with a run whose phase went from prev to
// r.Phase.
func (s *Store) index(ctx context.Context, prev Phase, r *Run) error {
	if prev.Done() && !r.Phase.Done() {
		// A replay: the run is active again, and its record lives another
		// TTL from now: so does its list entry.
		for _, k := range []string{activeKey(r.ID), listKey(r.Plan, r.ID)} {
			if _, err := s.kv.Put(ctx, k, nil); err != nil {
				return fmt.Errorf("index run %s: %w", r.ID, err)
			}
		}
		return nil
	}
	if prev.Done() || !r.Phase.Done() {
		return nil
	}
	if err := s.kv.Delete(ctx, activeKey(r.ID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("index run %s: %w", r.ID, err)
	}
	// Again when the run ends: a run an earlier release created during an
	// upgrade, without an entry, is listed once it ends here, not only
	// after the next IndexRuns.
	if _, err := s.kv.Put(ctx, listKey(r.Plan, r.ID), nil); err != nil {
		return fmt.Errorf("index run %s: %w", r.ID, err)
	}
	if r.Phase != Succeeded || r.Kind != KindBackup {
		return nil
	}
	for attempt := 0; ; attempt++ {
		var times []time.Time
		var rev uint64
		e, err := s.kv.Get(ctx, successKey(r.Plan))
		switch {
		case err == nil:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &times); err != nil {
				return fmt.Errorf("success index of %s: %w", r.Plan, err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("success index of %s: %w", r.Plan, err)
		}
		times = append(times, r.Finished.UTC())
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		if len(times) > SuccessesKept {
			times = times[len(times)-SuccessesKept:]
		}
		data, _ := json.Marshal(times)
		if rev == 0 {
			_, err = s.kv.Create(ctx, successKey(r.Plan), data)
		} else {
			_, err = s.kv.Update(ctx, successKey(r.Plan), data, rev)
		}
		if err == nil {
			return nil
		}
		if !bus.Conflict(err) || attempt > 100 {
			return fmt.Errorf("success index of %s: %w", r.Plan, err)
		}
	}
}

// Successes returns the newest success times of plan's backup runs (at most
// SuccessesKept), oldest first.
func (s *Store) Successes(ctx context.Context, planName string) ([]time.Time, error) {
	e, err := s.kv.Get(ctx, successKey(planName))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("successes of %s: %w", planName, err)
	}
	var times []time.Time
	if err := json.Unmarshal(e.Value(), &times); err != nil {
		return nil, fmt.Errorf("successes of %s: %w", planName, err)
	}
	return times, nil
}

// Active returns the runs that are not final yet.
func (s *Store) Active(ctx context.Context) ([]*Run, error) {
	keys, err := bus.ListKeys(ctx, s.kv, activeKey("*"))
	if err != nil {
		return nil, fmt.Errorf("list active runs: %w", err)
	}
	var out []*Run
	for _, key := range keys {
		id := key[len(activeKey("")):]
		r, err := s.Get(ctx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if err != nil || r.Phase.Done() {
			_ = s.kv.Delete(ctx, key) // a crash between the record and its index
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// AnnouncedCompensation is the Announced flag of a run's one
// compensation.completed: set once nothing is owed and the event is (about
// to be) published.
const AnnouncedCompensation = "compensation.completed"

// MarkOwing indexes run id as one that may owe inverse ops, for the
// owed-inverse loop and the metrics stage. Callers mark before they record
// a debt, so the index holds at least every run that owes one; Owing drops
// the runs that owe nothing.
func (s *Store) MarkOwing(ctx context.Context, id string) error {
	if _, err := s.kv.Put(ctx, owedKey(id), nil); err != nil {
		return fmt.Errorf("index owing run %s: %w", id, err)
	}
	return nil
}

// Owing returns the indexed runs that owe inverse ops (Run.Owed), and also
// those whose compensation has not ended yet or whose
// compensation.completed is not announced yet. Runs done with compensation
// leave the index.
func (s *Store) Owing(ctx context.Context) ([]*Run, error) {
	keys, err := bus.ListKeys(ctx, s.kv, owedKey("*"))
	if err != nil {
		return nil, fmt.Errorf("list owing runs: %w", err)
	}
	var out []*Run
	for _, key := range keys {
		id := key[len(owedKey("")):]
		r, err := s.Get(ctx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if err != nil || (len(r.Owed()) == 0 && r.Announced[AnnouncedCompensation]) || (r.Phase == Succeeded && len(r.Compensation) == 0) {
			if err := s.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil, fmt.Errorf("unindex owing run %s: %w", id, err)
			}
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// DefaultListLimit and MaxListLimit bound a page of List.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// ListOptions says which runs List returns.
type ListOptions struct {
	// Plan keeps only this plan's runs; "" keeps every plan's.
	Plan string
	// Before keeps only runs older than this run id: the previous page's
	// Next.
	Before string
	// Limit is the most runs on the page: <= 0 means DefaultListLimit,
	// more than MaxListLimit means MaxListLimit.
	Limit int
}

// ErrBadListOption: a ListOptions field is malformed (the error names it).
var ErrBadListOption = errors.New("bad list option")

// Page is one page of runs, newest first. Next is the Before of the page
// after it: "" when no older run is left (a full page may still be
// followed by an empty one).
type Page struct {
	Runs []*Run
	Next string
}

// listBatch is how many records List reads at once.
const listBatch = 32

// List returns a page of runs, newest first. The bucket keeps 90 days of
// runs — hundreds of thousands for a few hundred hourly plans — so a page
// lists run ids from the list entries (those of the days it reaches, newest
// first, or those of one plan) and then reads only the records it shows.
// Until IndexRuns marked the bucket indexed it lists every run id instead,
// and a page of one plan reads the newer runs of other plans too, decoded
// no further than their plan. Memory is the page and the ids of the days it
// reaches, never the bucket.
func (s *Store) List(ctx context.Context, o ListOptions) (Page, error) {
	if o.Limit <= 0 {
		o.Limit = DefaultListLimit
	}
	o.Limit = min(o.Limit, MaxListLimit)
	if o.Before != "" && !events.ValidRunID(o.Before) {
		return Page{}, fmt.Errorf("list runs: %w: before: %.64q is not a run id", ErrBadListOption, o.Before)
	}
	next, indexed, err := s.listIDs(ctx, o.Plan, o.Before)
	if err != nil {
		return Page{}, fmt.Errorf("list runs: %w", err)
	}
	only := o.Plan // the plan whose records a page keeps
	if indexed {
		only = "" // every id listed is of the plan: no record to skip
	}
	var page Page
	var ids []string // listed and not read yet, newest first
	more, exhausted := false, false
	for !more {
		want := listBatch
		if len(page.Runs) == o.Limit {
			want = 1 // only whether an older one is left
		}
		for len(ids) < want && !exhausted {
			got, err := next(ctx)
			if err != nil {
				return Page{}, fmt.Errorf("list runs: %w", err)
			}
			exhausted = got == nil
			ids = append(ids, got...)
		}
		if len(ids) == 0 {
			break
		}
		if len(page.Runs) == o.Limit {
			more = true // an older id is left: the next page starts there
			break
		}
		n := listBatch
		if only == "" {
			n = min(n, o.Limit-len(page.Runs))
		}
		batch := ids[:min(len(ids), n)]
		ids = ids[len(batch):]
		got := make([]*Run, len(batch))
		g, gctx := errgroup.WithContext(ctx)
		for i, id := range batch {
			g.Go(func() error {
				r, err := s.getOf(gctx, id, only)
				if errors.Is(err, ErrNotFound) {
					return nil // expired or removed since the listing
				}
				got[i] = r
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return Page{}, err
		}
		for _, r := range got {
			switch {
			case r == nil:
			case len(page.Runs) < o.Limit:
				page.Runs = append(page.Runs, r)
			default:
				more = true // read in the same batch, left for the next page
			}
		}
	}
	if more {
		page.Next = page.Runs[len(page.Runs)-1].ID
	}
	return page, nil
}

// listIDs returns what lists the run ids a page of plan ("": every plan)
// may show, older than before (""; any): each call of next returns the next
// ids, newest first, and nil once there are none left. indexed says
// whether the ids came from list entries, which name their plan.
func (s *Store) listIDs(ctx context.Context, plan, before string) (next func(context.Context) ([]string, error), indexed bool, err error) {
	older := func(ids []string) []string {
		slices.Sort(ids)
		slices.Reverse(ids)
		if before != "" {
			ids = ids[sort.Search(len(ids), func(i int) bool { return ids[i] < before }):]
		}
		return ids
	}
	// once returns ids on its first call and nil after.
	once := func(ids []string) func(context.Context) ([]string, error) {
		return func(context.Context) ([]string, error) {
			out := ids
			ids = nil
			return out, nil
		}
	}
	_, err = s.kv.Get(ctx, runsIndexedKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Run records are one-token keys; the indexes (_idx.…) are not.
		ids, err := bus.ListKeys(ctx, s.kv, "*")
		return once(older(ids)), false, err
	case err != nil:
		return nil, false, err
	case plan != "":
		keys, err := bus.ListKeys(ctx, s.kv, planEntries(plan))
		return once(older(lastTokens(keys))), true, err
	}
	// The days, newest first, from the day of before (or tomorrow: an id
	// made on a clock that runs ahead) back to the oldest day whose entries
	// the bucket's TTL may have kept.
	now := s.now()
	day := dayOf(now).AddDate(0, 0, 1)
	if u, err := ulid.ParseStrict(before); err == nil {
		if d := dayOf(ulid.Time(u.Time())); d.Before(day) {
			day = d
		}
	}
	oldest := now.Add(-bus.RunsTTL - 48*time.Hour)
	return func(ctx context.Context) ([]string, error) {
		for ; !day.Before(oldest); day = day.AddDate(0, 0, -1) {
			keys, err := bus.ListKeys(ctx, s.kv, dayPrefix(day.Format(dayLayout))+"*.*")
			if err != nil {
				return nil, err
			}
			if ids := older(lastTokens(keys)); len(ids) > 0 {
				day = day.AddDate(0, 0, -1)
				return ids, nil
			}
		}
		return nil, nil
	}, true, nil
}

// lastTokens replaces each key by its last token: the run id of an entry.
func lastTokens(keys []string) []string {
	for i, k := range keys {
		keys[i] = lastToken(k)
	}
	return keys
}

func lastToken(key string) string { return key[strings.LastIndexByte(key, '.')+1:] }

// IndexRuns gives every run record that has none its list entry — the
// records of a release before the list entries, and those an earlier
// release's control service still writes during a rolling upgrade — and
// then marks the bucket indexed, so that List reads list entries only;
// writing the mark again also renews it before the bucket's TTL removes
// it. The first pass lists every key of the bucket and reads the records
// without an entry; the mark keeps the revision it reached, and a later
// pass looks only at what was written since (a record written since, with
// no entry written since, is read and its entry looked up): its cost
// follows the runs of the time between two passes, not the bucket. Call it
// when the owner of the runs starts and then every so often. Concurrent
// calls are harmless.
func (s *Store) IndexRuns(ctx context.Context) error {
	var since uint64 // 0: the first pass, over every key
	if e, err := s.kv.Get(ctx, runsIndexedKey); err == nil {
		since, _ = strconv.ParseUint(string(e.Value()), 10, 64)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("index runs: %w", err)
	}
	// Run records are one-token keys; the list entries are under day.
	keys, err := bus.KeysSince(ctx, s.kv, since, "*", dayPrefix("*")+"*.*")
	if err != nil {
		return fmt.Errorf("index runs: %w", err)
	}
	reached := since
	var records []string
	entries := map[string]bool{}
	for _, k := range keys {
		reached = max(reached, k.Revision+1)
		if strings.HasPrefix(k.Key, indexPrefix) {
			entries[lastToken(k.Key)] = true
		} else {
			records = append(records, k.Key)
		}
	}
	for _, id := range records {
		if entries[id] {
			continue
		}
		e, err := s.entry(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("index runs: %w", err)
		}
		plan, err := planOf(e.Value())
		if err != nil || plan == "" {
			continue // not a run this release can list
		}
		if since > 0 {
			// Its entry may be older than the last pass.
			_, err := s.kv.Get(ctx, listKey(plan, id))
			if err == nil {
				continue
			}
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("index runs: %w", err)
			}
		}
		if _, err := s.kv.Put(ctx, listKey(plan, id), nil); err != nil {
			return fmt.Errorf("index runs: %w", err)
		}
	}
	if _, err := s.kv.Put(ctx, runsIndexedKey, []byte(strconv.FormatUint(reached, 10))); err != nil {
		return fmt.Errorf("index runs: %w", err)
	}
	switch _, err := s.kv.Get(ctx, plansIndexedKey); {
	case err == nil:
		if err := s.kv.Delete(ctx, plansIndexedKey); err != nil {
			return fmt.Errorf("index runs: %w", err)
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return fmt.Errorf("index runs: %w", err)
	}
	return nil
}

// planOf reads a run record no further than its plan.
func planOf(record []byte) (string, error) {
	var head struct {
		Plan string `json:"plan"`
	}
	err := json.Unmarshal(record, &head)
	return head.Plan, err
}

// entry reads the record of run id. What is not a run id (the bucket's
// index keys among them) names no run.
func (s *Store) entry(ctx context.Context, id string) (jetstream.KeyValueEntry, error) {
	if !events.ValidRunID(id) {
		return nil, fmt.Errorf("%w: %.64q is not a run id (a ULID of 26 characters)", ErrNotFound, id)
	}
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("get run %s: %w", id, err)
	}
	return e, nil
}

// getOf returns the run with id when it belongs to plan ("": any), else
// nil; a record of another plan is decoded only as far as its plan.
func (s *Store) getOf(ctx context.Context, id, plan string) (*Run, error) {
	e, err := s.entry(ctx, id)
	if err != nil {
		return nil, err
	}
	if plan != "" {
		p, err := planOf(e.Value())
		if err != nil {
			return nil, fmt.Errorf("decode run %s: %w", id, err)
		}
		if p != plan {
			return nil, nil
		}
	}
	return decodeRun(id, e.Value())
}
