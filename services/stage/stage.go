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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
	// Owner is the owner of run state, whom stages ask for every change
	// of a run record (control.Service, or runs.Remote to reach it).
	Owner runs.Owner
	Log   *slog.Logger
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
//
// Every request the handler asks of the owner carries the attempt of the
// event it handles (runs.Request.Attempt), and an event of an attempt the
// run was replayed past is acked with a log line, having changed nothing
// (runs.ErrStale): a replay re-emits what drives its attempt.
func (d *Deps) Spec(name string, h bus.Handler, types ...string) bus.ConsumerSpec {
	s := d.Consumer
	s.Name = name
	s.Types = types
	s.Handler = func(ctx context.Context, e events.Event) ([]events.Event, error) {
		out, err := h(WithAttempt(ctx, events.RunID(e), events.Attempt(e)), e)
		if errors.Is(err, runs.ErrStale) {
			d.log().Info("event of an earlier attempt: acked, nothing changed", "consumer", name, "type", e.Type(), "id", e.ID(),
				"plan", e.Subject(), "runid", events.RunID(e), "reason", err.Error())
			return nil, nil
		}
		return out, err
	}
	s.OnDead = func(ctx context.Context, e events.Event, reason string) ([]events.Event, error) {
		return d.failDead(WithAttempt(ctx, events.RunID(e), events.Attempt(e)), name, e, reason)
	}
	return s
}

func (d *Deps) log() *slog.Logger {
	if d.Log == nil {
		return slog.Default()
	}
	return d.Log
}

type attemptKey struct{}

// work is the run and attempt a context works for.
type work struct {
	run     string
	attempt int
	// accepted is the attempt of the run record the last request of this
	// work that the owner accepted returned (0 before any): see
	// EmitAttempt.
	accepted atomic.Int32
}

// WithAttempt makes ctx the context of work for attempt n of run runID:
// the requests about that run asked with it carry n
// (runs.Request.Attempt), so the owner refuses them once the run was
// replayed past n. Requests about other runs (a schedule replacing the
// run before) carry none. Spec does it for every event handled.
func WithAttempt(ctx context.Context, runID string, n int) context.Context {
	return context.WithValue(ctx, attemptKey{}, &work{run: runID, attempt: n})
}

// workFor is the work ctx does for run runID, nil when none.
func workFor(ctx context.Context, runID string) *work {
	if w, ok := ctx.Value(attemptKey{}).(*work); ok && w.run == runID {
		return w
	}
	return nil
}

// attemptIn is the attempt ctx works for in run runID, 0 when none (an
// operator's request, a loop of the owner's, another run's work).
func attemptIn(ctx context.Context, runID string) int {
	if w := workFor(ctx, runID); w != nil {
		return w.attempt
	}
	return 0
}

// CheckCurrent refuses, with runs.ErrStale, event e of an attempt run r
// has been replayed past, and, permanently, one of an attempt r has not
// reached: the owner records a replay before it publishes what drives it,
// and stages read records from the stream's leader, so no stage meets an
// event of an attempt ahead of the record unless the event is forged.
func CheckCurrent(r *runs.Run, e events.Event) error {
	if r == nil {
		return nil
	}
	switch n, cur := events.Attempt(e), r.CurrentAttempt(); {
	case n < cur:
		return fmt.Errorf("%w: %s %s is of attempt %d, run %s is at attempt %d", runs.ErrStale, e.Type(), e.ID(), n, r.ID, cur)
	case n > cur:
		return bus.Permanent(fmt.Errorf("%s %s: attempt %d: run %s is at attempt %d, and no replay made a later one", e.Type(), e.ID(), n, r.ID, cur))
	}
	return nil
}

// consumerStage is the stage a durable consumer belongs to, which asks
// the owner of run state in its name.
func consumerStage(consumer string) string {
	switch consumer {
	case "compensate":
		return "hook"
	case "verify-failed", "scrub":
		return "verify"
	case "drill":
		return "restore"
	case "upload-copy":
		return "upload"
	}
	return consumer
}

