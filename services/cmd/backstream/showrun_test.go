package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/runs"
)

// TestShowRunSaysWhetherCompensationWentOverTheOps: a failed run whose
// hook op ran says, until compensation's pass ended, that a replay waits
// for it; after, that it ended.
func TestShowRunSaysWhetherCompensationWentOverTheOps(t *testing.T) {
	now := time.Now()
	r := &runs.Run{ID: "r1", Plan: "p", Kind: runs.KindBackup, Phase: runs.Failed, FailedStage: "snapshot", Error: "dump failed",
		Steps: []runs.Step{
			{Name: "hook:db/lock", Phase: runs.Succeeded, Started: now, Finished: now},
			{Name: "snapshot", Phase: runs.Failed, Started: now, Finished: now, Error: "dump failed"},
		}}
	show := func() string {
		var b bytes.Buffer
		if err := showRun(&b, r); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if out := show(); !strings.Contains(out, "compensation: has not gone over the hook ops of this attempt yet (a replay waits for it)") {
		t.Errorf("before compensation:\n%s", out)
	}
	r.CompensationDone = true
	r.Compensation = []runs.Compensation{{Step: "hook:db/unlock", Undoes: "hook:db/lock", Phase: runs.Succeeded, Started: now, Finished: now}}
	if out := show(); !strings.Contains(out, "compensation: ended, nothing owed") || strings.Contains(out, "has not gone over") {
		t.Errorf("after compensation:\n%s", out)
	}
	r.Phase = runs.Running // replayed: nothing to say about compensation
	if out := show(); strings.Contains(out, "compensation:") {
		t.Errorf("a running run:\n%s", out)
	}
}

// TestShowRunSaysWhichAttemptRanEachStep: a replayed run's steps say the
// attempt that ran them, so the reused ones read as an earlier attempt's.
func TestShowRunSaysWhichAttemptRanEachStep(t *testing.T) {
	now := time.Now()
	r := &runs.Run{ID: "r1", Plan: "p", Kind: runs.KindBackup, Phase: runs.Running, Attempt: 2,
		Attempts: []runs.Attempt{{Number: 1, Stage: runs.ReplayStart, Phase: runs.Failed}, {Number: 2, Stage: runs.ReplayVerify, Reused: []string{"snapshot"}}},
		Steps: []runs.Step{
			{Name: "snapshot", Phase: runs.Succeeded, Started: now, Finished: now, Attempt: 1},
			{Name: "verify:s3", Phase: runs.Running, Started: now, Attempt: 2},
			{Name: "hook:db/unlock", Phase: runs.Pending},
		}}
	var b bytes.Buffer
	if err := showRun(&b, r); err != nil {
		t.Fatal(err)
	}
	fields := map[string][]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			fields[f[0]] = f
		}
	}
	for step, want := range map[string]string{"STEP": "ATTEMPT", "snapshot": "1", "verify:s3": "2", "hook:db/unlock": "-"} {
		if f := fields[step]; len(f) < 3 || f[2] != want {
			t.Errorf("%s: %v, want attempt column %q in:\n%s", step, f, want, b.String())
		}
	}
}
