// Package drill tests fire drills end to end: a backup made by the
// pipeline, a drill.requested, and the restore service restoring it into a
// scratch database, checking it and dropping it.
package drill

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/restore"
)

// TestDrillPostgres backs up a real PostgreSQL database through the whole
// pipeline (zstd, age encryption, a filesystem destination, verify), asks
// for a drill, and waits for drill.succeeded: the check counted the rows
// in the scratch database, pg_database holds no scratch database
// afterwards, and the source is as it was. A second drill whose check
// finds nothing ends drill.failed in stage check, also leaving nothing.
func TestDrillPostgres(t *testing.T) {
	src := testenv.Postgres(t)
	if _, err := src.SQL.Exec("CREATE TABLE orders (id int primary key, total numeric); INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g"); err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	idFile := filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.IdentityFile = idFile }})
	planText := func(check string) string {
		return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: drillpg}
spec:
  source:
    type: postgres
    postgres: {host: %s, port: %d, user: %s, databases: [%s]}
  filters:
    compression: zstd
    encryption:
      recipients: [%q]
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %s}}
  verify: {enabled: true}
  drill:
    check: {sql: %q, timeout: 30s}
    timeout: 5m
`, src.Host, src.Port, src.User, src.Name, id.Recipient().String(), filepath.Join(dir, "backups"), check)
	}
	env.Apply(planText("SELECT id FROM orders WHERE total > 600"))
	run := env.Wait(env.Trigger("drillpg"), 2*time.Minute)
	if run.Phase != runs.Succeeded {
		t.Fatalf("backup run %s: %s %s", run.ID, run.Phase, run.Error)
	}

	scratchDBs := func() []string {
		rows, err := src.SQL.Query("SELECT datname FROM pg_database WHERE datname LIKE 'bsdrill\\_%'")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				t.Fatal(err)
			}
			out = append(out, n)
		}
		return out
	}
	var sum string
	if err := src.SQL.QueryRow("SELECT count(*) || '/' || sum(total) FROM orders").Scan(&sum); err != nil {
		t.Fatal(err)
	}

	drillID := requestDrill(t, env)
	d := waitDrill(t, env, drillID)
	ok, isOK := d.(*events.DrillSucceededData)
	if !isOK {
		t.Fatalf("drill %s: %#v, want drill.succeeded", drillID, d)
	}
	// total > 600 holds for ids 401..500.
	if ok.Rows != 100 || ok.BackupID != run.ID || ok.Destination != "local" || ok.Target != restore.ScratchName(drillID) {
		t.Errorf("drill.succeeded %+v, want 100 rows of backup %s from local in %s", ok, run.ID, restore.ScratchName(drillID))
	}
	for _, n := range scratchDBs() {
		if n == ok.Target {
			t.Errorf("pg_database still holds the scratch database %s", n)
		}
	}
	var after string
	if err := src.SQL.QueryRow("SELECT count(*) || '/' || sum(total) FROM orders").Scan(&after); err != nil || after != sum {
		t.Errorf("the source holds %s after the drill (%v), held %s", after, err, sum)
	}

	env.Apply(planText("SELECT id FROM orders WHERE total < 0"))
	failedID := requestDrill(t, env)
	f, isFailed := waitDrill(t, env, failedID).(*events.DrillFailedData)
	if !isFailed || f.Stage != events.DrillStageCheck || !strings.Contains(f.Error, "no rows") {
		t.Fatalf("drill %s: %#v, want drill.failed in stage check", failedID, f)
	}
	for _, n := range scratchDBs() {
		if n == f.Target {
			t.Errorf("pg_database still holds the scratch database %s of the failed drill", n)
		}
	}
}

// requestDrill publishes a drill.requested of plan drillpg as the CLI
// would and returns the drill's id.
func requestDrill(t *testing.T, env *harness.Env) string {
	t.Helper()
	id := events.NewID()
	m := env.Bus.Meta("drillpg", id, "")
	m.ID = id
	e, err := events.New(m, events.DrillRequestedData{Trigger: events.TriggerCLI, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Bus.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	return id
}

// waitDrill waits for the result event of drill id and returns its payload.
func waitDrill(t *testing.T, env *harness.Env, id string) events.Payload {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		for _, e := range env.Events(id) {
			if e.Type() == events.DrillSucceeded || e.Type() == events.DrillFailed {
				p, err := events.Decode(e)
				if err != nil {
					t.Fatal(err)
				}
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no drill.succeeded or drill.failed for drill %s in 3m: events %v", id, harness.Types(env.Events(id)))
	return nil
}
