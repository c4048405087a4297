// Package stage holds what every backstream service shares: its
// dependencies, emitting events with deterministic ids, failing a run once,
// finding the workflow step an event makes due, and settling a run whose
// last step and last destination are done.
//
// A stage never calls another stage; these helpers only read and write the
// run record and build events.
package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
)

// Deps are what services are built from.
type Deps struct {
	Bus     *bus.Bus
	Runs    *runs.Store
	Plans   *planstore.Store
	Plugins *plugins.Registry
	Log     *slog.Logger
	// Instance names this process in step owners.
	Instance string
	// Keys open backups for full verification and restore; empty keys make
	// verify check ciphertext only.
	Keys format.Keys
	// Data tunes chunk streams.
	Data bus.DataOptions
	// Consumer tunes the durable consumers (ack wait, backoff); its Name,
	// Types and Handler are set by each service.
	Consumer bus.ConsumerSpec
	// Now is the clock.
	Now func() time.Time
	// RefuseExec is serve --allow-exec=false: a run of a plan that would
	// run a program or load code the plan names (Plugins.ExecUses) fails
	// before any of it runs, and triggers of such a plan are refused. The
	// zero value allows exec, as serve does by default.
	RefuseExec bool
}

// ErrExecRefused means this process refuses exec and a plan would run a
// program it names; the error lists where.
var ErrExecRefused = errors.New("exec refused: this serve runs with --allow-exec=false")

// CheckExec returns nil when this process may run plan p, or an error
// wrapping ErrExecRefused that names every field of p that runs a program.
func (d *Deps) CheckExec(p *plan.Plan) error {
	if !d.RefuseExec {
		return nil
	}
	if uses := d.Plugins.ExecUses(p); len(uses) > 0 {
		return fmt.Errorf("%w: %s", ErrExecRefused, strings.Join(uses, ", "))
	}
	return nil
}

// Service is one stage: the consumers it runs.
type Service interface {
	Name() string
	Consumers() []bus.ConsumerSpec
}

// Spec returns a consumer spec with the shared tuning. An event of a run
// that a stage gives up on (dead-lettered) fails the run with the reason,
// so a run never stays Running because its event was set aside.
func (d *Deps) Spec(name string, h bus.Handler, types ...string) bus.ConsumerSpec {
	s := d.Consumer
	s.Name = name
	s.Types = types
	s.Handler = h
	s.OnDead = func(ctx context.Context, e events.Event, reason string) ([]events.Event, error) {
		return d.failDead(ctx, name, e, reason)
	}
	return s
}

// failDead fails the run of a dead-lettered event, if it has a record that
// is not final yet. Failure events themselves only end there.
func (d *Deps) failDead(ctx context.Context, consumer string, e events.Event, reason string) ([]events.Event, error) {
	switch e.Type() {
	case events.BackupFailed, events.RestoreFailed, events.BackupMissed:
		return nil, nil
	}
	r, err := d.Runs.Get(ctx, events.RunID(e))
	if errors.Is(err, runs.ErrNotFound) {
		return nil, nil
	}
	if err != nil || r.Phase.Done() {
		return nil, err
	}
	return d.FailRun(ctx, e.Subject(), r.ID, consumer, events.Step(e),
		fmt.Sprintf("%s gave up on %s: %s", consumer, e.Type(), reason), e)
}

// Emit builds the event of payload p for a run's step with the deterministic
// id of (run, type, step).
func (d *Deps) Emit(planName, runID, step string, p events.Payload) (events.Event, error) {
	m := d.Bus.Meta(planName, runID, step)
	m.ID = events.RunEventID(runID, p.EventType(), step)
	return events.New(m, p)
}

// Plan loads the plan an event is about. A missing plan is permanent, and
// so is a stored plan that fails validation (planstore.ErrInvalidPlan): the
// event is dead-lettered with the plan's problems, the run (if it has a
// record) fails with them, and nothing of the plan runs.
func (d *Deps) Plan(ctx context.Context, e events.Event) (*plan.Plan, error) {
	p, err := d.Plans.Get(ctx, e.Subject())
	switch {
	case errors.Is(err, planstore.ErrNotFound):
		return nil, bus.Permanent(fmt.Errorf("event %s for plan %q: %w", e.Type(), e.Subject(), err))
	case errors.Is(err, planstore.ErrInvalidPlan):
		return nil, bus.Permanent(fmt.Errorf("event %s: %w", e.Type(), err))
	}
	return p, err
}

