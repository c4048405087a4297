package mariadb_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// loadSQL runs the mariadb client with file as stdin, into db ("" for none).
func loadSQL(t *testing.T, ctx context.Context, file, db string) {
	t.Helper()
	client, err := exec.LookPath("mariadb")
	if err != nil {
		testenv.Missing(t, "mariadb client")
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	args := []string{"--host=127.0.0.1", "--port=3306", "--user=root", "--batch"}
	if db != "" {
		args = append(args, "--database="+db)
	}
	cmd := exec.CommandContext(ctx, client, args...)
	cmd.Stdin = f
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mariadb < %s: %v: %s", filepath.Base(file), err, out)
	}
}

// TestExtractSingleDatabase extracts a one-database dump as <db>.sql and
// loads it with the mariadb client into a fresh database.
func TestExtractSingleDatabase(t *testing.T) {
	ctx := context.Background()
	src := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, src.SQL, 512<<10)
	want := sourcetest.SummarizeMariaDB(t, ctx, src.SQL)
	var buf bytes.Buffer
	if _, err := mariadb.New(config(src, src.Name)).Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names, err := mariadb.Plugin().ExtractTo(ctx, bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{src.Name + ".sql"}) {
		t.Fatalf("names %q", names)
	}
	got, err := os.ReadFile(filepath.Join(dir, names[0]))
	if err != nil || !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("%s differs from the stream (%v)", names[0], err)
	}
	fresh := testenv.MariaDB(t)
	loadSQL(t, ctx, filepath.Join(dir, names[0]), fresh.Name)
	sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMariaDB(t, ctx, fresh.SQL))
}

// TestExtractMultiDatabase extracts a two-database dump as dump.sql, drops
// both databases and loads the file with the mariadb client, which makes
// them again with the original rows.
func TestExtractMultiDatabase(t *testing.T) {
	ctx := context.Background()
	a, b := testenv.MariaDB(t), testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, a.SQL, 128<<10)
	sourcetest.SeedMariaDB(t, ctx, b.SQL, 64<<10)
	wantA, wantB := sourcetest.SummarizeMariaDB(t, ctx, a.SQL), sourcetest.SummarizeMariaDB(t, ctx, b.SQL)
	var buf bytes.Buffer
	if _, err := mariadb.New(config(a, a.Name, b.Name)).Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names, err := mariadb.Extract(ctx, bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{mariadb.AllFile}) {
		t.Fatalf("names %q", names)
	}
	for _, db := range []*testenv.DB{a, b} {
		if _, err := db.SQL.ExecContext(ctx, "DROP DATABASE `"+db.Name+"`"); err != nil {
			t.Fatal(err)
		}
	}
	loadSQL(t, ctx, filepath.Join(dir, mariadb.AllFile), "")
	for _, c := range []struct {
		db   *testenv.DB
		want sourcetest.Summary
	}{{a, wantA}, {b, wantB}} {
		fresh, err := sql.Open("mysql", c.db.DSN)
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		sourcetest.CompareSummaries(t, c.want, sourcetest.SummarizeMariaDB(t, ctx, fresh))
	}
}

// TestExtractCutShort: a logical dump without its last line is ErrCorrupt
// and leaves nothing.
func TestExtractCutShort(t *testing.T) {
	ctx := context.Background()
	src := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, src.SQL, 64<<10)
	var buf bytes.Buffer
	if _, err := mariadb.New(config(src, src.Name)).Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	for _, give := range [][]byte{buf.Bytes()[:buf.Len()/2], nil} {
		dir := t.TempDir()
		if _, err := mariadb.Extract(ctx, bytes.NewReader(give), dir); !errors.Is(err, source.ErrCorrupt) {
			t.Fatalf("%d bytes: got %v, want ErrCorrupt", len(give), err)
		}
		if got := sourcetest.ListTree(t, dir); len(got) != 0 {
			t.Fatalf("left %v", got)
		}
	}
}

// TestExtractPhysical: an xbstream is written unchanged as
// mariabackup.xbstream. The machine has no mariabackup, so the stream is
// a made-up one that only starts like an xbstream; mbstream is not run.
func TestExtractPhysical(t *testing.T) {
	stream := []byte("XBSTCK01\x00P\x08\x00\x00\x00ibdata1 and the rest of a chunk")
	dir := t.TempDir()
	names, err := mariadb.Extract(context.Background(), bytes.NewReader(stream), dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, mariadb.PhysicalFile))
	if !slices.Equal(names, []string{mariadb.PhysicalFile}) || err != nil || !bytes.Equal(got, stream) {
		t.Fatalf("names %q, %v, content %q", names, err, got)
	}
}
