package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// DB is a uniquely named, empty database on one of the machine's servers,
// dropped when the test ends.
type DB struct {
	Host string
	Port int
	User string
	Name string  // the database's name
	DSN  string  // for database/sql, connected to Name
	SQL  *sql.DB // open on Name
}

// Unique returns prefix plus a random lowercase suffix usable as a database
// name or key prefix.
func Unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// MariaDB creates a fresh database on 127.0.0.1:3306 as root without a
// password and drops it on cleanup.
func MariaDB(t testing.TB) *DB {
	t.Helper()
	return MariaDBNamed(t, Unique("bs_test_"))
}

// MariaDBNamed is MariaDB with a chosen name (created, and dropped on cleanup).
func MariaDBNamed(t testing.TB, name string) *DB {
	t.Helper()
	const host, port, user = "127.0.0.1", 3306, "root"
	if !reachable(Addr(port)) {
		Missing(t, "mariadb on %s", Addr(port))
	}
	admin, err := sql.Open("mysql", user+"@tcp("+Addr(port)+")/")
	if err != nil {
		t.Fatalf("mariadb: %v", err)
	}
	defer admin.Close()
	ctx := context.Background()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4"); err != nil {
		t.Fatalf("mariadb create database %s: %v", name, err)
	}
	dsn := user + "@tcp(" + Addr(port) + ")/" + name + "?multiStatements=true&parseTime=true"
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("mariadb: %v", err)
	}
	t.Cleanup(func() {
		db.Close()
		a, err := sql.Open("mysql", user+"@tcp("+Addr(port)+")/")
		if err != nil {
			return
		}
		defer a.Close()
		if _, err := a.Exec("DROP DATABASE IF EXISTS `" + name + "`"); err != nil {
			t.Errorf("mariadb drop database %s: %v", name, err)
		}
	})
	return &DB{Host: host, Port: port, User: user, Name: name, DSN: dsn, SQL: db}
}

// Postgres creates a fresh database on 127.0.0.1:5432 as user postgres
// (trust auth) and drops it on cleanup.
func Postgres(t testing.TB) *DB {
	t.Helper()
	return PostgresNamed(t, Unique("bs_test_"))
}

// PostgresNamed is Postgres with a chosen name.
func PostgresNamed(t testing.TB, name string) *DB {
	t.Helper()
	const host, port, user = "127.0.0.1", 5432, "postgres"
	if !reachable(Addr(port)) {
		Missing(t, "postgres on %s", Addr(port))
	}
	adminDSN := fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", user, Addr(port))
	admin, err := sql.Open("pgx", adminDSN)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`CREATE DATABASE "` + name + `"`); err != nil {
		t.Fatalf("postgres create database %s: %v", name, err)
	}
	dsn := fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, Addr(port), name)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	t.Cleanup(func() {
		db.Close()
		a, err := sql.Open("pgx", adminDSN)
		if err != nil {
			return
		}
		defer a.Close()
		if _, err := a.Exec(`DROP DATABASE IF EXISTS "` + name + `" WITH (FORCE)`); err != nil {
			t.Errorf("postgres drop database %s: %v", name, err)
		}
	})
	return &DB{Host: host, Port: port, User: user, Name: name, DSN: dsn, SQL: db}
}

// RedisServer is a Redis a test may use: the machine's (shared, so only
// under Prefix) or one of its own (StartRedis).
type RedisServer struct {
	Addr   string
	Port   int
	Prefix string // keys a test writes on the shared server start with this
	Dir    string // data directory of an own server; "" for the machine's
	cmd    *exec.Cmd
}