// EnsureRun creates the run record of a backup.requested or restore.requested.
func (d *Deps) EnsureRun(ctx context.Context, e events.Event) (*runs.Run, error) {
	seed := runs.Run{ID: events.RunID(e), Plan: e.Subject(), Created: e.Time()}
	switch e.Type() {
	case events.BackupRequested:
		var req events.BackupRequestedData
		_ = e.DataAs(&req)
		seed.Kind, seed.Trigger, seed.RequestedBy = runs.KindBackup, req.Trigger, req.RequestedBy
	case events.RestoreRequested:
		var req events.RestoreRequestedData
		_ = e.DataAs(&req)
		seed.Kind, seed.RequestedBy, seed.BackupID, seed.Phase = runs.KindRestore, req.RequestedBy, req.BackupID, runs.Initializing
		seed.Destination, seed.Target, seed.Create, seed.Clean = req.Destination, req.Target, req.Create, req.Clean
	default:
		return d.Runs.Get(ctx, events.RunID(e))
	}
	return d.Runs.Ensure(ctx, seed)
}

// FailRun marks the run failed by stage (the first failure wins) and returns
// the backup.failed (or restore.failed) event to publish. A redelivery of the
// event that caused the failure gets the same event again, with the same id;
// a later failure of another stage gets none.
func (d *Deps) FailRun(ctx context.Context, planName, runID, stageName, step, reason string, cause events.Event) ([]events.Event, error) {
	var announce bool
	r, err := d.Runs.Update(ctx, runID, func(r *runs.Run) error {
		announce = false
		if r.Fail(stageName, reason, d.Now().UTC()) {
			r.Announced = setFlag(r.Announced, "failed:"+cause.ID())
			announce = true
			return nil
		}
		if r.Announced["failed:"+cause.ID()] {
			announce = true
		}
		return runs.ErrNoChange
	})
	if err != nil {
		return nil, err
	}
	if !announce {
		return nil, nil
	}
	d.Log.Warn("run failed", "plan", planName, "runid", runID, "stage", r.FailedStage, "step", step, "reason", r.Error)
	var ev events.Event
	if r.Kind == runs.KindRestore {
		ev, err = d.Emit(planName, runID, "", events.RestoreFailedData{BackupID: r.BackupID, Stage: r.FailedStage, Error: r.Error})
	} else {
		ev, err = d.Emit(planName, runID, "", events.BackupFailedData{Stage: r.FailedStage, FailedStep: step, Reason: r.Error, Cause: cause.ID()})
	}
	if err != nil {
		return nil, err
	}
	return []events.Event{ev}, nil
}

func setFlag(m map[string]bool, k string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	m[k] = true
	return m
}

// Workflow is the workflow of a run kind.
func Workflow(kind string) string {
	if kind == runs.KindRestore {
		return "restore"
	}
	return "backup"
}

// DueStep returns the workflow step that event e makes due: the first step
// on a backup.requested or restore.requested, the following step on a
// step.completed. ok is false when e makes nothing due.
func DueStep(p *plan.Plan, r *runs.Run, e events.Event) (plan.Step, bool, error) {
	after := ""
	switch e.Type() {
	case events.BackupRequested, events.RestoreRequested:
	case events.StepCompleted:
		var d events.StepCompletedData
		if err := e.DataAs(&d); err != nil {
			return plan.Step{}, false, bus.Permanent(err)
		}
		after = d.Step
	default:
		return plan.Step{}, false, nil
	}
	next, ok, err := p.NextStep(Workflow(r.Kind), after)
	if err != nil {
		return plan.Step{}, false, bus.Permanent(fmt.Errorf("run %s: %w", r.ID, err))
	}
	return next, ok, nil
}

