package sources

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// The tests in this file run against database servers of their own
// (testenv.PrivateMariaDB, testenv.PrivatePostgres): they kill the server
// in the middle of a dump, and they need password authentication, which
// the machine's PostgreSQL (trust) cannot give.

// privateSeedSize is enough row data that the dump, stopped at the gate
// table, has streamed more than one 5 MiB part of sealed data.
const privateSeedSize = 24 << 20

// gateTable sorts after every seeded table, so a dump reaches it last.
const gateTable = "zz_gate"

// TestMariaDBServerKilledMidDump dumps a private MariaDB through the
// pipeline, holds the dump at its last table (LOCK TABLES … WRITE in a
// session of the test) once everything before it has streamed and the
// multipart upload has begun, SIGKILLs mariadbd, and checks that the run
// fails with mariadb-dump's own message and leaves nothing in MinIO.
func TestMariaDBServerKilledMidDump(t *testing.T) {
	ctx := context.Background()
	srv := testenv.PrivateMariaDB(t)
	r := newRig(t)
	const dbName = "shop"
	db := srv.CreateDB(t, dbName)
	sourcetest.SeedMariaDB(t, ctx, db, privateSeedSize)
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+gateTable+" (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO "+gateTable+" VALUES (1)"); err != nil {
		t.Fatalf("create gate: %v", err)
	}
	gate := conn(t, db)
	if _, err := gate.ExecContext(ctx, "LOCK TABLES "+gateTable+" WRITE"); err != nil {
		t.Fatalf("lock gate: %v", err)
	}

	r.apply(t, "maria-killed", fmt.Sprintf("    type: mariadb\n    mariadb:\n      host: 127.0.0.1\n      port: %d\n      user: root\n      databases: [%s]\n", srv.Port, dbName))
	id := r.trigger(t, "maria-killed")
	waitQuery(t, db, "mariadb-dump blocked at the gate", `SELECT COUNT(*) FROM information_schema.processlist
		WHERE state = 'Waiting for table metadata lock' AND info LIKE '%`+gateTable+`%'`)
	up := r.waitIncompleteUpload(t, "maria-killed", id)
	t.Logf("dump held at %s, multipart upload %s in progress: SIGKILL mariadbd", gateTable, up.UploadID)
	srv.Kill()

	f := r.mustFail(t, harness.WaitRun(t, r.env.Runs, id, 3*time.Minute))
	r.noUploadLeft(t, "maria-killed", id)
	checkFailure(t, f, "mariadb-dump", "Lost connection", 4<<20)
	t.Logf("snapshot.failed after %d bytes: stderr %q", f.snapshot.Bytes, f.snapshot.StderrTail)
}

