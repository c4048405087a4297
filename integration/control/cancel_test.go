// Package control holds the end-to-end tests of what the owner of run state
// does for operators: cancelling runs (and, later, replaying them).
package control

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage/filesystem"
)

// slowPlan dumps about 40 MiB over 30 s (64 KiB every 50 ms), writing the
// iteration it is at into dir/tick; its hook a has lock (inverse unlock) and
// slow (3 s); each op appends its name to dir/ops.log.
func slowPlan(name, dir, sequence string) string { return slowPlanOf(name, dir, sequence, 600) }

// slowPlanOf is slowPlan with a dump of iters × 64 KiB, one every 50 ms.
func slowPlanOf(name, dir, sequence string, iters int) string {
	log := filepath.Join(dir, "ops.log")
	rec := func(op string) string { return fmt.Sprintf(`["sh", "-c", "echo %s >> %s"]`, op, log) }
	dump := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do head -c 65536 /dev/urandom; echo $i > %s; i=$((i+1)); sleep 0.05; done`, iters, filepath.Join(dir, "tick"))
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", %[2]q]}
  hooks:
    - name: a
      type: exec
      ops:
        - {name: lock, command: %[3]s, inverseOp: unlock}
        - {name: unlock, command: %[4]s}
        - {name: slow, command: ["sh", "-c", "echo slow >> %[5]s; sleep 3"]}
  workflows:
    - name: backup
      sequence: %[6]s
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[7]s}
`, name, dump, rec("lock"), rec("unlock"), log, sequence, filepath.Join(dir, "backups"))
}

