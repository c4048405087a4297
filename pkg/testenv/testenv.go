// Package testenv starts or finds the real servers backstream's tests run
// against: an embedded NATS server, MinIO and InfluxDB built into the repo's
// bin/, and the MariaDB, PostgreSQL, Redis and FerretDB of the machine.
//
// A test whose server is missing skips, unless BACKSTREAM_REQUIRE_ALL=1 is set
// (as CI does), in which case it fails. Nothing here is a mock.
package testenv

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for a server the test starts later.
//
// The port is drawn from below the kernel's ephemeral range: a port the
// kernel hands out for "port 0" is also what it gives outgoing
// connections, so between choosing it and the server binding it any
// connection could take it (seen in CI: a NATS cluster's routes took the
// client port of its third node).
func FreePort(t testing.TB) int {
	t.Helper()
	lo := ephemeralLow()
	for range 200 {
		if lo <= minTestPort+1000 {
			break // no room below the ephemeral range: take the kernel's
		}
		port := minTestPort + rand.IntN(lo-minTestPort)
		if l, err := net.Listen("tcp", Addr(port)); err == nil {
			l.Close()
			return port
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// minTestPort is the lowest port FreePort draws: above the usual fixed
// ports of the servers on this machine (PostgreSQL, MariaDB, Redis, NATS,
// MinIO, InfluxDB).
const minTestPort = 10000

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// where it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// Addr is "127.0.0.1:port".
func Addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
