// Package control is the owner of run state: the one writer of the runs
// bucket. Stages ask it for transitions of their runs (runs.Request on
// bs.control.<stage>); it checks that the asking stage may ask for that
// transition (runs.Permit), applies it with a compare-and-set, and
// announces what only the owner decides: a run failed (backup.failed,
// restore.failed), succeeded (backup.succeeded, restore.succeeded), or ran
// past its deadline. It also fails runs stuck past a step's or their own
// deadline.
//
// It must never run a step itself: it only records what stages report.
package control

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// Service is the control service.
type Service struct {
	*stage.Deps
	// Workers bounds the requests handled at once (default 16).
	Workers int
	// Tick is how often overdue runs are looked for (default 15s).
	Tick time.Duration
}

// New builds the control service.
func New(d *stage.Deps) *Service { return &Service{Deps: d, Workers: 16, Tick: 15 * time.Second} }

// Name is the service's name.
func (s *Service) Name() string { return "control" }

var _ runs.Owner = (*Service)(nil)

// Run answers transition requests until ctx ends, and fails overdue runs
// every Tick. Replicas share the requests (a queue group); the
// compare-and-set on each record makes them agree.
func (s *Service) Run(ctx context.Context) error {
	msgs := make(chan *nats.Msg, 64)
	sub, err := s.Bus.NC.ChanQueueSubscribe(runs.ControlRoot+".*", "control", msgs)
	if err != nil {
		return fmt.Errorf("control: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range max(1, s.Workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case m := <-msgs:
					s.serve(ctx, m)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.indexRuns(ctx)
	}()
	tick := time.NewTicker(max(s.Tick, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if _, err := s.FailOverdue(ctx); err != nil && ctx.Err() == nil {
				s.Log.Error("control: fail overdue runs", "err", err)
			}
		}
	}
}

// indexRuns gives the runs of an earlier release their list entries at
// start and again every hour — an earlier release's control service may
// still be writing runs during an upgrade — which also renews the bucket's
// mark before its TTL removes it (runs.Store.IndexRuns: after the first
// pass, each looks only at what was written since the one before); a
// failure is tried again in a minute.
func (s *Service) indexRuns(ctx context.Context) {
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
		wait := time.Hour
		if err := s.Runs.IndexRuns(ctx); err != nil && ctx.Err() == nil {
			s.Log.Error("control: index runs for listings", "err", err)
			wait = time.Minute
		}
		next.Reset(wait)
	}
}

// serve answers one request. The stage is the subject's last token: the
// server confines each stage's user to its own subject.
func (s *Service) serve(ctx context.Context, m *nats.Msg) {
	stageName := strings.TrimPrefix(m.Subject, runs.ControlRoot+".")
	var req runs.Request
	var rep runs.Reply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		rep = runs.ReplyOf(nil, runs.Outcome{}, fmt.Errorf("%w: decode: %v", runs.ErrBadRequest, err))
	} else {
		rep = runs.ReplyOf(s.Ask(ctx, stageName, req))
	}
	data, err := json.Marshal(rep)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil && ctx.Err() == nil {
		s.Log.Error("control: reply", "stage", stageName, "op", req.Op, "runid", req.Run, "err", err)
	}
}

// Ask implements runs.Owner: the transition applied here, in this process.
func (s *Service) Ask(ctx context.Context, stageName string, req runs.Request) (*runs.Run, runs.Outcome, error) {
	req.Stage = stageName
	if err := req.Check(); err != nil {
		return nil, runs.Outcome{}, err
	}
	if err := runs.Permit(stageName, req); err != nil {
		s.Log.Warn("control: transition refused", "stage", stageName, "op", req.Op, "runid", req.Run, "step", req.Step, "err", err)
		return nil, runs.Outcome{}, err
	}
	switch req.Op {
	case runs.OpCreate:
		if err := s.seed(ctx, req.Seed); err != nil {
			return nil, runs.Outcome{}, err
		}
	case runs.OpReplay:
		return s.replay(ctx, req)
	case runs.OpFail:
		if r, ok, err := s.copyLost(ctx, req); err != nil || ok {
			return r, runs.Outcome{}, err
		}
	}
	r, o, err := s.Runs.Apply(ctx, req, s.Now().UTC())
	stage.NoteRun(r)
	if err != nil {
		return r, o, err
	}
	switch req.Op {
	case runs.OpFail:
		if o.Announce {
			if err := s.announceFailed(ctx, r, req.Step, req.Cause); err != nil {
				return nil, o, err
			}
		}
	case runs.OpSettle:
		if r, err = s.settle(ctx, r); err != nil {
			return nil, o, err
		}
	case runs.OpCancel:
		if o.Announce {
			if err := s.announceCancelled(ctx, r, req.Owner, req.Error); err != nil {
				return nil, o, err
			}
		}
	}
	return r, o, nil
}

