package hooks

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/supervise"
	"github.com/backstream/backstream/pkg/testenv"
)

// supervisedPlan runs [h/lock, snapshot, h/unlock] with the given hook h
// (a slow lock op and its inverse unlock) on the given source.
func supervisedPlan(name, source, hook, dir string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source: %[2]s
  hooks:
%[3]s
  workflows:
    - name: backup
      sequence: [{hook: h/lock}, snapshot, {hook: h/unlock}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[4]s/backups}
`, name, source, hook, dir)
}

// lockStep waits until the run's hook:h/lock step recorded where its op
// runs, and returns that record.
func lockStep(t *testing.T, env *harness.Env, id string, ready func(*runs.Proc) bool) *runs.Proc {
	t.Helper()
	var proc *runs.Proc
	waitFor(t, "the lock op's process in the run record", time.Minute, func() bool {
		r, err := env.Runs.Get(bg, id)
		if err != nil {
			return false
		}
		st := r.FindStep("hook:h/lock")
		if st == nil || st.Proc == nil || !ready(st.Proc) {
			return false
		}
		proc = st.Proc
		return true
	})
	return proc
}

// TestOpDiesWithItsServe kills (SIGKILL) a `serve --services hook` while a
// slow lock op runs — the finding of issue 11: the op outlived serve and
// took effect after its inverse. Now the op's whole process group is gone
// within a second of the kill, before serve is even restarted; the
// restarted serve fails the run as interrupted and runs the inverse, and
// the op's effect (a marker its child would write) never happens.
func TestOpDiesWithItsServe(t *testing.T) {
	srv := bustest.Server(t)
	url := srv.URL()
	hookProc := harness.StartProcess(t, t.TempDir(), nil,
		"serve", "--services", "hook", "--nats", url, "--ack-wait", "2s", "--log-level", "debug")
	hookProc.WaitOutput("backstream serving", time.Minute)
	env := harness.Start(t, harness.Options{NATS: url, Services: []string{"snapshot", "filter", "upload", "verify"}})

	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	// The op: a child that would write the marker after 4 s, and a nested
	// shell with a child of its own; with the supervisor, 6 processes.
	const effectAfter = 4 * time.Second
	hook := fmt.Sprintf(`    - name: h
      type: exec
      timeout: 60s
      ops:
        - name: lock
          command: ["sh", "-c", "(sleep %d; touch %s) & sh -c 'sleep 30 & wait' & wait"]
          inverseOp: unlock
        - {name: unlock, command: ["sh", "-c", "echo unlock >> %s/ops.log"]}`, int(effectAfter.Seconds()), marker, dir)
	env.Apply(supervisedPlan("supervised-exec", `{type: command, command: {argv: ["head", "-c", "100000", "/dev/urandom"]}}`, hook, dir))
	id := env.Trigger("supervised-exec")

	proc := lockStep(t, env, id, func(p *runs.Proc) bool { return p.PGID != 0 })
	g := supervise.Group{Machine: proc.Machine, PGID: proc.PGID, Start: proc.PGIDStart}
	opStarted := time.Now()
	waitFor(t, "the op's 6 processes", 10*time.Second, func() bool {
		pids, err := supervise.Members(g)
		return err == nil && len(pids) == 6
	})
	if proc.Host == "" || proc.Machine != supervise.Machine() {
		t.Errorf("recorded %+v, want this host", proc)
	}

	hookProc.Kill()
	killed := time.Now()
	var left []int
	for {
		pids, err := supervise.Members(g)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			break
		}
		left = pids
		if time.Since(killed) > time.Second {
			t.Fatalf("a second after serve was killed, processes %v of the op's group %d remain", left, g.PGID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("op group %d (6 processes) gone %s after serve was killed", g.PGID, time.Since(killed).Round(time.Millisecond))

	hookProc.Restart()
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("run %s: %s (%s), want Failed, interrupted", id, r.Phase, r.Error)
	}
	if !strings.Contains(hookProc.Output(), "the interrupted op's process group is gone") {
		t.Errorf("the restarted serve did not check the op's group before compensating")
	}
	if got := opLog(t, dir); len(got) != 1 || got[0] != "unlock" {
		t.Errorf("ops ran %v, want the inverse unlock once", got)
	}
	time.Sleep(time.Until(opStarted.Add(effectAfter + 500*time.Millisecond)))
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the op took effect after serve died (marker: %v)", err)
	}
}

// TestSQLStatementDiesWithItsServe kills (SIGKILL) a `serve --services
// hook` while an sql op's statement runs on a private MariaDB and
// PostgreSQL; the restarted serve ends the session the run record names
// before it runs the inverse, so the statement is gone from the server
// within seconds of the restart.
func TestSQLStatementDiesWithItsServe(t *testing.T) {
	const pgPassword = "superv-pg-7781"
	tests := []struct {
		name  string
		start func(t *testing.T) (source string, admin *sql.DB)
		sleep string
		alive string
	}{
		{
			name: "mariadb", sleep: "SELECT SLEEP(30)",
			alive: "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
			start: func(t *testing.T) (string, *sql.DB) {
				s := testenv.PrivateMariaDB(t)
				return fmt.Sprintf("{type: mariadb, mariadb: {host: 127.0.0.1, port: %d, user: root, databases: [mysql]}}", s.Port), s.Open(t, "")
			},
		},
		{
			name: "postgres", sleep: "SELECT pg_sleep(30)",
			alive: "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1",
			start: func(t *testing.T) (string, *sql.DB) {
				s := testenv.PrivatePostgres(t, pgPassword)
				return fmt.Sprintf("{type: postgres, postgres: {host: 127.0.0.1, port: %d, user: postgres, password: {env: SUPERV_PG_PW}, databases: [postgres]}}", s.Port), s.Open(t, "postgres")
			},
		},
	}
	srv := bustest.Server(t)
	url := srv.URL()
	hookProc := harness.StartProcess(t, t.TempDir(), []string{"SUPERV_PG_PW=" + pgPassword},
		"serve", "--services", "hook", "--nats", url, "--ack-wait", "2s", "--log-level", "debug")
	hookProc.WaitOutput("backstream serving", time.Minute)
	env := harness.Start(t, harness.Options{NATS: url, Services: []string{"snapshot", "filter", "upload", "verify"}})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			source, admin := tt.start(t)
			alive := func(id int64) bool {
				var n int
				if err := admin.QueryRow(tt.alive, id).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n > 0
			}
			dir := t.TempDir()
			hook := fmt.Sprintf(`    - name: h
      type: sql
      timeout: 60s
      ops:
        - {name: lock, sql: %q, inverseOp: unlock}
        - {name: unlock, sql: "SELECT 1"}`, tt.sleep)
			name := "supervised-" + tt.name
			env.Apply(supervisedPlan(name, source, hook, dir))
			id := env.Trigger(name)
			proc := lockStep(t, env, id, func(p *runs.Proc) bool { return p.ConnID != 0 })
			waitFor(t, "the statement on the server", 10*time.Second, func() bool { return alive(proc.ConnID) })

			hookProc.Kill()
			killed := time.Now()
			hookProc.Restart()
			restarted := time.Now()
			waitFor(t, "the statement to be gone from the server", 15*time.Second, func() bool { return !alive(proc.ConnID) })
			t.Logf("%s session %d gone %s after serve was killed, %s after its restart",
				proc.Server, proc.ConnID, time.Since(killed).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
			r := env.Wait(id, time.Minute)
			if r.Phase != runs.Failed || !strings.Contains(r.Error, "interrupted") {
				t.Fatalf("run %s: %s (%s), want Failed, interrupted", id, r.Phase, r.Error)
			}
			if !strings.Contains(hookProc.Output(), "the interrupted op's session is gone") {
				t.Errorf("the restarted serve did not end the op's session before compensating")
			}
			inverse, _, failed := inverseEvents(t, env.Events(id))
			if len(inverse) != 1 || inverse[0] != "h/unlock" || failed != 0 {
				t.Errorf("inverse ops %v (%d failed), want h/unlock", inverse, failed)
			}
		})
	}
}
