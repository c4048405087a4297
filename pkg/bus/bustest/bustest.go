// Package bustest starts a real embedded NATS server with JetStream for tests
// and connects a Bus to it. Nothing is mocked.
package bustest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
)

// Server starts an embedded server on a free port with its store and its
// generated credentials in a temporary directory, stopped when the test ends.
// Like every embedded server it refuses anonymous clients; Connect, and the
// harness, find its admin credentials by its URL (AuthFor).
func Server(t testing.TB) *bus.Server {
	t.Helper()
	dir := t.TempDir()
	srv, err := bus.StartServer(bus.ServerConfig{Port: -1, StoreDir: filepath.Join(dir, "nats"), AuthDir: filepath.Join(dir, bus.AuthDirName)})
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	Register(t, srv.URL(), dir)
	t.Cleanup(srv.Shutdown)
	return srv
}

// servers maps the client URL of a test's server to its data directory.
var servers sync.Map

// Register makes the credentials a server generated under dataDir known by
// its url, for as long as the test runs.
func Register(t testing.TB, url, dataDir string) {
	servers.Store(url, dataDir)
	t.Cleanup(func() { servers.Delete(url) })
}

// AuthFor returns the credentials of role on the test server at url (the
// first of a comma-separated list), and false for a server it does not know.
func AuthFor(url, role string) (bus.Auth, bool) {
	first, _, _ := strings.Cut(url, ",")
	dir, ok := servers.Load(strings.TrimSpace(first))
	if !ok {
		return bus.Auth{}, false
	}
	a, err := bus.LocalAuth(dir.(string), role)
	return a, err == nil
}

// DataDir returns the directory a registered server at url keeps its
// credentials under (as `auth/`), and false for one it does not know.
func DataDir(url string) (string, bool) {
	first, _, _ := strings.Cut(url, ",")
	dir, ok := servers.Load(strings.TrimSpace(first))
	if !ok {
		return "", false
	}
	return dir.(string), true
}

// Connect connects a Bus for service to url as admin, closed when the test
// ends.
func Connect(t testing.TB, url, service string) *bus.Bus {
	t.Helper()
	return ConnectAs(t, url, service, bus.RoleAdmin)
}

// EnvDataPlane names the environment variable that picks the data plane of
// the Buses Connect makes: "auto" runs the in-process data plane
// (bus.Config.LocalData), as serve does by default; unset or "jetstream"
// carries every chunk through JetStream. Stage tests run on both with
// `BACKSTREAM_TEST_DATA_PLANE=auto go test …`.
const EnvDataPlane = "BACKSTREAM_TEST_DATA_PLANE"

// ConnectAs connects a Bus for service to url with the credentials of role.
func ConnectAs(t testing.TB, url, service, role string) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	auth, _ := AuthFor(url, role)
	local := false
	switch v := os.Getenv(EnvDataPlane); v {
	case "", "jetstream":
	case "auto":
		local = true
	default:
		t.Fatalf("$%s: %q is neither auto nor jetstream", EnvDataPlane, v)
	}
	b, err := bus.Connect(ctx, url, service, bus.Config{Auth: auth, LocalData: local}, Logger(t))
	if err != nil {
		t.Fatalf("connect bus: %v", err)
	}
	t.Cleanup(func() { b.NC.Close() })
	return b
}

// Start is Server and Connect in one.
func Start(t testing.TB) (*bus.Server, *bus.Bus) {
	srv := Server(t)
	return srv, Connect(t, srv.URL(), "test")
}

// Logger logs to the test's output at debug level when -v is given, else warn.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
