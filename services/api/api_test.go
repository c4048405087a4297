package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/api"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

const planName = "files"

// env is an API served over a real listener on a real bus, with one plan
// and a token of each role.
type env struct {
	t      *testing.T
	bus    *bus.Bus
	base   string
	tokens map[string]string // role name -> token
	log    *testenv.Buffer
	client *http.Client
}

// start serves the API with cfg; an empty TokensFile (and no ClientCA)
// gets a file with one token per role.
func start(t *testing.T, cfg api.Config) *env {
	t.Helper()
	_, b := bustest.Start(t)
	ctx := context.Background()
	reg := plugins.Default()
	plans := planstore.New(b.Plans, reg)
	p, err := plan.Parse("files.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
    type: files
    files: {path: %q}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %q}
`, planName, t.TempDir(), t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plans.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, bus: b, tokens: map[string]string{}, log: &testenv.Buffer{}, client: &http.Client{Timeout: 10 * time.Second}}
	if cfg.TokensFile == "" && cfg.ClientCA == "" {
		cfg.TokensFile = filepath.Join(t.TempDir(), "api-tokens")
		for _, role := range []api.Role{api.RoleRead, api.RoleTrigger, api.RoleRestore, api.RoleAdmin} {
			tok, err := api.AddToken(cfg.TokensFile, "ci-"+role.String(), role)
			if err != nil {
				t.Fatal(err)
			}
			e.tokens[role.String()] = tok
		}
	}
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: plans, Plugins: reg,
		Log: slog.New(slog.NewTextHandler(io.MultiWriter(e.log, os.Stderr), nil)), Now: time.Now}
	d.Owner = control.New(d)
	a, err := api.New(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Handle("GET /metrics", api.RoleRead, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "# metrics\n")
	}))
	ln, err := a.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := api.HTTPServer(a.Handler(), d.Log)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	scheme := "http"
	if cfg.TLS() {
		scheme = "https"
	}
	e.base = scheme + "://" + ln.Addr().String()
	return e
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends a request with token as bearer (none when empty).
func (e *env) do(method, path, token, body string) response {
	e.t.Helper()
	return e.doWith(e.client, method, path, token, body)
}

func (e *env) doWith(c *http.Client, method, path, token, body string) response {
	e.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

// event returns the payload of the event of type typ that run id emitted.
func event[P events.Payload](t *testing.T, b *bus.Bus, runID string) P {
	t.Helper()
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var zero P
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ev, err := bus.Decode(m.Data)
		if err != nil || events.RunID(ev) != runID || ev.Type() != zero.EventType() {
			continue
		}
		p, err := events.DecodeAs[P](ev)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatalf("no %s event of run %s", zero.EventType(), runID)
	return zero
}

func TestAnonymousRequestsAreRefusedButHealth(t *testing.T) {
	e := start(t, api.Config{})
	tests := []struct {
		name, method, path string
	}{
		{"plans", "GET", "/v1/plans"},
		{"runs", "GET", "/v1/runs"},
		{"a run", "GET", "/v1/runs/01J0000000000000000000000"},
		{"trigger", "POST", "/v1/plans/files/trigger"},
		{"restore", "POST", "/v1/plans/files/restore"},
		{"metrics", "GET", "/metrics"},
		{"a path no route knows", "GET", "/v1/secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, "", "")
			if r.status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", r.status, r.raw)
			}
			if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("WWW-Authenticate %q, want Bearer", got)
			}
			if r.body["error"] == nil {
				t.Errorf("body %s, want {\"error\": …}", r.raw)
			}
		})
	}
	req, _ := http.NewRequest("GET", e.base+"/v1/runs", nil)
	req.Header.Set("Authorization", "Basic "+e.tokens["admin"])
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a Basic authorization header: %d, want 401", resp.StatusCode)
	}
	r := e.do("GET", "/healthz", "", "")
	if r.status != http.StatusOK || len(r.body) != 1 || r.body["status"] != "ok" {
		t.Errorf("healthz: %d %s, want 200 with only a status", r.status, r.raw)
	}
}

func TestRolesAndConfirmation(t *testing.T) {
	e := start(t, api.Config{})
	const (
		intoTarget   = `{"backupId": "latest", "destination": "local", "target": "/tmp/elsewhere"}`
		cleanTarget  = `{"backupId": "latest", "destination": "local", "target": "/tmp/elsewhere", "clean": true}`
		intoSource   = `{"backupId": "latest", "destination": "local"}`
		confirmed    = `{"backupId": "latest", "destination": "local", "confirm": "files"}`
		cleanConfirm = `{"backupId": "latest", "destination": "local", "target": "/tmp/x", "clean": true, "confirm": "files"}`
		wrongConfirm = `{"backupId": "latest", "destination": "local", "confirm": "other"}`
	)
	tests := []struct {
		name         string
		role         string
		method, path string
		body         string
		want         int
		wantErr      string // in the error message
	}{
		{"read lists plans", "read", "GET", "/v1/plans", "", 200, ""},
		{"read lists runs", "read", "GET", "/v1/runs", "", 200, ""},
		{"read reads metrics", "read", "GET", "/metrics", "", 200, ""},
		{"read cannot trigger", "read", "POST", "/v1/plans/files/trigger", "", 403, "needs the trigger role"},
		{"trigger triggers", "trigger", "POST", "/v1/plans/files/trigger", `{"reason": "test"}`, 202, ""},
		{"trigger triggers with no body", "trigger", "POST", "/v1/plans/files/trigger", "", 202, ""},
		{"trigger of a missing plan", "trigger", "POST", "/v1/plans/nope/trigger", "", 404, "nope"},
		{"trigger cannot restore", "trigger", "POST", "/v1/plans/files/restore", intoTarget, 403, "needs the restore role"},
		{"restore into another target", "restore", "POST", "/v1/plans/files/restore", intoTarget, 202, ""},
		{"clean restore unconfirmed", "restore", "POST", "/v1/plans/files/restore", cleanTarget, 400, `send "confirm": "files"`},
		{"restore into the source unconfirmed", "restore", "POST", "/v1/plans/files/restore", intoSource, 400, `confirm: this restore replaces data`},
		{"restore confirmed with another name", "restore", "POST", "/v1/plans/files/restore", wrongConfirm, 400, `is "other", not the plan's name`},
		{"restore into the source confirmed", "restore", "POST", "/v1/plans/files/restore", confirmed, 202, ""},
		{"clean restore confirmed", "restore", "POST", "/v1/plans/files/restore", cleanConfirm, 202, ""},
		{"admin restores", "admin", "POST", "/v1/plans/files/restore", confirmed, 202, ""},
		{"restore of a missing plan", "restore", "POST", "/v1/plans/nope/restore", intoSource, 404, "nope"},
		{"a misspelt field is refused", "restore", "POST", "/v1/plans/files/restore", `{"backupId": "latest", "destination": "local", "target": "/t", "claen": true}`, 400, `unknown field "claen"`},
		{"restore without a body", "restore", "POST", "/v1/plans/files/restore", "", 400, "body: empty"},
		{"restore without a backup", "restore", "POST", "/v1/plans/files/restore", `{"destination": "local", "target": "/t"}`, 400, "backupId: required"},
		{"a token no file holds", "bogus", "GET", "/v1/runs", "", 401, "invalid bearer token"},
		{"an index key is not a run", "read", "GET", "/v1/runs/_idx.success.files", "", 404, "is not a run id"},
		{"a key no run can have", "read", "GET", "/v1/runs/a*b", "", 404, "is not a run id"},
		{"a path no route knows, authenticated", "read", "GET", "/v1/nothing", "", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := e.tokens[tt.role]
			if tt.role == "bogus" {
				token = "not-a-token"
			}
			r := e.do(tt.method, tt.path, token, tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.raw)
			}
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", msg, tt.wantErr)
			}
		})
	}
}