// replay starts the next attempt of a run (runs.OpReplay) and publishes
// what drives it from where it starts, with the new attempt's event ids:
// the request again (from the start), upload.completed of every stored
// copy (verify again), the step.completed before a replayed hook op (or
// the request, when the op is the first step), or backup.succeeded again
// (retention). The new attempt keeps the run's plan revision and gets the
// plan's runTimeout anew.
func (s *Service) replay(ctx context.Context, req runs.Request) (*runs.Run, runs.Outcome, error) {
	r, err := s.Runs.Get(ctx, req.Run)
	if err != nil {
		return nil, runs.Outcome{}, err
	}
	p, err := s.PlanOf(ctx, r)
	if err != nil {
		return nil, runs.Outcome{}, fmt.Errorf("%w: run %s: %v", runs.ErrNotReplayable, r.ID, err)
	}
	req.Within = p.Spec.EffectiveRunTimeout()
	r, o, err := s.Runs.Apply(ctx, req, s.Now().UTC())
	stage.NoteRun(r)
	if err != nil {
		return nil, o, err
	}
	s.Log.Warn("run replayed", "plan", r.Plan, "runid", r.ID, "attempt", r.CurrentAttempt(), "stage", o.Stage, "reused", o.Reused, "by", req.Owner)
	evs, err := s.redrive(p, r, o.Stage)
	if err != nil {
		return nil, o, err
	}
	if err := s.Bus.Publish(ctx, evs...); err != nil {
		return nil, o, err
	}
	return r, o, nil
}

// redrive builds the events that start attempt r.Attempt at stage.
func (s *Service) redrive(p *plan.Plan, r *runs.Run, from string) ([]events.Event, error) {
	var out []events.Event
	add := func(step string, payload events.Payload) error {
		ev, err := s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, step, payload)
		out = append(out, ev)
		return err
	}
	request := func() error {
		if r.Kind == runs.KindRestore {
			return add("", events.RestoreRequestedData{BackupID: r.BackupID, Destination: r.Destination, Target: r.Target,
				RequestedBy: r.RequestedBy, Create: r.Create, Clean: r.Clean})
		}
		return add("", events.BackupRequestedData{Trigger: r.Trigger, RequestedBy: r.RequestedBy, Reason: fmt.Sprintf("replay, attempt %d", r.CurrentAttempt())})
	}
	uploaded := func() error {
		for _, d := range p.Spec.Destinations {
			ds := r.Destinations[d.Name]
			if ds == nil || ds.Phase != runs.Succeeded {
				continue
			}
			if err := add("upload:"+d.Name, events.UploadCompletedData{Destination: d.Name, Key: ds.Key, ManifestKey: ds.ManifestKey,
				Size: ds.Size, SHA256: ds.SHA256}); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	switch {
	case from == runs.ReplayStart:
		err = request()
	case from == runs.ReplayVerify:
		err = uploaded()
	case from == runs.ReplayRetention:
		var ev events.Event
		if ev, err = s.succeeded(p, r); err == nil {
			out = append(out, ev)
		}
	case runs.StageOf(from) == "upload":
		dest := strings.TrimPrefix(from, "upload:")
		good, ok := runs.GoodCopy(r, dest)
		if !ok {
			return nil, fmt.Errorf("%w: run %s: no copy to copy into %s", runs.ErrNotReplayable, r.ID, dest)
		}
		d := r.Destinations[good]
		err = add(from, events.UploadRequestedData{Destination: dest, From: good, Key: d.Key, ManifestKey: d.ManifestKey, Size: d.Size, SHA256: d.SHA256})
		if err == nil {
			// Verify reads the copies kept again (their manifests were
			// marked failed with the run) once the new one is there.
			err = uploaded()
		}
	default: // a hook step
		prev := ""
		for _, st := range p.Sequence(stage.Workflow(r.Kind)) {
			if st.String() == from {
				break
			}
			prev = st.String()
		}
		if prev == "" {
			err = request()
		} else {
			err = add(prev, events.StepCompletedData{Step: prev})
		}
		if err == nil {
			err = uploaded()
		}
	}
	return out, err
}

// announceCancelled publishes that r was cancelled by who: the stages
// running its steps stop (they watch the record), and compensation runs.
func (s *Service) announceCancelled(ctx context.Context, r *runs.Run, who, reason string) error {
	var running []string
	for _, st := range r.Steps {
		if st.Phase == runs.Running {
			running = append(running, st.Name)
		}
	}
	s.Log.Warn("run cancelled", "plan", r.Plan, "runid", r.ID, "by", who, "reason", reason, "running", running)
	var ev events.Event
	var err error
	if r.Kind == runs.KindRestore {
		ev, err = s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.RestoreCancelledData{BackupID: r.BackupID, By: who, Reason: reason, Steps: running})
	} else {
		ev, err = s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.BackupCancelledData{By: who, Reason: reason, Steps: running})
	}
	if err != nil {
		return err
	}
	return s.Bus.Publish(ctx, ev)
}

