package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PrivateServer is a MariaDB or PostgreSQL server that one test owns: its
// own data directory and port, so the test may kill it or give it users
// and authentication the machine's shared servers must not get. The
// machine's servers are never touched.
type PrivateServer struct {
	Host     string
	Port     int
	User     string // the superuser: root (MariaDB) or postgres
	Password string // the superuser's password; "" for MariaDB's root
	Dir      string // data directory
	driver   string // database/sql driver
	log      string // the server's log file
	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd.Wait returned
}

// DSN is a database/sql data source name for the superuser on database db.
func (s *PrivateServer) DSN(db string) string {
	if s.driver == "mysql" {
		return fmt.Sprintf("%s:%s@tcp(%s)/%s?multiStatements=true&parseTime=true", s.User, s.Password, Addr(s.Port), db)
	}
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", s.User, s.Password, Addr(s.Port), db)
}

// Open opens database db as the superuser; it is closed on cleanup.
func (s *PrivateServer) Open(t testing.TB, db string) *sql.DB {
	t.Helper()
	c, err := sql.Open(s.driver, s.DSN(db))
	if err != nil {
		t.Fatalf("open %s: %v", db, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// CreateDB creates an empty database (utf8mb4 on MariaDB) and opens it.
func (s *PrivateServer) CreateDB(t testing.TB, name string) *sql.DB {
	t.Helper()
	q := `CREATE DATABASE "` + name + `"`
	admin := "postgres"
	if s.driver == "mysql" {
		q, admin = "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4", ""
	}
	if _, err := s.Open(t, admin).ExecContext(context.Background(), q); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return s.Open(t, name)
}

// Kill sends SIGKILL to the server's process group (the server and, for
// PostgreSQL, every backend) and waits for the server process. Calling it
// again is a no-op.
func (s *PrivateServer) Kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Log returns the server's log, for failure messages.
func (s *PrivateServer) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// PrivateMariaDB initialises a data directory with mariadb-install-db and
// runs mariadbd on it on a free port of 127.0.0.1, with real grant tables
// (root without a password; CREATE USER works), until the test ends. A
// missing binary is Missing.
func PrivateMariaDB(t testing.TB) *PrivateServer {
	t.Helper()
	install, err := exec.LookPath("mariadb-install-db")
	if err != nil {
		Missing(t, "mariadb-install-db: %v", err)
	}
	server := "/usr/sbin/mariadbd"
	if _, err := os.Stat(server); err != nil {
		Missing(t, "mariadbd: %v", err)
	}
	base := t.TempDir()
	data := filepath.Join(base, "data")
	out, err := exec.Command(install, "--no-defaults", "--datadir="+data, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	port := FreePort(t)
	s := &PrivateServer{Host: "127.0.0.1", Port: port, User: "root", Dir: data, driver: "mysql", log: filepath.Join(base, "mariadbd.err")}
	s.cmd = exec.Command(server, "--no-defaults", "--datadir="+data, "--bind-address=127.0.0.1",
		"--port="+strconv.Itoa(port), "--socket="+filepath.Join(base, "sock"),
		"--pid-file="+filepath.Join(base, "pid"), "--user=root", "--skip-name-resolve",
		"--innodb-buffer-pool-size=64M", "--log-error="+s.log)
	s.start(t, "mariadbd")
	return s
}

// PrivatePostgres initialises a cluster with initdb whose every connection,
// local or TCP, needs a password (scram-sha-256 in pg_hba.conf), with the
// superuser postgres having password, and runs it on a free port of
// 127.0.0.1 until the test ends. PostgreSQL refuses to run as root, so the
// cluster belongs to the machine's postgres user and lives in a directory
// of its own under os.TempDir. A missing binary or user is Missing.
func PrivatePostgres(t testing.TB, password string) *PrivateServer {
	t.Helper()
	bin := postgresBinDir()
	if bin == "" {
		Missing(t, "postgres server binaries (/usr/lib/postgresql/*/bin/initdb)")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		Missing(t, "user postgres: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}

	// Not t.TempDir: its parents are root's and closed to postgres.
	base, err := os.MkdirTemp("", "bs-private-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatalf("chown %s: %v", base, err)
	}
	pwfile := filepath.Join(base, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pwfile, uid, gid); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "--pgdata="+data, "--username=postgres",
		"--auth=scram-sha-256", "--pwfile="+pwfile, "--no-sync", "--encoding=UTF8", "--locale=C")
	initdb.SysProcAttr = cred
	initdb.Dir = base
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	_ = os.Remove(pwfile)

	port := FreePort(t)
	s := &PrivateServer{Host: "127.0.0.1", Port: port, User: "postgres", Password: password, Dir: data, driver: "pgx", log: filepath.Join(base, "postgres.log")}
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", base,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=32MB")
	s.cmd.Dir = base
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred.Credential}
	s.start(t, "postgres")
	return s
}

// start runs s.cmd in its own process group with its output in s.log,
// kills it on cleanup, and waits until the superuser can connect.
func (s *PrivateServer) start(t testing.TB, what string) {
	t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if s.cmd.SysProcAttr == nil {
		s.cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	s.cmd.SysProcAttr.Setpgid = true
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", what, err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.cmd, s.exited)
	t.Cleanup(func() { s.Kill(); logf.Close() })
	db, err := sql.Open(s.driver, s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var last error
	for range 1200 { // readiness, not a clock: the bound is a safety net
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = db.PingContext(ctx)
		cancel()
		if last == nil {
			return
		}
		select {
		case <-s.exited:
			t.Fatalf("%s exited before accepting connections:\n%s", what, s.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not accept connections: %v\n%s", what, last, s.Log())
}

// postgresBinDir is the newest /usr/lib/postgresql/<version>/bin holding
// initdb and postgres, or "".
func postgresBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestV := "", -1
	for _, d := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil || v <= bestV {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "postgres")); errors.Is(err, os.ErrNotExist) {
			continue
		}
		best, bestV = d, v
	}
	return strings.TrimSpace(best)
}
