package hook

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

// opScript is a real exec op: each call appends "<name> <forward|inverse>
// <ok|fail>" to ops.log in dir and fails while the op's counter file says
// it has run fewer than its fails times (the counter survives across runs
// of the op, as a flaky database connection would).
const opScript = `#!/bin/sh
name=$1 fails=$2
n=$(cat "$DIR/$name.count" 2>/dev/null || echo 0)
n=$((n+1))
echo $n > "$DIR/$name.count"
kind=forward
[ "$BACKSTREAM_INVERSE" = 1 ] && kind=inverse
if [ $n -le $fails ]; then
	echo "$name $kind fail" >> "$DIR/ops.log"
	echo "$name failed (try $n of a flaky service)" >&2
	exit 1
fi
echo "$name $kind ok" >> "$DIR/ops.log"
`

// fixture is a hook service on a real NATS with a plan whose ops are
// opScript, and a clock the test moves.
type fixture struct {
	t      *testing.T
	dir    string
	b      *bus.Bus
	d      *stage.Deps
	s      *Service
	p      *plan.Plan
	offset atomic.Int64
}

// newFixture applies a plan with hook db: lock→unlock, quiesce→resume,
// each op failing its first fails[op] runs; sequence is the backup
// workflow's, onError the unlock op's.
func newFixture(t *testing.T, fails map[string]int, sequence, unlockOnError string, retries int) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir()}
	_, f.b = bustest.Start(t)
	script := filepath.Join(f.dir, "op.sh")
	if err := os.WriteFile(script, []byte(opScript), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DIR", f.dir)
	reg := plugins.Default()
	f.d = &stage.Deps{Bus: f.b, Runs: runs.NewStore(f.b.Runs), Plans: planstore.New(f.b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: func() time.Time { return time.Now().Add(time.Duration(f.offset.Load())) }}
	f.d.Owner = control.New(f.d)
	cmd := func(op string) string { return fmt.Sprintf(`[%q, %q, "%d"]`, script, op, fails[op]) }
	src := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: owed}
spec:
  source: {type: files, files: {path: /srv}}
  hooks:
    - name: db
      type: exec
      timeout: 10s
      compensationDeadline: 1h
      ops:
        - {name: lock, command: %s, inverseOp: unlock}
        - {name: unlock, command: %s, onError: %s, retries: %d}
        - {name: quiesce, command: %s, inverseOp: resume}
        - {name: resume, command: %s, retries: %d}
  workflows:
    - {name: backup, sequence: %s}
    - {name: restore, sequence: [{hook: db/lock}, restore, {hook: db/unlock}]}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, cmd("lock"), cmd("unlock"), unlockOnError, retries, cmd("quiesce"), cmd("resume"), retries, sequence, filepath.Join(f.dir, "backups"))
	p, err := plan.Parse("owed.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.Plans.Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	f.p = p
	f.s = f.service()
	return f
}

// service is one hook replica with short backoff.
func (f *fixture) service() *Service {
	s := New(f.d)
	s.Tune(Tuning{Backoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, RetryEvery: time.Minute})
	return s
}