// TestPostgresPrivate runs against a private PostgreSQL whose pg_hba.conf
// asks every connection for a scram-sha-256 password: a wrong password
// fails the run with the server's message, and a server SIGKILLed while
// pg_dump streams fails it with pg_dump's; neither leaves a backup.
//
// The dump is held at its last table by a row-security policy whose
// function waits for an advisory lock the test holds; it applies because
// the plan's user is not a superuser and pg_dump runs with
// --enable-row-security.
func TestPostgresPrivate(t *testing.T) {
	ctx := context.Background()
	const (
		superPassword = "super-Secret-4t"
		role          = "bs_backup"
		rightPassword = "the-right-Password-9"
		wrongPassword = "wrong-Password-Zq7"
		dbName        = "shop"
		passwordEnv   = "BS_SOURCES_PG_PW"
		lockKey       = 4242
	)
	srv := testenv.PrivatePostgres(t, superPassword)
	r := newRig(t)
	db := srv.CreateDB(t, dbName)
	sourcetest.SeedPostgres(t, ctx, db, privateSeedSize)
	for _, q := range []string{
		`CREATE TABLE ` + gateTable + ` (id int PRIMARY KEY)`,
		`INSERT INTO ` + gateTable + ` VALUES (1)`,
		fmt.Sprintf(`CREATE FUNCTION bs_gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
		BEGIN PERFORM pg_advisory_lock_shared(%d); PERFORM pg_advisory_unlock_shared(%d); RETURN true; END $$`, lockKey, lockKey),
		`ALTER TABLE ` + gateTable + ` ENABLE ROW LEVEL SECURITY`,
		`CREATE POLICY gate ON ` + gateTable + ` FOR SELECT USING (bs_gate())`,
		`CREATE ROLE ` + role + ` LOGIN PASSWORD '` + rightPassword + `'`,
		`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ` + role,
		`GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO ` + role,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("prepare %s: %v", strings.SplitN(q, "\n", 2)[0], err)
		}
	}
	block := fmt.Sprintf("    type: postgres\n    postgres:\n      host: 127.0.0.1\n      port: %d\n      user: %s\n      password: {env: %s}\n      databases: [%s]\n      extraArgs: [--enable-row-security]\n",
		srv.Port, role, passwordEnv, dbName)

	t.Run("wrong password", func(t *testing.T) {
		t.Setenv(passwordEnv, wrongPassword)
		r.apply(t, "pg-wrong-password", block)
		f := r.mustFail(t, r.backup(t, "pg-wrong-password"))
		checkFailure(t, f, "exit status 2", `password authentication failed for user "`+role+`"`, 0)
		noSecret(t, f.events, wrongPassword)
	})

	t.Run("server killed mid-dump", func(t *testing.T) {
		t.Setenv(passwordEnv, rightPassword)
		gate := conn(t, db)
		if _, err := gate.ExecContext(ctx, fmt.Sprintf("SELECT pg_advisory_lock(%d)", lockKey)); err != nil {
			t.Fatalf("lock gate: %v", err)
		}
		r.apply(t, "pg-killed", block)
		id := r.trigger(t, "pg-killed")
		waitQuery(t, db, "pg_dump blocked at the gate", `SELECT count(*) FROM pg_stat_activity
			WHERE usename = '`+role+`' AND wait_event_type = 'Lock' AND wait_event = 'advisory'`)
		up := r.waitIncompleteUpload(t, "pg-killed", id)
		t.Logf("dump held at %s, multipart upload %s in progress: SIGKILL postgres", gateTable, up.UploadID)
		srv.Kill()

		f := r.mustFail(t, harness.WaitRun(t, r.env.Runs, id, 3*time.Minute))
		r.noUploadLeft(t, "pg-killed", id)
		checkFailure(t, f, "pg_dump", "server closed the connection unexpectedly", 4<<20)
		noSecret(t, f.events, rightPassword)
		t.Logf("snapshot.failed after %d bytes: stderr %q", f.snapshot.Bytes, f.snapshot.StderrTail)
	})
}

// conn is one connection of db, kept for a session-scoped lock, closed on
// cleanup.
func conn(t *testing.T, db *sql.DB) *sql.Conn {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatalf("connection: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitQuery polls a COUNT query until it is positive.
func waitQuery(t *testing.T, db *sql.DB, what, q string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var n int
		if err := db.QueryRowContext(context.Background(), q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if n > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not seen", what)
}

// noUploadLeft polls MinIO a bounded while until no incomplete multipart
// upload of the run's object remains (the upload stage aborts it
// asynchronously to the run failing), then checks that nothing of the plan
// is in the bucket.
func (r *rig) noUploadLeft(t *testing.T, planName, runID string) {
	t.Helper()
	c := r.minio.Client(t)
	key := format.ObjectKey(planName, runID)
	deadline := time.Now().Add(time.Minute)
	for {
		var left []string
		for u := range c.ListIncompleteUploads(context.Background(), r.bucket, key, false) {
			if u.Err != nil {
				t.Fatalf("list incomplete uploads: %v", u.Err)
			}
			left = append(left, u.UploadID)
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("incomplete multipart uploads of %s still there: %v", key, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.mustHaveNoBackup(t, planName, runID)
	for o := range c.ListObjects(context.Background(), r.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err == nil {
			t.Errorf("bucket holds %s after a failed backup", o.Key)
		}
	}
}
