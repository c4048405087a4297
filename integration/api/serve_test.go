// Package api tests the HTTP API of a real `backstream serve` process: the
// local default tokens, `api-token create`, and the refusal to serve plain
// HTTP beyond loopback. Handler-level cases are in services/api.
package api

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/testenv"
)

func call(t *testing.T, method, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestServeMakesALocalAdminTokenAndTakesCreatedTokens starts serve with no
// API flags, uses the admin token it wrote, then adds a trigger token with
// `api-token create` while it runs.
func TestServeMakesALocalAdminTokenAndTakesCreatedTokens(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	apiAddr := testenv.Addr(testenv.FreePort(t))
	srv := harness.StartProcess(t, dir, nil, "serve", "--data", data, "--embedded", testenv.Addr(testenv.FreePort(t)),
		"--services", "api", "--listen", apiAddr)
	srv.WaitOutput("api listening", 30*time.Second)
	base := "http://" + apiAddr

	tokens := filepath.Join(data, "auth", "api-tokens")
	adminFile := filepath.Join(data, "auth", "api-admin.token")
	for path, want := range map[string]os.FileMode{filepath.Join(data, "auth"): 0o700, tokens: 0o600, adminFile: 0o600} {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	raw, err := os.ReadFile(adminFile)
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(raw))
	if !strings.Contains(srv.Output(), "tokens="+tokens) {
		t.Errorf("serve did not log where the tokens file is:\n%s", srv.Output())
	}

	if code := call(t, "GET", base+"/healthz", ""); code != 200 {
		t.Errorf("healthz: %d", code)
	}
	if code := call(t, "GET", base+"/v1/runs", ""); code != 401 {
		t.Errorf("anonymous runs: %d, want 401", code)
	}
	if code := call(t, "GET", base+"/metrics", ""); code != 401 {
		t.Errorf("anonymous metrics: %d, want 401", code)
	}
	if code := call(t, "GET", base+"/v1/runs", admin); code != 200 {
		t.Errorf("runs with the local admin token: %d, want 200", code)
	}
	if code := call(t, "GET", base+"/metrics", admin); code != 200 {
		t.Errorf("metrics with the local admin token: %d, want 200", code)
	}

	out, code := harness.Run(t, dir, nil, "api-token", "create", "--name", "ci", "--role", "trigger", "--file", tokens)
	if code != 0 {
		t.Fatalf("api-token create: exit %d:\n%s", code, out)
	}
	created := strings.Fields(out)[0]
	if mode(t, tokens) != 0o600 {
		t.Errorf("tokens file mode %v after create, want 0600", mode(t, tokens))
	}
	// The running serve reads the file again: the new token authenticates
	// and gets as far as the plan lookup (no such plan), but cannot restore.
	if code := call(t, "POST", base+"/v1/plans/nope/trigger", created); code != 404 {
		t.Errorf("trigger with the created token: %d, want 404 (authorized, no such plan)", code)
	}
	if code := call(t, "POST", base+"/v1/plans/nope/restore", created); code != 403 {
		t.Errorf("restore with a trigger token: %d, want 403", code)
	}

	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"a duplicate name", []string{"--name", "ci", "--role", "read"}, `name "ci": already in`},
		{"an unknown role", []string{"--name", "other", "--role", "root"}, `role "root" is not one of`},
		{"a name with a space", []string{"--name", "ci bot", "--role", "read"}, "no spaces"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			out, code := harness.Run(t, dir, nil, append([]string{"api-token", "create", "--file", tokens}, tt.args...)...)
			if code == 0 || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d, want non-zero with %q:\n%s", code, tt.want, out)
			}
		})
	}

	for _, secret := range []string{admin, created} {
		if strings.Contains(srv.Output(), secret) {
			t.Error("a token is in serve's output")
		}
	}
}

func TestServeRefusesPlainHTTPBeyondLoopback(t *testing.T) {
	dir := t.TempDir()
	out, code := harness.Run(t, dir, nil, "serve", "--data", filepath.Join(dir, "data"),
		"--embedded", testenv.Addr(testenv.FreePort(t)), "--listen", "0.0.0.0:0")
	if code == 0 || !strings.Contains(out, "--listen 0.0.0.0:0: not a loopback address") || !strings.Contains(out, "--api-tls-cert") {
		t.Fatalf("exit %d, want a refusal naming --listen and --api-tls-cert:\n%s", code, out)
	}
}