func TestRequestedByIsTheAuthenticatedIdentity(t *testing.T) {
	e := start(t, api.Config{})
	r := e.do("POST", "/v1/plans/files/trigger", e.tokens["trigger"], `{"requestedBy": "mallory", "reason": "nightly"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("trigger: %d %s", r.status, r.raw)
	}
	b := event[events.BackupRequestedData](t, e.bus, r.body["runId"].(string))
	if b.RequestedBy != "api:ci-trigger" || b.Trigger != events.TriggerAPI || b.Reason != "nightly" {
		t.Errorf("backup.requested %+v, want requestedBy api:ci-trigger, trigger api, reason nightly", b)
	}

	r = e.do("POST", "/v1/plans/files/restore", e.tokens["restore"], `{"backupId": "latest", "destination": "local", "target": "/tmp/t", "requestedBy": "mallory"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("restore: %d %s", r.status, r.raw)
	}
	rr := event[events.RestoreRequestedData](t, e.bus, r.body["runId"].(string))
	if rr.RequestedBy != "api:ci-restore" || rr.Target != "/tmp/t" || rr.BackupID != "latest" {
		t.Errorf("restore.requested %+v, want requestedBy api:ci-restore", rr)
	}
}

func TestOversizeBodyIs413(t *testing.T) {
	e := start(t, api.Config{})
	big := `{"reason": "` + strings.Repeat("x", api.MaxBodyBytes) + `"}`
	for _, path := range []string{"/v1/plans/files/trigger", "/v1/plans/files/restore"} {
		r := e.do("POST", path, e.tokens["admin"], big)
		if r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: status %d, want 413: %.200s", path, r.status, r.raw)
		}
	}
	// A body just inside the limit is read.
	fits := `{"reason": "` + strings.Repeat("x", api.MaxBodyBytes-64) + `"}`
	if r := e.do("POST", "/v1/plans/files/trigger", e.tokens["admin"], fits); r.status != http.StatusAccepted {
		t.Errorf("body inside the limit: %d %.200s", r.status, r.raw)
	}
	// A header past MaxHeaderBytes never reaches a handler.
	req, _ := http.NewRequest("GET", e.base+"/v1/runs", nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens["read"])
	req.Header.Set("X-Padding", strings.Repeat("p", 2*api.MaxHeaderBytes))
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversize header: %d, want 431", resp.StatusCode)
	}
}

