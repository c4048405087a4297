package control_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }

type fixture struct {
	b     *bus.Bus
	d     *stage.Deps
	ctl   *control.Service
	clock *clock
}

// start runs a control service on an embedded server, with a plan "db"
// (runTimeout 1h, one filesystem destination, verify on), and stage deps
// that ask it over NATS as the stages do.
func start(t *testing.T) *fixture {
	t.Helper()
	_, b := bustest.Start(t)
	reg := plugins.Default()
	c := &clock{now: time.Now().UTC().Truncate(time.Second)}
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "replica-a", Now: c.Now, Owner: runs.Remote{NC: b.NC}}
	p, err := plan.Parse("db.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: db}
spec:
  source: {type: files, files: {path: /etc/hostname}}
  runTimeout: 1h
  hooks:
    - name: db
      type: exec
      ops:
        - {name: lock, command: [sh, -c, "true"], inverseOp: unlock}
        - {name: unlock, command: [sh, -c, "true"]}
  workflows:
    - {name: backup, sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, filepath.Join(t.TempDir(), "backups"))))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Plans.Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	ctl := control.New(d)
	ctl.Tick = time.Hour // the tests call FailOverdue themselves
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	// Run subscribes in its own goroutine: wait until it answers (any
	// answer, here "run not found"), as a stage would by retrying.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, _, err := runs.Remote{NC: b.NC, Timeout: time.Second}.Ask(context.Background(), "verify",
			runs.Request{Op: runs.OpSettle, Run: events.NewID()})
		if !errors.Is(err, nats.ErrNoResponders) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the control service never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &fixture{b: b, d: d, ctl: ctl, clock: c}
}

