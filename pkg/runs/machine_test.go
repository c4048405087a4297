package runs_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/runs"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// rec builds a run record: phase, then steps as "name=Phase[@owner]".
func rec(phase runs.Phase, steps ...string) *runs.Run {
	r := &runs.Run{ID: "r", Plan: "p", Kind: runs.KindBackup, Phase: phase}
	for _, s := range steps {
		name, rest, _ := strings.Cut(s, "=")
		ph, owner, _ := strings.Cut(rest, "@")
		st := runs.Step{Name: name, Phase: runs.Phase(ph), Owner: owner}
		if st.Phase != runs.Pending && st.Phase != runs.Skipped {
			st.Started = t0.Add(-time.Minute) // skipped: never ran
		}
		if st.Phase == runs.Running {
			st.Deadline = t0.Add(-time.Second) // overdue at t0
		}
		r.Steps = append(r.Steps, st)
	}
	return r
}

func phaseOf(r *runs.Run, step string) runs.Phase {
	if st := r.FindStep(step); st != nil {
		return st.Phase
	}
	return ""
}

// TestApply covers every transition from the states it meets: what it
// decides (outcome, ErrNoChange, refusal) and the record after it.
func TestApply(t *testing.T) {
	tests := []struct {
		name        string
		give        *runs.Run
		req         runs.Request
		wantErr     error
		wantOutcome runs.Outcome
		wantRun     runs.Phase
		wantStep    runs.Phase // of req.Step ("" skips the check)
	}{
		{"claim a pending step starts it and the run", rec(runs.Pending),
			runs.Request{Op: runs.OpClaim, Step: "snapshot", Owner: "a"}, nil,
			runs.Outcome{Claimed: runs.Claimed{Start: true}}, runs.Running, runs.Running},
		{"claim a finished step: done", rec(runs.Running, "snapshot=Succeeded"),
			runs.Request{Op: runs.OpClaim, Step: "snapshot", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Done: true}}, runs.Running, runs.Succeeded},
		{"claim a skipped step: done", rec(runs.Running, "hook:h/a=Skipped"),
			runs.Request{Op: runs.OpClaim, Step: "hook:h/a", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Done: true}}, runs.Running, runs.Skipped},
		{"claim a running step: interrupted, with its owner", rec(runs.Running, "filter=Running@dead"),
			runs.Request{Op: runs.OpClaim, Step: "filter", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Interrupted: true, Owner: "dead"}}, runs.Running, runs.Running},
		{"claim a failed step of a live run: fail the run", rec(runs.Running, "filter=Failed"),
			runs.Request{Op: runs.OpClaim, Step: "filter", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Skip: true, Failed: true}}, runs.Running, runs.Failed},
		{"claim a step stopped for a cancel in a live run: fail the run, do not run it again", rec(runs.Running, "snapshot=Cancelled"),
			runs.Request{Op: runs.OpClaim, Step: "snapshot", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Skip: true, Failed: true}}, runs.Running, runs.Cancelled},
		{"claim in a failed run: skip", rec(runs.Failed),
			runs.Request{Op: runs.OpClaim, Step: "filter", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Skip: true}}, runs.Failed, ""},
		{"claim in a succeeded run: skip", rec(runs.Succeeded),
			runs.Request{Op: runs.OpClaim, Step: "filter", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Skip: true}}, runs.Succeeded, ""},
		{"finish a running step", rec(runs.Running, "filter=Running@a"),
			runs.Request{Op: runs.OpFinish, Step: "filter", Phase: runs.Succeeded}, nil,
			runs.Outcome{}, runs.Running, runs.Succeeded},
		{"finish again: the first end stands", rec(runs.Running, "filter=Succeeded"),
			runs.Request{Op: runs.OpFinish, Step: "filter", Phase: runs.Succeeded}, runs.ErrNoChange,
			runs.Outcome{}, runs.Running, runs.Succeeded},
		{"finish failed", rec(runs.Running, "filter=Running@a"),
			runs.Request{Op: runs.OpFinish, Step: "filter", Phase: runs.Failed, Error: "boom"}, nil,
			runs.Outcome{}, runs.Running, runs.Failed},
		{"interrupt a running step", rec(runs.Failed, "hook:h/a=Running@dead"),
			runs.Request{Op: runs.OpInterrupt, Step: "hook:h/a", Error: "interrupted"}, nil,
			runs.Outcome{}, runs.Failed, runs.Failed},
		{"interrupt a finished step: nothing", rec(runs.Running, "hook:h/a=Succeeded"),
			runs.Request{Op: runs.OpInterrupt, Step: "hook:h/a", Error: "interrupted"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Running, runs.Succeeded},
		{"fail a live run: announce", rec(runs.Running, "filter=Running@a", "upload:s3=Pending"),
			runs.Request{Op: runs.OpFail, Stage: "filter", Error: "boom", Cause: "e1"}, nil,
			runs.Outcome{Announce: true}, runs.Failed, ""},
		{"fail a failed run for another cause: nothing", rec(runs.Failed),
			runs.Request{Op: runs.OpFail, Stage: "upload", Error: "later", Cause: "e2"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Failed, ""},
		{"fail a succeeded run: nothing", rec(runs.Succeeded),
			runs.Request{Op: runs.OpFail, Stage: "metrics", Error: "late", Cause: "e3"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Succeeded, ""},
		{"record a process of the owner's running step", rec(runs.Running, "hook:h/a=Running@a"),
			runs.Request{Op: runs.OpProc, Step: "hook:h/a", Owner: "a", Proc: &runs.Proc{PGID: 7}}, nil,
			runs.Outcome{}, runs.Running, runs.Running},
		{"record a process of another owner's step: refused", rec(runs.Running, "hook:h/a=Running@b"),
			runs.Request{Op: runs.OpProc, Step: "hook:h/a", Owner: "a", Proc: &runs.Proc{PGID: 7}}, runs.ErrNotOwner,
			runs.Outcome{}, runs.Running, runs.Running},
		{"settle when every piece is done", rec(runs.Running, "snapshot=Succeeded", "hook:h/a=Skipped"),
			runs.Request{Op: runs.OpSettle, Require: &runs.Requirement{Steps: []string{"snapshot", "hook:h/a"}}}, nil,
			runs.Outcome{Announce: true}, runs.Succeeded, ""},
		{"settle with a step still running: nothing", rec(runs.Running, "snapshot=Succeeded", "hook:h/a=Running@a"),
			runs.Request{Op: runs.OpSettle, Require: &runs.Requirement{Steps: []string{"snapshot", "hook:h/a"}}}, runs.ErrNoChange,
			runs.Outcome{}, runs.Running, ""},
		{"settle with a destination missing: nothing", rec(runs.Running, "snapshot=Succeeded"),
			runs.Request{Op: runs.OpSettle, Require: &runs.Requirement{Steps: []string{"snapshot"}, Destinations: []string{"s3"}}}, runs.ErrNoChange,
			runs.Outcome{}, runs.Running, ""},
		{"settle a failed run: nothing", rec(runs.Failed, "snapshot=Succeeded"),
			runs.Request{Op: runs.OpSettle, Require: &runs.Requirement{Steps: []string{"snapshot"}}}, runs.ErrNoChange,
			runs.Outcome{}, runs.Failed, ""},
		{"expire an overdue step fails the run", rec(runs.Running, "hook:h/a=Running@dead"),
			runs.Request{Op: runs.OpExpire, Step: "hook:h/a"}, nil,
			runs.Outcome{Announce: true}, runs.Failed, runs.Failed},
		{"expire a finished run: nothing", rec(runs.Succeeded, "hook:h/a=Succeeded"),
			runs.Request{Op: runs.OpExpire, Step: "hook:h/a"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Succeeded, runs.Succeeded},
		{"expire a run before its deadline: nothing", rec(runs.Running),
			runs.Request{Op: runs.OpExpire}, runs.ErrNoChange,
			runs.Outcome{}, runs.Running, ""},
		{"announce a flag once", rec(runs.Succeeded),
			runs.Request{Op: runs.OpAnnounce, Flag: runs.AnnouncedSucceeded}, nil,
			runs.Outcome{}, runs.Succeeded, ""},
		{"cancel a running run", rec(runs.Running, "snapshot=Running@a", "hook:h/b=Pending"),
			runs.Request{Op: runs.OpCancel, Owner: "cli:root"}, nil,
			runs.Outcome{Announce: true}, runs.Cancelled, ""},
		{"cancel again: announce again", rec(runs.Cancelled),
			runs.Request{Op: runs.OpCancel, Owner: "cli:root"}, runs.ErrNoChange,
			runs.Outcome{Announce: true}, runs.Cancelled, ""},
		{"cancel a succeeded run: nothing", rec(runs.Succeeded),
			runs.Request{Op: runs.OpCancel, Owner: "cli:root"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Succeeded, ""},
		{"claim in a cancelled run: skip", rec(runs.Cancelled),
			runs.Request{Op: runs.OpClaim, Step: "filter", Owner: "a"}, runs.ErrNoChange,
			runs.Outcome{Claimed: runs.Claimed{Skip: true}}, runs.Cancelled, ""},
		{"fail a cancelled run: nothing", rec(runs.Cancelled),
			runs.Request{Op: runs.OpFail, Stage: "filter", Error: "late", Cause: "e4"}, runs.ErrNoChange,
			runs.Outcome{}, runs.Cancelled, ""},
		{"end compensation owing nothing: announce", rec(runs.Failed),
			runs.Request{Op: runs.OpCompensationEnd}, nil,
			runs.Outcome{Announce: true}, runs.Failed, ""},
		{"a step stopped for the cancel ends cancelled", rec(runs.Cancelled, "snapshot=Running@a"),
			runs.Request{Op: runs.OpFinish, Step: "snapshot", Phase: runs.Cancelled, Error: "stopped: cancelled"}, nil,
			runs.Outcome{}, runs.Cancelled, runs.Cancelled},
		// A failure event of attempt 1 delivered again after a replay.
		{"end compensation of a replayed run: refused", rec(runs.Running, "hook:db/lock=Succeeded"),
			runs.Request{Op: runs.OpCompensationEnd}, runs.ErrNotFailed,
			runs.Outcome{}, runs.Running, ""},
		{"claim an inverse op in a replayed run: refused", rec(runs.Running, "hook:db/lock=Succeeded", "snapshot=Running@a"),
			runs.Request{Op: runs.OpInverseClaim, Step: "hook:db/unlock", Undoes: "db/lock", Owner: "a"}, runs.ErrNotFailed,
			runs.Outcome{}, runs.Running, ""},
		{"claim an inverse op in a succeeded run's first pass: refused", rec(runs.Succeeded, "hook:db/lock=Succeeded"),
			runs.Request{Op: runs.OpInverseClaim, Step: "hook:db/unlock", Undoes: "db/lock", Owner: "a"}, runs.ErrNotFailed,
			runs.Outcome{}, runs.Succeeded, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Run = "r"
			o, err := runs.Apply(tt.give, tt.req, t0)
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			o.Reason, o.Claimed.Error = "", ""
			if !reflect.DeepEqual(o, tt.wantOutcome) {
				t.Errorf("outcome %+v, want %+v", o, tt.wantOutcome)
			}
			if tt.give.Phase != tt.wantRun {
				t.Errorf("run %s, want %s", tt.give.Phase, tt.wantRun)
			}
			if tt.wantStep != "" && phaseOf(tt.give, tt.req.Step) != tt.wantStep {
				t.Errorf("step %s, want %s", phaseOf(tt.give, tt.req.Step), tt.wantStep)
			}
		})
	}
}

// TestApplyRecordsWhatAStepProduced: a finished upload writes its
// destination, a verify marks it verified, a snapshot its figures.
func TestApplyRecordsWhatAStepProduced(t *testing.T) {
	r := rec(runs.Running, "snapshot=Running@a", "upload:s3=Running@a", "verify:s3=Running@a")
	steps := []runs.Request{
		{Op: runs.OpFinish, Step: "snapshot", Phase: runs.Succeeded, Result: &runs.Result{Bytes: 10, SHA256: "aa", Chunks: 2}},
		{Op: runs.OpFinish, Step: "upload:s3", Phase: runs.Succeeded, Result: &runs.Result{Dest: "s3",
			Destination: &runs.Destination{Phase: runs.Succeeded, Key: "k", ManifestKey: "m", Size: 6, SHA256: "bb"}}},
		{Op: runs.OpFinish, Step: "verify:s3", Phase: runs.Succeeded, Result: &runs.Result{Dest: "s3",
			Destination: &runs.Destination{Verified: true, VerifyMode: "full"}}},
	}
	for _, req := range steps {
		req.Run = "r"
		if _, err := runs.Apply(r, req, t0); err != nil {
			t.Fatal(err)
		}
	}
	d := r.Destinations["s3"]
	if r.Bytes != 10 || r.SHA256 != "aa" || r.Chunks != 2 || r.StoredBytes != 6 ||
		d.Key != "k" || d.ManifestKey != "m" || d.SHA256 != "bb" || !d.Verified || d.VerifyMode != "full" || d.Phase != runs.Succeeded {
		t.Fatalf("run %+v destination %+v", r, d)
	}
}

// TestApplyCompensationEntries follows one debt: claimed by the first
// pass, tried and failed for the last time (owed, due later), claimed by
// the loop only once due, then paid.
func TestApplyCompensationEntries(t *testing.T) {
	r := rec(runs.Failed, "hook:h/lock=Succeeded", "hook:h/unlock=Failed")
	apply := func(req runs.Request, at time.Time) runs.Outcome {
		t.Helper()
		req.Run = "r"
		o, err := runs.Apply(r, req, at)
		if err != nil && !errors.Is(err, runs.ErrNoChange) {
			t.Fatalf("%s: %v", req.Op, err)
		}
		return o
	}
	apply(runs.Request{Op: runs.OpInverseClaim, Step: "hook:h/unlock", Undoes: "h/lock", Owner: "a"}, t0)
	c := r.FindCompensation("hook:h/unlock")
	if c == nil || c.Phase != runs.Running || c.Attempts != 1 || c.Undoes != "h/lock" {
		t.Fatalf("claimed entry %+v, want Running with the failed forward run as attempt 1", c)
	}
	apply(runs.Request{Op: runs.OpInverseTried, Step: "hook:h/unlock", Error: "refused", Last: true,
		Deadline: time.Hour, RetryEvery: 5 * time.Minute}, t0)
	c = r.FindCompensation("hook:h/unlock")
	if c.Phase != runs.Failed || c.Attempts != 2 || !c.RetryAt.After(t0) || c.Until.IsZero() {
		t.Fatalf("entry after the last try %+v, want Failed (owed) with a retry", c)
	}
	if o := apply(runs.Request{Op: runs.OpCompensationEnd}, t0); o.Announce {
		t.Error("compensation.completed announced while an inverse is owed")
	}
	if got := len(r.Owed()); got != 1 {
		t.Fatalf("owed %d, want 1", got)
	}
	lease := runs.Request{Op: runs.OpInverseClaim, Step: "hook:h/unlock", Owner: "b", Within: time.Minute}
	if o := apply(lease, t0.Add(time.Minute)); o.Announce {
		t.Error("the loop claimed an entry before its retry was due")
	}
	if o := apply(lease, t0.Add(6*time.Minute)); !o.Announce {
		t.Error("the loop did not claim a due entry")
	}
	if o := apply(lease, t0.Add(6*time.Minute)); o.Announce {
		t.Error("a second replica claimed an entry under lease")
	}
	apply(runs.Request{Op: runs.OpInverseTried, Step: "hook:h/unlock"}, t0.Add(7*time.Minute))
	if c = r.FindCompensation("hook:h/unlock"); c.Phase != runs.Succeeded || len(r.Owed()) != 0 {
		t.Fatalf("entry after a completed try %+v, owed %v", c, r.Owed())
	}
}

// TestPermit: each stage asks only for what is its own.
func TestPermit(t *testing.T) {
	seed := &runs.Run{ID: "r", Plan: "p", Kind: runs.KindBackup}
	tests := []struct {
		stage string
		req   runs.Request
		ok    bool
	}{
		{"filter", runs.Request{Op: runs.OpClaim, Step: "filter"}, true},
		{"filter", runs.Request{Op: runs.OpClaim, Step: "upload:s3"}, false},
		{"filter", runs.Request{Op: runs.OpFinish, Step: "verify:s3"}, false},
		{"upload", runs.Request{Op: runs.OpFinish, Step: "upload:s3", Result: &runs.Result{Dest: "s3", Destination: &runs.Destination{}}}, true},
		{"upload", runs.Request{Op: runs.OpFinish, Step: "upload:s3", Result: &runs.Result{Dest: "gcs", Destination: &runs.Destination{}}}, false},
		{"verify", runs.Request{Op: runs.OpFinish, Step: "verify:s3", Result: &runs.Result{Dest: "s3", Destination: &runs.Destination{Verified: true}}}, true},
		{"verify", runs.Request{Op: runs.OpSettle}, true},
		{"filter", runs.Request{Op: runs.OpSettle}, false},
		{"verify", runs.Request{Op: runs.OpExpire}, false},
		{"hook", runs.Request{Op: runs.OpCreate, Seed: seed}, true},
		{"snapshot", runs.Request{Op: runs.OpCreate, Seed: seed}, true},
		{"filter", runs.Request{Op: runs.OpCreate, Seed: seed}, false},
		{"api", runs.Request{Op: runs.OpCreate, Seed: seed}, false},
		{"filter", runs.Request{Op: runs.OpFail}, true},
		{"api", runs.Request{Op: runs.OpFail}, false},
		{"hook", runs.Request{Op: runs.OpProc, Step: "hook:h/a"}, true},
		{"snapshot", runs.Request{Op: runs.OpProc, Step: "snapshot"}, false},
		{"hook", runs.Request{Op: runs.OpInverseClaim, Step: "hook:h/a"}, true},
		{"verify", runs.Request{Op: runs.OpInverseTried, Step: "hook:h/a"}, false},
		{"restore", runs.Request{Op: runs.OpRecord, Result: &runs.Result{BackupID: "b"}}, true},
		{"restore", runs.Request{Op: runs.OpRecord, Result: &runs.Result{Dest: "s3", Destination: &runs.Destination{Verified: true}}}, false},
		{"upload", runs.Request{Op: runs.OpRecord, Result: &runs.Result{BackupID: "b"}}, false},
		{"admin", runs.Request{Op: runs.OpCancel, Owner: "cli:root"}, true},
		{"api", runs.Request{Op: runs.OpCancel, Owner: "api:ops"}, true},
		{"hook", runs.Request{Op: runs.OpCancel, Owner: "hook"}, false},
		{"admin", runs.Request{Op: runs.OpRetryOwed}, true},
		{"hook", runs.Request{Op: runs.OpRetryOwed}, false},
	}
	for _, tt := range tests {
		tt.req.Run = "r"
		err := runs.Permit(tt.stage, tt.req)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, runs.ErrRefused)) {
			t.Errorf("%s %s %s: %v, want allowed=%v", tt.stage, tt.req.Op, tt.req.Step, err, tt.ok)
		}
	}
}

