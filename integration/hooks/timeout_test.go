package hooks

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

// gone reports whether pid no longer runs (a zombie no reaper collected
// counts as gone: it runs nothing).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(stat))
	return len(f) > 2 && f[2] == "Z"
}

// markerPlan runs [a/slow, snapshot] (or the given sequence): slow starts
// a child that would sleep 300 s, records its pid and waits for it; its
// inverse undo-slow and the other ops append their names to a log file.
func markerPlan(name, dir, onError, sequence string) string {
	log := filepath.Join(dir, "ops.log")
	rec := func(op string) string { return fmt.Sprintf(`["sh", "-c", "echo %s >> %s"]`, op, log) }
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: command
    command: {argv: ["head", "-c", "100000", "/dev/urandom"]}
  hooks:
    - name: a
      type: exec
      ops:
        - name: slow
          command: ["sh", "-c", "echo slow >> %[2]s; sleep 300 & echo $! > %[3]s; wait"]
          timeout: 1s
          onError: %[4]s
          inverseOp: undo-slow
        - {name: undo-slow, command: %[5]s}
        - {name: lock, command: %[6]s, inverseOp: unlock}
        - {name: unlock, command: %[7]s}
  workflows:
    - name: backup
      sequence: %[8]s
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[9]s}
`, name, log, filepath.Join(dir, "child.pid"), onError, rec("undo-slow"), rec("lock"), rec("unlock"), sequence, filepath.Join(dir, "backups"))
}

func opLog(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "ops.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// TestHookOutlivingItsTimeoutIsKilledWithItsChildren: the op's whole
// process group dies at the timeout, and onError decides: fail fails the
// run and compensates (the killed op may have taken effect, so its inverse
// runs), continue records hook.failed and the run succeeds.
func TestHookOutlivingItsTimeoutIsKilledWithItsChildren(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	tests := []struct {
		onError   string
		wantPhase runs.Phase
		wantOps   []string
	}{
		{"fail", runs.Failed, []string{"slow", "undo-slow"}},
		{"continue", runs.Succeeded, []string{"slow"}},
	}
	for _, tt := range tests {
		t.Run(tt.onError, func(t *testing.T) {
			dir := t.TempDir()
			name := "timeout-" + tt.onError
			env.Apply(markerPlan(name, dir, tt.onError, "[{hook: a/slow}, snapshot]"))
			begin := time.Now()
			id := env.Trigger(name)
			r := env.Wait(id, time.Minute)
			if r.Phase != tt.wantPhase {
				t.Fatalf("run %s: %s (%s), want %s", id, r.Phase, r.Error, tt.wantPhase)
			}
			pidText, err := os.ReadFile(filepath.Join(dir, "child.pid"))
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the op's child "+strconv.Itoa(pid)+" to be gone", 10*time.Second, func() bool { return gone(pid) })
			if got := opLog(t, dir); !slices.Equal(got, tt.wantOps) {
				t.Errorf("ops ran %v, want %v", got, tt.wantOps)
			}
			var failed *events.HookFailedData
			for _, e := range env.Events(id) {
				if p, err := events.Decode(e); err == nil {
					if d, ok := p.(*events.HookFailedData); ok {
						failed = d
					}
				}
			}
			if failed == nil || !failed.TimedOut || failed.OnError != tt.onError {
				t.Errorf("hook.failed: %+v, want timedOut with onError %s", failed, tt.onError)
			}
			t.Logf("run %s %s in %s", id, r.Phase, time.Since(begin).Round(time.Millisecond))
		})
	}
}

// TestAbandonedRunIsFailedAndCompensated: a run whose hook op is recorded
// Running past its deadline (its process died and nothing redelivered) is
// failed by the owner of run state (control.FailOverdue, which its loop
// calls), and the hook service compensates the ops it started.
func TestAbandonedRunIsFailedAndCompensated(t *testing.T) {
	env := harness.Start(t, harness.Options{Services: []string{"hook"}})
	dir := t.TempDir()
	env.Apply(markerPlan("abandoned", dir, "fail", "[{hook: a/lock}, {hook: a/slow}, snapshot]"))

	// The record a dead replica leaves: lock done, slow claimed an hour
	// ago with a two-minute deadline.
	past := time.Now().Add(-time.Hour)
	id := events.NewID()
	if _, err := env.Runs.Ensure(bg, runs.Run{ID: id, Plan: "abandoned", Kind: runs.KindBackup}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Runs.Update(bg, id, func(r *runs.Run) error {
		r.Phase = runs.Running
		lock := r.Step("hook:a/lock")
		lock.Phase, lock.Owner, lock.Started, lock.Finished = runs.Succeeded, "dead", past, past.Add(time.Second)
		slow := r.Step("hook:a/slow")
		slow.Phase, slow.Owner, slow.Started, slow.Deadline = runs.Running, "dead", past.Add(2*time.Second), past.Add(2*time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	owner := control.New(&stage.Deps{Bus: env.Bus, Runs: env.Runs, Plans: env.Plans, Log: env.Bus.Log, Instance: "watchdog", Now: time.Now})
	if _, err := owner.FailOverdue(bg); err != nil {
		t.Fatalf("FailOverdue: %v", err)
	}
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "abandoned") {
		t.Fatalf("run %s: %s (%s)", id, r.Phase, r.Error)
	}
	if got := opLog(t, dir); !slices.Equal(got, []string{"undo-slow", "unlock"}) {
		t.Errorf("compensation ran %v, want [undo-slow unlock] (newest first)", got)
	}
	if got := harness.Types(env.Events(id)); !slices.Contains(got, "step.failed") || !slices.Contains(got, "compensation.completed") {
		t.Errorf("events %v lack step.failed or compensation.completed", got)
	}
}
