package stage_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// rawPlan is a plan as put into the bucket with a stock client, skipping
// plan apply.
func rawPlan(name, source string) []byte {
	return []byte(`{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":"` + name + `"},` +
		`"spec":{"source":` + source + `,"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}}`)
}

func plantrustDeps(t *testing.T) *stage.Deps {
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	ctx := context.Background()
	for name, source := range map[string]string{
		"files":   `{"type":"files","files":{"path":"/srv"}}`,
		"command": `{"type":"command","command":{"argv":["sh","-c","id"]}}`,
		"invalid": `{"type":"command","command":{"argv":[]}}`,
	} {
		if _, err := b.Plans.Put(ctx, name, rawPlan(name, source)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestPlanOfAnInvalidStoredPlanIsPermanent(t *testing.T) {
	d := plantrustDeps(t)
	e, err := events.New(d.Bus.Meta("invalid", events.NewID(), ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.Plan(context.Background(), e)
	if p != nil || !bus.IsPermanent(err) || !errors.Is(err, planstore.ErrInvalidPlan) {
		t.Fatalf("plan %v, err %v: want a permanent ErrInvalidPlan", p, err)
	}
	for _, want := range []string{"plan invalid", "argv: required", "not written by `backstream plan apply`?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestTriggerChecksThePlanAndTheExecPolicy(t *testing.T) {
	d := plantrustDeps(t)
	ctx := context.Background()
	tests := []struct {
		name   string
		refuse bool
		plan   string
		want   error
	}{
		{"exec allowed", false, "command", nil},
		{"exec refused, a plan without it", true, "files", nil},
		{"exec refused, a command source", true, "command", stage.ErrExecRefused},
		{"an invalid plan", false, "invalid", planstore.ErrInvalidPlan},
		{"no such plan", true, "nope", planstore.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.RefuseExec = tt.refuse
			_, errBackup := d.RequestBackup(ctx, tt.plan, events.TriggerAPI, "test", "")
			_, errRestore := d.RequestRestore(ctx, tt.plan, events.RestoreRequestedData{BackupID: "latest", Destination: "local"})
			for _, err := range []error{errBackup, errRestore} {
				if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
			}
			if tt.want == stage.ErrExecRefused && !strings.Contains(errBackup.Error(),
				"exec refused: this serve runs with --allow-exec=false: spec.source.command.argv") {
				t.Fatalf("refusal does not say why: %v", errBackup)
			}
		})
	}
}
