package metrics

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/metrics"
	"github.com/backstream/backstream/services/stage"
)

// TestCancelledRunPoints runs the metrics stage on a bus as the metrics
// role, writing to a real InfluxDB: a backup.cancelled and a
// restore.cancelled become backup_run and restore_run points with status
// cancelled as docs/metrics.md documents them, timed at the run's end and
// tagged with the trigger from the run record, with no failed stage; the
// same cancellation announced again later (control repeats it on a repeated
// cancel, maybe past the duplicate window) adds no point.
func TestCancelledRunPoints(t *testing.T) {
	influx := startInflux(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := bustest.Server(t)
	admin := bustest.Connect(t, srv.URL(), "test")
	b := bustest.ConnectAs(t, srv.URL(), "metrics", "metrics")
	reg := plugins.Default()
	p, err := plan.Parse("stopped.yaml", []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: stopped}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /tmp/x}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planstore.New(admin.Plans, reg).Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	// The run records as control leaves them: created, then Cancelled.
	store := runs.NewStore(admin.Runs)
	created := time.Now().Add(-5 * time.Minute).UTC().Truncate(time.Millisecond)
	finished := created.Add(40 * time.Second)
	record := func(kind string) string {
		t.Helper()
		id := events.NewID()
		if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: "stopped", Kind: kind, Trigger: "schedule", Created: created}); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Update(ctx, id, func(r *runs.Run) error {
			r.Phase, r.Finished = runs.Cancelled, finished
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	backupRun, restoreRun := record(runs.KindBackup), record(runs.KindRestore)

	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: time.Now}
	s := metrics.New(d)
	s.Tick = time.Hour
	s.SetInflux(metrics.InfluxConfig{URL: influx.URL(), Database: database})
	done := make(chan error, 2)
	go func() { done <- s.Run(ctx) }()
	go func() { done <- b.Run(ctx, s.Consumers()[0]) }()
	defer func() { cancel(); <-done; <-done }()

	publish := func(runID string, data events.Payload) {
		t.Helper()
		e, err := events.New(events.Meta{Source: "backstream/control/test", Plan: "stopped", RunID: runID}, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := admin.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	backupCancelled := events.BackupCancelledData{By: "cli:alice", Reason: "wrong window", Steps: []string{events.StepSnapshot, "filter"}}
	publish(backupRun, backupCancelled)
	publish(restoreRun, events.RestoreCancelledData{By: "api:ops", Steps: []string{events.StepRestore}})
	eventually(t, 30*time.Second, "the cancellations' points", func() bool {
		return count(t, influx, "backup_run", "by", "") == 1 && count(t, influx, "restore_run", "by", "") == 1
	})

	run := influxQL(t, influx, `SELECT "by", "reason", "steps", "duration_s" FROM "backup_run" GROUP BY *`)
	want := fmt.Sprintf("map[plan:stopped status:cancelled trigger:schedule] [[%d cli:alice wrong window snapshot,filter 40]]", finished.UnixNano())
	if len(run) != 1 || fmt.Sprint(run[0].Tags, " ", run[0].Values) != want {
		t.Errorf("backup_run %+v, want %s", run, want)
	}
	restore := influxQL(t, influx, `SELECT "by", "reason", "steps", "duration_s" FROM "restore_run" GROUP BY *`)
	want = fmt.Sprintf("map[plan:stopped status:cancelled] [[%d api:ops <nil> restore 40]]", finished.UnixNano())
	if len(restore) != 1 || fmt.Sprint(restore[0].Tags, " ", restore[0].Values) != want {
		t.Errorf("restore_run %+v, want %s", restore, want)
	}
	if n := count(t, influx, "backup_stage", "error", ""); n != 0 {
		t.Errorf("%d failed-stage points for a cancellation, want none", n)
	}
	tags, fields := documented(t)
	for _, m := range []string{"backup_run", "restore_run"} {
		for _, sr := range influxQL(t, influx, "SHOW TAG KEYS FROM "+m) {
			for _, v := range sr.Values {
				if k := v[0].(string); !slices.Contains(tags[m], k) {
					t.Errorf("%s: tag %s is not documented (documented: %v)", m, k, tags[m])
				}
			}
		}
		for _, sr := range influxQL(t, influx, "SHOW FIELD KEYS FROM "+m) {
			for _, v := range sr.Values {
				if k, typ := v[0].(string), v[1].(string); fields[m][k] != typ {
					t.Errorf("%s: field %s %s, documented %q", m, k, typ, fields[m][k])
				}
			}
		}
	}

	// Announced again, a minute on: a new event (the duplicate window is
	// past) about the same run lands on the same point.
	publish(backupRun, backupCancelled)
	eventually(t, 30*time.Second, "the repeat acked", func() bool { return settled(t, b) })
	if n := count(t, influx, "backup_run", "by", ""); n != 1 {
		t.Errorf("%d cancelled backup_run points after the repeat, want 1", n)
	}
}
