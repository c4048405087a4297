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

func TestCompensation(t *testing.T) {
	p := mustParse(t, base)
	lock, unlock, snap := HookStep("db", "lock"), HookStep("db", "unlock"), Step{Kind: StepSnapshot}
	tests := []struct {
		name string
		done []Step
		want []Step
	}{
		{"nothing done", nil, nil},
		{"failed in snapshot", []Step{lock}, []Step{unlock}},
		{"failed after snapshot", []Step{lock, snap}, []Step{unlock}},
		{"already unlocked", []Step{lock, snap, unlock}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Compensation(tt.done); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
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
