package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func pgTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, "%s", name)
	}
	return p
}

// TestExtractNative backs up two databases (one named with a slash) and
// the globals, extracts them, lists each .dump with pg_restore and
// restores each into a fresh database, which then holds the original rows.
func TestExtractNative(t *testing.T) {
	ctx := context.Background()
	pgRestore := pgTool(t, "pg_restore")
	a := testenv.Postgres(t)
	b := testenv.PostgresNamed(t, testenv.Unique("bs_test_")+"/odd")
	sourcetest.SeedPostgres(t, ctx, a.SQL, 256<<10)
	sourcetest.SeedPostgres(t, ctx, b.SQL, 64<<10)
	want := map[string]sourcetest.Summary{
		a.Name: sourcetest.SummarizePostgres(t, ctx, a.SQL),
		b.Name: sourcetest.SummarizePostgres(t, ctx, b.SQL),
	}
	cfg := config(a, a.Name, b.Name)
	cfg.Globals = true
	var buf bytes.Buffer
	if _, err := postgres.New(cfg).Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "out")
	names, err := postgres.Plugin().ExtractTo(ctx, bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	bFile := strings.ReplaceAll(b.Name, "/", "%2F") + ".dump"
	if wantNames := []string{"globals.sql", a.Name + ".dump", bFile}; !slices.Equal(names, wantNames) {
		t.Fatalf("names %q, want %q", names, wantNames)
	}
	if got := sourcetest.ListTree(t, dir); len(got) != 3 {
		t.Fatalf("directory holds %v, want the three files only", got)
	}
	if g, err := os.ReadFile(filepath.Join(dir, "globals.sql")); err != nil || !bytes.Contains(g, []byte("CREATE ROLE")) {
		t.Fatalf("globals.sql: %v %.200q", err, g)
	}
	for db, file := range map[string]string{a.Name: a.Name + ".dump", b.Name: bFile} {
		path := filepath.Join(dir, file)
		list, err := exec.CommandContext(ctx, pgRestore, "--list", path).CombinedOutput()
		if err != nil {
			t.Fatalf("pg_restore --list %s: %v: %s", file, err, list)
		}
		if !strings.Contains(string(list), "dbname: "+db) || !strings.Contains(string(list), "TABLE DATA") {
			t.Fatalf("pg_restore --list %s: %s", file, list)
		}
		fresh := testenv.Postgres(t)
		out, err := exec.CommandContext(ctx, pgRestore, "--exit-on-error", "--no-owner",
			"--host="+fresh.Host, "--port=5432", "--username="+fresh.User, "--dbname="+fresh.Name, path).CombinedOutput()
		if err != nil {
			t.Fatalf("pg_restore %s into %s: %v: %s", file, fresh.Name, err, out)
		}
		sourcetest.CompareSummaries(t, want[db], sourcetest.SummarizePostgres(t, ctx, fresh.SQL))
	}

	// A second extract into the same directory replaces nothing.
	if _, err := postgres.Extract(ctx, bytes.NewReader(buf.Bytes()), dir); !errors.Is(err, os.ErrExist) {
		t.Fatalf("extract over existing files: got %v, want os.ErrExist", err)
	}
	if got := sourcetest.ListTree(t, dir); len(got) != 3 {
		t.Fatalf("after the refused extract the directory holds %v", got)
	}
}

// TestExtractCutShort: a stream cut anywhere (inside the second dump, or
// just before the end record) is ErrCorrupt and leaves no file behind,
// not even the dumps that were complete.
func TestExtractCutShort(t *testing.T) {
	ctx := context.Background()
	stream := synthetic(t, map[string]string{"one": "PGDMP one", "two": "PGDMP two"})
	tests := []struct {
		name string
		give []byte
	}{
		{"inside a dump", stream[:len(stream)-20]},
		{"before the end record", stream[:len(stream)-5]},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := postgres.Extract(ctx, bytes.NewReader(tt.give), dir)
			if !errors.Is(err, source.ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			if got := sourcetest.ListTree(t, dir); len(got) != 0 {
				t.Fatalf("left %v", got)
			}
		})
	}
	t.Run("not a custom-format dump", func(t *testing.T) {
		_, err := postgres.Extract(ctx, bytes.NewReader(synthetic(t, map[string]string{"x": "-- plain SQL"})), t.TempDir())
		if !errors.Is(err, source.ErrCorrupt) || !strings.Contains(err.Error(), "not a pg_dump custom-format dump") {
			t.Fatalf("got %v", err)
		}
	})
}

// synthetic builds a postgres stream by hand: what the plugin writes, with
// the given bytes as each database's dump.
func synthetic(t *testing.T, dumps map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	aw := archive.NewWriter(&buf)
	dbs := slices.Sorted(func(yield func(string) bool) {
		for k := range dumps {
			if !yield(k) {
				return
			}
		}
	})
	write := func(name, body string) {
		w, err := aw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, body); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	write(postgres.IndexEntry, strings.Join(dbs, "\n"))
	for _, db := range dbs {
		write("db/"+db+".dump", dumps[db])
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestExtractBoundedMemory streams a 256 MiB dump through Extract and
// checks that the whole run allocated a small fraction of it: the dump is
// copied, never held.
func TestExtractBoundedMemory(t *testing.T) {
	const size = 256 << 20
	pr, pw := io.Pipe()
	go func() {
		aw := archive.NewWriter(pw)
		w, err := aw.Create(postgres.IndexEntry)
		if err == nil {
			_, err = io.WriteString(w, "big")
		}
		if err == nil {
			err = w.Close()
		}
		if err == nil {
			w, err = aw.Create("db/big.dump")
		}
		if err == nil {
			_, err = io.WriteString(w, "PGDMP")
		}
		if err == nil {
			_, err = io.CopyN(w, zeros{}, size)
		}
		if err == nil {
			err = w.Close()
		}
		if err == nil {
			err = aw.Close()
		}
		pw.CloseWithError(err)
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	dir := t.TempDir()
	if _, err := postgres.Extract(context.Background(), pr, dir); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Fatalf("extracting a %d MiB dump allocated %d MiB", size>>20, alloc>>20)
	}
	if fi, err := os.Stat(filepath.Join(dir, "big.dump")); err != nil || fi.Size() != size+5 {
		t.Fatalf("big.dump: %v, %v", fi, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