// TestCheckNamesTheField: a malformed request is refused naming its field.
func TestCheckNamesTheField(t *testing.T) {
	tests := []struct {
		req  runs.Request
		want string
	}{
		{runs.Request{Op: runs.OpClaim}, "run"},
		{runs.Request{Op: runs.OpClaim, Run: "r"}, "claim step"},
		{runs.Request{Op: runs.OpFinish, Run: "r", Step: "filter", Phase: runs.Running}, "finish phase"},
		{runs.Request{Op: runs.OpFail, Run: "r"}, "fail error"},
		{runs.Request{Op: runs.OpCreate, Run: "r", Seed: &runs.Run{ID: "x", Kind: runs.KindBackup}}, "create seed.id"},
		{runs.Request{Op: runs.OpCreate, Run: "r", Seed: &runs.Run{ID: "r", Kind: runs.KindBackup, Phase: runs.Succeeded}}, "create seed.phase"},
		{runs.Request{Op: runs.OpProc, Run: "r", Step: "hook:h/a"}, "proc proc"},
	}
	for _, tt := range tests {
		err := tt.req.Check()
		if !errors.Is(err, runs.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error naming %q", tt.req, err, tt.want)
		}
	}
}

// TestReplay: where a replay may start, what it resets and reuses, and why
// it refuses.
func TestReplay(t *testing.T) {
	stored := func(r *runs.Run) *runs.Run {
		r.Destinations = map[string]*runs.Destination{"s3": {Phase: runs.Succeeded, Key: "k", Verified: true}}
		return r
	}
	// compensated: compensation's first pass went over the run's ops.
	compensated := func(r *runs.Run) *runs.Run {
		r.CompensationDone = true
		return r
	}
	tests := []struct {
		name       string
		give       *runs.Run
		stage      string
		wantErr    error
		wantStage  string
		wantReused []string
		wantPhase  runs.Phase
		wantSteps  map[string]runs.Phase
	}{
		{"verify failed: verify again, reusing the rest",
			stored(rec(runs.Failed, "snapshot=Succeeded", "filter=Succeeded", "upload:s3=Succeeded", "verify:s3=Failed")), "",
			nil, runs.ReplayVerify, []string{"snapshot", "filter", "upload:s3"}, runs.Running,
			map[string]runs.Phase{"verify:s3": runs.Pending}},
		{"verify with a destination not stored: refused",
			rec(runs.Failed, "snapshot=Succeeded", "upload:s3=Failed", "verify:s3=Failed"), runs.ReplayVerify,
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"an unlock after the snapshot failed: that op again, and verify again",
			compensated(stored(rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Succeeded", "upload:s3=Succeeded", "verify:s3=Succeeded", "hook:db/unlock=Failed"))), "",
			nil, "hook:db/unlock", []string{"hook:db/lock", "snapshot", "upload:s3"}, runs.Running,
			map[string]runs.Phase{"hook:db/unlock": runs.Pending, "verify:s3": runs.Pending}},
		{"a lock before the snapshot failed: that op again, the rest as new",
			compensated(rec(runs.Failed, "hook:db/lock=Failed", "snapshot=Skipped")), "",
			nil, "hook:db/lock", nil, runs.Running,
			map[string]runs.Phase{"hook:db/lock": runs.Pending, "snapshot": runs.Pending}},
		{"a hook after a dump whose bytes are gone: refused",
			rec(runs.Failed, "snapshot=Succeeded", "upload:s3=Failed", "hook:db/unlock=Failed"), "",
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"the snapshot failed: refused (the bytes are gone)",
			rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Failed"), "",
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"from the start: everything again",
			compensated(rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Failed")), runs.ReplayStart,
			nil, runs.ReplayStart, nil, runs.Running, map[string]runs.Phase{"snapshot": ""}},
		{"a lock ran and compensation has not gone over it yet: refused",
			rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Failed"), runs.ReplayStart,
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"a lock that failed may have taken effect: refused until compensated",
			rec(runs.Failed, "hook:db/lock=Failed", "snapshot=Skipped"), "",
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"cancelled after a lock, not compensated yet: refused",
			rec(runs.Cancelled, "hook:db/lock=Succeeded", "snapshot=Running@a"), runs.ReplayStart,
			runs.ErrNotReplayable, "", nil, runs.Cancelled, nil},
		{"a lock refused before it started owes nothing: replayed",
			rec(runs.Failed, "hook:db/lock=Skipped", "snapshot=Skipped"), runs.ReplayStart,
			nil, runs.ReplayStart, nil, runs.Running, nil},
		{"cancelled between steps: only from the start",
			rec(runs.Cancelled, "hook:db/lock=Succeeded", "snapshot=Skipped"), "",
			runs.ErrNotReplayable, "", nil, runs.Cancelled, nil},
		{"one destination's upload failed, another holds a copy: copy it",
			func() *runs.Run {
				r := rec(runs.Failed, "snapshot=Succeeded", "upload:a=Succeeded", "upload:b=Failed", "verify:a=Succeeded")
				r.Destinations = map[string]*runs.Destination{"a": {Phase: runs.Succeeded, Key: "k", Verified: true}, "b": {Phase: runs.Failed}}
				return r
			}(), "",
			nil, "upload:b", []string{"snapshot", "upload:a"}, runs.Running,
			map[string]runs.Phase{"upload:b": runs.Pending, "verify:a": runs.Pending}},
		{"the dump stopped because an upload failed: the upload is named, not the dump",
			func() *runs.Run {
				r := rec(runs.Failed, "snapshot=Failed", "filter=Skipped", "upload:a=Failed", "upload:b=Skipped")
				r.FailedStage = "upload"
				r.Destinations = map[string]*runs.Destination{"a": {Phase: runs.Failed}}
				return r
			}(), "",
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"an upload failed and no other copy: refused",
			func() *runs.Run {
				r := rec(runs.Failed, "snapshot=Succeeded", "upload:a=Failed")
				r.Destinations = map[string]*runs.Destination{"a": {Phase: runs.Failed}}
				return r
			}(), "",
			runs.ErrNotReplayable, "", nil, runs.Failed, nil},
		{"a running run: refused", rec(runs.Running, "snapshot=Running@a"), runs.ReplayStart,
			runs.ErrNotReplayable, "", nil, runs.Running, nil},
		{"a succeeded run: retention again, still succeeded",
			stored(rec(runs.Succeeded, "snapshot=Succeeded", "verify:s3=Succeeded")), runs.ReplayRetention,
			nil, runs.ReplayRetention, []string{"snapshot", "verify:s3"}, runs.Succeeded, nil},
		{"a succeeded run: nothing else", stored(rec(runs.Succeeded, "snapshot=Succeeded")), runs.ReplayVerify,
			runs.ErrNotReplayable, "", nil, runs.Succeeded, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := runs.Apply(tt.give, runs.Request{Op: runs.OpReplay, Run: "r", Step: tt.stage, Owner: "cli:root", Within: time.Hour}, t0)
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if tt.give.Phase != tt.wantPhase {
					t.Errorf("a refused replay changed the run to %s", tt.give.Phase)
				}
				return
			}
			if o.Stage != tt.wantStage || !reflect.DeepEqual(o.Reused, tt.wantReused) {
				t.Errorf("stage %q reused %v, want %q %v", o.Stage, o.Reused, tt.wantStage, tt.wantReused)
			}
			r := tt.give
			if r.Phase != tt.wantPhase || r.CurrentAttempt() != 2 || len(r.Attempts) != 2 || r.Attempts[1].By != "cli:root" {
				t.Errorf("run %s attempt %d attempts %+v", r.Phase, r.CurrentAttempt(), r.Attempts)
			}
			if r.Phase == runs.Running && (r.Error != "" || !r.Finished.IsZero() || !r.Deadline.Equal(t0.Add(time.Hour))) {
				t.Errorf("replayed run keeps its end: %q %s deadline %s", r.Error, r.Finished, r.Deadline)
			}
			for step, want := range tt.wantSteps {
				if got := phaseOf(r, step); got != want {
					t.Errorf("step %s %s, want %s", step, got, want)
				}
			}
		})
	}
}

// TestReplayStageIsTheRunsCause: the stage that failed the run says
// where a replay starts, before the steps it stopped (a dump killed when
// an upload failed is Failed too, and comes first in the workflow).
func TestReplayStageIsTheRunsCause(t *testing.T) {
	r := rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Failed", "filter=Skipped", "upload:a=Failed", "upload:b=Skipped")
	r.FailedStage = "upload"
	if got, ok := runs.ReplayStage(r); !ok || got != "upload:a" {
		t.Errorf("replay stage %q %v, want upload:a (the upload failed the run)", got, ok)
	}
	r.FailedStage = "snapshot"
	if got, ok := runs.ReplayStage(r); !ok || got != "snapshot" {
		t.Errorf("replay stage %q %v, want snapshot", got, ok)
	}
	r.FailedStage = "watchdog" // no step of its own: the first failed step
	if got, ok := runs.ReplayStage(r); !ok || got != "snapshot" {
		t.Errorf("replay stage %q %v, want snapshot", got, ok)
	}
}

// TestSettleWithRequire: a run settles once every destination is done and
// enough hold the backup; missing copies make it degraded.
func TestSettleWithRequire(t *testing.T) {
	two := func(a, b string) *runs.Run {
		r := rec(runs.Running, "snapshot=Succeeded", "upload:a="+a, "upload:b="+b)
		r.Destinations = map[string]*runs.Destination{}
		for name, ph := range map[string]string{"a": a, "b": b} {
			if ph == "Succeeded" {
				r.Destinations[name] = &runs.Destination{Phase: runs.Succeeded, Key: "k"}
			}
		}
		return r
	}
	tests := []struct {
		name         string
		give         *runs.Run
		need         int
		wantPhase    runs.Phase
		wantDegraded []string
		reachable    bool
	}{
		{"all held", two("Succeeded", "Succeeded"), 2, runs.Succeeded, nil, true},
		{"all wanted, one failed: not settled", two("Succeeded", "Failed"), 2, runs.Running, nil, false},
		{"any wanted, one failed: degraded", two("Succeeded", "Failed"), 1, runs.Succeeded, []string{"b"}, true},
		{"any wanted, one still uploading: wait", two("Succeeded", "Running"), 1, runs.Running, nil, true},
		{"any wanted, both failed", two("Failed", "Failed"), 1, runs.Running, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			need := runs.Requirement{Steps: []string{"snapshot"}, Destinations: []string{"a", "b"}, Need: tt.need}
			if got := runs.Reachable(tt.give, need); got != tt.reachable {
				t.Errorf("reachable %v, want %v", got, tt.reachable)
			}
			_, _ = runs.Apply(tt.give, runs.Request{Op: runs.OpSettle, Run: "r", Require: &need}, t0)
			if tt.give.Phase != tt.wantPhase || !reflect.DeepEqual(tt.give.Degraded, tt.wantDegraded) {
				t.Errorf("run %s degraded %v, want %s %v", tt.give.Phase, tt.give.Degraded, tt.wantPhase, tt.wantDegraded)
			}
		})
	}
}

