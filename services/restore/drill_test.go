package restore_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/files"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/restore"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// drillEnv is a restore service on an embedded NATS with plan "p", whose
// two filesystem destinations one and two hold the backups a test puts.
type drillEnv struct {
	s     *restore.Service
	d     *stage.Deps
	dests map[string]string
}

func newDrillEnv(t *testing.T) *drillEnv {
	t.Helper()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	s := restore.New(d)
	s.DrillDir = t.TempDir()
	return &drillEnv{s: s, d: d, dests: map[string]string{"one": t.TempDir(), "two": t.TempDir()}}
}

// apply stores plan p with source block src (YAML, indented for spec.source)
// and drill block drill (YAML, "" for none).
func (e *drillEnv) apply(t *testing.T, src, drill string) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: p}
spec:
  source: %s
  destinations:
    - {name: one, type: filesystem, filesystem: {path: %s}}
    - {name: two, type: filesystem, filesystem: {path: %s}}
`, src, e.dests["one"], e.dests["two"])
	if drill != "" {
		doc += "  drill: " + drill + "\n"
	}
	p, err := plan.Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Plans.Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

// backup dumps src and stores the dump as backup id in both destinations;
// corruptOne flips a byte of the copy in one.
func (e *drillEnv) backup(t *testing.T, src source.Source, id string, corruptOne bool) {
	t.Helper()
	ctx := context.Background()
	var dump bytes.Buffer
	if _, err := src.Backup(ctx, &dump); err != nil {
		t.Fatalf("backup: %v", err)
	}
	for _, d := range []string{"one", "two"} {
		st, err := filesystem.New(ctx, filesystem.Config{Path: e.dests[d]})
		if err != nil {
			t.Fatal(err)
		}
		m := putBackup(t, st, id, 1, dump.Bytes())
		if d == "one" && corruptOne {
			flip(t, st, m, 20)
		}
		st.Close()
	}
}

// drill hands a drill.requested to the drill consumer's handler and
// returns its one result event and payload.
func (e *drillEnv) drill(t *testing.T, id string, req events.DrillRequestedData) (events.Event, events.Payload) {
	t.Helper()
	m := e.d.Bus.Meta("p", id, "")
	m.ID = id
	if req.Trigger == "" {
		req.Trigger = events.TriggerCLI
	}
	in, err := events.New(m, req)
	if err != nil {
		t.Fatal(err)
	}
	var h func(context.Context, events.Event) ([]events.Event, error)
	for _, c := range e.s.Consumers() {
		if c.Name == "drill" {
			h = c.Handler
		}
	}
	if h == nil {
		t.Fatal("the restore service has no drill consumer")
	}
	out, err := h(context.Background(), in)
	if err != nil {
		t.Fatalf("drill handler: %v", err)
	}
	if len(out) != 1 {
		t.Fatalf("drill handler returned %d events, want 1", len(out))
	}
	if events.RunID(out[0]) != id || out[0].Subject() != "p" {
		t.Errorf("result runid %q subject %q, want %s and p", events.RunID(out[0]), out[0].Subject(), id)
	}
	pl, err := events.Decode(out[0])
	if err != nil {
		t.Fatal(err)
	}
	return out[0], pl
}

func succeeded(t *testing.T, pl events.Payload) *events.DrillSucceededData {
	t.Helper()
	d, ok := pl.(*events.DrillSucceededData)
	if !ok {
		t.Fatalf("got %#v, want drill.succeeded", pl)
	}
	return d
}

func drillFailed(t *testing.T, pl events.Payload, stage string) *events.DrillFailedData {
	t.Helper()
	d, ok := pl.(*events.DrillFailedData)
	if !ok || d.Stage != stage {
		t.Fatalf("got %#v, want drill.failed in stage %s", pl, stage)
	}
	return d
}

func seedItems(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	if _, err := db.Exec("CREATE TABLE items (id int primary key, v varchar(100))"); err != nil {
		t.Fatal(err)
	}
	var vals []string
	for i := range n {
		vals = append(vals, fmt.Sprintf("(%d, 'value %d')", i, i*7))
	}
	if _, err := db.Exec("INSERT INTO items VALUES " + strings.Join(vals, ",")); err != nil {
		t.Fatal(err)
	}
}

func itemsSummary(t *testing.T, db *sql.DB) string {
	t.Helper()
	var n, sum int64
	if err := db.QueryRow("SELECT COUNT(*), COALESCE(SUM(id), 0) FROM items").Scan(&n, &sum); err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%d rows, sum %d", n, sum)
}

// dbSource is a database source under test: how to name it in a plan,
// the plugin, and whether a database exists on its server.
type dbSource struct {
	name   string
	open   func(testing.TB) *testenv.DB
	block  func(db *testenv.DB) string
	plugin func(db *testenv.DB) source.Source
	exists func(t *testing.T, db *testenv.DB, name string) bool
}

var dbSources = []dbSource{
	{
		name: "postgres", open: testenv.Postgres,
		block: func(db *testenv.DB) string {
			return fmt.Sprintf("{type: postgres, postgres: {host: %s, port: %d, user: %s, databases: [%s]}}", db.Host, db.Port, db.User, db.Name)
		},
		plugin: func(db *testenv.DB) source.Source {
			return postgres.New(postgres.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}})
		},
		exists: func(t *testing.T, db *testenv.DB, name string) bool {
			var n int
			if err := db.SQL.QueryRow("SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		},
	},
	{
		name: "mariadb", open: testenv.MariaDB,
		block: func(db *testenv.DB) string {
			return fmt.Sprintf("{type: mariadb, mariadb: {host: %s, port: %d, user: %s, databases: [%s]}}", db.Host, db.Port, db.User, db.Name)
		},
		plugin: func(db *testenv.DB) source.Source {
			return mariadb.New(mariadb.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}})
		},
		exists: func(t *testing.T, db *testenv.DB, name string) bool {
			var n int
			if err := db.SQL.QueryRow("SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", name).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		},
	},
}

// TestDrillDatabase drills real PostgreSQL and MariaDB backups: the backup
// is restored into a scratch database named after the drill, the check's
// rows are counted there, the scratch database is dropped afterwards and
// the source is untouched; a check without rows fails the drill in stage
// check and still drops it; a redelivery publishes the same event; a
// corrupt first copy falls back to the second, which the result names.
func TestDrillDatabase(t *testing.T) {
	for _, ds := range dbSources {
		t.Run(ds.name, func(t *testing.T) {
			e := newDrillEnv(t)
			src := ds.open(t)
			seedItems(t, src.SQL, 200)
			want := itemsSummary(t, src.SQL)
			backupID := events.NewID()
			e.backup(t, ds.plugin(src), backupID, false)

			t.Run("check with rows", func(t *testing.T) {
				e.apply(t, ds.block(src), `{check: {sql: "SELECT id FROM items WHERE id < 7"}}`)
				id := events.NewID()
				ev, pl := e.drill(t, id, events.DrillRequestedData{})
				d := succeeded(t, pl)
				if d.Target != restore.ScratchName(id) || !strings.HasPrefix(d.Target, "bsdrill_") {
					t.Errorf("target %q, want %q", d.Target, restore.ScratchName(id))
				}
				if d.Rows != 7 || d.BackupID != backupID || d.Destination != "one" || d.Bytes == 0 {
					t.Errorf("succeeded %+v, want 7 rows of backup %s from one", d, backupID)
				}
				if ds.exists(t, src, d.Target) {
					t.Errorf("scratch database %s left behind", d.Target)
				}
				if got := itemsSummary(t, src.SQL); got != want {
					t.Errorf("the source has %s after the drill, had %s", got, want)
				}

				// A redelivery (the ack was lost) drills again and
				// publishes the same event, which the duplicate window drops.
				ev2, pl2 := e.drill(t, id, events.DrillRequestedData{})
				succeeded(t, pl2)
				if ev2.ID() != ev.ID() {
					t.Errorf("redelivery published %s, first delivery %s", ev2.ID(), ev.ID())
				}
			})

			t.Run("check without rows", func(t *testing.T) {
				e.apply(t, ds.block(src), `{check: {sql: "SELECT id FROM items WHERE id < 0"}}`)
				id := events.NewID()
				_, pl := e.drill(t, id, events.DrillRequestedData{BackupID: backupID})
				d := drillFailed(t, pl, events.DrillStageCheck)
				if !strings.Contains(d.Error, "no rows") || d.Target != restore.ScratchName(id) || d.BackupID != backupID {
					t.Errorf("failed %+v", d)
				}
				if ds.exists(t, src, d.Target) {
					t.Errorf("scratch database %s left behind after a failed check", d.Target)
				}
			})

			t.Run("a leftover of the same drill is dropped first", func(t *testing.T) {
				e.apply(t, ds.block(src), `{check: {sql: "SELECT count(*) FROM items"}}`)
				id := events.NewID()
				// What a delivery that crashed mid-restore left.
				if _, err := src.SQL.Exec("CREATE DATABASE " + restore.ScratchName(id)); err != nil {
					t.Fatal(err)
				}
				_, pl := e.drill(t, id, events.DrillRequestedData{})
				if d := succeeded(t, pl); d.Rows != 1 || ds.exists(t, src, d.Target) {
					t.Errorf("succeeded %+v; scratch left: %v", d, ds.exists(t, src, d.Target))
				}
			})

			t.Run("corrupt first copy", func(t *testing.T) {
				bad := events.NewID()
				e.backup(t, ds.plugin(src), bad, true)
				e.apply(t, ds.block(src), `{check: {sql: "SELECT id FROM items"}}`)
				id := events.NewID()
				_, pl := e.drill(t, id, events.DrillRequestedData{BackupID: bad})
				d := succeeded(t, pl)
				if d.Destination != "two" || d.BackupID != bad || d.Rows != 200 {
					t.Errorf("succeeded %+v, want backup %s from two with 200 rows", d, bad)
				}
				if ds.exists(t, src, d.Target) {
					t.Errorf("scratch database %s left behind", d.Target)
				}
				if got := itemsSummary(t, src.SQL); got != want {
					t.Errorf("the source has %s after the drill, had %s", got, want)
				}
			})
		})
	}
}

// TestDrillRefusals: what a drill cannot do fails it in stage prepare,
// saying what to change, before anything is written.
func TestDrillRefusals(t *testing.T) {
	e := newDrillEnv(t)
	a, b := testenv.MariaDB(t), testenv.MariaDB(t)
	seedItems(t, a.SQL, 3)
	seedItems(t, b.SQL, 3)
	two := mariadb.New(mariadb.Config{Host: a.Host, Port: a.Port, User: a.User, Databases: []string{a.Name, b.Name}})
	backupID := events.NewID()
	e.backup(t, two, backupID, false)
	block := fmt.Sprintf("{type: mariadb, mariadb: {host: %s, port: %d, user: %s, databases: [%s, %s]}}", a.Host, a.Port, a.User, a.Name, b.Name)

	t.Run("no drill block", func(t *testing.T) {
		e.apply(t, block, "")
		_, pl := e.drill(t, events.NewID(), events.DrillRequestedData{})
		if d := drillFailed(t, pl, events.DrillStagePrepare); !strings.Contains(d.Error, "spec.drill") {
			t.Errorf("error %q does not name spec.drill", d.Error)
		}
	})
	t.Run("a backup of two databases", func(t *testing.T) {
		e.apply(t, block, `{check: {sql: "SELECT 1"}}`)
		id := events.NewID()
		_, pl := e.drill(t, id, events.DrillRequestedData{})
		d := drillFailed(t, pl, events.DrillStagePrepare)
		if !strings.Contains(d.Error, "spec.source.mariadb.databases") || d.BackupID != backupID {
			t.Errorf("failed %+v, want the setting to change named", d)
		}
		var n int
		if err := a.SQL.QueryRow("SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", restore.ScratchName(id)).Scan(&n); err != nil || n != 0 {
			t.Errorf("scratch database left: %d (%v)", n, err)
		}
		if got := itemsSummary(t, a.SQL); got != "3 rows, sum 3" {
			t.Errorf("source has %s", got)
		}
	})
	t.Run("an unknown backup", func(t *testing.T) {
		e.apply(t, block, `{check: {sql: "SELECT 1"}}`)
		_, pl := e.drill(t, events.NewID(), events.DrillRequestedData{BackupID: "01NOSUCHBACKUP0000000000000"})
		if d := drillFailed(t, pl, events.DrillStagePrepare); !strings.Contains(d.Error, "01NOSUCHBACKUP") {
			t.Errorf("error %q", d.Error)
		}
	})
}

// TestDrillFiles drills a files source: the tree is unpacked into a
// private directory of the drill's own, the check command finds it
// through BACKSTREAM_DRILL_TARGET, and the directory is gone afterwards;
// a failing command fails the drill in stage check with its output; a
// serve that refuses exec refuses the check command before anything runs.
func TestDrillFiles(t *testing.T) {
	e := newDrillEnv(t)
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "a.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	backupID := events.NewID()
	e.backup(t, files.New(files.Config{Path: tree}), backupID, false)
	block := fmt.Sprintf("{type: files, files: {path: %s}}", tree)
	probe := filepath.Join(t.TempDir(), "probe")

	t.Run("check passes", func(t *testing.T) {
		// The check records the mode of the target and the file it found.
		e.apply(t, block, fmt.Sprintf(`{check: {command: [sh, -c, 'stat -c %%a "$BACKSTREAM_DRILL_TARGET" > %s && cat "$BACKSTREAM_DRILL_TARGET/a.txt" >> %s']}}`, probe, probe))
		id := events.NewID()
		_, pl := e.drill(t, id, events.DrillRequestedData{})
		d := succeeded(t, pl)
		if d.Target != filepath.Join(e.s.DrillDir, restore.ScratchName(id)) || d.BackupID != backupID {
			t.Errorf("succeeded %+v", d)
		}
		got, err := os.ReadFile(probe)
		if err != nil || string(got) != "700\nhello" {
			t.Errorf("the check saw %q (%v), want a 0700 directory holding a.txt", got, err)
		}
		if _, err := os.Stat(d.Target); !os.IsNotExist(err) {
			t.Errorf("scratch directory %s left behind: %v", d.Target, err)
		}
		if b, err := os.ReadFile(filepath.Join(tree, "a.txt")); err != nil || string(b) != "hello" {
			t.Errorf("source tree changed: %q %v", b, err)
		}
	})
	t.Run("check fails", func(t *testing.T) {
		e.apply(t, block, `{check: {command: [sh, -c, 'echo looking; echo missing.txt not found >&2; exit 3']}}`)
		_, pl := e.drill(t, events.NewID(), events.DrillRequestedData{})
		d := drillFailed(t, pl, events.DrillStageCheck)
		if !strings.Contains(d.Error, "exit status 3") || !strings.Contains(d.Error, "missing.txt not found") || !strings.Contains(d.Error, "looking") {
			t.Errorf("error %q, want the exit status and the output", d.Error)
		}
		if _, err := os.Stat(d.Target); !os.IsNotExist(err) {
			t.Errorf("scratch directory %s left behind: %v", d.Target, err)
		}
	})
	t.Run("exec refused", func(t *testing.T) {
		e.apply(t, block, fmt.Sprintf(`{check: {command: [touch, %s]}}`, probe+".refused"))
		e.d.RefuseExec = true
		defer func() { e.d.RefuseExec = false }()
		_, pl := e.drill(t, events.NewID(), events.DrillRequestedData{})
		if d := drillFailed(t, pl, events.DrillStagePrepare); !strings.Contains(d.Error, "spec.drill.check.command") {
			t.Errorf("error %q", d.Error)
		}
		if _, err := os.Stat(probe + ".refused"); !os.IsNotExist(err) {
			t.Error("the refused check ran")
		}
	})
	t.Run("the scratch directory would be the source", func(t *testing.T) {
		e.apply(t, fmt.Sprintf("{type: files, files: {path: %s}}", e.s.DrillDir), `{check: {command: ["true"]}}`)
		_, pl := e.drill(t, events.NewID(), events.DrillRequestedData{})
		if d := drillFailed(t, pl, events.DrillStagePrepare); d.Target != "" || !strings.Contains(d.Error, "backs up") {
			t.Errorf("failed %+v", d)
		}
	})
}