// StepCompleted is the step.completed event of a finished workflow step.
func (d *Deps) StepCompleted(planName, runID, step string, dur time.Duration) (events.Event, error) {
	return d.Emit(planName, runID, step, events.StepCompletedData{Step: step, DurationMs: dur.Milliseconds()})
}

// workflowDone reports whether every step of the run's workflow finished
// without failing the run.
func workflowDone(p *plan.Plan, r *runs.Run) bool {
	for _, s := range p.Sequence(Workflow(r.Kind)) {
		st := r.FindStep(s.String())
		if st == nil || (st.Phase != runs.Succeeded && st.Phase != runs.Skipped) {
			return false
		}
	}
	return true
}

// Settle marks a backup run Succeeded once its workflow is done and every
// destination holds a verified backup (an uploaded one when the plan does
// not verify), and returns backup.succeeded. Whoever finishes the last piece
// calls it; the compare-and-set lets exactly one caller announce, and a
// redelivery re-announces with the same id.
func (d *Deps) Settle(ctx context.Context, p *plan.Plan, runID string) ([]events.Event, error) {
	verify := p.Spec.Verify.IsEnabled()
	r, err := d.Runs.Update(ctx, runID, func(r *runs.Run) error {
		if r.Phase == runs.Succeeded || r.Phase == runs.Failed || !workflowDone(p, r) {
			return runs.ErrNoChange
		}
		if r.Kind == runs.KindRestore {
			r.Phase = runs.Succeeded
			r.Finished = d.Now().UTC()
			return nil
		}
		for _, dest := range p.Spec.Destinations {
			ds := r.Destinations[dest.Name]
			if ds == nil || ds.Phase != runs.Succeeded || (verify && !ds.Verified) {
				return runs.ErrNoChange
			}
		}
		r.Phase = runs.Succeeded
		r.Finished = d.Now().UTC()
		r.BackupID = r.ID
		return nil
	})
	if err != nil || r.Phase != runs.Succeeded {
		return nil, err
	}
	if r.Kind == runs.KindRestore {
		ev, err := d.Emit(p.Name(), runID, "", events.RestoreSucceededData{
			BackupID: r.BackupID, Bytes: r.Bytes, SHA256: r.SHA256, DurationMs: r.Finished.Sub(r.Created).Milliseconds(),
		})
		if err != nil {
			return nil, err
		}
		d.Log.Info("restore succeeded", "plan", p.Name(), "runid", runID, "backup", r.BackupID, "bytes", r.Bytes)
		return []events.Event{ev}, nil
	}
	data := events.BackupSucceededData{
		BackupID:        r.ID,
		Bytes:           r.Bytes,
		StoredBytes:     r.StoredBytes,
		PlaintextSHA256: r.SHA256,
		Chunks:          r.Chunks,
		Started:         r.Created,
		DurationMs:      r.Finished.Sub(r.Created).Milliseconds(),
		Source:          p.Spec.Source.Type,
		Trigger:         r.Trigger,
	}
	for _, dest := range p.Spec.Destinations {
		ds := r.Destinations[dest.Name]
		data.Objects = append(data.Objects, events.BackupObject{
			Destination: dest.Name, Key: ds.Key, ManifestKey: ds.ManifestKey, Size: ds.Size, SHA256: ds.SHA256,
		})
	}
	ev, err := d.Emit(p.Name(), runID, "", data)
	if err != nil {
		return nil, err
	}
	d.Log.Info("backup succeeded", "plan", p.Name(), "runid", runID, "bytes", r.Bytes, "stored", r.StoredBytes)
	return []events.Event{ev}, nil
}

