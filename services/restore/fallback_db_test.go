package restore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/restore"
)

// TestFallbackIntoDatabases restores a real dump into a real database
// from two copies, the first corrupted in its last frame, so the first
// attempt applied most of the dump before it failed: a later attempt must
// leave the target equal to the source (RetryOptions' table, tested
// against the servers), or refuse when it cannot do that safely.
func TestFallbackIntoDatabases(t *testing.T) {
	const rows = 3000
	seed := func(t *testing.T, db *sql.DB) {
		t.Helper()
		if _, err := db.Exec("CREATE TABLE items (id int primary key, v varchar(100))"); err != nil {
			t.Fatal(err)
		}
		var vals []string
		for i := range rows {
			vals = append(vals, fmt.Sprintf("(%d, 'value %d')", i, i*7))
		}
		if _, err := db.Exec("INSERT INTO items VALUES " + strings.Join(vals, ",")); err != nil {
			t.Fatal(err)
		}
	}
	summary := func(t *testing.T, db *sql.DB) string {
		t.Helper()
		var n, sum int64
		var maxV string
		if err := db.QueryRow("SELECT COUNT(*), COALESCE(SUM(id), 0), COALESCE(MAX(v), '') FROM items").Scan(&n, &sum, &maxV); err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("%d rows, sum %d, max %q", n, sum, maxV)
	}
	tests := []struct {
		name        string
		open        func(t testing.TB) *testenv.DB
		plugin      func(db *testenv.DB) source.Source
		typ         string
		clean       bool
		wantRefused bool
	}{
		{"mariadb without clean: the dump drops its tables again", testenv.MariaDB,
			func(db *testenv.DB) source.Source {
				return mariadb.New(mariadb.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}})
			}, "mariadb", false, false},
		{"postgres with clean: the database is made again", testenv.Postgres,
			func(db *testenv.DB) source.Source {
				return postgres.New(postgres.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}})
			}, "postgres", true, false},
		{"postgres without clean: refused", testenv.Postgres,
			func(db *testenv.DB) source.Source {
				return postgres.New(postgres.Config{Host: db.Host, Port: db.Port, User: db.User, Databases: []string{db.Name}})
			}, "postgres", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			src := tt.open(t)
			seed(t, src.SQL)
			want := summary(t, src.SQL)
			plugin := tt.plugin(src)
			var dump bytes.Buffer
			if _, err := plugin.Backup(ctx, &dump); err != nil {
				t.Fatalf("backup: %v", err)
			}

			stores := map[string]string{"one": t.TempDir(), "two": t.TempDir()}
			open := func(ctx context.Context, d string) (storage.Storage, error) {
				return filesystem.New(ctx, filesystem.Config{Path: stores[d]})
			}
			var copies []restore.Copy
			for _, d := range []string{"one", "two"} {
				st, err := open(ctx, d)
				if err != nil {
					t.Fatal(err)
				}
				m := putBackup(t, st, "01B", 2, dump.Bytes())
				if d == "one" {
					flip(t, st, m, 20)
				}
				st.Close()
				copies = append(copies, restore.Copy{Destination: d, Manifest: m})
			}

			fresh := tt.open(t)
			into := restore.IntoSource(tt.typ, plugin, source.RestoreOptions{Target: fresh.Name, Clean: tt.clean}, nil)
			leftover := ""
			used, _, failed, err := restore.Fallback(ctx, open, copies, formatKeys(), func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
				if attempt == 1 {
					leftover = summary(t, fresh.SQL)
				}
				// A pause before the bad frame lets the target apply what
				// came before it, as it would in a long restore.
				return into(ctx, attempt, c, &pauseAt{r: r, at: int64(dump.Len()) - 200})
			})
			if strings.HasPrefix(leftover, "error") || leftover == "" {
				t.Fatalf("the first attempt left %q in the target: the test corrupts too early to mean anything", leftover)
			}
			t.Logf("the bad copy left %s", leftover)
			if len(failed) < 1 || failed[0].Copy.Destination != "one" || !errors.Is(failed[0].Err, restore.ErrCopyBad) {
				t.Fatalf("failed attempts %+v, want the copy in one first", failed)
			}
			if tt.wantRefused {
				if !errors.Is(err, restore.ErrNotRestartable) || !strings.Contains(err.Error(), "destination one") {
					t.Fatalf("restore: %v, want not restartable after the copy in one", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			if used.Destination != "two" {
				t.Errorf("used %s, want the copy in two", used)
			}
			if got := summary(t, fresh.SQL); got != want {
				t.Errorf("target has %s, source %s", got, want)
			}
		})
	}
}

// pauseAt sleeps once when the reading reaches at.
type pauseAt struct {
	r      io.Reader
	at, n  int64
	paused bool
}

func (p *pauseAt) Read(b []byte) (int, error) {
	if !p.paused && p.n >= p.at {
		p.paused = true
		time.Sleep(500 * time.Millisecond)
	}
	if !p.paused && p.n+int64(len(b)) > p.at {
		b = b[:p.at-p.n]
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}
