package sources

import (
	"fmt"
	"net"
	"testing"

	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func mongoBlock(addr, db string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("    type: mongodb\n    mongodb:\n      host: %s\n      port: %s\n      databases: [%s]\n      timeout: 5s\n", host, port, db)
}

// TestMongoDB backs up a database of a FerretDB through the pipeline and
// restores it through the restore stage under a new name on the same
// server; a missing database fails the run without a backup.
func TestMongoDB(t *testing.T) {
	f := testenv.FerretDB(t)
	r := newRig(t)
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 5000)
	want := sourcetest.SummarizeMongo(t, c, "shop")

	t.Run("roundtrip", func(t *testing.T) {
		r.apply(t, "mongo-full", mongoBlock(f.Addr, "shop"))
		run := r.backup(t, "mongo-full")
		r.mustSucceed(t, run)
		r.mustHaveBackup(t, run)
		t.Logf("backup %s: %d bytes of archive, %d stored", run.ID, run.Bytes, run.StoredBytes)
		r.restoreStage(t, "mongo-full", run.ID, "shop_restored")
		sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMongo(t, c, "shop_restored"))
	})

	t.Run("unknown database", func(t *testing.T) {
		r.apply(t, "mongo-fail", mongoBlock(f.Addr, "no_such_db"))
		checkFailure(t, r.mustFail(t, r.backup(t, "mongo-fail")), `database "no_such_db": not found`, "", 0)
	})
}
