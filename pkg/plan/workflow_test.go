package plan

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestNextStep(t *testing.T) {
	p := mustParse(t, base) // backup: db/lock, snapshot, db/unlock; restore: default
	tests := []struct {
		name     string
		workflow string
		after    string
		want     string
		wantOK   bool
		wantErr  error
	}{
		{"first", "backup", "", "hook:db/lock", true, nil},
		{"after lock", "backup", "hook:db/lock", "snapshot", true, nil},
		{"after snapshot", "backup", "snapshot", "hook:db/unlock", true, nil},
		{"after last", "backup", "hook:db/unlock", "", false, nil},
		{"default restore first", "restore", "", "restore", true, nil},
		{"default restore last", "restore", "restore", "", false, nil},
		{"unknown step", "backup", "hook:db/nope", "", false, ErrUnknownStep},
		{"step of other workflow", "restore", "snapshot", "", false, ErrUnknownStep},
		{"unknown workflow", "verify", "", "", false, ErrUnknownWorkflow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, ok, err := p.NextStep(tt.workflow, tt.after)
			if !errors.Is(err, tt.wantErr) || ok != tt.wantOK {
				t.Fatalf("ok %v err %v, want %v %v", ok, err, tt.wantOK, tt.wantErr)
			}
			if ok && next.String() != tt.want {
				t.Errorf("next %s, want %s", next, tt.want)
			}
		})
	}
}

func TestParseStep(t *testing.T) {
	tests := []struct {
		give    string
		want    Step
		wantErr bool
	}{
		{"snapshot", Step{Kind: StepSnapshot}, false},
		{"restore", Step{Kind: StepRestore}, false},
		{"hook:db/lock", HookStep("db", "lock"), false},
		{"hook:db", Step{}, true},
		{"hook:/lock", Step{}, true},
		{"hook:db/a/b", Step{}, true},
		{"db/lock", Step{}, true},
		{"group", Step{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			got, err := ParseStep(tt.give)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %+v, %v", got, err)
			}
			if err == nil && got.String() != tt.give {
				t.Errorf("String %q", got.String())
			}
		})
	}
}

func TestStepForms(t *testing.T) {
	p := mustParse(t, `spec:
  workflows:
    - name: backup
      sequence: [snapshot, {snapshot: {}}, {snapshot: }, {group: vols}, {hook: a/b}, "hook:c/d"]
    - name: restore
      sequence: [restore, {restore: {}}, {group: vols}]
`)
	if got := stepStrings(p.Spec.Workflows[0].Sequence); !reflect.DeepEqual(got, []string{"snapshot", "snapshot", "snapshot", "snapshot", "hook:a/b", "hook:c/d"}) {
		t.Errorf("backup %v", got)
	}
	if got := stepStrings(p.Spec.Workflows[1].Sequence); !reflect.DeepEqual(got, []string{"restore", "restore", "restore"}) {
		t.Errorf("restore %v", got)
	}
}

func TestHooksAfterAndInverse(t *testing.T) {
	p := mustParse(t, base)
	if got := stepStrings(p.HooksAfter("backup", "snapshot")); !reflect.DeepEqual(got, []string{"hook:db/unlock"}) {
		t.Errorf("HooksAfter snapshot %v", got)
	}
	if got := p.HooksAfter("backup", "hook:db/lock"); got != nil {
		t.Errorf("HooksAfter lock %v", got)
	}
	if inv, ok := p.InverseOf("db", "lock"); !ok || inv.String() != "hook:db/unlock" {
		t.Errorf("InverseOf lock %v %v", inv, ok)
	}
	if _, ok := p.InverseOf("db", "unlock"); ok {
		t.Error("unlock has no inverse")
	}
}

// quiesced is a recipe of lock → quiesce → snapshot → resume → unlock,
// with an analyze op (no inverse) that may fail with onError continue.
const quiesced = `spec:
  hooks:
    - name: db
      type: sql
      ops:
        - {name: lock, sql: "SET GLOBAL read_only = ON", inverseOp: unlock}
        - {name: unlock, sql: "SET GLOBAL read_only = OFF"}
        - {name: quiesce, sql: "FLUSH TABLES", inverseOp: resume}
        - {name: resume, sql: "DO 1"}
        - {name: analyze, sql: "ANALYZE TABLE t", onError: continue}
  workflows:
    - name: backup
      sequence: [{hook: db/lock}, {hook: db/quiesce}, snapshot, {hook: db/resume}, {hook: db/unlock}, {hook: db/analyze}]
`

