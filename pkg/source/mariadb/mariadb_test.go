package mariadb_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

const seedSize = 2 << 20

func config(db *testenv.DB, names ...string) mariadb.Config {
	return mariadb.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: names}
}

func TestConformanceSingleDatabase(t *testing.T) {
	ctx := context.Background()
	src := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, src.SQL, seedSize)
	want := sourcetest.SummarizeMariaDB(t, ctx, src.SQL)
	s := mariadb.New(config(src, src.Name))
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dst := testenv.MariaDB(t) // exists and is empty; Target renames
			return s, source.RestoreOptions{Target: dst.Name}, func(t *testing.T) {
				sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMariaDB(t, ctx, dst.SQL))
			}
		},
	})
}

// TestMultiDatabase dumps two databases in one transaction and restores them
// under their own names after dropping them.
func TestMultiDatabase(t *testing.T) {
	ctx := context.Background()
	a, b := testenv.MariaDB(t), testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, a.SQL, 256<<10)
	sourcetest.SeedMariaDB(t, ctx, b.SQL, 128<<10)
	wantA, wantB := sourcetest.SummarizeMariaDB(t, ctx, a.SQL), sourcetest.SummarizeMariaDB(t, ctx, b.SQL)
	s := mariadb.New(config(a, a.Name, b.Name))
	var buf bytes.Buffer
	desc, err := s.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if desc["databases"] != a.Name+","+b.Name || !strings.Contains(desc["version"], "MariaDB") {
		t.Fatalf("description %v", desc)
	}
	for _, db := range []*testenv.DB{a, b} {
		if _, err := a.SQL.ExecContext(ctx, "DROP DATABASE `"+db.Name+"`"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: "x"}); !errors.Is(err, source.ErrUnsupported) {
		t.Fatalf("rename of a multi-database dump: got %v, want ErrUnsupported", err)
	}
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		db   *testenv.DB
		want sourcetest.Summary
	}{{a, wantA}, {b, wantB}} {
		// A pooled connection whose database was dropped has none selected.
		fresh, err := sql.Open("mysql", c.db.DSN)
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		sourcetest.CompareSummaries(t, c.want, sourcetest.SummarizeMariaDB(t, ctx, fresh))
	}
}

func TestCleanAndCreate(t *testing.T) {
	ctx := context.Background()
	src := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, src.SQL, 64<<10)
	want := sourcetest.SummarizeMariaDB(t, ctx, src.SQL)
	s := mariadb.New(config(src, src.Name))
	var buf bytes.Buffer
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	// Restoring twice over the same database needs Clean (tables exist).
	for range 2 {
		if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Clean: true}); err != nil {
			t.Fatal(err)
		}
	}
	fresh, err := sql.Open("mysql", src.DSN) // the pool's connections lost their database
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMariaDB(t, ctx, fresh))
	// Create makes a missing database.
	name := testenv.Unique("bs_test_new_")
	t.Cleanup(func() {
		if _, err := src.SQL.Exec("DROP DATABASE IF EXISTS `" + name + "`"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: name, Create: true}); err != nil {
		t.Fatal(err)
	}
}

func TestBackupFailures(t *testing.T) {
	ctx := context.Background()
	db := testenv.MariaDB(t)
	t.Setenv("BS_TEST_WRONG_PW", "definitely-wrong-pw")
	empty := t.TempDir()
	tests := []struct {
		name string
		cfg  mariadb.Config
		want string // in the error text, from the child's stderr
	}{
		{"wrong password", mariadb.Config{Host: db.Host, Port: db.Port, User: db.User, Password: secret.Ref{Env: "BS_TEST_WRONG_PW"}, Databases: []string{db.Name}}, "Access denied"},
		{"unknown user", mariadb.Config{Host: db.Host, Port: db.Port, User: "no_such_user_bs", Databases: []string{db.Name}}, "Access denied"},
		{"unknown database", config(db, "no_such_db_bs"), "Unknown database"},
		{"dump binary missing", mariadb.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}, BinDir: empty}, "executable file not found"},
		{"server unreachable", mariadb.Config{Host: "127.0.0.1", Port: testenv.FreePort(t), User: "root", Databases: []string{db.Name}}, "Can't connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := mariadb.New(tt.cfg).Backup(ctx, &buf)
			var se *source.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want *source.Error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q lacks %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "definitely-wrong-pw") {
				t.Fatalf("error leaks the password: %q", err)
			}
		})
	}
}