// TestRepairADegradedRun: a degraded run's missing copy is written again
// as a new attempt of the succeeded run, whose steps for that destination
// may be claimed, and the run is whole once the copy is verified.
func TestRepairADegradedRun(t *testing.T) {
	r := rec(runs.Succeeded, "snapshot=Succeeded", "upload:a=Succeeded", "upload:b=Failed", "verify:a=Succeeded")
	r.Destinations = map[string]*runs.Destination{"a": {Phase: runs.Succeeded, Key: "k", Verified: true}}
	r.Degraded = []string{"b"}
	o, err := runs.Apply(r, runs.Request{Op: runs.OpReplay, Run: "r", Owner: "cli:root"}, t0)
	if err != nil || o.Stage != "upload:b" || r.Phase != runs.Succeeded || r.CurrentAttempt() != 2 {
		t.Fatalf("replay: %v %+v, run %s attempt %d", err, o, r.Phase, r.CurrentAttempt())
	}
	for _, step := range []string{"upload:b", "verify:b"} {
		c, _ := runs.Apply(r, runs.Request{Op: runs.OpClaim, Run: "r", Step: step, Owner: "x"}, t0)
		if !c.Claimed.Start {
			t.Fatalf("claim %s in the repaired run: %+v", step, c.Claimed)
		}
		res := &runs.Result{Dest: "b", Destination: &runs.Destination{Phase: runs.Succeeded, Key: "k", Verified: step == "verify:b"}}
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpFinish, Run: "r", Step: step, Phase: runs.Succeeded, Result: res}, t0); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.Degraded) != 0 || !r.Destinations["b"].Verified {
		t.Fatalf("degraded %v destination %+v, want whole again", r.Degraded, r.Destinations["b"])
	}
	if c, _ := runs.Apply(r, runs.Request{Op: runs.OpClaim, Run: "r", Step: "upload:a", Owner: "x"}, t0); !c.Claimed.Skip {
		t.Errorf("a step of a copy that is not missing was claimable in a succeeded run: %+v", c.Claimed)
	}
}

