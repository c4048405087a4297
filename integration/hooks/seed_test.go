package hooks

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// seedPlan is the seed scenario's plan: sequence [lock, snapshot, unlock]
// with sql hooks on the source's MariaDB; each op records itself in table.
// passwordEnv names the environment variable holding the user's password;
// lockTail is appended to the lock op's statements.
func seedPlan(name, user, passwordEnv, db, table, binDir, lockTail, dest string) string {
	bin := ""
	if binDir != "" {
		bin = ", binDir: " + binDir
	}
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: mariadb
    mariadb: {host: 127.0.0.1, port: 3306, user: %[2]s, password: {env: %[3]s}, databases: [%[4]s]%[6]s}
  hooks:
    - name: db
      type: sql
      timeout: 30s
      ops:
        - name: lock
          sql: "SET GLOBAL read_only = ON; INSERT INTO %[4]s.%[5]s (op) VALUES ('lock')%[7]s"
          inverseOp: unlock
        - name: unlock
          sql: "SET GLOBAL read_only = OFF; INSERT INTO %[4]s.%[5]s (op) VALUES ('unlock')"
  workflows:
    - name: backup
      sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[8]s}
`, name, user, passwordEnv, db, table, bin, lockTail, dest)
}

// TestSeedScenarioNeverLeavesMariaDBLocked runs the seed scenario of issue 5
// on the machine's MariaDB: the hook service runs as a child `backstream
// serve --services hook` (so it can be killed), the data stages in-process,
// on one NATS. Credentials live where they are used: the plan's password is
// the environment variable SEED_PW, which holds the right password in the
// hook process and, in the wrong-credentials case, a wrong one in the
// snapshot's process; the other cases read SEED_PW_OK, right in both.
func TestSeedScenarioNeverLeavesMariaDBLocked(t *testing.T) {
	db := testenv.MariaDB(t)
	neverLeaveLocked(t, db.SQL)
	const password = "s3ed-pass"
	user := seedUser(t, db.SQL, password)
	t.Setenv("SEED_PW", "not-the-password")
	t.Setenv("SEED_PW_OK", password)
	if _, err := db.SQL.Exec("CREATE TABLE orders (id INT PRIMARY KEY, note TEXT); INSERT INTO orders VALUES (1, 'a'), (2, 'b')"); err != nil {
		t.Fatal(err)
	}

	srv := bustest.Server(t)
	url := srv.URL()
	hookProc := harness.StartProcess(t, t.TempDir(), []string{"SEED_PW=" + password},
		"serve", "--services", "hook", "--nats", url, "--ack-wait", "2s", "--log-level", "debug")
	hookProc.WaitOutput("backstream serving", time.Minute)
	env := harness.Start(t, harness.Options{NATS: url, Services: []string{"snapshot", "filter", "upload", "verify"}})

	// The dump process streams a few MiB, then is killed mid-stream.
	killedDump := t.TempDir()
	mariadb, err := exec.LookPath("mariadb")
	if err != nil {
		testenv.Missing(t, "mariadb client: %v", err)
	}
	if err := os.Symlink(mariadb, filepath.Join(killedDump, "mariadb")); err != nil {
		t.Fatal(err)
	}
	script(t, killedDump, "mariadb-dump", "head -c 3000000 /dev/urandom\nkill -KILL $$\n")

	tests := []struct {
		name        string
		passwordEnv string
		binDir      string
		lockTail    string
		// killHook kills the hook service once the lock row exists and
		// restarts it.
		killHook  bool
		wantError string
	}{
		{name: "wrong credentials for the dump", passwordEnv: "SEED_PW", wantError: "Access denied"},
		{name: "dump killed mid-stream", passwordEnv: "SEED_PW_OK", binDir: killedDump, wantError: "dump failed"},
		// The lock op sleeps after locking, so the kill lands between the
		// lock taking effect and its being recorded: the op is interrupted.
		{name: "hook service killed right after the lock", passwordEnv: "SEED_PW_OK", lockTail: "; DO SLEEP(5)", killHook: true, wantError: "interrupted"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := fmt.Sprintf("effects_%d", i)
			effects(t, db.SQL, table)
			name := fmt.Sprintf("seed-%d", i)
			env.Apply(seedPlan(name, user, tt.passwordEnv, db.Name, table, tt.binDir, tt.lockTail, t.TempDir()))
			id := env.Trigger(name)
			if tt.killHook {
				waitFor(t, "lock row", time.Minute, func() bool { return slices.Contains(ops(t, db.SQL, table, ""), "lock") })
				hookProc.Kill()
				if !readOnly(t, db.SQL) {
					t.Fatal("the lock did not take effect before the kill")
				}
				hookProc.Restart()
			}
			r := env.Wait(id, 2*time.Minute)
			if r.Phase != runs.Failed || !strings.Contains(r.Error, tt.wantError) {
				t.Fatalf("run %s: %s (%s), want Failed with %q", id, r.Phase, r.Error, tt.wantError)
			}
			if got := ops(t, db.SQL, table, ""); !slices.Equal(got, []string{"lock", "unlock"}) {
				t.Errorf("ops ran: %v, want [lock unlock]: unlock exactly once", got)
			}
			if readOnly(t, db.SQL) {
				t.Errorf("mariadb is still read_only after the failed run")
			}
			inverse, completed, failed := inverseEvents(t, env.Events(id))
			if !slices.Equal(inverse, []string{"db/unlock"}) || !slices.Equal(completed, []string{"db/unlock"}) || failed != 0 {
				t.Errorf("compensation events: inverse %v, completed %v, failed %d", inverse, completed, failed)
			}
			out := runOutput(t, url, id)
			if !strings.Contains(out, "compensate hook:db/unlock") || !strings.Contains(out, "phase Failed") {
				t.Errorf("backstream run %s does not show the compensation:\n%s", id, out)
			}
			t.Logf("backstream run %s:\n%s", id, out)
		})
	}
}
