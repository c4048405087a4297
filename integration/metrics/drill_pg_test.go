package metrics

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/metrics"
)

// TestDrillOnPostgresIsAPointAndItsFailureFiresTheAlert: the whole
// platform with InfluxDB. A PostgreSQL database is backed up, and a drill
// restores it into a scratch database, runs its SQL check and drops the
// database; its backup_drill point is in InfluxDB and the drill alert
// rule's query does not fire. A drill whose check finds no rows is a
// failed drill: its point says so and the alert query fires for the plan.
func TestDrillOnPostgresIsAPointAndItsFailureFiresTheAlert(t *testing.T) {
	influx := startInflux(t)
	src := testenv.Postgres(t)
	if _, err := src.SQL.Exec("CREATE TABLE orders (id int primary key, total numeric); INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 200) g"); err != nil {
		t.Fatal(err)
	}
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) {
		c.Influx = metrics.InfluxConfig{URL: influx.URL(), Database: database}
	}})
	dir := t.TempDir()
	apply := func(check string) {
		env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: drillpoint}
spec:
  source:
    type: postgres
    postgres: {host: %s, port: %d, user: %s, databases: [%s]}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %s}}
  drill:
    check: {sql: %q}
`, src.Host, src.Port, src.User, src.Name, filepath.Join(dir, "backups"), check))
	}
	apply("SELECT id FROM orders WHERE total > 150")
	if r := env.Wait(env.Trigger("drillpoint"), 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("backup run %s: %s", r.Phase, r.Error)
	}
	scratch := func() int {
		var n int
		if err := src.SQL.QueryRow(`SELECT count(*) FROM pg_database WHERE datname LIKE 'bsdrill\_%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	drill := func() events.Event {
		t.Helper()
		id := events.NewID()
		e, err := events.New(env.Bus.Meta("drillpoint", id, ""), events.DrillRequestedData{Trigger: events.TriggerCLI, RequestedBy: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Bus.Publish(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		var out events.Event
		eventually(t, 3*time.Minute, "the drill's result", func() bool {
			for _, ev := range env.Events(id) {
				if ev.Type() == events.DrillSucceeded || ev.Type() == events.DrillFailed {
					out = ev
					return true
				}
			}
			return false
		})
		return out
	}
	// latest is the plan's newest backup_drill point's success field.
	latest := func() (float64, bool) {
		rows, err := flux(t, influx, fmt.Sprintf(`from(bucket: %q) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "backup_drill" and r.plan == "drillpoint" and r._field == "success")
  |> last()`, database))
		if err != nil {
			t.Fatal(err)
		}
		v, ok := byPlan(rows, "plan")["drillpoint"]
		return v, ok
	}
	firing := func() bool {
		rows, err := flux(t, influx, grafanaFlux(alertQuery(t, "backstream-drill-failed"), nil, "-3456000s"))
		if err != nil {
			t.Fatal(err)
		}
		v, ok := byPlan(rows, "plan")["drillpoint"]
		return ok && v < 1
	}

	if e := drill(); e.Type() != events.DrillSucceeded {
		t.Fatalf("drill: %s %s", e.Type(), e.Data())
	}
	if n := scratch(); n != 0 {
		t.Errorf("%d scratch databases left after the drill", n)
	}
	eventually(t, 30*time.Second, "the drill's success point", func() bool { v, ok := latest(); return ok && v == 1 })
	if firing() {
		t.Error("the drill alert fires after a good drill")
	}

	apply("SELECT id FROM orders WHERE total < 0")
	if e := drill(); e.Type() != events.DrillFailed {
		t.Fatalf("drill with a check that finds nothing: %s %s", e.Type(), e.Data())
	}
	if n := scratch(); n != 0 {
		t.Errorf("%d scratch databases left after the failed drill", n)
	}
	eventually(t, 30*time.Second, "the failed drill's point", func() bool { v, ok := latest(); return ok && v == 0 })
	if !firing() {
		t.Error("the drill alert does not fire after a failed drill")
	}
}
