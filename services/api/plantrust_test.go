package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/api"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

// TestUntrustedPlansThroughTheAPI: a plan put raw into the bucket is listed
// as invalid beside the others and cannot be triggered (409), and a serve
// with --allow-exec=false refuses to trigger a command plan (403).
func TestUntrustedPlansThroughTheAPI(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	raw := func(name, source string) {
		doc := `{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":"` + name + `"},"spec":{"source":` + source +
			`,"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}}`
		if _, err := b.Plans.Put(ctx, name, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	raw("cmd", `{"type":"command","command":{"argv":["sh","-c","id"]}}`)
	raw("evil", `{"type":"command","command":{"argv":["sh","-c","id"]},"runAs":"root"}`)
	raw("files", `{"type":"files","files":{"path":"/srv"}}`)

	tokens := filepath.Join(t.TempDir(), "api-tokens")
	tok, err := api.AddToken(tokens, "ci-admin", api.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	reg := plugins.Default()
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Now: time.Now, RefuseExec: true}
	d.Owner = control.New(d)
	a, err := api.New(d, api.Config{TokensFile: tokens})
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path string) (int, string) {
		req := httptest.NewRequest(method, path, nil)
		req.RemoteAddr = "127.0.0.1:1234"
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}

	code, body := do("GET", "/v1/plans")
	var list []struct {
		Metadata struct{ Name string }
		Invalid  string
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != http.StatusOK {
		t.Fatalf("list: %d %v %s", code, err, body)
	}
	var names []string
	for _, p := range list {
		names = append(names, p.Metadata.Name+"="+p.Invalid)
	}
	want := "cmd=|evil=invalid stored plan: plan evil (not written by `backstream plan apply`?): decode plan json: source: unknown field \"runAs\"|files="
	if got := strings.Join(names, "|"); got != want {
		t.Fatalf("list:\n got %s\nwant %s", got, want)
	}

	tests := []struct {
		plan    string
		want    int
		wantErr string
	}{
		{"evil", http.StatusConflict, `plan evil (not written by ` + "`backstream plan apply`?" + `): decode plan json: source: unknown field "runAs"`},
		{"cmd", http.StatusForbidden, "exec refused: this serve runs with --allow-exec=false: spec.source.command.argv"},
		{"files", http.StatusAccepted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.plan, func(t *testing.T) {
			code, body := do("POST", "/v1/plans/"+tt.plan+"/trigger")
			var resp struct{ Error string }
			_ = json.Unmarshal([]byte(body), &resp)
			if code != tt.want || !strings.Contains(resp.Error, tt.wantErr) {
				t.Fatalf("trigger: %d %s; want %d with %q", code, body, tt.want, tt.wantErr)
			}
		})
	}
}