// request is a backup.requested of plan db.
func (f *fixture) request(t *testing.T) events.Event {
	t.Helper()
	m := f.b.Meta("db", events.NewID(), "")
	m.Time = f.clock.Now()
	e, err := events.New(m, events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// storedTypes lists the types of the events stored for runID.
func storedTypes(t *testing.T, b *bus.Bus, runID string) []string {
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
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if e, err := bus.Decode(m.Data); err == nil && events.RunID(e) == runID {
			out = append(out, strings.TrimPrefix(e.Type(), events.TypePrefix))
		}
	}
	return out
}

// TestARunKeepsItsPlanRevisionAndDeadline: the owner records the plan
// revision current when the run was created and the deadline of the
// plan's runTimeout; PlanOf reads that revision after the plan changed.
func TestARunKeepsItsPlanRevisionAndDeadline(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	e := f.request(t)
	r, err := f.d.EnsureRun(ctx, "hook", e)
	if err != nil {
		t.Fatal(err)
	}
	if r.PlanRevision == 0 || !r.Deadline.Equal(e.Time().Add(time.Hour)) {
		t.Fatalf("run revision %d deadline %s, want a revision and %s", r.PlanRevision, r.Deadline, e.Time().Add(time.Hour))
	}
	changed, err := f.d.Plans.Get(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	changed.Spec.Destinations = append(changed.Spec.Destinations, changed.Spec.Destinations[0])
	changed.Spec.Destinations[1].Name = "second"
	if _, err := f.d.Plans.Put(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if err := f.d.Plans.Delete(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	p, err := f.d.PlanOf(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Spec.Destinations) != 1 {
		t.Fatalf("the run reads %d destinations, want the 1 of its revision", len(p.Spec.Destinations))
	}
}

// TestOnlyTheOwnerSettlesAndStagesAskForTheirOwnSteps drives a run
// through the transport as the stages would, and checks that the owner,
// not a stage, declares it succeeded, once, after the last piece.
func TestOnlyTheOwnerSettlesAndStagesAskForTheirOwnSteps(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	r, err := f.d.EnsureRun(ctx, "hook", f.request(t))
	if err != nil {
		t.Fatal(err)
	}
	id := r.ID
	step := func(name string, res *runs.Result) {
		t.Helper()
		if _, c, err := f.d.Claim(ctx, id, name, time.Minute); err != nil || !c.Start {
			t.Fatalf("claim %s: %+v %v", name, c, err)
		}
		if _, err := f.d.FinishStep(ctx, id, name, runs.Succeeded, 1, "", res); err != nil {
			t.Fatalf("finish %s: %v", name, err)
		}
		if stageName := runs.StageOf(name); stageName != "snapshot" && stageName != "filter" {
			if _, err := f.d.Settle(ctx, stageName, id); err != nil {
				t.Fatalf("settle after %s: %v", name, err)
			}
		}
	}
	step("hook:db/lock", nil)
	step("snapshot", &runs.Result{Bytes: 10, SHA256: strings.Repeat("ab", 32), Chunks: 1})
	step("filter", nil)
	step("upload:local", &runs.Result{Dest: "local", Destination: &runs.Destination{Phase: runs.Succeeded, Key: "k", ManifestKey: "m", Size: 5, SHA256: strings.Repeat("cd", 32)}})
	step("hook:db/unlock", nil)
	if r, _ := f.d.Runs.Get(ctx, id); r.Phase != runs.Running {
		t.Fatalf("before verify the run is %s, want Running (the plan verifies)", r.Phase)
	}

	// A stage may not ask for another stage's step or expire a run; only
	// the stages that finish a run's last pieces ask to settle it.
	refused := []struct {
		stage string
		req   runs.Request
	}{
		{"filter", runs.Request{Op: runs.OpFinish, Run: id, Step: "verify:local", Phase: runs.Succeeded,
			Result: &runs.Result{Dest: "local", Destination: &runs.Destination{Verified: true}}}},
		{"upload", runs.Request{Op: runs.OpFinish, Run: id, Step: "upload:local", Phase: runs.Succeeded,
			Result: &runs.Result{Dest: "other", Destination: &runs.Destination{Phase: runs.Succeeded}}}},
		{"filter", runs.Request{Op: runs.OpSettle, Run: id}},
		{"verify", runs.Request{Op: runs.OpExpire, Run: id}},
		{"filter", runs.Request{Op: runs.OpInverseClaim, Run: id, Step: "hook:db/unlock"}},
		{"filter", runs.Request{Op: runs.OpCreate, Run: id, Seed: &runs.Run{ID: id, Plan: "db", Kind: runs.KindBackup}}},
		{"metrics", runs.Request{Op: runs.OpClaim, Run: id, Step: "verify:local"}},
	}
	for _, tt := range refused {
		if _, _, err := f.d.Ask(ctx, tt.stage, tt.req); !errors.Is(err, runs.ErrRefused) || !bus.IsPermanent(err) {
			t.Errorf("%s asking %s %s: %v, want a permanent ErrRefused", tt.stage, tt.req.Op, tt.req.Step, err)
		}
	}
	if r, _ := f.d.Runs.Get(ctx, id); r.Phase != runs.Running || r.Destinations["local"].Verified {
		t.Fatalf("after refused requests the run is %s, verified %v", r.Phase, r.Destinations["local"].Verified)
	}

	step("verify:local", &runs.Result{Dest: "local", Destination: &runs.Destination{Verified: true, VerifyMode: "ciphertext"}})
	r, err = f.d.Runs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != runs.Succeeded || r.BackupID != id || !r.Announced[runs.AnnouncedSucceeded] || r.StoredBytes != 5 {
		t.Fatalf("run %s backup %q announced %v stored %d, want Succeeded and announced", r.Phase, r.BackupID, r.Announced, r.StoredBytes)
	}
	// A redelivered finish and settle change nothing and announce nothing new.
	if _, err := f.d.FinishStep(ctx, id, "verify:local", runs.Succeeded, 1, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.Settle(ctx, "verify", id); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(storedTypes(t, f.b, id), ","); got != "backup.succeeded" {
		t.Errorf("events the owner published: %s, want backup.succeeded once", got)
	}
}

// TestFailIsAnnouncedOnceAndAgainForItsCause: the first failure wins and
// is announced; a redelivery of its cause announces it again (same id),
// a later failure of another stage does not.
func TestFailIsAnnouncedOnceAndAgainForItsCause(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	req := f.request(t)
	r, err := f.d.EnsureRun(ctx, "snapshot", req)
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"snapshot", "snapshot", "upload"} {
		if _, err := f.d.FailRun(ctx, "db", r.ID, who, who, who+" broke", req); err != nil {
			t.Fatal(err)
		}
	}
	r, _ = f.d.Runs.Get(ctx, r.ID)
	if r.Phase != runs.Failed || r.FailedStage != "snapshot" || r.Error != "snapshot broke" {
		t.Fatalf("run %s failed in %q: %q, want the first failure", r.Phase, r.FailedStage, r.Error)
	}
	if got := strings.Join(storedTypes(t, f.b, r.ID), ","); got != "backup.failed" {
		t.Errorf("events: %s, want one backup.failed (the repeat deduplicated)", got)
	}
}

// TestFailOverdue: a step Running past its deadline fails its run (a
// step without one never does), and a run past its runTimeout fails with
// that reason; each gets step.failed and backup.failed.
func TestFailOverdue(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	t0 := f.clock.Now()
	stuck, err := f.d.EnsureRun(ctx, "hook", f.request(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, c, err := f.d.Claim(ctx, stuck.ID, "hook:db/lock", time.Minute); err != nil || !c.Start {
		t.Fatalf("claim: %+v %v", c, err)
	}
	open, err := f.d.EnsureRun(ctx, "hook", f.request(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.d.Claim(ctx, open.ID, "snapshot", 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		now       time.Time
		wantRuns  []string
		wantStuck runs.Phase
		wantOpen  runs.Phase
	}{
		{"before the step's deadline nothing fails", t0.Add(59 * time.Second), nil, runs.Running, runs.Running},
		{"past the step's deadline its run fails", t0.Add(61 * time.Second), []string{stuck.ID}, runs.Failed, runs.Running},
		{"a step without a deadline runs until the run's", t0.Add(59 * time.Minute), nil, runs.Failed, runs.Running},
		{"past runTimeout the run fails", t0.Add(61 * time.Minute), []string{open.ID}, runs.Failed, runs.Failed},
		{"a repeat finds nothing more", t0.Add(2 * time.Hour), nil, runs.Failed, runs.Failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.clock.Set(tt.now)
			got, err := f.ctl.FailOverdue(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantRuns, ",") {
				t.Fatalf("failed runs %v, want %v", got, tt.wantRuns)
			}
			if r, _ := f.d.Runs.Get(ctx, stuck.ID); r.Phase != tt.wantStuck {
				t.Errorf("stuck run %s, want %s", r.Phase, tt.wantStuck)
			}
			if r, _ := f.d.Runs.Get(ctx, open.ID); r.Phase != tt.wantOpen {
				t.Errorf("open run %s, want %s", r.Phase, tt.wantOpen)
			}
		})
	}
	r, _ := f.d.Runs.Get(ctx, stuck.ID)
	if st := r.FindStep("hook:db/lock"); st.Phase != runs.Failed || !strings.Contains(st.Error, "replica-a") || r.FailedStage != "hook" {
		t.Errorf("stuck step %+v, run failed in %q: %q", st, r.FailedStage, r.Error)
	}
	o, _ := f.d.Runs.Get(ctx, open.ID)
	if !strings.Contains(o.Error, "spec.runTimeout") || o.FindStep("snapshot").Phase != runs.Failed {
		t.Errorf("timed-out run: %q, snapshot %s", o.Error, o.FindStep("snapshot").Phase)
	}
	for _, id := range []string{stuck.ID, open.ID} {
		if got := strings.Join(storedTypes(t, f.b, id), ","); got != "step.failed,backup.failed" {
			t.Errorf("events of %s: %s, want step.failed,backup.failed", id, got)
		}
	}
}

// TestAStageWithoutAnOwnerRetries: with no control service running, a
// stage's request fails with an error that says so and is retried (not
// permanent).
func TestAStageWithoutAnOwnerRetries(t *testing.T) {
	_, b := bustest.Start(t)
	_, _, err := runs.Remote{NC: b.NC, Timeout: time.Second}.Ask(context.Background(), "filter",
		runs.Request{Op: runs.OpClaim, Run: events.NewID(), Step: "filter"})
	if err == nil || bus.IsPermanent(err) || !strings.Contains(err.Error(), "no control service") {
		t.Fatalf("ask without an owner: %v, want a transient error naming the control service", err)
	}
}
