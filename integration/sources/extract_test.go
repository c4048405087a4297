package sources

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestExtractGivesWhatPgRestoreReads: `backstream extract` writes a
// PostgreSQL backup (made by the pipeline, encrypted) as the database's
// pg_dump archive, read from the storage and the key alone; pg_restore
// lists it and restores it into a fresh database with every row. A second
// extract into the same directory replaces nothing and fails.
func TestExtractGivesWhatPgRestoreReads(t *testing.T) {
	src := testenv.Postgres(t)
	if _, err := src.SQL.Exec("CREATE TABLE items (id int primary key, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g"); err != nil {
		t.Fatal(err)
	}
	r := newRig(t)
	planFile := r.apply(t, "pg-extract", postgresBlock(src.Name, "      user: postgres\n"))
	run := r.backup(t, "pg-extract")
	r.mustSucceed(t, run)

	dir := filepath.Join(t.TempDir(), "native")
	args := []string{"extract", "pg-extract/" + run.ID, "--plan-file", planFile, "--identity", r.identity, "--to", dir}
	out, code := harness.Run(t, r.dir, nil, args...)
	dump := src.Name + ".dump"
	if code != 0 || !strings.Contains(out, dump) {
		t.Fatalf("extract: exit %d, want 0 naming %s:\n%s", code, dump, out)
	}
	if b, err := exec.Command("pg_restore", "--list", filepath.Join(dir, dump)).CombinedOutput(); err != nil || !strings.Contains(string(b), "TABLE public items") {
		t.Fatalf("pg_restore --list: %v\n%s", err, b)
	}
	fresh := testenv.Postgres(t)
	if b, err := exec.Command("pg_restore", "-h", "127.0.0.1", "-U", "postgres", "--no-owner", "-d", fresh.Name, filepath.Join(dir, dump)).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, b)
	}
	var n int
	if err := fresh.SQL.QueryRow("SELECT count(*) FROM items").Scan(&n); err != nil || n != 300 {
		t.Fatalf("restored items: %d (%v), want 300", n, err)
	}
	if out, code := harness.Run(t, r.dir, nil, args...); code == 0 || !strings.Contains(out, "exist") {
		t.Errorf("a second extract into the same directory: exit %d:\n%s", code, out)
	}
}