// seed completes a new run's record: the plan revision it keeps and its
// deadline. The first create wins; a later one finds the record.
func (s *Service) seed(ctx context.Context, seed *runs.Run) error {
	if seed.Created.IsZero() {
		seed.Created = s.Now().UTC()
	}
	p, rev, err := s.Plans.GetCurrent(ctx, seed.Plan)
	if err != nil {
		return fmt.Errorf("run %s: %w", seed.ID, err)
	}
	seed.PlanRevision = rev
	seed.Deadline = seed.Created.Add(p.Spec.EffectiveRunTimeout())
	return nil
}

// announceFailed publishes the failure of run r, caused by event cause in
// step.
func (s *Service) announceFailed(ctx context.Context, r *runs.Run, step, cause string) error {
	s.Log.Warn("run failed", "plan", r.Plan, "runid", r.ID, "stage", r.FailedStage, "step", step, "reason", r.Error)
	var ev events.Event
	var err error
	if r.Kind == runs.KindRestore {
		ev, err = s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.RestoreFailedData{BackupID: r.BackupID, Stage: r.FailedStage, Error: r.Error})
	} else {
		ev, err = s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.BackupFailedData{Stage: r.FailedStage, FailedStep: step, Reason: r.Error, Cause: cause})
	}
	if err != nil {
		return err
	}
	return s.Bus.Publish(ctx, ev)
}

// settle marks r Succeeded once its plan's requirement is met and
// announces it. A run found Succeeded but not yet announced (the owner
// stopped in between) is announced now, with the same event id.
func (s *Service) settle(ctx context.Context, r *runs.Run) (*runs.Run, error) {
	if r.Phase.Done() && (r.Phase != runs.Succeeded || r.Announced[runs.AnnouncedSucceeded]) {
		return r, nil
	}
	p, err := s.PlanOf(ctx, r)
	if err != nil {
		return nil, err
	}
	return s.settleWith(ctx, r, p)
}

// settleWith is settle with the run's plan already read.
func (s *Service) settleWith(ctx context.Context, r *runs.Run, p *plan.Plan) (*runs.Run, error) {
	var err error
	if r.Phase != runs.Succeeded {
		need := requirement(p, r.Kind)
		if r, _, err = s.Runs.Apply(ctx, runs.Request{Op: runs.OpSettle, Run: r.ID, Require: &need}, s.Now().UTC()); err != nil {
			return nil, err
		}
		if r.Phase != runs.Succeeded {
			return r, nil
		}
	}
	ev, err := s.succeeded(p, r)
	if err != nil {
		return nil, err
	}
	if err := s.Bus.Publish(ctx, ev); err != nil {
		return nil, err
	}
	r, _, err = s.Runs.Apply(ctx, runs.Request{Op: runs.OpAnnounce, Run: r.ID, Flag: runs.AnnouncedSucceeded}, s.Now().UTC())
	return r, err
}

// requirement is what a run of kind needs of plan p to succeed.
func requirement(p *plan.Plan, kind string) runs.Requirement {
	need := runs.Requirement{Verify: p.Spec.Verify.IsEnabled(), Need: p.Spec.RequiredCopies()}
	for _, st := range p.Sequence(stage.Workflow(kind)) {
		need.Steps = append(need.Steps, st.String())
	}
	for _, d := range p.Spec.Destinations {
		need.Destinations = append(need.Destinations, d.Name)
	}
	return need
}