// failDead fails the run of a dead-lettered event, if it has a record that
// is not final yet. Failure events themselves only end there.
func (d *Deps) failDead(ctx context.Context, consumer string, e events.Event, reason string) ([]events.Event, error) {
	switch e.Type() {
	case events.BackupFailed, events.RestoreFailed, events.BackupMissed, events.BackupCancelled, events.RestoreCancelled:
		return nil, nil
	}
	r, err := d.Runs.Get(ctx, events.RunID(e))
	if errors.Is(err, runs.ErrNotFound) {
		return nil, nil
	}
	if err != nil || r.Phase.Done() {
		return nil, err
	}
	if err := CheckCurrent(r, e); errors.Is(err, runs.ErrStale) {
		return nil, nil // what it was about was replayed: nothing to fail
	} else if err != nil {
		// A forged attempt: the run's current attempt fails with it.
		ctx = WithAttempt(ctx, r.ID, 0)
	}
	return d.FailRun(ctx, e.Subject(), r.ID, consumerStage(consumer), events.Step(e),
		fmt.Sprintf("%s gave up on %s: %s", consumer, e.Type(), reason), e)
}

// Emit builds the event of payload p for a run's step with the deterministic
// id of (run, type, step).
// In a replayed run (attempt 2 and up) the id carries the attempt
// (events.AttemptEventID) that EmitAttempt says the event belongs to.
func (d *Deps) Emit(ctx context.Context, planName, runID, step string, p events.Payload) (events.Event, error) {
	return d.EmitAt(EmitAttempt(ctx, runID), planName, runID, step, p)
}

// EmitAt is Emit in attempt n of the run: for the owner of run state, which
// announces what a record it holds says (that record's attempt).
func (d *Deps) EmitAt(n int, planName, runID, step string, p events.Payload) (events.Event, error) {
	return events.New(d.AttemptMeta(n, planName, runID, step, p.EventType(), step), p)
}

// AttemptMeta is the metadata of an event of type typ about a run's step
// in attempt n of the run (EmitAttempt): the attempt both in the event's
// id, made from idStep (events.AttemptEventID), and as its attempt
// attribute, so the two always agree.
func (d *Deps) AttemptMeta(n int, planName, runID, step, typ, idStep string) events.Meta {
	m := d.Bus.Meta(planName, runID, step)
	m.Attempt = max(1, n)
	m.ID = events.AttemptEventID(runID, typ, idStep, m.Attempt)
	return m
}

// EmitAttempt is the attempt of run runID that the events a handler emits
// about it belong to: the attempt of the run record its last accepted
// request returned, which is the attempt its last transition happened in
// (an upload's end the replay took over belongs to the new attempt; an end
// accepted just before a replay, to the old one, whose consumers then ack
// it as stale); before any request, the attempt of the event it handles;
// outside a handler (an operator's command, the owner's loops), the latest
// attempt this process noted.
func EmitAttempt(ctx context.Context, runID string) int {
	if w := workFor(ctx, runID); w != nil {
		if n := w.accepted.Load(); n > 0 {
			return int(n)
		}
		return w.attempt
	}
	return AttemptOf(runID)
}

// attempts holds the current attempt of the runs this process saw that were
// replayed (attempt 2 and up); runs never replayed are not kept.
var attempts sync.Map

// NoteRun remembers r's current attempt for the ids of the events emitted
// for it. Every record a stage gets from the owner or the store passes here
// before the stage emits anything for the run. A run's attempts only grow,
// so a record of an earlier attempt (read before a replay, noted after
// another goroutine noted the replay) changes nothing: taking it would
// label the new attempt's events, and name its chunk streams (DataKey),
// as the old one's.
func NoteRun(r *runs.Run) {
	if r == nil {
		return
	}
	n := r.CurrentAttempt()
	if n <= 1 {
		return
	}
	for {
		cur, loaded := attempts.LoadOrStore(r.ID, n)
		if !loaded || cur.(int) >= n || attempts.CompareAndSwap(r.ID, cur, n) {
			return
		}
	}
}

