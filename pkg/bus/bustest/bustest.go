// Package bustest starts a real embedded NATS server with JetStream for tests
// and connects a Bus to it. Nothing is mocked.
package bustest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/testenv"
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

// Cluster starts a JetStream cluster of n embedded servers on loopback,
// sharing one set of generated users as a cluster's configuration does,
// stopped when the test ends. It returns the servers and the URL of every
// node, comma-separated; AuthFor and Connect find the credentials by the
// list and by each node's URL alone.
//
// Under -race the test is skipped: nats-server v2.15.2's replicated streams
// race with themselves (batchStagedDiff.commit against applyStreamMsgOp,
// reported in CI), which the detector blames on whichever test runs them.
// The plain test run covers these tests.
func Cluster(t testing.TB, n int) ([]*bus.Server, string) {
	t.Helper()
	if raceDetector {
		t.Skip("a NATS cluster under -race: nats-server's replicated streams have a data race of their own; the plain test run covers this test")
	}
	clientPorts, routePorts := make([]int, n), make([]int, n)
	for i := range n {
		clientPorts[i], routePorts[i] = testenv.FreePort(t), testenv.FreePort(t)
	}
	dir := t.TempDir()
	servers := make([]*bus.Server, n)
	urls := make([]string, n)
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[j]))
			}
		}
		srv, err := bus.StartServer(bus.ServerConfig{
			Name:     fmt.Sprintf("node-%d", i),
			Port:     clientPorts[i],
			StoreDir: filepath.Join(dir, fmt.Sprintf("node-%d", i)),
			AuthDir:  filepath.Join(dir, bus.AuthDirName),
			Cluster:  &bus.ClusterConfig{Name: "backstream-test", Host: "127.0.0.1", Port: routePorts[i], Routes: routes},
		})
		if err != nil {
			t.Fatalf("cluster node %d: %v", i, err)
		}
		t.Cleanup(srv.Shutdown)
		servers[i] = srv
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i])
	}
	deadline := time.Now().Add(30 * time.Second)
	for !servers[0].JetStreamReady() {
		if time.Now().After(deadline) {
			t.Fatal("cluster never elected a JetStream leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, u := range urls {
		Register(t, u, dir)
	}
	return servers, strings.Join(urls, ",")
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
	return ConnectWith(t, url, service, role, bus.Config{})
}

// ConnectWith connects a Bus for service to url with the credentials of
// role and cfg's settings (Replicas, for a cluster); Auth and LocalData are
// set here.
func ConnectWith(t testing.TB, url, service, role string, cfg bus.Config) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg.Auth, _ = AuthFor(url, role)
	local := false
	switch v := os.Getenv(EnvDataPlane); v {
	case "", "jetstream":
	case "auto":
		local = true
	default:
		t.Fatalf("$%s: %q is neither auto nor jetstream", EnvDataPlane, v)
	}
	cfg.LocalData = local
	b, err := bus.Connect(ctx, url, service, cfg, Logger(t))
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
