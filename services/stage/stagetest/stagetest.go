// Package stagetest builds what a stage's handler tests run on: the stage
// dependencies over an embedded server's bus, with the default plugins and
// the owner of run state in the same process. It is for tests only.
package stagetest

import (
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

// Deps returns stage dependencies on b: its runs and plans, the default
// plugin registry, a test logger, the wall clock, and a run owner of its
// own (control) that stages ask as they do in serve. The owner works on a
// copy, so a test may change d afterwards without changing the owner.
func Deps(t testing.TB, b *bus.Bus) *stage.Deps {
	t.Helper()
	reg := plugins.Default()
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: time.Now}
	owner := *d
	d.Owner = control.New(&owner)
	return d
}
