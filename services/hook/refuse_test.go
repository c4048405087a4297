package hook

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
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// TestRefusedServeStartsNoHookProcess covers the one path every op takes,
// inverse ops in compensation included: a serve that refuses exec starts
// no process for an exec or kubernetes hook, and still runs the others.
func TestRefusedServeStartsNoHookProcess(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	op := &plan.Op{Name: "mark", Command: plan.Command{"sh", "-c", "id > " + marker}}
	tests := []struct {
		name   string
		refuse bool
		hook   plan.HookType
		want   error
		marked bool
	}{
		{"exec allowed", false, plan.HookExec, nil, true},
		{"exec refused", true, plan.HookExec, stage.ErrExecRefused, false},
		{"kubernetes refused", true, plan.HookKubernetes, stage.ErrExecRefused, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_ = os.Remove(marker)
			s := &Service{Deps: &stage.Deps{RefuseExec: tt.refuse}}
			h := &plan.Hook{Name: "pre", Type: tt.hook, Kubernetes: &plan.KubernetesHook{LabelSelector: "app=x"}}
			_, err := s.runOp(context.Background(), &plan.Plan{}, h, op, 10*time.Second, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if _, err := os.Stat(marker); (err == nil) != tt.marked {
				t.Fatalf("marker written: %v, want %v", err == nil, tt.marked)
			}
		})
	}
}

// TestCompensationOnARefusingServeRunsNoInverseOp: an exec op completed on
// a serve that allowed exec; the run fails and is compensated by one that
// refuses it. The inverse op does not run and is reported as failed, with
// the reason, so an operator knows it is owed; it is not retried here (the
// refusal is this process's), and stays owed for the owed-inverse loop.
func TestCompensationOnARefusingServeRunsNoInverseOp(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "unlocked")
	d := stagetest.Deps(t, b)
	d.RefuseExec = true
	p, err := plan.Parse("p.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: locked}
spec:
  source: {type: files, files: {path: /srv}}
  hooks:
    - name: db
      type: exec
      ops:
        - {name: lock, command: [true], inverseOp: unlock}
        - {name: unlock, command: [sh, -c, "id > %s"]}
  workflows:
    - {name: backup, sequence: [{hook: db/lock}, snapshot]}
  destinations: [{name: local, type: filesystem, filesystem: {path: /tmp/x}}]
`, marker)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Plans.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	r, err := d.Runs.Ensure(ctx, runs.Run{ID: events.NewID(), Plan: "locked", Kind: runs.KindBackup})
	if err != nil {
		t.Fatal(err)
	}
	if _, c, err := d.Claim(ctx, r.ID, "hook:db/lock", time.Minute); err != nil || !c.Start {
		t.Fatalf("claim: %+v %v", c, err)
	}
	if _, err := d.FinishStep(ctx, r.ID, "hook:db/lock", runs.Succeeded, 0, "", nil); err != nil {
		t.Fatal(err)
	}
	start, err := events.New(b.Meta("locked", r.ID, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	failed := []events.Event{failRun(t, d, r.ID, "snapshot", "boom", start)}

	out, err := New(d).handleFailure(ctx, failed[0])
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range out {
		got = append(got, strings.TrimPrefix(e.Type(), events.TypePrefix))
		if e.Type() == events.CompensationFailed {
			var cf events.CompensationFailedData
			if err := e.DataAs(&cf); err != nil || cf.Op != "db/unlock" ||
				cf.Error != "exec refused: this serve runs with --allow-exec=false: spec.hooks[0] (exec hook db)" {
				t.Errorf("compensation.failed %+v %v", cf, err)
			}
		}
	}
	// The inverse op stays owed: no compensation.completed until it ran.
	if strings.Join(got, ",") != "compensation.failed" {
		t.Fatalf("events %v", got)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the inverse op ran")
	}
}