func TestDeniedRequestsAreLoggedWithoutTheToken(t *testing.T) {
	e := start(t, api.Config{})
	e.do("GET", "/v1/runs", "", "")
	e.do("POST", "/v1/plans/files/trigger", e.tokens["read"], "")
	e.do("GET", "/v1/runs", "wrong-token-value", "")
	logged := e.log.String()
	for _, want := range []string{
		`level=WARN msg="api request denied" method=GET path=/v1/runs remote=127.0.0.1:`,
		`status=401 reason="no credentials"`,
		`method=POST path=/v1/plans/files/trigger`,
		`status=403 reason="role read lacks trigger" identity=ci-read via=token`,
		`status=401 reason="unknown bearer token"`,
	} {
		if !strings.Contains(logged, want) {
			t.Errorf("log lacks %q:\n%s", want, logged)
		}
	}
	for role, tok := range e.tokens {
		if strings.Contains(logged, tok) {
			t.Errorf("the %s token is in the log", role)
		}
	}
	if strings.Contains(logged, "wrong-token-value") {
		t.Error("a presented token is in the log")
	}
}

func TestTokensFileIsReadAgainWhenItChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	first, err := api.AddToken(file, "first", api.RoleRead)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, api.Config{TokensFile: file})
	if r := e.do("GET", "/v1/runs", first, ""); r.status != 200 {
		t.Fatalf("first token: %d %s", r.status, r.raw)
	}
	second, err := api.AddToken(file, "second", api.RoleTrigger)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.do("POST", "/v1/plans/files/trigger", second, ""); r.status != http.StatusAccepted {
		t.Fatalf("token added while serving: %d %s", r.status, r.raw)
	}
	// A broken file leaves the tokens in force and is reported.
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "broken line")
	f.Close()
	if r := e.do("GET", "/v1/runs", first, ""); r.status != 200 {
		t.Fatalf("after a broken edit: %d %s", r.status, r.raw)
	}
	if !strings.Contains(e.log.String(), "api tokens file not reloaded") {
		t.Errorf("the broken file was not reported:\n%s", e.log.String())
	}
}