func TestCompensation(t *testing.T) {
	p := mustParse(t, quiesced)
	lock, unlock := HookStep("db", "lock"), HookStep("db", "unlock")
	quiesce, resume := HookStep("db", "quiesce"), HookStep("db", "resume")
	analyze, snap := HookStep("db", "analyze"), Step{Kind: StepSnapshot}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// ok, failed and running are op runs from second a to b (b < 0: no
	// end recorded).
	run := func(s Step, a, b int, ok, inverse bool) OpRun {
		r := OpRun{Step: s, Started: at(a), OK: ok, Inverse: inverse}
		if b >= 0 {
			r.Finished = at(b)
		}
		return r
	}
	ok := func(s Step, a, b int) OpRun { return run(s, a, b, true, false) }
	failed := func(s Step, a, b int) OpRun { return run(s, a, b, false, false) }
	inverse := func(s Step, a, b int, good bool) OpRun { return run(s, a, b, good, true) }
	debt := func(op, inv Step) Debt { return Debt{Op: op, Inverse: inv} }
	tests := []struct {
		name string
		ran  []OpRun
		want []Debt
	}{
		{"nothing ran", nil, nil},
		{"failed in snapshot", []OpRun{ok(lock, 1, 2), ok(snap, 3, 4)}, []Debt{debt(lock, unlock)}},
		{"lock then unlock ok", []OpRun{ok(lock, 1, 2), ok(snap, 3, 4), ok(unlock, 5, 6)}, nil},
		{"lock then unlock failed", []OpRun{ok(lock, 1, 2), failed(unlock, 5, 6)}, []Debt{debt(lock, unlock)}},
		{"lock then unlock timed out with onError continue", []OpRun{ok(lock, 1, 2), failed(unlock, 5, 6), failed(analyze, 7, 8)}, []Debt{debt(lock, unlock)}},
		{"lock itself failed: it may have taken effect", []OpRun{failed(lock, 1, 2)}, []Debt{debt(lock, unlock)}},
		{"lock interrupted: no end recorded", []OpRun{run(lock, 1, -1, false, false)}, []Debt{debt(lock, unlock)}},
		{"resume failed, unlock never ran: both, newest first",
			[]OpRun{ok(lock, 1, 2), ok(quiesce, 3, 4), ok(snap, 5, 6), failed(resume, 7, 8)},
			[]Debt{debt(quiesce, resume), debt(lock, unlock)}},
		{"resume ok, unlock failed",
			[]OpRun{ok(lock, 1, 2), ok(quiesce, 3, 4), ok(resume, 7, 8), failed(unlock, 9, 10)},
			[]Debt{debt(lock, unlock)}},
		{"order of the input does not matter",
			[]OpRun{failed(resume, 7, 8), ok(quiesce, 3, 4), ok(lock, 1, 2)},
			[]Debt{debt(quiesce, resume), debt(lock, unlock)}},
		{"inverse interrupted in compensation", []OpRun{ok(lock, 1, 2), inverse(unlock, 5, -1, false)}, []Debt{debt(lock, unlock)}},
		{"inverse failed in compensation", []OpRun{ok(lock, 1, 2), inverse(unlock, 5, 6, false)}, []Debt{debt(lock, unlock)}},
		{"inverse completed in compensation", []OpRun{ok(lock, 1, 2), inverse(unlock, 5, 6, true)}, nil},
		{"inverse failed, then a retry completed", []OpRun{ok(lock, 1, 2), failed(unlock, 5, 6), inverse(unlock, 7, 8, true)}, nil},
		{"an inverse run owes nothing itself", []OpRun{inverse(resume, 1, 2, true)}, nil},
		{"an unlock that started before the lock ended does not pay",
			[]OpRun{ok(lock, 1, 5), ok(unlock, 3, 4)}, []Debt{debt(lock, unlock)}},
		{"an op run twice: the second lock is owed again",
			[]OpRun{ok(lock, 1, 2), ok(unlock, 3, 4), ok(lock, 5, 6)}, []Debt{debt(lock, unlock)}},
		{"an op run twice: both undone by the last unlock",
			[]OpRun{ok(lock, 1, 2), ok(lock, 5, 6), ok(unlock, 7, 8)}, nil},
		{"an inverse owed by two runs of its op is listed once",
			[]OpRun{ok(lock, 1, 2), failed(lock, 5, 6)}, []Debt{debt(lock, unlock)}},
		{"onError continue on an op without inverse", []OpRun{ok(lock, 1, 2), ok(unlock, 3, 4), failed(analyze, 5, 6)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Compensation(tt.ran); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRetriesAndDeadline(t *testing.T) {
	p := mustParse(t, `spec:
  hooks:
    - name: db
      type: sql
      compensationDeadline: 2h
      ops:
        - {name: lock, sql: "x", inverseOp: unlock}
        - {name: unlock, sql: "y", retries: 0}
        - {name: other, sql: "z"}
`)
	h := &p.Spec.Hooks[0]
	if got := h.EffectiveRetries(&h.Ops[1]); got != 0 {
		t.Errorf("retries: 0 gives %d", got)
	}
	if got := h.EffectiveRetries(&h.Ops[2]); got != DefaultRetries {
		t.Errorf("unset retries give %d, want %d", got, DefaultRetries)
	}
	if got := h.EffectiveCompensationDeadline(); got != 2*time.Hour {
		t.Errorf("deadline %s", got)
	}
	if got := (&Hook{}).EffectiveCompensationDeadline(); got != time.Hour {
		t.Errorf("default deadline %s", got)
	}
}

func TestDefaults(t *testing.T) {
	p := mustParse(t, `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: d}
spec:
  source: {type: command, command: {argv: [x]}}
  hooks: [{name: h, type: exec, ops: [{name: o, command: [x]}]}]
  filters: {encryption: {passphrase: {env: P}}}
  destinations: [{name: l, type: filesystem, filesystem: {path: /b}}]
  schedule: {cron: "@daily"}
  alert: {}
`)
	p.Defaults()
	s := p.Spec
	on := true
	if got := stepStrings(p.Sequence("backup")); !reflect.DeepEqual(got, []string{"snapshot"}) {
		t.Errorf("backup %v", got)
	}
	if len(s.Workflows) != 2 || s.Workflows[1].Name != "restore" || s.Workflows[1].Sequence[0].Kind != StepRestore {
		t.Errorf("workflows %+v", s.Workflows)
	}
	want := Filters{Compression: "zstd", Level: "fastest", Encryption: &Encryption{Type: "aes-256-gcm", Passphrase: s.Filters.Encryption.Passphrase}}
	if !reflect.DeepEqual(s.Filters, want) {
		t.Errorf("filters %+v", s.Filters)
	}
	if s.ChunkSize != 256*KiB || !reflect.DeepEqual(s.Verify.Enabled, &on) {
		t.Errorf("chunk %v verify %v", s.ChunkSize, s.Verify)
	}
	if h := s.Hooks[0]; h.Timeout.Std() != time.Minute || h.OnError != OnErrorFail || h.EffectiveTimeout(&h.Ops[0]) != time.Minute {
		t.Errorf("hook %+v", h)
	}
	wantSched := Schedule{Cron: "@daily", Timezone: "UTC", StartingDeadline: Duration(time.Hour), MissedRunPolicy: "run-once", ConcurrencyPolicy: "forbid"}
	if *s.Schedule != wantSched {
		t.Errorf("schedule %+v", *s.Schedule)
	}
	if s.Alert.Grace.Std() != time.Hour {
		t.Errorf("alert %+v", *s.Alert)
	}
	before, _ := p.Marshal()
	p.Defaults()
	after, _ := p.Marshal()
	if string(before) != string(after) {
		t.Error("Defaults is not idempotent")
	}
	if err := p.Validate(realChecker{}); err != nil {
		t.Error(err)
	}
}

func TestDefaultsKeepSnappyWithoutLevel(t *testing.T) {
	p := mustParse(t, "spec: {filters: {compression: snappy}}")
	p.Defaults()
	if p.Spec.Filters.Level != "" {
		t.Fatalf("level %q", p.Spec.Filters.Level)
	}
}
