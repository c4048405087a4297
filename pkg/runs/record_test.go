package runs_test

import (
	"testing"

	"github.com/backstream/backstream/pkg/runs"
)

// TestApplyRecordsTheCopyARestoreRead: a restore records the backup and
// destination of the copy it reads, and a fallback to another copy (or an
// older backup) replaces both; the restore stage may ask for it.
func TestApplyRecordsTheCopyARestoreRead(t *testing.T) {
	r := rec(runs.Running, "restore=Running@a")
	r.Kind = runs.KindRestore
	steps := []runs.Request{
		{Op: runs.OpRecord, Result: &runs.Result{BackupID: "new", RestoredFrom: "s3"}},
		{Op: runs.OpRecord, Result: &runs.Result{BackupID: "old", RestoredFrom: "local"}},
		{Op: runs.OpFinish, Step: "restore", Phase: runs.Succeeded, Result: &runs.Result{Bytes: 5, SHA256: "aa", BackupID: "old", RestoredFrom: "local"}},
	}
	for _, req := range steps {
		req.Run = "r"
		if err := runs.Permit("restore", req); err != nil {
			t.Fatalf("permit %s: %v", req.Op, err)
		}
		if _, err := runs.Apply(r, req, t0); err != nil {
			t.Fatalf("%s: %v", req.Op, err)
		}
	}
	if r.BackupID != "old" || r.RestoredFrom != "local" || r.Bytes != 5 {
		t.Fatalf("run backup %q from %q bytes %d, want old from local", r.BackupID, r.RestoredFrom, r.Bytes)
	}
}
