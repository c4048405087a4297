// Package plantrust_test shows that a plan is trusted only after validation
// and that serve --allow-exec=false runs no command a plan names: what
// someone with write access to the plans bucket tried from outside (a raw
// KV put of a command plan, then one backup.requested) now runs nothing.
package plantrust_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/app"
)

// commandPlan is the JSON a stock client puts into the plans bucket: a
// command source and an exec hook that each write marker, run before the
// snapshot. extra is spliced into the spec (an unknown field makes it
// invalid).
func commandPlan(name, marker, backups, extra string) []byte {
	return []byte(fmt.Sprintf(`{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":%[1]q},"spec":{%[4]s
"source":{"type":"command","command":{"argv":["sh","-c","id > %[2]s.source"]}},
"hooks":[{"name":"pre","type":"exec","ops":[{"name":"mark","command":["sh","-c","id > %[2]s.hook"]}]}],
"workflows":[{"name":"backup","sequence":["snapshot","hook:pre/mark"]}],
"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":%[3]q}}]}}`, name, marker, backups, extra))
}

// request publishes backup.requested for planName as any client allowed to
// trigger would, and returns the run id.
func request(t *testing.T, env *harness.Env, planName, runID string) {
	t.Helper()
	e, err := events.New(env.Bus.Meta(planName, runID, ""), events.BackupRequestedData{Trigger: events.TriggerCLI, RequestedBy: "outsider"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Bus.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
}

// deadReasons waits until every consumer in want dead-lettered an event of
// runID and returns their reasons by consumer.
func deadReasons(t *testing.T, b *bus.Bus, runID string, want ...string) map[string]string {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := map[string]string{}
		s, err := b.JS.Stream(ctx, bus.DeadLetterStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			if e, err := bus.Decode(m.Data); err == nil && events.RunID(e) == runID {
				got[strings.TrimPrefix(m.Subject, events.DeadLetterRoot+".")] = m.Header.Get(bus.HeaderDeadReason)
			}
		}
		missing := ""
		for _, w := range want {
			if _, ok := got[w]; !ok {
				missing = w
			}
		}
		if missing == "" {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s never dead-lettered run %s (have %v)", missing, runID, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func noMarkers(t *testing.T, marker string) {
	t.Helper()
	for _, f := range []string{marker + ".source", marker + ".hook"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (err %v): the plan ran a command", f, err)
		}
	}
}

func TestARawInvalidPlanIsDeadLetteredAndNothingRuns(t *testing.T) {
	env := harness.Start(t, harness.Options{Services: []string{"snapshot", "hook"}})
	ctx := context.Background()
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	// A plan apply would refuse both: an unknown field, and an empty argv.
	if _, err := env.Bus.Plans.Put(ctx, "evil", commandPlan("evil", marker, dir, `"runAs":"root",`)); err != nil {
		t.Fatal(err)
	}
	noArgv := strings.Replace(string(commandPlan("noargv", marker, dir, "")), `"argv":["sh","-c","id > `+marker+`.source"]`, `"argv":[]`, 1)
	if _, err := env.Bus.Plans.Put(ctx, "noargv", []byte(noArgv)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		plan    string
		problem string
		// existing makes the run's record exist before the event comes, as
		// when a plan is overwritten in the middle of a run.
		existing bool
	}{
		{"unknown field", "evil", `unknown field "runAs"`, false},
		{"empty argv", "noargv", "spec.source.command: argv: required", false},
		{"a run that exists fails", "evil", `unknown field "runAs"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runID := events.NewID()
			if tt.existing {
				if _, err := env.Runs.Ensure(ctx, runs.Run{ID: runID, Plan: tt.plan, Kind: runs.KindBackup}); err != nil {
					t.Fatal(err)
				}
			}
			request(t, env, tt.plan, runID)
			reasons := deadReasons(t, env.Bus, runID, "snapshot", "hook")
			for consumer, reason := range reasons {
				for _, want := range []string{"plan " + tt.plan, tt.problem, "not written by `backstream plan apply`?"} {
					if !strings.Contains(reason, want) {
						t.Errorf("%s's dead letter reason lacks %q: %s", consumer, want, reason)
					}
				}
			}
			r, err := env.Runs.Get(ctx, runID)
			switch {
			case !tt.existing && !errors.Is(err, runs.ErrNotFound):
				t.Errorf("a run record was made: %+v %v", r, err)
			case tt.existing:
				r = harness.WaitRun(t, env.Runs, runID, 15*time.Second)
				if r.Phase != runs.Failed || !strings.Contains(r.Error, tt.problem) || !strings.Contains(r.Error, "plan "+tt.plan) {
					t.Errorf("run %s: %s", r.Phase, r.Error)
				}
			}
			noMarkers(t, marker)
		})
	}
}

func TestAllowExecFalseRefusesCommandsAtUse(t *testing.T) {
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.RefuseExec = true }})
	ctx := context.Background()
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	// Valid plans, put raw: validation alone would trust them.
	if _, err := env.Bus.Plans.Put(ctx, "cmd", commandPlan("cmd", marker, dir, "")); err != nil {
		t.Fatal(err)
	}
	hookOnly := fmt.Sprintf(`{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":"hooked"},"spec":{
"source":{"type":"files","files":{"path":%[2]q}},
"hooks":[{"name":"pre","type":"exec","ops":[{"name":"mark","command":["sh","-c","id > %[1]s.hook"],"inverseOp":"undo"},{"name":"undo","command":["sh","-c","id > %[1]s.hook"]}]}],
"workflows":[{"name":"backup","sequence":["hook:pre/mark","snapshot"]}],
"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":%[2]q}}]}}`, marker, dir)
	if _, err := env.Bus.Plans.Put(ctx, "hooked", []byte(hookOnly)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		plan, stage, reason string
	}{
		{"cmd", "snapshot", "exec refused: this serve runs with --allow-exec=false: spec.source.command.argv, spec.hooks[0] (exec hook pre)"},
		{"hooked", "hook", "exec refused: this serve runs with --allow-exec=false: spec.hooks[0] (exec hook pre)"},
	}
	for _, tt := range tests {
		t.Run(tt.plan, func(t *testing.T) {
			runID := events.NewID()
			request(t, env, tt.plan, runID)
			r := env.Wait(runID, 20*time.Second)
			if r.Phase != runs.Failed || r.FailedStage != tt.stage || r.Error != tt.reason {
				t.Fatalf("run %s in %s: %q", r.Phase, r.FailedStage, r.Error)
			}
			for _, st := range r.Steps {
				if !st.Started.IsZero() {
					t.Errorf("step %s started", st.Name)
				}
			}
			noMarkers(t, marker)
		})
	}

	t.Run("restore", func(t *testing.T) {
		runID := events.NewID()
		e, err := events.New(env.Bus.Meta("cmd", runID, ""), events.RestoreRequestedData{BackupID: "latest", Destination: "local", Target: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Bus.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		r := env.Wait(runID, 20*time.Second)
		if r.Phase != runs.Failed || r.FailedStage != "restore" || !strings.HasPrefix(r.Error, "exec refused: this serve runs with --allow-exec=false: spec.source.command.argv") {
			t.Fatalf("run %s in %s: %q", r.Phase, r.FailedStage, r.Error)
		}
		noMarkers(t, marker)
	})
}

func TestPlanListShowsAnInvalidPlanBesideTheOthers(t *testing.T) {
	env := harness.Start(t, harness.Options{Services: []string{"api"}})
	dir := t.TempDir()
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: good}
spec:
  source: {type: files, files: {path: %[1]s}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %[1]s}}]
`, dir))
	if _, err := env.Bus.Plans.Put(context.Background(), "evil", commandPlan("evil", filepath.Join(dir, "marker"), dir, `"runAs":"root",`)); err != nil {
		t.Fatal(err)
	}
	out, code := harness.Run(t, dir, nil, "plan", "list", "--nats", env.URL)
	if code != 1 {
		t.Errorf("exit %d, want 1 (a plan is invalid)", code)
	}
	for _, want := range []string{"good  ", "files", "evil  ", "INVALID", `plan evil (not written by ` + "`backstream plan apply`?" + `): decode plan json: json: unknown field "runAs"`, "1 stored plan(s) invalid"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan list output lacks %q:\n%s", want, out)
		}
	}

	// get says why; apply over it replaces it; delete removes it.
	if out, code := harness.Run(t, dir, nil, "plan", "get", "evil", "--nats", env.URL); code != 1 || !strings.Contains(out, `unknown field "runAs"`) {
		t.Errorf("plan get: exit %d:\n%s", code, out)
	}
	fixed := filepath.Join(dir, "evil.yaml")
	if err := os.WriteFile(fixed, []byte(fmt.Sprintf("apiVersion: backstream.io/v1alpha1\nkind: Plan\nmetadata: {name: evil}\nspec:\n  source: {type: files, files: {path: %[1]s}}\n  destinations: [{name: local, type: filesystem, filesystem: {path: %[1]s}}]\n", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", fixed, "--nats", env.URL); code != 0 || !strings.Contains(out, "plan evil applied") {
		t.Errorf("plan apply over it: exit %d:\n%s", code, out)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "list", "--nats", env.URL); code != 0 || strings.Contains(out, "INVALID") {
		t.Errorf("plan list after apply: exit %d:\n%s", code, out)
	}
	if _, err := env.Bus.Plans.Put(context.Background(), "evil", []byte("#!/bin/sh\nid")); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "delete", "evil", "--nats", env.URL); code != 0 || !strings.Contains(out, "plan evil deleted") {
		t.Errorf("plan delete: exit %d:\n%s", code, out)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "list", "--nats", env.URL); code != 0 || strings.Contains(out, "evil") {
		t.Errorf("plan list after delete: exit %d:\n%s", code, out)
	}
}