// Redis returns the machine's Redis on 127.0.0.1:6379 with a random key
// prefix; keys under the prefix are deleted on cleanup. Never write other keys.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	addr := Addr(6379)
	if !reachable(addr) {
		Missing(t, "redis on %s", addr)
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		Missing(t, "redis-cli: %v", err)
	}
	r := &RedisServer{Addr: addr, Port: 6379, Prefix: Unique("bs_test_") + ":"}
	t.Cleanup(func() {
		out, err := exec.Command("redis-cli", "-p", "6379", "--scan", "--pattern", r.Prefix+"*").Output()
		if err != nil {
			return
		}
		for _, k := range strings.Fields(string(out)) {
			_ = exec.Command("redis-cli", "-p", "6379", "DEL", k).Run()
		}
	})
	return r
}

// StartRedis runs its own redis-server on a free port with a temp data dir,
// persistence off, and stops it on cleanup. Extra args are appended
// ("--requirepass", "x").
func StartRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	return StartRedisIn(t, t.TempDir(), "dump.rdb", args...)
}

// StartRedisIn is StartRedis with a chosen data directory and RDB file name,
// which the server loads at start when present.
func StartRedisIn(t testing.TB, dir, dbfilename string, args ...string) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Missing(t, "redis-server: %v", err)
	}
	port := FreePort(t)
	argv := append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--dbfilename", dbfilename, "--save", "", "--appendonly", "no", "--daemonize", "no"}, args...)
	cmd := exec.Command(bin, argv...)
	cmd.Stdout, cmd.Stderr = nil, nil
	logf, err := os.Create(filepath.Join(t.TempDir(), "redis.log"))
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r := &RedisServer{Addr: Addr(port), Port: port, Dir: dir, cmd: cmd}
	t.Cleanup(func() { r.Kill(); logf.Close() })
	waitListen(t, r.Addr, cmd, "redis-server")
	// A listening server may still be loading its RDB.
	for range 600 {
		out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(port), "PING").CombinedOutput()
		if !strings.Contains(string(out), "LOADING") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return r
}

// Kill stops an own server at once (SIGKILL). No-op for the machine's.
func (r *RedisServer) Kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
}

// FerretDBServer is a FerretDB (MongoDB wire protocol, SQLite backend) of the test's own.
type FerretDBServer struct {
	Addr string
	URI  string
	cmd  *exec.Cmd
}

// Kill stops the server at once (SIGKILL); cleanup is then a no-op.
func (f *FerretDBServer) Kill() {
	if f.cmd == nil {
		return
	}
	_ = f.cmd.Process.Kill()
	_, _ = f.cmd.Process.Wait()
	f.cmd = nil
}

// FerretDB starts bin/ferretdb on a free port with a temp SQLite directory
// and stops it on cleanup. A missing binary is testenv.Missing.
func FerretDB(t testing.TB) *FerretDBServer {
	t.Helper()
	bin := Bin(t, "ferretdb")
	if bin == "" {
		Missing(t, "bin/ferretdb (run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	port := FreePort(t)
	addr := Addr(port)
	cmd := exec.Command(bin, "--handler=sqlite", "--sqlite-url=file:"+dir+"/", "--listen-addr="+addr,
		"--telemetry=disable", "--log-level=error", "--debug-addr=-", "--state-dir="+t.TempDir())
	logf, err := os.Create(filepath.Join(t.TempDir(), "ferretdb.log"))
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ferretdb: %v", err)
	}
	f := &FerretDBServer{Addr: addr, URI: "mongodb://" + addr + "/", cmd: cmd}
	t.Cleanup(func() { f.Kill(); logf.Close() })
	waitListen(t, addr, cmd, "ferretdb")
	return f
}

// waitListen waits until addr accepts connections or the process exits.
// It waits on readiness, not on a clock: the bound is only a safety net.
func waitListen(t testing.TB, addr string, cmd *exec.Cmd, what string) {
	t.Helper()
	for range 1200 {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if exited(cmd) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen on %s", what, addr)
}

// exited reports whether cmd's process is gone or a zombie. ProcessState is
// only set by Wait, which the server's Kill calls, so the process table is
// asked instead: a server that dies at start is reported at once.
func exited(cmd *exec.Cmd) bool {
	if cmd.Process == nil {
		return true
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
	return err != nil || strings.Contains(string(st), ") Z")
}