// Claim starts step name of a run for this instance. It returns:
//   - start=true when the step was pending: run it;
//   - done=true when the step already finished: re-emit its results;
//   - interrupted=true when another delivery started it and never finished:
//     the process that ran it died mid-step;
//   - skip=true when the run already failed or succeeded, or the step failed
//     (then failed=true too, and the caller fails the run if it is not yet).
func (d *Deps) Claim(ctx context.Context, runID, name string, deadline time.Duration) (r *runs.Run, c Claimed, err error) {
	r, err = d.Runs.Update(ctx, runID, func(r *runs.Run) error {
		c = Claimed{}
		if r.Phase == runs.Failed || r.Phase == runs.Succeeded {
			c.Skip = true
			return runs.ErrNoChange
		}
		st := r.Step(name)
		switch st.Phase {
		case runs.Succeeded, runs.Skipped:
			c.Done = true
			return runs.ErrNoChange
		case runs.Failed:
			// Recorded failed; if the run is not failed yet, the process
			// died between the two writes and the run must still fail.
			c.Skip, c.Failed, c.Error = true, true, st.Error
			return runs.ErrNoChange
		case runs.Running:
			c.Interrupted = true
			c.Owner = st.Owner
			return runs.ErrNoChange
		}
		// Stamped: compensation compares the times of one record.
		now := r.Stamp(d.Now().UTC())
		st.Phase, st.Owner, st.Started = runs.Running, d.Instance, now
		if deadline > 0 {
			st.Deadline = now.Add(deadline)
		}
		if r.Phase == runs.Pending || r.Phase == runs.Initializing {
			r.Phase = runs.Running
		}
		c.Start = true
		return nil
	})
	return r, c, err
}

// Claimed is the outcome of Claim.
type Claimed struct {
	Start, Done, Interrupted, Skip bool
	Owner                          string
	// Failed is set (with Skip) when the step is recorded failed while the
	// run is not: a data stage fails the run with Error.
	Failed bool
	Error  string
}

// FinishStep records a step's end.
func (d *Deps) FinishStep(ctx context.Context, runID, name string, phase runs.Phase, bytes int64, errText string, also func(*runs.Run)) (*runs.Run, error) {
	return d.Runs.Update(ctx, runID, func(r *runs.Run) error {
		st := r.Step(name)
		st.Phase = phase
		st.Finished = r.Stamp(d.Now().UTC())
		if bytes > 0 {
			st.Bytes = bytes
		}
		st.Error = errText
		if also != nil {
			also(r)
		}
		return nil
	})
}

// DataStep is a workflow data step (snapshot or restore) that an event made
// due, with the outcome of claiming it.
type DataStep struct {
	Plan *plan.Plan
	Run  *runs.Run
	Name string
	Claimed
}

// ClaimDataStep loads the plan and the run of e and, when e makes the data
// step of kind due in a run of runKind, claims it. ok is false when e means
// nothing to this data stage. When this process refuses exec and the plan
// would run a program (CheckExec), the step is not claimed: ds comes back
// Skip and Failed with the refusal as Error, and the caller fails the run
// as it does for a step recorded failed.
func (d *Deps) ClaimDataStep(ctx context.Context, e events.Event, runKind string, kind plan.StepKind) (ds DataStep, ok bool, err error) {
	p, err := d.Plan(ctx, e)
	if err != nil {
		return ds, false, err
	}
	r, err := d.EnsureRun(ctx, e)
	if err != nil || r.Kind != runKind {
		return ds, false, err
	}
	step, due, err := DueStep(p, r, e)
	if err != nil || !due || step.Kind != kind {
		return ds, false, err
	}
	name := step.String()
	if err := d.CheckExec(p); err != nil {
		return DataStep{Plan: p, Run: r, Name: name, Claimed: Claimed{Skip: true, Failed: true, Error: err.Error()}}, true, nil
	}
	r, c, err := d.Claim(ctx, r.ID, name, 0)
	if err != nil {
		return ds, false, err
	}
	return DataStep{Plan: p, Run: r, Name: name, Claimed: c}, true, nil
}

// DataWindowBytes is how far, in bytes, a chunk writer may run ahead of its
// slowest reader by default: the window in chunks follows the plan's chunk size.
const DataWindowBytes = 8 << 20

// DataFor returns the chunk-stream options for plan p: a window of
// DataWindowBytes (4 to 64 chunks) unless one was configured.
func (d *Deps) DataFor(p *plan.Plan) bus.DataOptions {
	o := d.Data
	if o.Window == 0 && p.Spec.ChunkSize > 0 {
		o.Window = min(64, max(4, DataWindowBytes/int(p.Spec.ChunkSize)))
	}
	return o
}
