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
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/metrics"
	"github.com/backstream/backstream/services/schedule"
	"github.com/backstream/backstream/services/stage"
)

// TestScrubAndDrillPointsDriveTheAlerts runs the metrics stage on a bus as
// the metrics role, writing to a real InfluxDB, and feeds it the scrub and
// drill events of one plan as the verify and restore stages would publish
// them, over the last three hours: the backup_scrub and backup_drill
// points follow docs/metrics.md, and the alert rules, run against what
// InfluxDB holds after each step, fire and clear:
//
//	H+20m  scrub: a copy in local corrupt, not repaired   scrub-damage fires
//	H+30m  drill failed (check)                           drill-failed fires
//	H+1h5m the 1:00 slot's drill succeeded                drill-failed clears
//	H+2h10m the watchdog: the 2:00 slot missed            drill-failed fires
//	H+2h20m scrub clean                                   scrub-damage clears
//	H+2h30m an ad hoc drill succeeded                     drill-failed clears
//	H+2h35m scrub repaired a copy                         scrub-repaired fires
//	H+2h40m scrub failed                                  scrub-damage fires
//
// An event announced again with a new id lands on the same point.
func TestScrubAndDrillPointsDriveTheAlerts(t *testing.T) {
	influx := startInflux(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := bustest.Server(t)
	admin := bustest.Connect(t, srv.URL(), "test")
	b := bustest.ConnectAs(t, srv.URL(), "metrics", "metrics")
	reg := plugins.Default()
	p, err := plan.Parse("vault.yaml", []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: vault}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: /tmp/x}}
    - {name: s3, type: filesystem, filesystem: {path: /tmp/y}}
  scrub: {schedule: {cron: '@daily'}}
  drill:
    schedule: {cron: '@hourly'}
    check: {command: ['true']}
    grace: 10m
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planstore.New(admin.Plans, reg).Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	h := time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	clock := sched.NewFakeClock(h.Add(30 * time.Second))

	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: time.Now}
	s := metrics.New(d)
	s.Clock = clock
	s.Tick = 24 * time.Hour
	s.SetInflux(metrics.InfluxConfig{URL: influx.URL(), Database: database})
	done := make(chan error, 2)
	go func() { done <- s.Run(ctx) }()
	go func() { done <- b.Run(ctx, s.Consumers()[0]) }()
	defer func() { cancel(); <-done; <-done }()
	// The watchdog's first sight of the plan, at H (Run's own first pass
	// may come first: the same state): slots after it are judged.
	if err := s.Watch(ctx); err != nil {
		t.Fatal(err)
	}

	publish := func(runID string, at time.Time, data events.Payload) {
		t.Helper()
		e, err := events.New(events.Meta{Source: "backstream/test/x", Plan: "vault", RunID: runID, Time: at}, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := admin.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	written := func(measurement string, n int) {
		t.Helper()
		eventually(t, 30*time.Second, fmt.Sprintf("%d %s points", n, measurement), func() bool {
			return count(t, influx, measurement, "duration_ms", "") == n && settled(t, b)
		})
	}
	firing := func(uid string) bool {
		t.Helper()
		rows, err := flux(t, influx, grafanaFlux(alertQuery(t, uid), nil, "-3456000s"))
		if err != nil {
			t.Fatalf("alert %s: %v", uid, err)
		}
		v, ok := byPlan(rows, "plan")["vault"]
		switch uid {
		case "backstream-drill-failed":
			return ok && v < 1
		default:
			return ok && v > 0
		}
	}
	alerts := func(step string, want ...string) {
		t.Helper()
		var got []string
		for _, uid := range []string{"backstream-drill-failed", "backstream-scrub-damage", "backstream-scrub-repaired"} {
			if firing(uid) {
				got = append(got, uid)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: firing %v, want %v", step, got, want)
		}
	}

	damaged := events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubDamaged, DurationMs: 3000, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 3, Verified: 2, Corrupt: 1, Bytes: 300}, {Destination: "s3", Checked: 3, Verified: 3, Bytes: 300}},
		Damaged: []events.ScrubDamage{{Destination: "local", BackupID: "01JNR4S7T0000000000000000A", Problem: events.CopyCorrupt, Error: "frame 2: crc mismatch", RepairError: "repair off"}}}
	publish(events.NewID(), h.Add(20*time.Minute), damaged)
	written("backup_scrub", 2)
	alerts("after the damaged scrub", "backstream-scrub-damage")

	publish(events.NewID(), h.Add(30*time.Minute), events.DrillFailedData{Stage: events.DrillStageCheck, Error: "check: exit status 1",
		BackupID: "01JNR4S7T0000000000000000A", Destination: "local", Target: "/tmp/drill", DurationMs: 900})
	written("backup_drill", 1)
	alerts("after the failed drill", "backstream-drill-failed", "backstream-scrub-damage")

	slot1 := h.Add(time.Hour)
	drillOK := events.DrillSucceededData{BackupID: "01JNR4S7T0000000000000000A", Destination: "s3", Target: "/tmp/drill", Bytes: 1 << 20, Rows: 0,
		RestoreMs: 800, CheckMs: 50, DurationMs: 1000}
	publish(schedule.SideID("vault", schedule.SideDrill, slot1), slot1.Add(5*time.Minute), drillOK)
	written("backup_drill", 2)
	alerts("after the 1:00 drill succeeded", "backstream-scrub-damage")

	// The watchdog at 2:15: 1:00 is covered, 2:00 is not.
	clock.Set(h.Add(2*time.Hour + 15*time.Minute))
	if err := s.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the drill.missed point", func() bool {
		return count(t, influx, "backup_drill", "slot", "") == 1 && settled(t, b)
	})
	missed := influxQL(t, influx, `SELECT "success", "slot" FROM "backup_drill" WHERE "status" = 'missed' GROUP BY "plan", "status"`)
	want := fmt.Sprintf("map[plan:vault status:missed] [[%d 0 %d]]", h.Add(2*time.Hour+10*time.Minute).UnixNano(), h.Add(2*time.Hour).Unix())
	if len(missed) != 1 || fmt.Sprint(missed[0].Tags, " ", missed[0].Values) != want {
		t.Errorf("drill.missed point %+v, want %s", missed, want)
	}
	alerts("after the 2:00 slot was missed", "backstream-drill-failed", "backstream-scrub-damage")

	clean := events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubClean, DurationMs: 2000, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 3, Verified: 3, Bytes: 300}, {Destination: "s3", Checked: 3, Verified: 3, Bytes: 300}}}
	publish(events.NewID(), h.Add(2*time.Hour+20*time.Minute), clean)
	written("backup_scrub", 4)
	alerts("after the clean scrub", "backstream-drill-failed")

	adHoc := events.NewID()
	publish(adHoc, h.Add(2*time.Hour+30*time.Minute), drillOK)
	written("backup_drill", 3)
	alerts("after the ad hoc drill succeeded")

	repaired := events.ScrubCompletedData{Mode: events.ScrubFull, Status: events.ScrubRepaired, DurationMs: 2500, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 3, Verified: 2, Missing: 1, Repaired: 1, Bytes: 300}, {Destination: "s3", Checked: 3, Verified: 3, Bytes: 300}},
		Damaged: []events.ScrubDamage{{Destination: "local", BackupID: "01JNR4S7T0000000000000000B", Problem: events.CopyMissing, RepairedFrom: "s3"}}}
	publish(events.NewID(), h.Add(2*time.Hour+35*time.Minute), repaired)
	written("backup_scrub", 6)
	alerts("after a scrub repaired a copy", "backstream-scrub-repaired")

	publish(events.NewID(), h.Add(2*time.Hour+40*time.Minute), events.ScrubFailedData{Error: "scrub: full mode needs a key"})
	eventually(t, 30*time.Second, "the scrub.failed point", func() bool {
		return count(t, influx, "backup_scrub", "error", `"status" = 'failed'`) == 1 && settled(t, b)
	})
	alerts("after the scrub failed", "backstream-scrub-damage", "backstream-scrub-repaired")

	scrubs := influxQL(t, influx, `SELECT "checked", "verified", "corrupt", "missing", "repaired", "unrepaired", "incomplete" FROM "backup_scrub" WHERE "status" = 'damaged' GROUP BY *`)
	got := map[string]string{}
	for _, sr := range scrubs {
		got[sr.Tags["destination"]] = fmt.Sprint(sr.Tags["mode"], " ", sr.Values[0][1:])
	}
	if w := map[string]string{"local": "ciphertext [3 2 1 0 0 1 0]", "s3": "ciphertext [3 3 0 0 0 0 0]"}; fmt.Sprint(got) != fmt.Sprint(w) {
		t.Errorf("the damaged scrub's points %v, want %v", got, w)
	}

	tags, fields := documented(t)
	for _, m := range []string{"backup_scrub", "backup_drill"} {
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

	// Announced again with new ids (past the duplicate window, say): the
	// same points, none added.
	publish(adHoc, h.Add(2*time.Hour+30*time.Minute), drillOK)
	publish(events.NewID(), h.Add(20*time.Minute), damaged)
	eventually(t, 30*time.Second, "the repeats acked", func() bool { return settled(t, b) })
	if n := count(t, influx, "backup_drill", "success", ""); n != 4 {
		t.Errorf("%d backup_drill points after the repeat, want 4", n)
	}
	if n := count(t, influx, "backup_scrub", "error", ""); n != 1 {
		t.Errorf("%d backup_scrub error fields, want 1 (the failed scrub)", n)
	}
	if n := count(t, influx, "backup_scrub", "checked", ""); n != 6 {
		t.Errorf("%d backup_scrub points with counts after the repeat, want 6", n)
	}
}
