// Package stagetest builds what a stage's handler tests run on: the stage
// dependencies over an embedded server's bus, with the default plugins and
// the owner of run state in the same process, a plan applied as `plan
// apply` stores it, and a run under way. It is for tests only.
package stagetest

import (
	"context"
	"testing"
	"time"

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

// Deps returns stage dependencies on b: its runs and plans, the default
// plugin registry sharing opened storages as serve's does, a test logger,
// the wall clock, and a run owner of its own (control) that stages ask as
// they do in serve. The owner works on a copy, so a test may change d
// afterwards without changing the owner.
func Deps(t testing.TB, b *bus.Bus) *stage.Deps {
	t.Helper()
	reg := plugins.Default()
	closeAll := reg.Share(plugins.DefaultShareFor, time.Now)
	t.Cleanup(func() {
		if err := closeAll(); err != nil {
			t.Errorf("close storages: %v", err)
		}
	})
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: time.Now}
	owner := *d
	d.Owner = control.New(&owner)
	return d
}

// ApplyPlan parses and validates the plan in src, stores it in d's plans
// and returns it with its defaults filled in, as the stages read it.
func ApplyPlan(t testing.TB, d *stage.Deps, src string) *plan.Plan {
	t.Helper()
	p, err := plan.Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Plans.Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	p.Defaults()
	return p
}

// StartBackup makes a running backup run of p, triggered from the CLI, and
// returns its id and the snapshot.started the filter and upload stages
// start on.
func StartBackup(t testing.TB, d *stage.Deps, p *plan.Plan) (string, events.Event) {
	t.Helper()
	id := events.NewID()
	if _, err := d.Runs.Ensure(context.Background(), runs.Run{ID: id, Plan: p.Name(), Kind: runs.KindBackup,
		Trigger: events.TriggerCLI, Phase: runs.Running}); err != nil {
		t.Fatal(err)
	}
	e, err := events.New(d.Bus.Meta(p.Name(), id, "snapshot"), events.SnapshotStartedData{
		Source: "command", DataSubject: bus.DataSubject(id, bus.KindRaw), ChunkSize: int64(p.Spec.ChunkSize)})
	if err != nil {
		t.Fatal(err)
	}
	return id, e
}
