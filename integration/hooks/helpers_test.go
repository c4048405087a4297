// Package hooks holds the end-to-end tests of hooks, workflows and inverseOp
// compensation (issue 5): against the machine's real MariaDB, with backstream
// in-process and as child processes that the tests kill.
package hooks

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/testenv"
)

// readOnly reports MariaDB's @@global.read_only.
func readOnly(t *testing.T, db *sql.DB) bool {
	t.Helper()
	var v int
	if err := db.QueryRow("SELECT @@global.read_only").Scan(&v); err != nil {
		t.Fatalf("read @@global.read_only: %v", err)
	}
	return v != 0
}

// neverLeaveLocked turns read_only off when the test ends, whatever it
// did: the machine's MariaDB is shared.
func neverLeaveLocked(t *testing.T, db *sql.DB) {
	t.Cleanup(func() {
		if _, err := db.Exec("SET GLOBAL read_only = OFF"); err != nil {
			t.Errorf("could not unlock mariadb: %v", err)
		}
	})
}

// seedUser creates a MariaDB user with a password that may lock the server
// (SET GLOBAL read_only needs READ_ONLY ADMIN, part of ALL), dropped when
// the test ends.
func seedUser(t *testing.T, db *sql.DB, password string) string {
	t.Helper()
	user := testenv.Unique("bs_hook_")
	for _, q := range []string{
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", user, password),
		fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO '%s'@'%%'", user),
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = db.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)) })
	return user
}

// effects creates the table ops record their side effects in.
func effects(t *testing.T, db *sql.DB, table string) {
	t.Helper()
	if _, err := db.Exec("CREATE TABLE " + table + " (id INT AUTO_INCREMENT PRIMARY KEY, run VARCHAR(64) NOT NULL DEFAULT '', op VARCHAR(64) NOT NULL)"); err != nil {
		t.Fatal(err)
	}
}

// ops returns the ops recorded in table, in the order they ran.
func ops(t *testing.T, db *sql.DB, table, run string) []string {
	t.Helper()
	rows, err := db.Query("SELECT op FROM "+table+" WHERE run = ? ORDER BY id", run)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var op string
		if err := rows.Scan(&op); err != nil {
			t.Fatal(err)
		}
		out = append(out, op)
	}
	return out
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inverseEvents returns "hook/op" of the inverse hook.completed events and
// the ops listed by compensation.completed.
func inverseEvents(t *testing.T, evs []events.Event) (inverse []string, completed []string, failed int) {
	t.Helper()
	for _, e := range evs {
		p, err := events.Decode(e)
		if err != nil {
			t.Fatalf("decode %s: %v", e.Type(), err)
		}
		switch d := p.(type) {
		case *events.HookCompletedData:
			if d.Inverse {
				inverse = append(inverse, d.Hook+"/"+d.Op)
			}
		case *events.CompensationCompletedData:
			completed = append(completed, strings.Join(d.Ops, ","))
		case *events.CompensationFailedData:
			failed++
		}
	}
	return inverse, completed, failed
}

// runOutput is `backstream run ID`.
func runOutput(t *testing.T, url, id string) string {
	t.Helper()
	out, code := harness.Run(t, t.TempDir(), nil, "run", id, "--nats", url)
	if code != 0 {
		t.Fatalf("backstream run %s: exit %d: %s", id, code, out)
	}
	return out
}

// script writes an executable shell script.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var bg = context.Background()