// copyLost handles a stage's request to fail a backup run for one
// destination's copy (its upload or verify step recorded failed): while
// the run can still hold the copies spec.require asks for, the run goes on
// — and settles, degraded, if that was its last piece — and ok is true.
// Otherwise the request fails the run as usual (ok false).
func (s *Service) copyLost(ctx context.Context, req runs.Request) (*runs.Run, bool, error) {
	k := runs.StageOf(req.Step)
	if k != "upload" && k != "verify" {
		return nil, false, nil
	}
	r, err := s.Runs.Get(ctx, req.Run)
	if err != nil || r.Kind != runs.KindBackup || r.Phase.Done() {
		return nil, false, err
	}
	if st := r.FindStep(req.Step); st == nil || st.Phase != runs.Failed {
		return nil, false, nil // not a recorded copy failure (an event given up on)
	}
	p, err := s.PlanOf(ctx, r)
	if err != nil {
		return nil, false, err
	}
	need := requirement(p, r.Kind)
	if !runs.Reachable(r, need) {
		return nil, false, nil
	}
	s.Log.Warn("a destination's copy failed; the run goes on for the copies it still needs", "plan", r.Plan, "runid", r.ID,
		"step", req.Step, "reason", req.Error, "require", need.Need)
	r, err = s.settleWith(ctx, r, p)
	return r, true, err
}

// succeeded is the backup.succeeded or restore.succeeded of r.
func (s *Service) succeeded(p *plan.Plan, r *runs.Run) (events.Event, error) {
	if r.Kind == runs.KindRestore {
		s.Log.Info("restore succeeded", "plan", r.Plan, "runid", r.ID, "backup", r.BackupID, "bytes", r.Bytes)
		return s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.RestoreSucceededData{
			BackupID: r.BackupID, Destination: r.RestoredFrom, Bytes: r.Bytes, SHA256: r.SHA256, DurationMs: r.Finished.Sub(r.Created).Milliseconds(),
		})
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
		if ds == nil || ds.Phase != runs.Succeeded || slices.Contains(r.Degraded, dest.Name) {
			continue
		}
		data.Objects = append(data.Objects, events.BackupObject{
			Destination: dest.Name, Key: ds.Key, ManifestKey: ds.ManifestKey, Size: ds.Size, SHA256: ds.SHA256,
		})
	}
	if len(r.Degraded) > 0 {
		data.Degraded, data.Missing = true, r.Degraded
		s.Log.Warn("backup succeeded degraded: a destination holds no copy", "plan", r.Plan, "runid", r.ID, "missing", r.Degraded)
	}
	s.Log.Info("backup succeeded", "plan", r.Plan, "runid", r.ID, "bytes", r.Bytes, "stored", r.StoredBytes)
	return s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", data)
}

// FailOverdue fails the runs not yet final that are past a deadline: a step
// Running past its own (a process died mid-step and no redelivery took the
// step over: its step.failed is published too), or the run past the
// plan's runTimeout. Each gets backup.failed (or restore.failed), so its
// compensation runs. Several replicas may do so at once: the
// compare-and-set lets one decide, and the events' ids are deterministic.
// It returns the ids of the runs it failed.
func (s *Service) FailOverdue(ctx context.Context) ([]string, error) {
	list, err := s.Runs.Active(ctx)
	if err != nil {
		return nil, fmt.Errorf("fail overdue runs: %w", err)
	}
	now := s.Now().UTC()
	var failed []string
	for _, r := range list {
		step, whole := runs.Overdue(r, now)
		if step == "" && !whole {
			continue
		}
		ok, err := s.expire(ctx, r.ID, step, now)
		if err != nil {
			return failed, fmt.Errorf("fail overdue run %s: %w", r.ID, err)
		}
		if ok {
			failed = append(failed, r.ID)
		}
	}
	return failed, nil
}

// expire fails run runID if it is still overdue, and reports whether this
// call did.
func (s *Service) expire(ctx context.Context, runID, step string, now time.Time) (bool, error) {
	r, o, err := s.Runs.Apply(ctx, runs.Request{Op: runs.OpExpire, Run: runID, Step: step}, now)
	if err != nil || !o.Announce {
		return false, err
	}
	failed := step
	if failed == "" {
		failed = "run" // the run itself past its deadline
	}
	cause, err := s.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, step, events.StepFailedData{Step: failed, Reason: o.Reason, TimedOut: true})
	if err != nil {
		return true, err
	}
	if err := s.Bus.Publish(ctx, cause); err != nil {
		return true, err
	}
	s.Log.Warn("run failed past its deadline", "plan", r.Plan, "runid", r.ID, "step", step, "reason", o.Reason)
	return true, s.announceFailed(ctx, r, step, cause.ID())
}