// TestBackupKilledMidDump cancels while mariadb-dump streams: the process
// group is killed and Backup reports it.
func TestBackupKilledMidDump(t *testing.T) {
	db := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, context.Background(), db.SQL, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var buf bytes.Buffer
	_, err := mariadb.New(config(db, db.Name)).Backup(ctx, &sourcetest.CancelAfter{W: &buf, N: 64 << 10, Cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestPhysical(t *testing.T) {
	if _, err := exec.LookPath("mariabackup"); err != nil {
		testenv.Missing(t, "mariabackup (scripts/install-apt.sh)")
	}
	ctx := context.Background()
	db := testenv.MariaDB(t)
	sourcetest.SeedMariaDB(t, ctx, db.SQL, 64<<10)
	// mariabackup reads the datadir, so it talks to the local server over its socket.
	s := mariadb.New(mariadb.Config{User: "root", Mode: mariadb.Physical})
	var buf bytes.Buffer
	desc, err := s.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if desc["mode"] != mariadb.Physical || !bytes.HasPrefix(buf.Bytes(), []byte("XBSTCK01")) {
		t.Fatalf("not an xbstream: %v %q", desc, buf.Bytes()[:8])
	}
	dir := filepath.Join(t.TempDir(), "datadir")
	if err := s.Restore(ctx, bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: dir, Create: true}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"ibdata1", "xtrabackup_checkpoints", filepath.Join(db.Name, "orders.ibd")} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("prepared backup lacks %s: %v", p, err)
		}
	}
	cp, _ := os.ReadFile(filepath.Join(dir, "xtrabackup_checkpoints"))
	if !strings.Contains(string(cp), "backup_type = log-applied") {
		t.Fatalf("backup not prepared:\n%s", cp)
	}
	// The operator's last step, done here on a free port: a server started
	// on the prepared directory serves the same data.
	want := sourcetest.SummarizeMariaDB(t, ctx, db.SQL)
	restored := startMariaDB(t, dir)
	got, err := sql.Open("mysql", "root@tcp("+restored+")/"+db.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMariaDB(t, ctx, got))
}

// startMariaDB runs mariadbd on datadir (grant tables skipped) and returns its address.
func startMariaDB(t *testing.T, datadir string) string {
	t.Helper()
	bin := "/usr/sbin/mariadbd"
	if _, err := os.Stat(bin); err != nil {
		testenv.Missing(t, "mariadbd: %v", err)
	}
	port := testenv.FreePort(t)
	cmd := exec.Command(bin, "--no-defaults", "--datadir="+datadir, "--bind-address=127.0.0.1",
		"--port="+strconv.Itoa(port), "--socket="+filepath.Join(datadir, "test.sock"),
		"--pid-file="+filepath.Join(datadir, "test.pid"), "--user=root",
		"--skip-grant-tables", "--innodb-buffer-pool-size=16M", "--log-error="+filepath.Join(datadir, "test.err"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	addr := testenv.Addr(port)
	for range 600 { // readiness, not a clock: stop as soon as it answers
		if c, err := sql.Open("mysql", "root@tcp("+addr+")/"); err == nil {
			err = c.Ping()
			c.Close()
			if err == nil {
				return addr
			}
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(datadir, "test.err"))
	t.Fatalf("mariadbd on the restored datadir did not start:\n%s", log)
	return ""
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name, give, want string
	}{
		{"ok", "host: db\nport: 3306\nuser: backup\npassword: {env: PW}\ndatabases: [shop]", ""},
		{"bad mode", "mode: snapshot", "mode: must be"},
		{"host and socket", "host: db\nsocket: /run/m.sock", "socket: set host or socket"},
		{"password in args", "extraArgs: [--password=x]", "extraArgs[0]: no passwords"},
		{"physical with databases", "mode: physical\ndatabases: [a]", "databases: physical mode"},
		{"bad secret ref", "password: {env: A, file: B}", "password: set one of"},
		{"unknown field", "hostname: db", "field hostname not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mariadb.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