// DataKey names run id's chunk streams in its current attempt: the run id,
// followed by the attempt in a replay, whose dump must not meet what an
// earlier attempt left in the stream (chunks, readers' positions).
func DataKey(id string) string {
	if n := AttemptOf(id); n > 1 {
		return id + "a" + strconv.Itoa(n)
	}
	return id
}

// AttemptOf is the attempt of run id as last noted (1 when never replayed).
func AttemptOf(id string) int {
	if n, ok := attempts.Load(id); ok {
		return n.(int)
	}
	return 1
}

// Plan loads the current plan an event is about, for events before a run
// exists (a trigger). A missing plan is permanent, and so is a stored plan
// that fails validation (planstore.ErrInvalidPlan): the event is
// dead-lettered with the plan's problems, the run (if it has a record)
// fails with them, and nothing of the plan runs. Stages handling a run's
// events read the run's own revision (PlanOf).
func (d *Deps) Plan(ctx context.Context, e events.Event) (*plan.Plan, error) {
	p, err := d.Plans.Get(ctx, e.Subject())
	return p, planErr(e.Type(), e.Subject(), err)
}

func planErr(what, name string, err error) error {
	switch {
	case errors.Is(err, planstore.ErrNotFound), errors.Is(err, planstore.ErrRevisionGone):
		return bus.Permanent(fmt.Errorf("%s for plan %q: %w", what, name, err))
	case errors.Is(err, planstore.ErrInvalidPlan):
		return bus.Permanent(fmt.Errorf("%s: %w", what, err))
	}
	return err
}

// PlanOf loads the plan revision run r started with: editing or deleting
// the plan does not change a running run. Errors are those of Plan.
func (d *Deps) PlanOf(ctx context.Context, r *runs.Run) (*plan.Plan, error) {
	if r.PlanRevision == 0 {
		// A record from before runs kept their revision.
		p, err := d.Plans.Get(ctx, r.Plan)
		return p, planErr("run "+r.ID, r.Plan, err)
	}
	p, err := d.Plans.GetRevision(ctx, r.Plan, r.PlanRevision)
	return p, planErr("run "+r.ID, r.Plan, err)
}

// RunPlan loads the run of event e (creating its record on a
// backup.requested or restore.requested, as stage) and the plan revision
// it keeps. An event of an attempt the run was replayed past is refused
// with runs.ErrStale (CheckCurrent).
func (d *Deps) RunPlan(ctx context.Context, stageName string, e events.Event) (*plan.Plan, *runs.Run, error) {
	r, err := d.EnsureRun(ctx, stageName, e)
	if errors.Is(err, runs.ErrNotFound) {
		return nil, nil, bus.Permanent(fmt.Errorf("event %s: %w", e.Type(), err))
	}
	if err != nil {
		return nil, nil, err
	}
	p, err := d.PlanOf(ctx, r)
	return p, r, err
}

// ask asks the owner of run state for a transition in the name of stage.
// A refused or malformed request is permanent: asking again cannot help.
func (d *Deps) ask(ctx context.Context, stageName string, req runs.Request) (*runs.Run, runs.Outcome, error) {
	if req.Owner == "" {
		req.Owner = d.Instance
	}
	if req.Attempt == 0 {
		req.Attempt = attemptIn(ctx, req.Run)
	}
	r, o, err := d.Owner.Ask(ctx, stageName, req)
	if errors.Is(err, runs.ErrRefused) || errors.Is(err, runs.ErrBadRequest) {
		err = bus.Permanent(err)
	}
	NoteRun(r)
	if w := workFor(ctx, req.Run); w != nil && r != nil && err == nil {
		w.accepted.Store(int32(r.CurrentAttempt()))
	}
	return r, o, err
}

// EnsureRun creates the run record of a backup.requested or
// restore.requested (asked as stage) and returns the run of any event,
// refusing an event of an attempt the run was replayed past with
// runs.ErrStale (CheckCurrent).
func (d *Deps) EnsureRun(ctx context.Context, stageName string, e events.Event) (*runs.Run, error) {
	r, err := d.ensureRun(ctx, stageName, e)
	if err != nil {
		return r, err
	}
	return r, CheckCurrent(r, e)
}

