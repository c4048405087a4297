package hooks

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/hook"
)

// quick is compensation tuned for tests: short backoff, and owed inverse
// ops retried every retryEvery.
func quick(retryEvery time.Duration) func(*app.Config) {
	return func(c *app.Config) {
		c.Compensation = hook.Tuning{Backoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, RetryEvery: retryEvery, Tick: 100 * time.Millisecond}
	}
}

// globalReadOnly is @@global.read_only of a private MariaDB.
func globalReadOnly(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow("SELECT @@global.read_only").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// readOnlyPlan locks a private MariaDB with read_only, in sql hooks on the
// plan's source; every op records itself in shop.effects first, and the
// unlock fails (after recording itself) until it has run more than
// unlockFails times.
func readOnlyPlan(name string, port, unlockFails, retries int, deadline, dir string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: mariadb
    mariadb: {host: 127.0.0.1, port: %[2]d, user: root, databases: [shop]}
  hooks:
    - name: db
      type: sql
      timeout: 10s
      compensationDeadline: %[6]s
      ops:
        - name: lock
          sql: "INSERT INTO shop.effects (op) VALUES ('lock'); SET GLOBAL read_only = ON"
          inverseOp: unlock
        - name: unlock
          retries: %[4]d
          sql: "INSERT INTO shop.effects (op) VALUES ('unlock'); SET GLOBAL read_only = IF((SELECT COUNT(*) FROM shop.effects WHERE op = 'unlock') > %[3]d, 'OFF', 'not-yet')"
  workflows:
    - name: backup
      sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[5]s}
`, name, port, unlockFails, retries, filepath.Join(dir, "backups"), deadline)
}

func privateShop(t *testing.T) (*testenv.PrivateServer, *sql.DB) {
	t.Helper()
	srv := testenv.PrivateMariaDB(t)
	db := srv.CreateDB(t, "shop")
	if _, err := db.Exec("CREATE TABLE effects (id INT AUTO_INCREMENT PRIMARY KEY, op VARCHAR(32) NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return srv, db
}

func effectOps(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.Query("SELECT op FROM effects ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var op string
		if err := rows.Scan(&op); err != nil {
			t.Fatal(err)
		}
		out = append(out, op)
	}
	return out
}

// TestFailingForwardUnlockIsRetriedByCompensation: the forward unlock fails
// (read_only stays ON), the run fails, and compensation retries the unlock
// until it completes: read_only is back to 0, with no operator.
func TestFailingForwardUnlockIsRetriedByCompensation(t *testing.T) {
	srv, db := privateShop(t)
	env := harness.Start(t, harness.Options{Config: quick(time.Minute)})
	env.Apply(readOnlyPlan("unlock-retried", srv.Port, 2, 3, "1h", t.TempDir()))
	begin := time.Now()
	id := env.Trigger("unlock-retried")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "hook:db/unlock") {
		t.Fatalf("run %s: %s (%s), want failed by its unlock", id, r.Phase, r.Error)
	}
	if v := globalReadOnly(t, db); v != 0 {
		t.Fatalf("read_only = %d after compensation: the lock is held", v)
	}
	if got := effectOps(t, db); !slices.Equal(got, []string{"lock", "unlock", "unlock", "unlock"}) {
		t.Errorf("ops ran %v, want lock and three unlocks (forward, compensation, its retry)", got)
	}
	c := r.FindCompensation("hook:db/unlock")
	if c == nil || c.Phase != runs.Succeeded || c.Attempts != 3 || c.Undoes != "hook:db/lock" {
		t.Errorf("compensation entry %+v", c)
	}
	inverse, completed, failed := inverseEvents(t, env.Events(id))
	if !slices.Equal(inverse, []string{"db/unlock"}) || !slices.Equal(completed, []string{"db/unlock"}) || failed != 0 {
		t.Errorf("events: inverse %v, completed %v, %d compensation.failed", inverse, completed, failed)
	}
	t.Logf("run %s failed and was compensated in %s", id, time.Since(begin).Round(time.Millisecond))
}

// TestOwedUnlockIsReportedAndRetriedUntilItCompletes: the unlock still
// fails after compensation's retries; trigger --wait and backstream run ID
// say which op may still hold, the owed-inverse loop retries it until the
// hook's compensationDeadline, and then backstream run ID --compensate
// retries it once more: it completes, read_only is back to 0 and the run
// gets its compensation.completed.
func TestOwedUnlockIsReportedAndRetriedUntilItCompletes(t *testing.T) {
	srv, db := privateShop(t)
	harness.Binary(t) // built before the clock of the retries runs
	env := harness.Start(t, harness.Options{Config: quick(2 * time.Second)})
	// Attempts: the forward unlock and compensation's 2 tries fail, the
	// loop's retry 2 s later fails and is the last before the 3 s deadline;
	// the operator's retry is the fifth and completes.
	env.Apply(readOnlyPlan("unlock-owed", srv.Port, 4, 1, "3s", t.TempDir()))
	out, code := harness.Run(t, t.TempDir(), nil, "trigger", "unlock-owed", "--wait", "--nats", env.URL)
	if code != 1 || !strings.Contains(out, "hook db/lock not undone: unlock failed after 3 attempts:") ||
		!strings.Contains(out, "not-yet") || !strings.Contains(out, "retried automatically at") {
		t.Fatalf("trigger --wait (exit %d):\n%s", code, out)
	}
	// trigger prints the run id alone on its first line.
	id, _, _ := strings.Cut(out, "\n")
	if _, err := ulid.ParseStrict(id); err != nil {
		t.Fatalf("no run id on the first line of %q: %v", out, err)
	}
	if v := globalReadOnly(t, db); v != 1 {
		t.Fatalf("read_only = %d while the unlock is owed", v)
	}
	var cf []events.CompensationFailedData
	for _, e := range env.Events(id) {
		if d, err := events.DecodeAs[events.CompensationFailedData](e); err == nil && e.Type() == events.CompensationFailed {
			cf = append(cf, d)
		}
	}
	if len(cf) == 0 || cf[0].Op != "db/unlock" || cf[0].Undoes != "db/lock" || cf[0].Attempts != 3 || cf[0].NextRetry == nil {
		t.Errorf("compensation.failed %+v", cf)
	}

	// The loop's retry fails and is the last one before the deadline.
	waitFor(t, "the loop's last retry", 30*time.Second, func() bool {
		r, err := env.Runs.Get(context.Background(), id)
		return err == nil && len(r.Owed()) == 1 && r.Owed()[0].GaveUp
	})
	if out := runOutput(t, env.URL, id); !strings.Contains(out, "hook db/lock not undone: unlock failed after 4 attempts:") ||
		!strings.Contains(out, "no automatic retry left") {
		t.Errorf("backstream run %s past the deadline says:\n%s", id, out)
	}
	if v := globalReadOnly(t, db); v != 1 {
		t.Fatalf("read_only = %d while the unlock is owed", v)
	}
	if out, code := harness.Run(t, t.TempDir(), nil, "run", id, "--compensate", "--nats", env.URL); code != 0 {
		t.Fatalf("run --compensate (exit %d):\n%s", code, out)
	}
	waitFor(t, "the operator's retry to complete the unlock", 30*time.Second, func() bool { return globalReadOnly(t, db) == 0 })
	final := env.Wait(id, 30*time.Second)
	if c := final.FindCompensation("hook:db/unlock"); c == nil || c.Phase != runs.Succeeded || c.Attempts != 5 {
		t.Errorf("compensation entry %+v, want Succeeded after 5 attempts", c)
	}
	if got := effectOps(t, db); !slices.Equal(got, []string{"lock", "unlock", "unlock", "unlock", "unlock", "unlock"}) {
		t.Errorf("ops ran %v", got)
	}
	if out := runOutput(t, env.URL, id); strings.Contains(out, "not undone") {
		t.Errorf("backstream run %s still says:\n%s", id, out)
	}
	_, completed, _ := inverseEvents(t, env.Events(id))
	if !slices.Equal(completed, []string{"db/unlock"}) {
		t.Errorf("compensation.completed %v, want one listing db/unlock", completed)
	}
}

// pgOp is an exec op on a private PostgreSQL: it runs its statements
// through psql (each its own transaction), fails while it has run fewer
// than fails times (a counter file), and logs "<op> <forward|inverse>
// <ok|fail>" to ops.log.
const pgOp = `#!/bin/sh
dir=$1 port=$2 name=$3 fails=$4
shift 4
n=$(cat "$dir/$name.count" 2>/dev/null || echo 0)
n=$((n+1))
echo $n > "$dir/$name.count"
kind=forward
[ "$BACKSTREAM_INVERSE" = 1 ] && kind=inverse
if [ $n -le $fails ]; then
	echo "$name $kind fail" >> "$dir/ops.log"
	echo "$name: the service refused (try $n)" >&2
	exit 1
fi
for q in "$@"; do
	PGOPTIONS="-c default_transaction_read_only=off" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "$q" || exit 1
done
echo "$name $kind ok" >> "$dir/ops.log"
`

// TestFailingForwardResumeOnPostgres: lock (default_transaction_read_only)
// → quiesce (no parallel workers) → snapshot → resume fails → the run
// fails, and compensation runs resume and then unlock, newest first: the
// server ends writable with its workers back.
func TestFailingForwardResumeOnPostgres(t *testing.T) {
	pw := "pg-" + testenv.Unique("")
	srv := testenv.PrivatePostgres(t, pw)
	t.Setenv("BS_OWED_PGPASSWORD", pw)
	pg := srv.Open(t, "postgres")
	dir := t.TempDir()
	script := filepath.Join(dir, "pg-op.sh")
	if err := os.WriteFile(script, []byte(pgOp), 0o755); err != nil {
		t.Fatal(err)
	}
	op := func(name string, fails int, stmts ...string) string {
		args := []string{script, dir, fmt.Sprint(srv.Port), name, fmt.Sprint(fails)}
		args = append(args, stmts...)
		q := make([]string, len(args))
		for i, a := range args {
			q[i] = fmt.Sprintf("%q", a)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	reload := "SELECT pg_reload_conf()"
	env := harness.Start(t, harness.Options{Config: quick(time.Minute)})
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: pg-resume}
spec:
  source:
    type: command
    command: {argv: ["head", "-c", "200000", "/dev/urandom"]}
  hooks:
    - name: pg
      type: exec
      timeout: 20s
      exec:
        env: {PGPASSWORD: {env: BS_OWED_PGPASSWORD}}
      ops:
        - {name: lock, command: %s, inverseOp: unlock}
        - {name: unlock, command: %s}
        - {name: quiesce, command: %s, inverseOp: resume}
        - {name: resume, command: %s}
  workflows:
    - name: backup
      sequence: [{hook: pg/lock}, {hook: pg/quiesce}, snapshot, {hook: pg/resume}, {hook: pg/unlock}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %s}
`, op("lock", 0, "ALTER SYSTEM SET default_transaction_read_only = on", reload),
		op("unlock", 0, "ALTER SYSTEM RESET default_transaction_read_only", reload),
		op("quiesce", 0, "ALTER SYSTEM SET max_parallel_workers = 0", reload),
		op("resume", 1, "ALTER SYSTEM RESET max_parallel_workers", reload),
		filepath.Join(dir, "backups")))
	id := env.Trigger("pg-resume")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "hook:pg/resume") {
		t.Fatalf("run %s: %s (%s), want failed by its resume", id, r.Phase, r.Error)
	}
	log, err := os.ReadFile(filepath.Join(dir, "ops.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"lock forward ok", "quiesce forward ok", "resume forward fail", "resume inverse ok", "unlock inverse ok"}
	if got := strings.Split(strings.TrimSpace(string(log)), "\n"); !slices.Equal(got, want) {
		t.Errorf("ops ran\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A new session sees the server as the run found it.
	show := func(setting string) string {
		var v string
		if err := pg.QueryRow("SHOW " + setting).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	pg.SetMaxIdleConns(0)
	if ro, workers := show("default_transaction_read_only"), show("max_parallel_workers"); ro != "off" || workers != "8" {
		t.Errorf("after compensation: default_transaction_read_only %s, max_parallel_workers %s; want off, 8", ro, workers)
	}
	inverse, completed, _ := inverseEvents(t, env.Events(id))
	if !slices.Equal(inverse, []string{"pg/resume", "pg/unlock"}) || !slices.Equal(completed, []string{"pg/resume,pg/unlock"}) {
		t.Errorf("events: inverse %v, completed %v", inverse, completed)
	}
}

// TestRunFailedAfterItsSnapshotLeavesNoBackup: a run whose unlock fails
// after the backup was uploaded and verified (to a filesystem and to
// MinIO) leaves nothing that backups, restore PLAN/latest or retention
// take for a good backup; a later good run's retention removes it.
func TestRunFailedAfterItsSnapshotLeavesNoBackup(t *testing.T) {
	m := testenv.MinIO(t)
	bucket := m.NewBucket(t, "late")
	t.Setenv("BS_LATE_S3_ACCESS", m.AccessKey)
	t.Setenv("BS_LATE_S3_SECRET", m.SecretKey)
	dir := t.TempDir()
	fsDir := filepath.Join(dir, "backups")
	log := filepath.Join(dir, "ops.log")
	// The forward unlock waits until both uploads are verified, then fails
	// once; compensation's unlock completes.
	env := harness.Start(t, harness.Options{Config: quick(time.Minute)})
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: late}
spec:
  source:
    type: command
    command: {argv: ["head", "-c", "300000", "/dev/urandom"]}
  hooks:
    - name: db
      type: exec
      timeout: 30s
      ops:
        - {name: lock, command: ["sh", "-c", "echo lock >> %[1]s"], inverseOp: unlock}
        - name: unlock
          command: ["sh", "-c", "if [ -e %[2]s ]; then echo unlock >> %[1]s; exit 0; fi; touch %[2]s; while [ ! -e %[3]s ]; do sleep 0.05; done; echo unlock-fails >> %[1]s; exit 1"]
  workflows:
    - name: backup
      sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %[4]s}}
    - name: minio
      type: s3
      s3: {endpoint: %[5]s, bucket: %[6]s, insecure: true, accessKey: {env: BS_LATE_S3_ACCESS}, secretKey: {env: BS_LATE_S3_SECRET}}
  retention: {keepLast: 5}
`, log, filepath.Join(dir, "tried"), filepath.Join(dir, "verified"), fsDir, m.Endpoint, bucket))
	id := env.Trigger("late")
	// Let the unlock fail only once verify recorded both copies verified:
	// the worst case, a manifest that said "verified".
	waitFor(t, "both copies verified", time.Minute, func() bool {
		r, err := env.Runs.Get(context.Background(), id)
		if err != nil {
			return false
		}
		for _, d := range []string{"local", "minio"} {
			if ds := r.Destinations[d]; ds == nil || !ds.Verified {
				return false
			}
		}
		return true
	})
	if err := os.WriteFile(filepath.Join(dir, "verified"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed {
		t.Fatalf("run %s: %s, want Failed in its unlock", id, r.Phase)
	}
	ctx := context.Background()
	fs, err := filesystem.New(ctx, filesystem.Config{Path: fsDir})
	if err != nil {
		t.Fatal(err)
	}
	s3st, err := s3.New(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: bucket, Insecure: true,
		AccessKey: secret.Ref{Env: "BS_LATE_S3_ACCESS"}, SecretKey: secret.Ref{Env: "BS_LATE_S3_SECRET"}})
	if err != nil {
		t.Fatal(err)
	}
	s3Flags := []string{"--s3-endpoint", m.Endpoint, "--s3-bucket", bucket, "--s3-insecure",
		"--s3-access-key-env", "BS_LATE_S3_ACCESS", "--s3-secret-key-env", "BS_LATE_S3_SECRET"}
	for _, dest := range []struct {
		name  string
		st    storage.Storage
		flags []string
	}{{"filesystem", fs, []string{"--fs", fsDir}}, {"minio", s3st, s3Flags}} {
		t.Run(dest.name, func(t *testing.T) {
			// verify-failed marks the manifests asynchronously.
			waitFor(t, "the manifest marked failed", 30*time.Second, func() bool {
				m, err := backup.FindFailed(ctx, dest.st, "late/"+id)
				return err == nil && backup.Failed(m)
			})
			if _, err := backup.Find(ctx, dest.st, "late/latest"); err == nil {
				t.Error("late/latest found the failed run's backup")
			}
			out, code := harness.Run(t, dir, nil, append([]string{"backups", "--plan", "late"}, dest.flags...)...)
			if code != 0 || strings.Contains(out, id) || !strings.Contains(out, "1 backups of failed runs not listed") {
				t.Errorf("backups (exit %d):\n%s", code, out)
			}
			out, code = harness.Run(t, dir, nil, append([]string{"backups", "--plan", "late", "--all"}, dest.flags...)...)
			if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "failed: run failed in hook") {
				t.Errorf("backups --all (exit %d):\n%s", code, out)
			}
			for _, ref := range []string{"late/latest", "late/" + id} {
				out, code := harness.Run(t, dir, nil, append([]string{"restore", ref, "--to", filepath.Join(dir, "restored")}, dest.flags...)...)
				if code == 0 {
					t.Errorf("restore %s of the failed run succeeded:\n%s", ref, out)
				}
			}
		})
	}

	// The next run succeeds; its retention removes the failed backup from
	// both destinations (it was never kept for a rule).
	good := env.Trigger("late")
	if r := env.Wait(good, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("second run %s: %s (%s)", good, r.Phase, r.Error)
	}
	for name, st := range map[string]storage.Storage{"filesystem": fs, "minio": s3st} {
		waitFor(t, name+": the failed backup removed by retention", 30*time.Second, func() bool {
			_, err := backup.FindFailed(ctx, st, "late/"+id)
			return err != nil
		})
		if m, err := backup.Find(ctx, st, "late/latest"); err != nil || m.BackupID != good {
			t.Errorf("%s: latest is %q (%v), want %s", name, m.BackupID, err, good)
		}
	}
}