// TestStaleRequestsChangeNothing: once a run is replayed, the work of the
// attempt before ends, fails and claims nothing of the new one, except a
// step that attempt claimed and the replay left to it.
func TestStaleRequestsChangeNothing(t *testing.T) {
	// failedVerifying is attempt 1 failed by its unlock while its verify
	// still reads, compensation done: replayable.
	failedVerifying := func() *runs.Run {
		r := rec(runs.Failed, "hook:db/lock=Succeeded", "snapshot=Succeeded", "upload:s3=Succeeded", "verify:s3=Running@v1", "hook:db/unlock=Failed")
		for i := range r.Steps {
			r.Steps[i].Attempt = 1
		}
		r.Destinations = map[string]*runs.Destination{"s3": {Phase: runs.Succeeded, Key: "k"}}
		r.CompensationDone = true
		return r
	}
	replayed := func(t *testing.T, r *runs.Run, from string) *runs.Run {
		t.Helper()
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpReplay, Run: "r", Step: from, Owner: "cli:root"}, t0); err != nil {
			t.Fatal(err)
		}
		return r
	}
	finishVerify := func(attempt int) runs.Request {
		return runs.Request{Op: runs.OpFinish, Run: "r", Step: "verify:s3", Phase: runs.Succeeded, Attempt: attempt,
			Result: &runs.Result{Dest: "s3", Destination: &runs.Destination{Verified: true, VerifyMode: "full"}}}
	}

	t.Run("from the start, the old verify's end is refused and the new verify reads", func(t *testing.T) {
		r := replayed(t, failedVerifying(), runs.ReplayStart)
		if _, err := runs.Apply(r, finishVerify(1), t0); !errors.Is(err, runs.ErrStale) {
			t.Fatalf("attempt 1's verify end: %v, want ErrStale", err)
		}
		if st := r.FindStep("verify:s3"); st != nil {
			t.Fatalf("attempt 1's verify end left step %+v in attempt 2", *st)
		}
		o, err := runs.Apply(r, runs.Request{Op: runs.OpClaim, Run: "r", Step: "verify:s3", Owner: "v2", Attempt: 2}, t0)
		if err != nil || !o.Claimed.Start {
			t.Fatalf("attempt 2's verify claims %+v %v, want to start (read its copy)", o.Claimed, err)
		}
		if st := r.FindStep("verify:s3"); st.Attempt != 2 {
			t.Errorf("claimed in attempt %d, want 2", st.Attempt)
		}
		if _, err := runs.Apply(r, finishVerify(1), t0); !errors.Is(err, runs.ErrStale) {
			t.Errorf("attempt 1's verify end after attempt 2 claimed: %v, want ErrStale", err)
		}
		if _, err := runs.Apply(r, finishVerify(2), t0); err != nil {
			t.Errorf("attempt 2's verify end: %v", err)
		}
	})

	t.Run("from a hook, the old attempt fails, claims and interrupts nothing", func(t *testing.T) {
		r := replayed(t, failedVerifying(), "hook:db/unlock")
		tests := []struct {
			name string
			req  runs.Request
		}{
			{"a failure of the run", runs.Request{Op: runs.OpFail, Step: "verify:s3", Error: "digest mismatch", Attempt: 1}},
			{"a failure naming no step", runs.Request{Op: runs.OpFail, Error: "gave up", Attempt: 1}},
			{"a claim", runs.Request{Op: runs.OpClaim, Step: "hook:db/unlock", Owner: "h1", Attempt: 1}},
			{"an interrupt of the reset step", runs.Request{Op: runs.OpInterrupt, Step: "verify:s3", Error: "died", Attempt: 1}},
			{"the reset step's end", finishVerify(1)},
			{"the first compensation pass", runs.Request{Op: runs.OpCompensationEnd, Attempt: 1}},
		}
		for _, tt := range tests {
			tt.req.Run = "r"
			if _, err := runs.Apply(r, tt.req, t0); !errors.Is(err, runs.ErrStale) {
				t.Errorf("%s of attempt 1: %v, want ErrStale", tt.name, err)
			}
		}
		if r.Phase != runs.Running || phaseOf(r, "verify:s3") != runs.Pending || phaseOf(r, "hook:db/unlock") != runs.Pending {
			t.Errorf("attempt 2 changed by attempt 1: run %s verify %s unlock %s", r.Phase, phaseOf(r, "verify:s3"), phaseOf(r, "hook:db/unlock"))
		}
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpSettle, Run: "r", Attempt: 1, Require: &runs.Requirement{Steps: []string{"snapshot"}}}, t0); errors.Is(err, runs.ErrStale) {
			t.Errorf("a settle is never stale: %v", err)
		}
	})

	t.Run("a step the replay left running stays its claim's", func(t *testing.T) {
		r := rec(runs.Failed, "snapshot=Succeeded", "upload:s3=Succeeded", "verify:s3=Failed", "hook:db/unlock=Running@h1")
		for i := range r.Steps {
			r.Steps[i].Attempt = 1
		}
		r.Destinations = map[string]*runs.Destination{"s3": {Phase: runs.Succeeded, Key: "k"}}
		r.CompensationDone = true
		replayed(t, r, runs.ReplayVerify)
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpFinish, Run: "r", Step: "hook:db/unlock", Phase: runs.Failed, Error: "boom", Attempt: 1}, t0); err != nil {
			t.Fatalf("the unlock's end from its claim: %v", err)
		}
		o, err := runs.Apply(r, runs.Request{Op: runs.OpFail, Run: "r", Step: "hook:db/unlock", Error: "boom", Attempt: 1, Stage: "hook"}, t0)
		if err != nil || !o.Announce || r.Phase != runs.Failed {
			t.Errorf("the unlock's failure: %v announce %v run %s, want the run failed", err, o.Announce, r.Phase)
		}
	})

	t.Run("requests no event drives and claims older than the attempt field are not checked; a future attempt is refused", func(t *testing.T) {
		r := replayed(t, failedVerifying(), "hook:db/unlock")
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpFinish, Run: "r", Step: "hook:db/unlock", Phase: runs.Skipped}, t0); err != nil {
			t.Errorf("a request of no attempt: %v", err)
		}
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpFinish, Run: "r", Step: "hook:db/unlock", Phase: runs.Skipped, Attempt: 3}, t0); !errors.Is(err, runs.ErrBadRequest) {
			t.Errorf("a request of an attempt the run has not reached: %v, want ErrBadRequest", err)
		}
		legacy := rec(runs.Running, "filter=Running@a")
		if _, err := runs.Apply(legacy, runs.Request{Op: runs.OpFinish, Run: "r", Step: "filter", Phase: runs.Succeeded, Attempt: 1}, t0); err != nil {
			t.Errorf("the end of a step claimed before claims kept their attempt: %v", err)
		}
	})
}