func TestNewRefusesAnAPINoOneCouldUse(t *testing.T) {
	_, b := bustest.Start(t)
	_, err := api.New(&stage.Deps{Bus: b}, api.Config{})
	if err == nil {
		t.Fatal("an API without tokens or client CA was built")
	}
	bad := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(bad, []byte("ci superuser sha256:00\n"), 0o600)
	_, err = api.New(&stage.Deps{Bus: b}, api.Config{TokensFile: bad})
	if err == nil || !strings.Contains(err.Error(), "--api-tokens") || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("bad tokens file: %v, want an error naming --api-tokens and the line", err)
	}
	if errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestCancel: a trigger token cancels a running backup run (200, the
// record Cancelled, the event announced); a restore run needs the restore
// role; a run already over is 409; an unknown run 404.
func TestCancel(t *testing.T) {
	e := start(t, api.Config{})
	ctx := context.Background()
	store := runs.NewStore(e.bus.Runs)
	newRun := func(kind string) string {
		t.Helper()
		id := events.NewID()
		if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: planName, Kind: kind, Phase: runs.Pending}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	backupRun, restoreRun := newRun(runs.KindBackup), newRun(runs.KindRestore)
	tests := []struct {
		name, run, token, body string
		want                   int
	}{
		{"read may not cancel", backupRun, "read", "", http.StatusForbidden},
		{"trigger may not cancel a restore", restoreRun, "trigger", "", http.StatusForbidden},
		{"trigger cancels a backup", backupRun, "trigger", `{"reason": "wrong window"}`, http.StatusOK},
		{"a cancelled run is over", backupRun, "trigger", "", http.StatusConflict},
		{"restore cancels a restore", restoreRun, "restore", "", http.StatusOK},
		{"an unknown run", events.NewID(), "admin", "", http.StatusNotFound},
		{"an unknown field", newRun(runs.KindBackup), "admin", `{"reson": "typo"}`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.do("POST", "/v1/runs/"+tt.run+"/cancel", e.tokens[tt.token], tt.body)
			if res.status != tt.want {
				t.Fatalf("status %d, want %d: %s", res.status, tt.want, res.raw)
			}
		})
	}
	r, err := store.Get(ctx, backupRun)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != runs.Cancelled || r.Error != "cancelled by api:ci-trigger: wrong window" {
		t.Fatalf("run %s (%q), want Cancelled by the token's name with the reason", r.Phase, r.Error)
	}
}

// TestRunsArePaged: GET /v1/runs returns at most limit runs, newest first,
// with a Link to the next page that keeps the plan and the limit; a bad
// limit is a 400 naming it.
func TestRunsArePaged(t *testing.T) {
	e := start(t, api.Config{})
	ctx := context.Background()
	store := runs.NewStore(e.bus.Runs)
	var ids []string
	for range 5 {
		id := events.NewID()
		if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: planName, Kind: runs.KindBackup}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	var got []string
	path := "/v1/runs?plan=" + planName + "&limit=2"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		r := e.do("GET", path, e.tokens["read"], "")
		if r.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, r.status, r.raw)
		}
		var list []runs.Run
		if err := json.Unmarshal([]byte(r.raw), &list); err != nil || len(list) > 2 {
			t.Fatalf("GET %s: %d runs %v, want at most 2", path, len(list), err)
		}
		for _, run := range list {
			got = append(got, run.ID)
		}
		path = ""
		if link := r.header.Get("Link"); link != "" {
			next, ok := strings.CutPrefix(link, "<")
			next, _, _ = strings.Cut(next, ">")
			if !ok || !strings.HasSuffix(link, `>; rel="next"`) || !strings.Contains(next, "plan="+planName) || !strings.Contains(next, "limit=2") {
				t.Fatalf("Link %q, want the next page of the same plan and limit", link)
			}
			path = next
		}
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("pages hold %v, want %v", got, ids)
	}
	for _, bad := range []string{"0", "x", "1001"} {
		r := e.do("GET", "/v1/runs?limit="+bad, e.tokens["read"], "")
		if msg, _ := r.body["error"].(string); r.status != http.StatusBadRequest || !strings.HasPrefix(msg, "limit: ") {
			t.Errorf("limit=%s: %d %s, want 400 naming limit", bad, r.status, r.raw)
		}
	}
	if r := e.do("GET", "/v1/runs?before=yesterday", e.tokens["read"], ""); r.status != http.StatusBadRequest || !strings.Contains(r.raw, "before") {
		t.Errorf("before=yesterday: %d %s, want 400 naming before", r.status, r.raw)
	}
}
