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
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/metrics"
	"github.com/backstream/backstream/services/stage"
)

// TestOwedInversePointsDriveTheAlert: the metrics watchdog writes a
// compensation_owed point per existing plan while one of its runs owes an
// inverse op, and a 0 once it is paid; the "inverse op owed" alert rule,
// run against what InfluxDB holds, fires in between and not after. The
// points follow the schema table of docs/metrics.md.
func TestOwedInversePointsDriveTheAlert(t *testing.T) {
	influx := startInflux(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := bustest.Connect(t, bustest.Server(t).URL(), "metrics")
	reg := plugins.Default()
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "test", Now: time.Now}
	d.Owner = control.New(d)
	for _, name := range []string{"locked", "fine"} {
		p, err := plan.Parse(name+".yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /tmp/x}}]
`, name)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Plans.Put(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	id := events.NewID()
	if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: "locked", Kind: runs.KindBackup, Phase: runs.Failed, CompensationDone: true,
		Compensation: []runs.Compensation{{Step: "hook:db/unlock", Undoes: "hook:db/lock", Phase: runs.Failed, Attempts: 4}}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Runs.MarkOwing(ctx, id); err != nil {
		t.Fatal(err)
	}
	s := metrics.New(d)
	s.Tick = 200 * time.Millisecond
	s.SetInflux(metrics.InfluxConfig{URL: influx.URL(), Database: database})
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	last := func() map[string]string {
		out := map[string]string{}
		for _, sr := range influxQL(t, influx, `SELECT last("owed") FROM "compensation_owed" GROUP BY "plan"`) {
			out[sr.Tags["plan"]] = fmt.Sprint(sr.Values[0][1])
		}
		return out
	}
	firing := func() []string {
		var out []string
		rows, err := flux(t, influx, grafanaFlux(alertQuery(t, "backstream-compensation-owed"), nil, "-604800s"))
		if err != nil {
			t.Fatal(err)
		}
		for plan, v := range byPlan(rows, "plan") {
			if v > 0 {
				out = append(out, plan)
			}
		}
		slices.Sort(out)
		return out
	}
	eventually(t, 30*time.Second, "owed points", func() bool {
		l := last()
		return l["locked"] == "1" && l["fine"] == "0"
	})
	if got := firing(); !slices.Equal(got, []string{"locked"}) {
		t.Errorf("while owed the alert fires for %v, want [locked]", got)
	}
	tags, fields := documented(t)
	for _, sr := range influxQL(t, influx, "SHOW TAG KEYS FROM compensation_owed") {
		for _, v := range sr.Values {
			if k := v[0].(string); !slices.Contains(tags["compensation_owed"], k) {
				t.Errorf("compensation_owed: tag %s is not documented", k)
			}
		}
	}
	for _, sr := range influxQL(t, influx, "SHOW FIELD KEYS FROM compensation_owed") {
		for _, v := range sr.Values {
			if k, typ := v[0].(string), v[1].(string); fields["compensation_owed"][k] != typ {
				t.Errorf("compensation_owed: field %s %s, documented %q", k, typ, fields["compensation_owed"][k])
			}
		}
	}

	// The loop's retry completes the unlock.
	if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error {
		r.Compensation[0].Phase, r.Compensation[0].Attempts = runs.Succeeded, 5
		r.Announced = map[string]bool{runs.AnnouncedCompensation: true}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the owed point back to 0", func() bool { return last()["locked"] == "0" })
	if got := firing(); len(got) != 0 {
		t.Errorf("once paid the alert fires for %v", got)
	}
}

// alertQuery is the InfluxDB query of the alert rule uid.
func alertQuery(t *testing.T, uid string) string {
	t.Helper()
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			if r.UID != uid {
				continue
			}
			for _, d := range r.Data {
				if d.DatasourceUID == "backstream-influxdb" {
					return d.Model.Query
				}
			}
		}
	}
	t.Fatalf("no alert rule %s", uid)
	return ""
}