func opLog(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "ops.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// waitStep waits until run id's step is Running.
func waitStep(t *testing.T, env *harness.Env, id, step string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := env.Runs.Get(context.Background(), id)
		if err == nil {
			if st := r.FindStep(step); st != nil && st.Phase == runs.Running {
				return
			}
			if r.Phase.Done() {
				t.Fatalf("run %s ended %s (%s) before %s ran", id, r.Phase, r.Error, step)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("step %s of run %s never ran", step, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCompensated waits until the cancelled run's compensation ended and
// compensation.completed is in the events stream.
func waitCompensated(t *testing.T, env *harness.Env, id string) *runs.Run {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := env.Runs.Get(context.Background(), id)
		if err == nil && r.CompensationDone && slices.Contains(harness.Types(env.Events(id)), "compensation.completed") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: compensation did not end: %+v %v", id, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noBackup checks that nothing in dir/backups passes for a backup of run id:
// no object, or one whose manifest says its run failed.
func noBackup(t *testing.T, dir, planName, id string) {
	t.Helper()
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: filepath.Join(dir, "backups")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if m, err := backup.Find(context.Background(), st, planName+"/"+id); err == nil {
		t.Errorf("run %s left a backup that passes for a good one: %+v", id, m.Verify)
	}
	if _, err := backup.Find(context.Background(), st, planName+"/latest"); err == nil {
		t.Errorf("latest found a backup of the cancelled run")
	}
}

// TestCancelDuringTheDump cancels a backup with `backstream cancel` while
// its dump streams: the run ends Cancelled, the dump is killed (its ticks
// stop), nothing that looks like a backup is left, and compensation
// releases the lock the run took.
func TestCancelDuringTheDump(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	env.Apply(slowPlan("dump", dir, "[{hook: a/lock}, snapshot, {hook: a/unlock}]"))
	id := env.Trigger("dump")
	waitStep(t, env, id, "snapshot")
	for {
		if _, err := os.Stat(filepath.Join(dir, "tick")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The dump, the filter and the upload all stream now.
	waitStep(t, env, id, "upload:local")
	out, code := harness.Run(t, dir, nil, "cancel", id, "--reason", "wrong window", "--wait", "1m", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "cancelled") || !strings.Contains(out, "compensation completed") {
		t.Fatalf("backstream cancel: exit %d\n%s", code, out)
	}
	r := waitCompensated(t, env, id)
	if r.Phase != runs.Cancelled || !strings.Contains(r.Error, "wrong window") {
		t.Fatalf("run %s: %s (%s), want Cancelled with the reason", id, r.Phase, r.Error)
	}
	tick := func() string { b, _ := os.ReadFile(filepath.Join(dir, "tick")); return string(b) }
	before := tick()
	time.Sleep(time.Second)
	if after := tick(); after != before {
		t.Errorf("the dump still runs after the cancel: tick %q -> %q", strings.TrimSpace(before), strings.TrimSpace(after))
	}
	if got := opLog(t, dir); !slices.Equal(got, []string{"lock", "unlock"}) {
		t.Errorf("ops ran %v, want [lock unlock] (the lock released by compensation)", got)
	}
	noBackup(t, dir, "dump", id)
	// The upload was aborted, not finished.
	waitFor(t, "the upload to stop", func() bool {
		r, _ := env.Runs.Get(context.Background(), id)
		st := r.FindStep("upload:local")
		return st != nil && st.Phase.Done()
	})
	r, _ = env.Runs.Get(context.Background(), id)
	// The dump and the upload stopped for the cancel: they end Cancelled
	// (the upload Skipped if the dump's end reached it first), and no
	// stage announces a failure of its own — an alert on snapshot.failed
	// or upload.failed must not fire on an operator's cancel.
	if st := r.FindStep("snapshot"); st.Phase != runs.Cancelled || !strings.Contains(st.Error, "wrong window") {
		t.Errorf("snapshot step %s (%s), want Cancelled with the operator's reason", st.Phase, st.Error)
	}
	if st := r.FindStep("upload:local"); !(st.Phase == runs.Cancelled && strings.Contains(st.Error, "wrong window") || st.Phase == runs.Skipped) {
		t.Errorf("upload step %s (%s), want Cancelled (or Skipped after the dump's end): stopped by the cancel", st.Phase, st.Error)
	}
	types := harness.Types(env.Events(id))
	if !slices.Contains(types, "backup.cancelled") || slices.Contains(types, "backup.succeeded") || slices.Contains(types, "backup.failed") {
		t.Errorf("events %v, want backup.cancelled and neither a success nor a failure", types)
	}
	for _, typ := range []string{"snapshot.failed", "filter.failed", "upload.failed"} {
		if slices.Contains(types, typ) {
			t.Errorf("events %v: %s for a cancelled run", types, typ)
		}
	}
	if d := r.Destinations["local"]; d != nil && d.Phase == runs.Succeeded {
		t.Errorf("the cancelled run's destination is recorded stored: %+v", d)
	}
	// A second cancel is refused: the run is over.
	if out, code := harness.Run(t, dir, nil, "cancel", id, "-o", "json", "--nats", env.URL); code != 1 || !strings.Contains(out, "Cancelled already") || !strings.Contains(out, `"phase": "Cancelled"`) {
		t.Errorf("second cancel -o json: exit %d, want 1 with the record as it stands\n%s", code, out)
	}
}

// TestCancelDuringAHook cancels a run while a hook op runs: the op ends,
// the steps after it never run, and compensation undoes the lock taken
// before it.
func TestCancelDuringAHook(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	env.Apply(slowPlan("hooked", dir, "[{hook: a/lock}, {hook: a/slow}, snapshot, {hook: a/unlock}]"))
	id := env.Trigger("hooked")
	waitStep(t, env, id, "hook:a/slow")
	r, _, err := runs.Remote{NC: env.Bus.NC}.Ask(context.Background(), "admin",
		runs.Request{Op: runs.OpCancel, Run: id, Owner: "test"})
	if err != nil || r.Phase != runs.Cancelled {
		t.Fatalf("cancel: %v %v", r, err)
	}
	r = waitCompensated(t, env, id)
	if got := opLog(t, dir); !slices.Equal(got, []string{"lock", "slow", "unlock"}) {
		t.Errorf("ops ran %v, want [lock slow unlock]", got)
	}
	if st := r.FindStep("snapshot"); st != nil && st.Phase != runs.Skipped {
		t.Errorf("the snapshot after the cancelled hook is %s, want never run", st.Phase)
	}
	if _, err := os.Stat(filepath.Join(dir, "tick")); err == nil {
		t.Error("the dump ran after the run was cancelled")
	}
	if got := harness.Types(env.Events(id)); !slices.Contains(got, events.BackupCancelled[len(events.TypePrefix):]) {
		t.Errorf("events %v lack backup.cancelled", got)
	}
	noBackup(t, dir, "hooked", id)
}

// TestStopFollowingLeavesTheRunAndFollowReattaches: Ctrl-C (here SIGTERM,
// handled the same) on `trigger --wait` stops following, not the run, and
// says how to follow or cancel it; `run ID --follow` re-attaches, prints
// the run's events from its start and exits 0 when it succeeds.
func TestStopFollowingLeavesTheRunAndFollowReattaches(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	env.Apply(slowPlanOf("tail", dir, "[snapshot]", 80))
	p := harness.StartProcess(t, dir, nil, "trigger", "tail", "--wait", "--nats", env.URL)
	p.WaitOutput("snapshot started", time.Minute)
	if code := p.Terminate(10 * time.Second); code != 130 {
		t.Fatalf("trigger --wait stopped with exit %d, want 130\n%s", code, p.Output())
	}
	out := p.Output()
	var id string
	if _, err := fmt.Sscanf(out[strings.Index(out, "run "):], "run %s of plan tail requested", &id); err != nil {
		t.Fatalf("no run id in:\n%s", out)
	}
	if !strings.Contains(out, "run "+id+" goes on") || !strings.Contains(out, "backstream run "+id+" --follow") ||
		!strings.Contains(out, "backstream cancel "+id) {
		t.Errorf("output does not say the run goes on and how to follow or cancel it:\n%s", out)
	}
	if r, err := env.Runs.Get(context.Background(), id); err != nil || r.Phase.Done() {
		t.Fatalf("the run stopped with its follower: %+v %v", r, err)
	}
	out, code := harness.Run(t, dir, nil, "run", id, "--follow", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "snapshot started") || !strings.Contains(out, "backup succeeded") {
		t.Fatalf("run --follow: exit %d\n%s", code, out)
	}
}

// TestAPlanChangedMidRunLeavesTheRunAlone: a destination added and the
// filters changed while a run dumps do not reach it: it keeps the plan
// revision it started with, writes only the destination it started with,
// and verify does not wait for a copy nobody writes.
func TestAPlanChangedMidRunLeavesTheRunAlone(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	yamlText := slowPlanOf("mid", dir, "[snapshot]", 60)
	env.Apply(yamlText)
	id := env.Trigger("mid")
	waitStep(t, env, id, "snapshot")
	env.Apply(yamlText + fmt.Sprintf(`    - name: second
      type: filesystem
      filesystem: {path: %s}
  filters: {compression: snappy}
`, filepath.Join(dir, "second")))
	r := env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("run %s (%s)", r.Phase, r.Error)
	}
	if len(r.Destinations) != 1 || r.Destinations["local"] == nil {
		t.Errorf("the run wrote %v, want only the destination it started with", r.Destinations)
	}
	if _, err := os.Stat(filepath.Join(dir, "second")); err == nil {
		t.Error("the destination added mid-run was written")
	}
	_, rev, err := env.Plans.GetCurrent(context.Background(), "mid")
	if err != nil || r.PlanRevision == 0 || r.PlanRevision == rev {
		t.Errorf("run revision %d, plan now at %d (%v): want the run to keep the older one", r.PlanRevision, rev, err)
	}
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: filepath.Join(dir, "backups")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := backup.Find(context.Background(), st, "mid/"+id)
	if err != nil || slices.Contains(m.Chain, "snappy") {
		t.Errorf("backup chain %v (%v): want the filters the run started with, not snappy", m.Chain, err)
	}
}

// TestCancelDuringARestore cancels a restore run while its target takes
// the stream (the restore command holds it): the restore stops, its step
// ends Cancelled saying the target may hold a partial restore, and the
// only news is restore.cancelled — no restore.failed.
func TestCancelDuringARestore(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	restoring := filepath.Join(dir, "restoring")
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: slowrestore}
spec:
  source:
    type: command
    command:
      argv: ["sh", "-c", "head -c 4000000 /dev/urandom"]
      restoreArgv: ["sh", "-c", "touch %s; sleep 120; cat > /dev/null"]
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %s}}
`, restoring, filepath.Join(dir, "backups")))
	if r := env.Wait(env.Trigger("slowrestore"), time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("backup %s (%s)", r.Phase, r.Error)
	}
	id := events.NewID()
	req, err := events.New(env.Bus.Meta("slowrestore", id, ""), events.RestoreRequestedData{BackupID: "latest", Destination: "local"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Bus.Publish(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restore command to start", func() bool {
		_, err := os.Stat(restoring)
		return err == nil
	})
	waitStep(t, env, id, events.StepRestore)
	if _, _, err := (runs.Remote{NC: env.Bus.NC}).Ask(context.Background(), "admin",
		runs.Request{Op: runs.OpCancel, Run: id, Owner: "test", Error: "wrong target"}); err != nil {
		t.Fatal(err)
	}
	var st *runs.Step
	waitFor(t, "the restore step to stop", func() bool {
		r, _ := env.Runs.Get(context.Background(), id)
		st = r.FindStep(events.StepRestore)
		return st != nil && st.Phase.Done()
	})
	if st.Phase != runs.Cancelled || !strings.Contains(st.Error, "wrong target") || !strings.Contains(st.Error, "partial restore") {
		t.Errorf("restore step %s (%s), want Cancelled naming the reason and the partial target", st.Phase, st.Error)
	}
	if r, _ := env.Runs.Get(context.Background(), id); r.Phase != runs.Cancelled {
		t.Errorf("run %s (%s), want Cancelled", r.Phase, r.Error)
	}
	types := harness.Types(env.Events(id))
	if !slices.Contains(types, "restore.cancelled") || slices.Contains(types, "restore.failed") || slices.Contains(types, "restore.completed") {
		t.Errorf("events %v, want restore.cancelled and no failure", types)
	}
}
