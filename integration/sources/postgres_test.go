package sources

import (
	"context"
	"fmt"
	"testing"

	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func postgresBlock(db, extra string) string {
	return fmt.Sprintf("    type: postgres\n    postgres:\n      host: 127.0.0.1\n      port: 5432\n      databases: [%s]\n%s", db, extra)
}

// TestPostgres backs up a 50 MB database through the pipeline while a write
// load runs, restores it with `backstream restore --into-source` (storage
// and identity only, no NATS) into a fresh database and compares every
// table; then it makes dumps fail and checks that none leaves a backup.
//
// The machine's PostgreSQL trusts local connections, so a wrong password
// cannot be tested; an unknown role is the authentication failure here.
func TestPostgres(t *testing.T) {
	ctx := context.Background()
	src := testenv.Postgres(t)
	r := newRig(t)
	sourcetest.SeedPostgres(t, ctx, src.SQL, seedSize)
	createLoadTables(t, src.SQL, postgresDialect)
	want := withoutLoad(sourcetest.SummarizePostgres(t, ctx, src.SQL))

	t.Run("roundtrip under write load", func(t *testing.T) {
		planFile := r.apply(t, "pg-full", postgresBlock(src.Name, "      user: postgres\n"))
		rowsBefore, _, _ := loadState(t, src.SQL)
		l := startLoad(src.SQL, postgresDialect)
		run := r.backup(t, "pg-full")
		commits := l.stop(t)
		rowsAfter, _, _ := loadState(t, src.SQL)
		r.mustSucceed(t, run)
		r.mustHaveBackup(t, run)
		t.Logf("backup %s: %d bytes of dump, %d stored; %d load transactions committed meanwhile", run.ID, run.Bytes, run.StoredBytes, commits)

		fresh := testenv.Postgres(t)
		r.restoreCLI(t, planFile, "pg-full", run.ID, fresh.Name)
		sourcetest.CompareSummaries(t, want, withoutLoad(sourcetest.SummarizePostgres(t, ctx, fresh.SQL)))
		checkSnapshot(t, fresh.SQL, rowsBefore, rowsAfter)
	})

	t.Run("failures", func(t *testing.T) {
		// A pg_dump that streams 8 MiB of the real dump and then dies.
		cut := t.TempDir()
		link(t, cut, "psql")
		link(t, cut, "pg_dumpall")
		script(t, cut, "pg_dump", fmt.Sprintf(`%s "$@" | head -c %d
echo "pg_dump: error: connection to server lost (simulated by the test)" >&2
exit 3
`, lookPath(t, "pg_dump"), 8<<20))

		tests := []struct {
			name       string
			block      string
			wantReason string
			wantTail   string
			wantBytes  int64
		}{
			{
				name:       "unknown role",
				block:      postgresBlock(src.Name, "      user: bs_no_such_role\n"),
				wantReason: "exit status 2",
				wantTail:   `role "bs_no_such_role" does not exist`,
			},
			{
				name:       "unknown database",
				block:      postgresBlock("bs_no_such_database", "      user: postgres\n"),
				wantReason: "pg_dump",
				wantTail:   `database "bs_no_such_database" does not exist`,
			},
			{
				name:       "dump binary missing",
				block:      postgresBlock(src.Name, "      user: postgres\n      binDir: "+emptyBinDir(t)+"\n"),
				wantReason: "find psql in ",
			},
			{
				name:       "dump dies mid-stream",
				block:      postgresBlock(src.Name, "      user: postgres\n      binDir: "+cut+"\n"),
				wantReason: "exit status 3",
				wantTail:   "connection to server lost",
				wantBytes:  8 << 20,
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := fmt.Sprintf("pg-fail-%d", i)
				r.apply(t, name, tt.block)
				checkFailure(t, r.mustFail(t, r.backup(t, name)), tt.wantReason, tt.wantTail, tt.wantBytes)
			})
		}
	})
}
