// Package bustest starts a real embedded NATS server with JetStream for tests
// and connects a Bus to it. Nothing is mocked.
package bustest

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
)

// Server starts an embedded server on a free port with its store in a
// temporary directory, stopped when the test ends.
func Server(t testing.TB) *bus.Server {
	t.Helper()
	srv, err := bus.StartServer(bus.ServerConfig{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// Connect connects a Bus for service to url, closed when the test ends.
func Connect(t testing.TB, url, service string) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, url, service, bus.Config{}, Logger(t))
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