func (d *Deps) ensureRun(ctx context.Context, stageName string, e events.Event) (*runs.Run, error) {
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
		seed.FallbackOlder = req.FallbackOlder
	default:
		r, err := d.Runs.Get(ctx, events.RunID(e))
		NoteRun(r)
		return r, err
	}
	if r, err := d.Runs.Get(ctx, seed.ID); err == nil {
		NoteRun(r)
		return r, nil
	}
	// A plan that is missing or invalid is refused here, permanently;
	// the owner reads it again to record the revision the run keeps.
	if _, err := d.Plan(ctx, e); err != nil {
		return nil, err
	}
	r, _, err := d.ask(ctx, stageName, runs.Request{Op: runs.OpCreate, Run: seed.ID, Seed: &seed})
	return r, err
}

// FailRun asks the owner to fail the run in the name of stage (the first
// failure wins); the owner announces it (backup.failed or restore.failed).
// The stage's own account of the failure (its step's failed event, first)
// is published before, so that every reader sees why before it sees that
// the run failed. A redelivery of the event that caused the failure
// announces it again, with the same id; a later failure of another stage
// announces nothing. It returns no events: they are published here and by
// the owner.
func (d *Deps) FailRun(ctx context.Context, planName, runID, stageName, step, reason string, cause events.Event, first ...events.Event) ([]events.Event, error) {
	if err := d.Bus.Publish(ctx, first...); err != nil {
		return nil, err
	}
	_, _, err := d.ask(ctx, stageName, runs.Request{Op: runs.OpFail, Run: runID, Step: step, Error: reason, Cause: cause.ID()})
	return nil, err
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
func (d *Deps) StepCompleted(ctx context.Context, planName, runID, step string, dur time.Duration) (events.Event, error) {
	return d.StepCompletedAt(EmitAttempt(ctx, runID), planName, runID, step, dur)
}

// StepCompletedAt is StepCompleted in attempt n (of the record that says
// the step completed).
func (d *Deps) StepCompletedAt(n int, planName, runID, step string, dur time.Duration) (events.Event, error) {
	return d.EmitAt(n, planName, runID, step, events.StepCompletedData{Step: step, DurationMs: dur.Milliseconds()})
}

// Claim asks the owner to start step name of a run for this instance
// (runs.OpClaim; Claimed says what to do), with a deadline when deadline
// is set.
func (d *Deps) Claim(ctx context.Context, runID, name string, deadline time.Duration) (*runs.Run, Claimed, error) {
	r, o, err := d.ask(ctx, runs.StageOf(name), runs.Request{Op: runs.OpClaim, Run: runID, Step: name, Within: deadline})
	return r, o.Claimed, err
}

// Claimed is the outcome of Claim.
type Claimed = runs.Claimed

// FinishStep asks the owner to record a step's end and what it produced.
// A stage that finished a step which may be the run's last piece then
// announces it and asks to settle (Settle).
func (d *Deps) FinishStep(ctx context.Context, runID, name string, phase runs.Phase, bytes int64, errText string, res *runs.Result) (*runs.Run, error) {
	r, _, err := d.ask(ctx, runs.StageOf(name), runs.Request{Op: runs.OpFinish, Run: runID, Step: name, Phase: phase, Bytes: bytes, Error: errText, Result: res})
	return r, err
}

// Settle publishes a finished step's events (its completed event, the
// step.completed of a workflow step), then asks the owner to settle the run:
// the owner declares it succeeded when this was its last piece. Published
// first, so that every reader sees the step's end before the run's.
// Asking again is harmless (a redelivery settles a run whose first
// delivery stopped in between). It returns no events: they are published.
func (d *Deps) Settle(ctx context.Context, stageName, runID string, evs ...events.Event) ([]events.Event, error) {
	if err := d.Bus.Publish(ctx, evs...); err != nil {
		return nil, err
	}
	_, _, err := d.ask(ctx, stageName, runs.Request{Op: runs.OpSettle, Run: runID})
	return nil, err
}

// Interrupt asks the owner to mark step name Failed as interrupted (with
// errText) if it is still Running: its owner died mid-step.
func (d *Deps) Interrupt(ctx context.Context, runID, name, errText string) (*runs.Run, error) {
	r, _, err := d.ask(ctx, runs.StageOf(name), runs.Request{Op: runs.OpInterrupt, Run: runID, Step: name, Error: errText})
	return r, err
}

// Ask asks the owner for any other transition in the name of stage (hook's
// compensation bookkeeping).
func (d *Deps) Ask(ctx context.Context, stageName string, req runs.Request) (*runs.Run, runs.Outcome, error) {
	return d.ask(ctx, stageName, req)
}

// DataStep is a workflow data step (snapshot or restore) that an event made
// due, with the outcome of claiming it.
type DataStep struct {
	Plan *plan.Plan
	Run  *runs.Run
	Name string
	Claimed
}

// ClaimDataStep loads the run of e and the plan revision it keeps and,
// when e makes the data step of kind due in a run of runKind, claims it.
// ok is false when e means nothing to this data stage. When this process
// refuses exec and the plan would run a program (CheckExec), the step is
// not claimed: ds comes back Skip and Failed with the refusal as Error,
// and the caller fails the run as it does for a step recorded failed.
func (d *Deps) ClaimDataStep(ctx context.Context, e events.Event, runKind string, kind plan.StepKind) (ds DataStep, ok bool, err error) {
	p, r, err := d.RunPlan(ctx, string(kind), e)
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

// ErrRunEnded is the cause of a context WatchRun ended: the run became
// final elsewhere (cancelled, or failed by another stage or its deadline).
// The cause is a *RunEnded, which says how.
var ErrRunEnded = errors.New("the run ended")

// RunEnded is the cause of a context WatchRun or WatchCancel ended.
type RunEnded struct {
	Phase runs.Phase // Cancelled or Failed
	// Reason is the run's error: the operator's reason, or the failure.
	Reason string
}

func (e *RunEnded) Error() string        { return fmt.Sprintf("%v: %s (%s)", ErrRunEnded, e.Phase, e.Reason) }
func (e *RunEnded) Is(target error) bool { return target == ErrRunEnded }

// Cancelled reports whether err (a context's cause) says an operator
// cancelled the run: a step stopped for it ends Cancelled, and its stage
// announces no failure of its own (control announces the cancellation).
func Cancelled(err error) bool {
	var e *RunEnded
	return errors.As(err, &e) && e.Phase == runs.Cancelled
}

// WatchRun returns a context that ends, with a cause wrapping ErrRunEnded,
// once run runID's record is final without success (cancelled or failed),
// so a stage stops streaming for a run nobody waits for any more: the dump
// is killed, an upload aborted. stop releases the watch; call it when the
// work is done. Should the watch fail to start, the context is ctx's own:
// the stage then finds out at its next step, as before.
func (d *Deps) WatchRun(ctx context.Context, runID string) (context.Context, context.CancelFunc) {
	return d.watch(ctx, runID, runs.Phase.Unsuccessful)
}

// WatchCancel is WatchRun for a cancellation only: a stage that should
// finish its work for a failed run (upload keeps a whole object for a
// replay) stops only when the run is cancelled.
func (d *Deps) WatchCancel(ctx context.Context, runID string) (context.Context, context.CancelFunc) {
	return d.watch(ctx, runID, func(p runs.Phase) bool { return p == runs.Cancelled })
}

func (d *Deps) watch(ctx context.Context, runID string, stop func(runs.Phase) bool) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancelCause(ctx)
	release := func() { cancel(nil) }
	w, err := d.Bus.Runs.Watch(wctx, runID)
	if err != nil {
		d.Log.Warn("cannot watch the run for its end", "runid", runID, "err", err)
		return wctx, release
	}
	go func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-wctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				var r runs.Run
				if json.Unmarshal(e.Value(), &r) == nil && stop(r.Phase) {
					cancel(&RunEnded{Phase: r.Phase, Reason: r.Error})
					return
				}
			}
		}
	}()
	return wctx, release
}
