// Package testenv starts or finds the real servers backstream's tests run
// against: an embedded NATS server, MinIO and InfluxDB built into the repo's
// bin/, and the MariaDB, PostgreSQL, Redis and FerretDB of the machine.
//
// A test whose server is missing skips, unless BACKSTREAM_REQUIRE_ALL=1 is set
// (as CI does), in which case it fails. Nothing here is a mock.
package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// RequireAll reports whether a missing server must fail the test.
func RequireAll() bool { return os.Getenv("BACKSTREAM_REQUIRE_ALL") == "1" }

// Missing ends t for a server that is not available: a failure under
// BACKSTREAM_REQUIRE_ALL=1, a skip otherwise.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if RequireAll() {
		t.Fatalf("required server missing (BACKSTREAM_REQUIRE_ALL=1): "+format, args...)
	}
	t.Skipf("server missing: "+format, args...)
}

// RepoRoot is the directory holding go.work, found by walking up from the
// working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.work above the working directory")
		}
		dir = parent
	}
}

// Bin returns the path of a tool installed into the repo's bin/ by
// scripts/install-tools.sh, or "" when it is not there.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(RepoRoot(t), "bin", name)
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
		return p
	}
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr is "127.0.0.1:port".
func Addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
