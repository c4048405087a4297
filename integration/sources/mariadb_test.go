package sources

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// seedSize is the row data of the MariaDB and PostgreSQL databases that go
// through the pipeline (issue 4: at least 50 MB).
const seedSize = 50 << 20

// withoutLoad drops the write load's tables from a summary: the load
// changes them while the backup runs; checkSnapshot judges them instead.
func withoutLoad(s sourcetest.Summary) sourcetest.Summary {
	delete(s, "table acct_a")
	delete(s, "table acct_b")
	return s
}

func mariadbBlock(db string, extra string) string {
	return fmt.Sprintf("    type: mariadb\n    mariadb:\n      host: 127.0.0.1\n      port: 3306\n      databases: [%s]\n%s", db, extra)
}

// TestMariaDB backs up a 50 MB database through the pipeline while a write
// load runs, restores it through the restore stage into a fresh database,
// and compares every table; then it makes dumps fail in every way the issue
// names and checks that none leaves a backup.
func TestMariaDB(t *testing.T) {
	ctx := context.Background()
	src := testenv.MariaDB(t)
	r := newRig(t)
	sourcetest.SeedMariaDB(t, ctx, src.SQL, seedSize)
	createLoadTables(t, src.SQL, mariadbDialect)
	want := withoutLoad(sourcetest.SummarizeMariaDB(t, ctx, src.SQL))

	t.Run("roundtrip under write load", func(t *testing.T) {
		r.apply(t, "maria-full", mariadbBlock(src.Name, "      user: root\n"))
		rowsBefore, _, _ := loadState(t, src.SQL)
		l := startLoad(src.SQL, mariadbDialect)
		run := r.backup(t, "maria-full")
		commits := l.stop(t)
		rowsAfter, _, _ := loadState(t, src.SQL)
		r.mustSucceed(t, run)
		r.mustHaveBackup(t, run)
		t.Logf("backup %s: %d bytes of dump, %d stored; %d load transactions committed meanwhile", run.ID, run.Bytes, run.StoredBytes, commits)

		fresh := testenv.MariaDB(t)
		r.restoreStage(t, "maria-full", run.ID, fresh.Name)
		sourcetest.CompareSummaries(t, want, withoutLoad(sourcetest.SummarizeMariaDB(t, ctx, fresh.SQL)))
		checkSnapshot(t, fresh.SQL, rowsBefore, rowsAfter)
	})

	t.Run("failures", func(t *testing.T) {
		user := testenv.Unique("bs_u_")
		admin := src.SQL
		if _, err := admin.ExecContext(ctx, "CREATE USER '"+user+"'@'%' IDENTIFIED BY 'the-right-password'"); err != nil {
			t.Fatalf("create user: %v", err)
		}
		t.Cleanup(func() { _, _ = admin.ExecContext(context.Background(), "DROP USER IF EXISTS '"+user+"'@'%'") })
		if _, err := admin.ExecContext(ctx, "GRANT ALL ON `"+src.Name+"`.* TO '"+user+"'@'%'"); err != nil {
			t.Fatalf("grant: %v", err)
		}
		const wrongPassword = "wrong-password-Zq7"
		t.Setenv("BS_SOURCES_MARIADB_PW", wrongPassword)

		tests := []struct {
			name       string
			block      string
			wantReason string // in backup.failed and snapshot.failed
			wantTail   string // in snapshot.failed's stderr tail
			wantBytes  int64  // at least this much was dumped before the failure
		}{
			{
				name:       "wrong password",
				block:      mariadbBlock(src.Name, "      user: "+user+"\n      password: {env: BS_SOURCES_MARIADB_PW}\n"),
				wantReason: "exit status 1",
				wantTail:   "Access denied for user '" + user + "'",
			},
			{
				name:       "unknown database",
				block:      mariadbBlock("bs_no_such_database", "      user: root\n"),
				wantReason: "mariadb-dump",
				wantTail:   "Unknown database 'bs_no_such_database'",
			},
			{
				name:       "dump binary missing",
				block:      mariadbBlock(src.Name, "      user: root\n      binDir: "+emptyBinDir(t)+"\n"),
				wantReason: "find mariadb in ",
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := fmt.Sprintf("maria-fail-%d", i)
				r.apply(t, name, tt.block)
				f := r.mustFail(t, r.backup(t, name))
				checkFailure(t, f, tt.wantReason, tt.wantTail, tt.wantBytes)
				noSecret(t, f.events, wrongPassword)
			})
		}
	})

	t.Run("dump dies mid-stream after the multipart upload began", func(t *testing.T) {
		// A mariadb-dump that streams 16 MiB of the real dump (about 8 MiB
		// sealed, more than one 5 MiB part), then waits on a FIFO until the
		// test has seen the multipart upload in MinIO, then dies as a dump
		// whose server went away does.
		cut := t.TempDir()
		gate := filepath.Join(cut, "gate")
		if err := syscall.Mkfifo(gate, 0o600); err != nil {
			t.Fatal(err)
		}
		link(t, cut, "mariadb")
		script(t, cut, "mariadb-dump", fmt.Sprintf(`%s "$@" | head -c %d
read -r _ < %s
echo "mariadb-dump: Error 2013: Lost connection to server during query (simulated by the test)" >&2
exit 3
`, lookPath(t, "mariadb-dump"), 16<<20, gate))

		r.apply(t, "maria-cut", mariadbBlock(src.Name, "      user: root\n      binDir: "+cut+"\n"))
		id := r.trigger(t, "maria-cut")
		upload := r.waitIncompleteUpload(t, "maria-cut", id)
		t.Logf("multipart upload %s of %s in progress; letting the dump die", upload.UploadID, upload.Key)
		release(t, gate)
		f := r.mustFail(t, harness.WaitRun(t, r.env.Runs, id, 3*time.Minute))
		checkFailure(t, f, "exit status 3", "Lost connection to server during query", 16<<20)
	})
}

// release opens the FIFO a wrapper script waits on and writes one line.
func release(t *testing.T, fifo string) {
	t.Helper()
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
}

// checkFailure checks the failure events of a run against what the plugin
// must have said.
func checkFailure(t *testing.T, f failure, wantReason, wantTail string, wantBytes int64) {
	t.Helper()
	t.Logf("backup.failed: %s", f.reason)
	if !strings.Contains(f.reason, wantReason) || !strings.Contains(f.snapshot.Error, wantReason) {
		t.Errorf("backup.failed %q / snapshot.failed %q lack %q", f.reason, f.snapshot.Error, wantReason)
	}
	if wantTail != "" {
		if !strings.Contains(f.snapshot.StderrTail, wantTail) || !strings.Contains(f.reason, wantTail) {
			t.Errorf("stderr tail %q (reason %q) lacks %q", f.snapshot.StderrTail, f.reason, wantTail)
		}
		if f.snapshot.ExitStatus == nil {
			t.Errorf("snapshot.failed has no exit status")
		}
	}
	if f.snapshot.Bytes < wantBytes {
		t.Errorf("snapshot.failed says %d bytes were dumped, want at least %d", f.snapshot.Bytes, wantBytes)
	}
}
