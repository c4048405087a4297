package postgres_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func config(db *testenv.DB, names ...string) postgres.Config {
	return postgres.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: names}
}

func TestConformance(t *testing.T) {
	ctx := context.Background()
	src := testenv.Postgres(t)
	sourcetest.SeedPostgres(t, ctx, src.SQL, 2<<20)
	want := sourcetest.SummarizePostgres(t, ctx, src.SQL)
	s := postgres.New(config(src, src.Name))
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dst := testenv.Postgres(t)
			return s, source.RestoreOptions{Target: dst.Name}, func(t *testing.T) {
				sourcetest.CompareSummaries(t, want, sourcetest.SummarizePostgres(t, ctx, dst.SQL))
			}
		},
	})
}

// TestMultiDatabaseWithGlobals dumps two databases and the globals into one
// archive, drops both and restores them with --create under their own names.
func TestMultiDatabaseWithGlobals(t *testing.T) {
	ctx := context.Background()
	a, b := testenv.Postgres(t), testenv.Postgres(t)
	sourcetest.SeedPostgres(t, ctx, a.SQL, 128<<10)
	sourcetest.SeedPostgres(t, ctx, b.SQL, 64<<10)
	wantA, wantB := sourcetest.SummarizePostgres(t, ctx, a.SQL), sourcetest.SummarizePostgres(t, ctx, b.SQL)
	cfg := config(a, a.Name, b.Name)
	cfg.Globals = true
	s := postgres.New(cfg)
	var buf bytes.Buffer
	desc, err := s.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if desc["databases"] != a.Name+","+b.Name || desc["globals"] != "true" || desc["version"] == "" {
		t.Fatalf("description %v", desc)
	}
	var names []string
	ar := archive.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		n, err := ar.Next()
		if err != nil {
			break
		}
		names = append(names, n)
	}
	if strings.Join(names, " ") != "databases globals.sql db/"+a.Name+".dump db/"+b.Name+".dump" {
		t.Fatalf("entries %v", names)
	}
	a.SQL.Close()
	b.SQL.Close()
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: "x"}); !errors.Is(err, source.ErrUnsupported) {
		t.Fatalf("rename of two databases: got %v, want ErrUnsupported", err)
	}
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Clean: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		db   *testenv.DB
		want sourcetest.Summary
	}{{a, wantA}, {b, wantB}} {
		fresh, err := sql.Open("pgx", c.db.DSN)
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		sourcetest.CompareSummaries(t, c.want, sourcetest.SummarizePostgres(t, ctx, fresh))
	}
}

func TestCreateRenamed(t *testing.T) {
	ctx := context.Background()
	src := testenv.Postgres(t)
	sourcetest.SeedPostgres(t, ctx, src.SQL, 64<<10)
	want := sourcetest.SummarizePostgres(t, ctx, src.SQL)
	s := postgres.New(config(src, src.Name))
	var buf bytes.Buffer
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	name := testenv.Unique("bs_test_new_")
	admin, err := sql.Open("pgx", strings.Replace(src.DSN, "/"+src.Name+"?", "/postgres?", 1))
	if err != nil {
		t.Fatal(err)
	}
	// The drop runs at cleanup, so admin is closed there, after it (a
	// deferred Close would run first and leak the database).
	t.Cleanup(func() {
		defer admin.Close()
		if _, err := admin.Exec(`DROP DATABASE IF EXISTS "` + name + `" WITH (FORCE)`); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: name, Create: true}); err != nil {
		t.Fatal(err)
	}
	dst, err := sql.Open("pgx", strings.Replace(src.DSN, "/"+src.Name+"?", "/"+name+"?", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	sourcetest.CompareSummaries(t, want, sourcetest.SummarizePostgres(t, ctx, dst))
}

func TestBackupFailures(t *testing.T) {
	ctx := context.Background()
	db := testenv.Postgres(t)
	tests := []struct {
		name string
		cfg  postgres.Config
		want string
	}{
		// The machine's PostgreSQL uses trust auth, so a wrong password is
		// accepted there; an unknown role is the authentication failure it can show.
		{"unknown role", postgres.Config{Host: db.Host, Port: db.Port, User: "no_such_role_bs", Databases: []string{db.Name}}, `role "no_such_role_bs" does not exist`},
		{"unknown database", config(db, "no_such_db_bs"), `database "no_such_db_bs" does not exist`},
		{"dump binary missing", postgres.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}, BinDir: t.TempDir()}, "executable file not found"},
		{"server unreachable", postgres.Config{Host: "127.0.0.1", Port: testenv.FreePort(t), User: "postgres"}, "Connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := postgres.New(tt.cfg).Backup(ctx, &bytes.Buffer{})
			var se *source.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want *source.Error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

func TestBackupKilledMidDump(t *testing.T) {
	db := testenv.Postgres(t)
	sourcetest.SeedPostgres(t, context.Background(), db.SQL, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := postgres.New(config(db, db.Name)).Backup(ctx, &sourcetest.CancelAfter{W: &bytes.Buffer{}, N: 64 << 10, Cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct{ name, give, want string }{
		{"ok", "host: db\nuser: backup\npassword: {file: /run/secrets/pg}\ndatabases: [shop]\nglobals: true", ""},
		{"duplicate database", "databases: [a, a]", "databases[1]: duplicate"},
		{"bad ssl mode", "sslMode: sometimes", "sslMode: unknown mode"},
		{"bad port", "port: 70000", "port: out of range"},
		{"unknown field", "dbs: [a]", "field dbs not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := postgres.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
