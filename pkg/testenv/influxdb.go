package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// InfluxServer is an InfluxDB 1.8 server a test owns, with auth off, its
// HTTP API and RPC on loopback ports of its own and its data in a temp dir.
// 1.8 also serves /api/v2/write and Flux on /api/v2/query, which
// influxdb-client-go/v2 uses (bucket = database name, any token).
type InfluxServer struct {
	// Addr is "127.0.0.1:port" of the HTTP API.
	Addr string
	// Dir holds the config file and the meta, data and wal directories.
	Dir string

	t testing.TB
	p *managedProc
}

const influxConfig = `reporting-disabled = true
bind-address = %q

[meta]
  dir = %q

[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = %q
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
`

// InfluxDB starts bin/influxd with a generated config and waits until /ping
// answers. Without the binary it calls Missing. Tests may call it in
// parallel.
func InfluxDB(t testing.TB) *InfluxServer {
	t.Helper()
	bin := Bin(t, "influxd")
	if bin == "" {
		Missing(t, "bin/influxd (run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	var lastErr error
	for range 3 {
		httpAddr, rpcAddr := Addr(FreePort(t)), Addr(FreePort(t))
		conf := filepath.Join(dir, "influxdb.conf")
		body := fmt.Sprintf(influxConfig, rpcAddr,
			filepath.Join(dir, "meta"), filepath.Join(dir, "data"), filepath.Join(dir, "wal"), httpAddr)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatalf("influxdb config: %v", err)
		}
		s := &InfluxServer{Addr: httpAddr, Dir: dir, t: t}
		s.p = &managedProc{
			name:    "influxd",
			bin:     bin,
			args:    []string{"run", "-config", conf},
			log:     filepath.Join(dir, "influxd.log"),
			ready:   "http://" + httpAddr + "/ping",
			timeout: 60 * time.Second,
		}
		if lastErr = s.p.start(); lastErr == nil {
			s.p.register(t)
			return s
		}
		s.p.stop()
		s.p.dump(t)
	}
	t.Fatalf("influxdb: %v", lastErr)
	return nil
}

// URL is the server's base URL, "http://127.0.0.1:port".
func (s *InfluxServer) URL() string { return "http://" + s.Addr }

// Stop kills the server with SIGKILL and waits for it to exit.
func (s *InfluxServer) Stop() { s.p.stop() }

// Start restarts a stopped server on the same ports and directory. It fails
// the test that started the server if it cannot; call it from that test's
// goroutine.
func (s *InfluxServer) Start() {
	s.t.Helper()
	if err := s.p.start(); err != nil {
		s.t.Fatalf("influxdb restart: %v", err)
	}
}

// CreateDatabase runs CREATE DATABASE name over /query.
func (s *InfluxServer) CreateDatabase(t testing.TB, name string) {
	t.Helper()
	if err := s.Query(t, `CREATE DATABASE "`+strings.ReplaceAll(name, `"`, `\"`)+`"`); err != nil {
		t.Fatalf("influxdb create database %s: %v", name, err)
	}
}

// Query POSTs an InfluxQL statement to /query and returns an error for a
// non-2xx answer or an error in the result.
func (s *InfluxServer) Query(t testing.TB, q string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	form := url.Values{"q": {q}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 || strings.Contains(string(b), `"error"`) {
		return fmt.Errorf("query %q: %s: %s", q, resp.Status, b)
	}
	return nil
}