// TestNoRequestOfAnEarlierAttemptChangesWhatTheReplayOwns: failed,
// cancelled and succeeded (degraded) backup and restore runs with random
// steps, replayed from every stage a replay may start at, then
// random requests of attempt 1 (every op, every step). Only the steps the
// replay left running for attempt 1 may change, and only through them may
// the run end again: everything else stays as the replay made it. And
// the new attempt's own claims and ends are never taken for stale.
func TestNoRequestOfAnEarlierAttemptChangesWhatTheReplayOwns(t *testing.T) {
	names := []string{"hook:db/lock", "snapshot", "restore", "filter", "upload:a", "upload:b", "verify:a", "verify:b", "hook:db/unlock", ""}
	phases := []runs.Phase{runs.Succeeded, runs.Failed, runs.Running, runs.Skipped, runs.Pending, runs.Cancelled}
	froms := []string{"", runs.ReplayStart, runs.ReplayVerify, "hook:db/lock", "hook:db/unlock", "upload:a", "upload:b", runs.ReplayRetention}
	ops := []runs.Op{runs.OpFinish, runs.OpInterrupt, runs.OpProc, runs.OpFail, runs.OpClaim, runs.OpRecord, runs.OpDebt,
		runs.OpInverseClaim, runs.OpInverseTried, runs.OpCompensationEnd, runs.OpAnnounce}
	pick := func(rng *rand.Rand, n int) int { return rng.IntN(n) }
	clone := func(r *runs.Run) *runs.Run {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var c runs.Run
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	rng := rand.New(rand.NewPCG(16, 3))
	replays, withAdopted := 0, 0
	for i := range 6000 {
		r := &runs.Run{ID: "r", Plan: "p", Kind: []string{runs.KindBackup, runs.KindRestore}[pick(rng, 2)],
			Phase: []runs.Phase{runs.Failed, runs.Cancelled, runs.Succeeded}[pick(rng, 3)], FailedStage: runs.StageOf(names[pick(rng, 9)]),
			Error: "boom", CompensationDone: true, Created: t0.Add(-time.Hour)}
		if r.Phase == runs.Succeeded && rng.IntN(2) == 0 {
			r.Degraded = []string{"b"} // a missing copy to write again
		}
		for _, n := range names[:9] {
			st := runs.Step{Name: n, Phase: phases[pick(rng, len(phases))]}
			if st.Phase != runs.Pending && (st.Phase != runs.Skipped || rng.IntN(2) == 0) {
				st.Started, st.Owner, st.Attempt = t0.Add(-time.Minute), "a1", 1
			}
			r.Steps = append(r.Steps, st)
		}
		for _, d := range []string{"a", "b"} {
			switch rng.IntN(3) {
			case 0:
				r.Dest(d).Phase, r.Dest(d).Key, r.Dest(d).ManifestKey = runs.Succeeded, d+"/k", d+"/m"
			case 1:
				r.Dest(d).Phase = runs.Failed
			}
		}
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpReplay, Run: "r", Step: froms[pick(rng, len(froms))], Owner: "cli"}, t0); err != nil {
			continue
		}
		replays++
		adopted := map[string]bool{}
		for _, st := range r.Steps {
			if st.Attempt == 1 && st.Phase == runs.Running {
				adopted[st.Name] = true
			}
		}
		if len(adopted) > 0 {
			withAdopted++
		}
		want := clone(r)
		var applied []string
		for j := range 16 {
			step := names[pick(rng, len(names))]
			req := runs.Request{Op: ops[pick(rng, len(ops))], Run: "r", Step: step, Attempt: 1, Owner: "a1", Stage: runs.StageOf(step),
				Phase: phases[pick(rng, 4)], Error: "late", Cause: "ev", Flag: "f", Undoes: "hook:db/lock", Last: rng.IntN(2) == 0,
				Proc: &runs.Proc{Host: "h"}, Deadline: time.Hour}
			if rng.IntN(2) == 0 {
				dest := []string{"a", "b"}[pick(rng, 2)]
				req.Result = &runs.Result{Bytes: 9, Dest: dest, Destination: &runs.Destination{Phase: runs.Succeeded, Key: "late", Verified: true}}
			}
			if _, err := runs.Apply(r, req, t0.Add(time.Duration(j+1)*time.Second)); err == nil || errors.Is(err, runs.ErrNoChange) {
				applied = append(applied, fmt.Sprintf("%s %s", req.Op, req.Step))
			}
		}
		if len(adopted) == 0 {
			if !reflect.DeepEqual(r, want) {
				got, _ := json.Marshal(r)
				wantJSON, _ := json.Marshal(want)
				t.Fatalf("case %d: requests of attempt 1 (accepted: %v) changed attempt 2 with no step of attempt 1 running:\ngot  %s\nwant %s", i, applied, got, wantJSON)
			}
			newAttemptProceeds(t, i, r)
			continue
		}
		for k, st := range r.Steps {
			if adopted[st.Name] {
				continue
			}
			w := want.Steps[k]
			if st.Phase == runs.Skipped && w.Phase == runs.Pending && r.Phase == runs.Failed {
				w.Phase = runs.Skipped // the run failed through a step of attempt 1
			}
			if !reflect.DeepEqual(st, w) {
				t.Fatalf("case %d: requests of attempt 1 (accepted: %v) changed step %s of attempt 2 (running for attempt 1: %v): %+v, was %+v", i, applied, st.Name, adopted, st, w)
			}
		}
		newAttemptProceeds(t, i, r)
	}
	if replays < 200 || withAdopted < 20 {
		t.Fatalf("%d replays, %d with a step of attempt 1 still running: the generator misses the cases", replays, withAdopted)
	}
	t.Logf("%d replays, %d with a step of attempt 1 still running", replays, withAdopted)
}

// newAttemptProceeds: the new attempt's own work is never taken for stale:
// attempt 2 claims every step but those attempt 1 still holds running,
// and ends every step it started.
func newAttemptProceeds(t *testing.T, i int, r *runs.Run) {
	t.Helper()
	for _, st := range slices.Clone(r.Steps) {
		o, err := runs.Apply(r, runs.Request{Op: runs.OpClaim, Run: "r", Step: st.Name, Owner: "a2", Attempt: 2}, t0.Add(time.Minute))
		if errors.Is(err, runs.ErrStale) {
			t.Fatalf("case %d: attempt 2's claim of %s (%s, claimed in attempt %d) refused as stale: %v", i, st.Name, st.Phase, st.Attempt, err)
		}
		if !o.Claimed.Start {
			continue
		}
		if _, err := runs.Apply(r, runs.Request{Op: runs.OpFinish, Run: "r", Step: st.Name, Phase: runs.Succeeded, Attempt: 2}, t0.Add(time.Minute)); err != nil {
			t.Fatalf("case %d: attempt 2's end of %s it claimed: %v", i, st.Name, err)
		}
	}
}