func (f *fixture) log() []string {
	b, err := os.ReadFile(filepath.Join(f.dir, "ops.log"))
	if err != nil && !os.IsNotExist(err) {
		f.t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (f *fixture) run(id string) *runs.Run {
	f.t.Helper()
	r, err := f.d.Runs.Get(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// drive runs a backup of the plan through the hook handler as the bus
// would: backup.requested, then each step.completed it returns; the data
// step is marked completed by hand. It stops at the first failure event
// and returns it (nil when the workflow ended), with every event made.
func (f *fixture) drive(kind string) (runID string, failure *events.Event, all []events.Event) {
	f.t.Helper()
	ctx := context.Background()
	runID = events.NewID()
	var start events.Event
	var err error
	if kind == runs.KindRestore {
		start, err = events.New(f.b.Meta("owed", runID, ""), events.RestoreRequestedData{BackupID: "latest", Destination: "local"})
	} else {
		start, err = events.New(f.b.Meta("owed", runID, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	}
	if err != nil {
		f.t.Fatal(err)
	}
	queue := []events.Event{start}
	for len(queue) > 0 {
		e := queue[0]
		queue = queue[1:]
		out, err := f.s.handleStep(ctx, e)
		if err != nil {
			f.t.Fatalf("handleStep %s: %v", e.Type(), err)
		}
		all = append(all, out...)
		// A finished hook step's events are published, not returned: the
		// step.completed the bus would deliver next is rebuilt here.
		if r := f.run(runID); r.Phase != runs.Failed {
			if due, ok, _ := stage.DueStep(f.p, r, e); ok && due.Kind == plan.StepHook {
				if st := r.FindStep(due.String()); st != nil && (st.Phase == runs.Succeeded || st.Phase == runs.Skipped) {
					done, err := f.d.StepCompleted(ctx, "owed", runID, due.String(), 0)
					if err != nil {
						f.t.Fatal(err)
					}
					queue = append(queue, done)
				}
			}
		}
		// The owner of run state announces a failure on the bus; the
		// compensate consumer gets it as this.
		r := f.run(runID)
		if r.Phase == runs.Failed {
			failure := failureEvent(f.t, f.d, r, "")
			all = append(all, failure)
			return runID, &failure, all
		}
		// A data step due next is completed by hand, as its stage would.
		next, ok, err := f.p.NextStep(stage.Workflow(r.Kind), lastStep(e))
		if err != nil || !ok || !next.IsData() {
			continue
		}
		if _, _, err := f.d.Claim(ctx, runID, next.String(), 0); err != nil {
			f.t.Fatal(err)
		}
		if _, err := f.d.FinishStep(ctx, runID, next.String(), runs.Succeeded, 0, "", nil); err != nil {
			f.t.Fatal(err)
		}
		done, err := f.d.StepCompleted(ctx, "owed", runID, next.String(), 0)
		if err != nil {
			f.t.Fatal(err)
		}
		queue = append(queue, done)
	}
	return runID, nil, all
}

// fail fails run id as stage would, and returns the failure event the
// owner of run state announced.
func (f *fixture) fail(id, stageName, reason string, cause events.Event) events.Event {
	f.t.Helper()
	return failRun(f.t, f.d, id, stageName, reason, cause)
}

// failRun asks d's owner to fail run id in the name of stageName and
// returns the backup.failed (restore.failed) it announced, as the
// compensate consumer receives it.
func failRun(t *testing.T, d *stage.Deps, id, stageName, reason string, cause events.Event) events.Event {
	t.Helper()
	r, err := d.Runs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.FailRun(context.Background(), r.Plan, id, stageName, stageName, reason, cause); err != nil {
		t.Fatal(err)
	}
	if r, err = d.Runs.Get(context.Background(), id); err != nil || r.Phase != runs.Failed {
		t.Fatalf("fail run %s: %v %v", id, r, err)
	}
	return failureEvent(t, d, r, cause.ID())
}

// failureEvent is the backup.failed (restore.failed) the owner announced
// for failed run r, caused by the event of id cause.
func failureEvent(t *testing.T, d *stage.Deps, r *runs.Run, cause string) events.Event {
	t.Helper()
	var e events.Event
	var err error
	if r.Kind == runs.KindRestore {
		e, err = d.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.RestoreFailedData{Stage: r.FailedStage, Error: r.Error})
	} else {
		e, err = d.EmitAt(r.CurrentAttempt(), r.Plan, r.ID, "", events.BackupFailedData{Stage: r.FailedStage, Reason: r.Error, Cause: cause})
	}
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func lastStep(e events.Event) string {
	var d events.StepCompletedData
	if e.Type() == events.StepCompleted && e.DataAs(&d) == nil {
		return d.Step
	}
	return ""
}

func types(evs []events.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, strings.TrimPrefix(e.Type(), events.TypePrefix))
	}
	return out
}

func compensationFailed(t *testing.T, evs []events.Event) []events.CompensationFailedData {
	t.Helper()
	var out []events.CompensationFailedData
	for _, e := range evs {
		if e.Type() == events.CompensationFailed {
			var d events.CompensationFailedData
			if err := e.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
	}
	return out
}

// TestCompensationPaysWhatForwardOpsLeftOwed runs real exec ops through
// the hook handler and checks the one rule on each path: which ops run,
// in which order, and what the run record and the events say.
func TestCompensationPaysWhatForwardOpsLeftOwed(t *testing.T) {
	tests := []struct {
		name      string
		fails     map[string]int
		sequence  string
		kind      string
		retries   int
		wantLog   []string
		wantTypes []string
		wantOwed  []string
	}{
		{
			name:      "a failing forward unlock is retried by compensation until it completes",
			fails:     map[string]int{"unlock": 2},
			sequence:  "[{hook: db/lock}, snapshot, {hook: db/unlock}]",
			retries:   3,
			wantLog:   []string{"lock forward ok", "unlock forward fail", "unlock inverse fail", "unlock inverse ok"},
			wantTypes: []string{"hook.completed", "compensation.completed"},
		},
		{
			name:      "a failing forward resume: resume and unlock both run, newest first",
			fails:     map[string]int{"resume": 1},
			sequence:  "[{hook: db/lock}, {hook: db/quiesce}, snapshot, {hook: db/resume}, {hook: db/unlock}]",
			retries:   3,
			wantLog:   []string{"lock forward ok", "quiesce forward ok", "resume forward fail", "resume inverse ok", "unlock inverse ok"},
			wantTypes: []string{"hook.completed", "hook.completed", "compensation.completed"},
		},
		{
			name:      "an inverse failing after its retries stays owed",
			fails:     map[string]int{"unlock": 10},
			sequence:  "[{hook: db/lock}, snapshot, {hook: db/unlock}]",
			retries:   2,
			wantLog:   []string{"lock forward ok", "unlock forward fail", "unlock inverse fail", "unlock inverse fail", "unlock inverse fail"},
			wantTypes: []string{"compensation.failed"},
			wantOwed:  []string{"hook:db/unlock"},
		},
		{
			name:      "retries: 0 tries an inverse once",
			fails:     map[string]int{"unlock": 10},
			sequence:  "[{hook: db/lock}, snapshot, {hook: db/unlock}]",
			retries:   0,
			wantLog:   []string{"lock forward ok", "unlock forward fail", "unlock inverse fail"},
			wantTypes: []string{"compensation.failed"},
			wantOwed:  []string{"hook:db/unlock"},
		},
		{
			name:      "a restore workflow follows the same rule",
			fails:     map[string]int{"unlock": 1},
			sequence:  "[{hook: db/lock}, snapshot, {hook: db/unlock}]",
			kind:      runs.KindRestore,
			retries:   3,
			wantLog:   []string{"lock forward ok", "unlock forward fail", "unlock inverse ok"},
			wantTypes: []string{"hook.completed", "compensation.completed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.fails, tt.sequence, "fail", tt.retries)
			id, failure, _ := f.drive(tt.kind)
			if failure == nil {
				t.Fatal("the run did not fail")
			}
			out, err := f.s.handleFailure(context.Background(), *failure)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.log(); !slices.Equal(got, tt.wantLog) {
				t.Errorf("ops ran\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.wantLog, "\n"))
			}
			if got := types(out); !slices.Equal(got, tt.wantTypes) {
				t.Errorf("events %v, want %v", got, tt.wantTypes)
			}
			r := f.run(id)
			var owed []string
			for _, c := range r.Owed() {
				owed = append(owed, c.Step)
			}
			if !slices.Equal(owed, tt.wantOwed) || !r.CompensationDone {
				t.Errorf("owed %v (done %v), want %v", owed, r.CompensationDone, tt.wantOwed)
			}
			for _, cf := range compensationFailed(t, out) {
				// The failed forward unlock was the debt's first attempt.
				if cf.Op != "db/unlock" || cf.Undoes != "db/lock" || cf.Attempts != tt.retries+2 || cf.NextRetry == nil ||
					!strings.Contains(cf.Error, "unlock failed (try") {
					t.Errorf("compensation.failed %+v", cf)
				}
			}
			// A redelivery of the failure runs nothing more.
			before := len(f.log())
			if _, err := f.s.handleFailure(context.Background(), *failure); err != nil {
				t.Fatal(err)
			}
			if n := len(f.log()); n != before {
				t.Errorf("the redelivery ran %d more ops", n-before)
			}
		})
	}
}

// TestOwedInverseIsRetriedByTheLoopOnce: an inverse op still failing after
// its retries is retried by the owed-inverse loop when its retry is due,
// by exactly one of two replicas passing at once; once it completes the
// run gets its one compensation.completed and leaves the owing index.
func TestOwedInverseIsRetriedByTheLoopOnce(t *testing.T) {
	f := newFixture(t, map[string]int{"unlock": 4}, "[{hook: db/lock}, snapshot, {hook: db/unlock}]", "fail", 1)
	ctx := context.Background()
	id, failure, _ := f.drive(runs.KindBackup)
	if _, err := f.s.handleFailure(ctx, *failure); err != nil {
		t.Fatal(err)
	}
	owing, err := f.d.Runs.Owing(ctx)
	if err != nil || len(owing) != 1 || owing[0].ID != id {
		t.Fatalf("owing %v %v", owing, err)
	}
	replicas := []*Service{f.s, f.service()}
	pass := func() {
		var wg sync.WaitGroup
		for _, s := range replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.RetryOwed(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	pass() // not due yet
	if n := len(f.log()); n != 4 {
		t.Fatalf("a retry ran before it was due: %v", f.log())
	}
	f.offset.Store(int64(2 * time.Minute))
	pass() // due: one replica runs it, it fails a third time
	c := f.run(id).Owed()
	if n := len(f.log()); n != 5 || len(c) != 1 || c[0].Attempts != 4 {
		t.Fatalf("after one due pass: log %v, owed %+v", f.log(), c)
	}
	f.offset.Store(int64(4 * time.Minute))
	pass() // it completes
	r := f.run(id)
	if got := f.log(); !slices.Equal(got[4:], []string{"unlock inverse fail", "unlock inverse ok"}) || len(r.Owed()) != 0 {
		t.Fatalf("log %v, owed %+v", got, r.Owed())
	}
	completed := 0
	for _, e := range runEvents(t, f.b, id) {
		if e.Type() == events.CompensationCompleted {
			completed++
		}
	}
	if completed != 1 {
		t.Errorf("%d compensation.completed, want 1", completed)
	}
	pass()
	if owing, err := f.d.Runs.Owing(ctx); err != nil || len(owing) != 0 {
		t.Errorf("still indexed as owing: %v %v", owing, err)
	}
}

// TestOwedInversePastItsDeadline: the loop stops retrying at the hook's
// compensationDeadline; the debt stays owed and the last
// compensation.failed has no nextRetry.
func TestOwedInversePastItsDeadline(t *testing.T) {
	f := newFixture(t, map[string]int{"unlock": 100}, "[{hook: db/lock}, snapshot, {hook: db/unlock}]", "fail", 0)
	f.s.RetryEvery = 25 * time.Minute // deadline 1h: retries at +25m and +50m, then none
	ctx := context.Background()
	id, failure, _ := f.drive(runs.KindBackup)
	if _, err := f.s.handleFailure(ctx, *failure); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		f.offset.Store(int64(time.Duration(i) * 13 * time.Minute))
		if err := f.s.RetryOwed(ctx); err != nil {
			t.Fatal(err)
		}
	}
	owed := f.run(id).Owed()
	if len(owed) != 1 || owed[0].Attempts != 4 || !owed[0].GaveUp || !owed[0].RetryAt.IsZero() {
		t.Fatalf("owed %+v, want 4 attempts (forward, compensation, +25m, +50m) and no retry after", owed)
	}
	var last *events.CompensationFailedData
	for _, e := range runEvents(t, f.b, id) {
		if e.Type() == events.CompensationFailed {
			var d events.CompensationFailedData
			_ = e.DataAs(&d)
			last = &d
		}
	}
	if last == nil || last.NextRetry != nil || last.Attempts != 4 {
		t.Errorf("last compensation.failed %+v", last)
	}
}

// TestContinuedFailingUnlockIsOwedByASucceededRun: an unlock with onError
// continue that fails lets the run go on, but the lock is still owed: the
// loop retries it after the run succeeded.
func TestContinuedFailingUnlockIsOwedByASucceededRun(t *testing.T) {
	f := newFixture(t, map[string]int{"unlock": 1}, "[{hook: db/lock}, snapshot, {hook: db/unlock}]", "continue", 3)
	ctx := context.Background()
	id, failure, _ := f.drive(runs.KindBackup)
	if failure != nil {
		t.Fatal("the run failed")
	}
	if _, err := f.d.Runs.Update(ctx, id, func(r *runs.Run) error { r.Phase = runs.Succeeded; return nil }); err != nil {
		t.Fatal(err)
	}
	if owed := f.run(id).Owed(); len(owed) != 1 || owed[0].Step != "hook:db/unlock" {
		t.Fatalf("owed %+v", owed)
	}
	if err := f.s.RetryOwed(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); !slices.Equal(got, []string{"lock forward ok", "unlock forward fail", "unlock inverse ok"}) {
		t.Errorf("ops ran %v", got)
	}
	if owed := f.run(id).Owed(); len(owed) != 0 {
		t.Errorf("still owed %+v", owed)
	}
}

// TestInterruptedInverseRunsAgain: compensation stopped mid-inverse (its
// process shutting down) leaves the entry Running; the redelivery runs the
// inverse again — the at-least-once window of inverse ops.
func TestInterruptedInverseRunsAgain(t *testing.T) {
	f := newFixture(t, nil, "[{hook: db/lock}, snapshot]", "fail", 3)
	ctx := context.Background()
	// The plan's unlock blocks until a file appears: the test stops it.
	// A run keeps the plan revision it started with: the slow unlock is
	// applied before the run starts.
	slow := *f.p
	slow.Spec.Hooks = slices.Clone(f.p.Spec.Hooks)
	slow.Spec.Hooks[0].Ops = slices.Clone(f.p.Spec.Hooks[0].Ops)
	slow.Spec.Hooks[0].Ops[1].Command = plan.Command{"sh", "-c", "echo 'unlock inverse started' >> \"$DIR/ops.log\"; " +
		"while [ ! -f \"$DIR/go\" ]; do sleep 0.05; done; echo 'unlock inverse ok' >> \"$DIR/ops.log\""}
	if _, err := f.d.Plans.Put(ctx, &slow); err != nil {
		t.Fatal(err)
	}
	id, _, _ := f.drive(runs.KindBackup)
	start, _ := events.New(f.b.Meta("owed", id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	failed := []events.Event{f.fail(id, "snapshot", "boom", start)}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		for !slices.Contains(f.log(), "unlock inverse started") {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	if _, err := f.s.handleFailure(cctx, failed[0]); err == nil {
		t.Fatal("an interrupted compensation returned no error")
	}
	if c := f.run(id).FindCompensation("hook:db/unlock"); c == nil || c.Phase != runs.Running {
		t.Fatalf("entry %+v, want Running", c)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := f.s.handleFailure(ctx, failed[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := f.log(); !slices.Equal(got, []string{"lock forward ok", "unlock inverse started", "unlock inverse started", "unlock inverse ok"}) {
		t.Errorf("ops ran %v", got)
	}
	if got := types(out); !slices.Equal(got, []string{"hook.completed", "compensation.completed"}) {
		t.Errorf("events %v", got)
	}
}

func runEvents(t *testing.T, b *bus.Bus, runID string) []events.Event {
	t.Helper()
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if ev, err := bus.Decode(m.Data); err == nil && events.RunID(ev) == runID {
			out = append(out, ev)
		}
	}
	return out
}

// TestOwedRetryOfADeadReplicaIsTakenOverAfterItsLease: a replica that died
// while the loop ran an owed inverse left the entry Running; another
// replica takes it over once the lease has run out, not before.
func TestOwedRetryOfADeadReplicaIsTakenOverAfterItsLease(t *testing.T) {
	f := newFixture(t, map[string]int{"unlock": 2}, "[{hook: db/lock}, snapshot, {hook: db/unlock}]", "fail", 0)
	ctx := context.Background()
	id, failure, _ := f.drive(runs.KindBackup)
	if _, err := f.s.handleFailure(ctx, *failure); err != nil {
		t.Fatal(err)
	}
	// The dead replica's claim, as claimOwed leaves it.
	lease := time.Now().Add(time.Minute)
	if _, err := f.d.Runs.Update(ctx, id, func(r *runs.Run) error {
		c := r.FindCompensation("hook:db/unlock")
		c.Phase, c.Owner, c.Lease = runs.Running, "dead#0", lease
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	other := f.service()
	if err := other.RetryOwed(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(f.log()); n != 3 {
		t.Fatalf("retried within the dead replica's lease: %v", f.log())
	}
	f.offset.Store(int64(2 * time.Minute))
	if err := other.RetryOwed(ctx); err != nil {
		t.Fatal(err)
	}
	c := f.run(id).FindCompensation("hook:db/unlock")
	if got := f.log(); got[len(got)-1] != "unlock inverse ok" || c.Phase != runs.Succeeded || c.Owner == "dead#0" {
		t.Errorf("log %v, entry %+v", got, c)
	}
}

// TestAFailureOfAnEarlierAttemptUndoesNothingOfTheReplay: the lock ran,
// the dump failed. A replay waits until compensation has gone over the
// failed attempt (it would run the lock again under a lock still held and
// lose the debt); then attempt 2 locks and dumps, and attempt 1's
// backup.failed delivered again meanwhile unlocks nothing under it — the
// delivery is of an earlier attempt (acked, nothing changed), and the run
// machine refuses the pass of a delivery that read the run just before
// the replay.
func TestAFailureOfAnEarlierAttemptUndoesNothingOfTheReplay(t *testing.T) {
	f := newFixture(t, nil, "[{hook: db/lock}, snapshot, {hook: db/unlock}]", "fail", 0)
	ctx := context.Background()
	id := events.NewID()
	// lock, then the dump starts and fails.
	attempt := func() {
		start, err := f.d.Emit(ctx, "owed", id, "", events.BackupRequestedData{Trigger: events.TriggerCLI})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.handleStep(ctx, start); err != nil {
			t.Fatal(err)
		}
		if _, c, err := f.d.Claim(ctx, id, "snapshot", time.Minute); err != nil || !c.Start {
			t.Fatalf("claim the snapshot: %+v %v", c, err)
		}
	}
	attempt()
	cause, _ := events.New(f.b.Meta("owed", id, "snapshot"), events.SnapshotFailedData{Source: "files", Error: "dump failed"})
	failure := f.fail(id, "snapshot", "dump failed", cause)
	read := f.run(id) // the run as a delivery of the failure reads it

	replay := func() error {
		_, _, err := f.d.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: id, Step: runs.ReplayStart, Owner: "cli:test"})
		return err
	}
	if err := replay(); !errors.Is(err, runs.ErrNotReplayable) || !strings.Contains(err.Error(), "compensation has not yet gone over") {
		t.Fatalf("replay before compensation: %v, want refused until compensation went over the lock", err)
	}
	if _, err := f.s.handleFailure(ctx, failure); err != nil {
		t.Fatal(err)
	}
	if err := replay(); err != nil {
		t.Fatalf("replay after compensation: %v", err)
	}
	attempt()
	want := []string{"lock forward ok", "unlock inverse ok", "lock forward ok"}
	if got := f.log(); !slices.Equal(got, want) {
		t.Fatalf("ops ran %v, want %v", got, want)
	}

	out, err := f.s.handleFailure(ctx, failure)
	if !errors.Is(err, runs.ErrStale) || len(out) != 0 {
		t.Errorf("attempt 1's failure delivered again: %v %v, want nothing done (runs.ErrStale)", types(out), err)
	}
	compensation := f.s.Consumers()[1]
	if out, err := compensation.Handler(ctx, failure); err != nil || len(out) != 0 {
		t.Errorf("the compensate consumer on attempt 1's failure: %v %v, want it acked with nothing done", types(out), err)
	}
	if _, err := f.s.compensate(stage.WithAttempt(ctx, id, 1), read); !errors.Is(err, runs.ErrStale) {
		t.Errorf("a pass of attempt 1 over the run read before the replay: %v, want runs.ErrStale", err)
	}
	if _, err := f.s.compensate(ctx, read); !errors.Is(err, runs.ErrNotFailed) {
		t.Errorf("a pass of no attempt over the run read before the replay: %v, want runs.ErrNotFailed", err)
	}
	if got := f.log(); !slices.Equal(got, want) {
		t.Errorf("ops ran %v, want %v: an unlock under attempt 2's dump", got, want)
	}
	r := f.run(id)
	if r.Phase != runs.Running || r.CurrentAttempt() != 2 || r.CompensationDone || len(r.Compensation) != 0 || phaseOf(r, "snapshot") != runs.Running {
		t.Errorf("run %s attempt %d, compensation done %v %+v, snapshot %s: want attempt 2 running untouched",
			r.Phase, r.CurrentAttempt(), r.CompensationDone, r.Compensation, phaseOf(r, "snapshot"))
	}
}

func phaseOf(r *runs.Run, step string) runs.Phase {
	if st := r.FindStep(step); st != nil {
		return st.Phase
	}
	return ""
}
