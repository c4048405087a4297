package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/api"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/stage"
)

// picky is a real consumer that gives up on every event of plan ghost
// until fixed, and remembers the ids of the events it handled.
type picky struct {
	fixed atomic.Bool
	mu    sync.Mutex
	seen  map[string]bool
}

func runPicky(t *testing.T, b *bus.Bus) *picky {
	t.Helper()
	p := &picky{seen: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, bus.ConsumerSpec{Name: "picky", Types: []string{events.BackupRequested, events.StepCompleted},
			Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) {
				if e.Subject() == "ghost" && !p.fixed.Load() {
					return nil, bus.Permanent(fmt.Errorf("event %s for plan %q: plan not found", e.Type(), e.Subject()))
				}
				p.mu.Lock()
				p.seen[e.ID()] = true
				p.mu.Unlock()
				return nil, nil
			}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer picky: %v", err)
		}
	})
	return p
}

func (p *picky) handled(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id]
}

// asAPIRole serves a second API on the same bus server, connected as the
// api role of a split deployment, with one restore token.
func asAPIRole(t *testing.T, e *env) (base, token string) {
	t.Helper()
	url := e.bus.NC.ConnectedUrl()
	if _, ok := bustest.AuthFor(url, bus.RoleAdmin); !ok {
		t.Fatalf("no credentials known for %s", url)
	}
	b := bustest.ConnectAs(t, url, "api", "api")
	reg := plugins.Default()
	d := &stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Log: slog.New(slog.NewTextHandler(io.MultiWriter(e.log, os.Stderr), nil)), Now: time.Now}
	d.Owner = control.New(d)
	tokens := filepath.Join(t.TempDir(), "api-tokens")
	token, err := api.AddToken(tokens, "ops", api.RoleRestore)
	if err != nil {
		t.Fatal(err)
	}
	a, err := api.New(d, api.Config{TokensFile: tokens})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := a.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := api.HTTPServer(a.Handler(), d.Log)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String(), token
}

// TestDeadLetterEndpoints: a real consumer dead-letters a backup request
// and a step.completed of a plan it does not know; the API lists and shows
// them, refuses replays and purges to roles below restore, replays once
// the cause is fixed (the consumer then handles the event), and purges.
// Served as the api role of a split deployment, the replay of an event
// that role may not publish is refused by the NATS server and says so.
func TestDeadLetterEndpoints(t *testing.T) {
	e := start(t, api.Config{})
	p := runPicky(t, e.bus)
	ctx := context.Background()
	req := events.MustNew(e.bus.Meta("ghost", events.NewID(), ""), events.BackupRequestedData{Trigger: events.TriggerAPI})
	step := events.MustNew(e.bus.Meta("ghost", events.RunID(req), "snapshot"), events.StepCompletedData{Step: "snapshot"})
	if err := e.bus.Publish(ctx, req, step); err != nil {
		t.Fatal(err)
	}
	var list []bus.DeadLetter
	deadline := time.Now().Add(20 * time.Second)
	for len(list) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("dead letters: %+v, want 2", list)
		}
		time.Sleep(50 * time.Millisecond)
		r := e.do("GET", "/v1/dlq", e.tokens["read"], "")
		if r.status != http.StatusOK {
			t.Fatalf("GET /v1/dlq: %d %s", r.status, r.raw)
		}
		list = nil
		if err := json.Unmarshal([]byte(r.raw), &list); err != nil {
			t.Fatal(err)
		}
	}
	var reqSeq, stepSeq string
	for _, dl := range list {
		switch {
		case dl.EventID == req.ID() && dl.Type == events.BackupRequested && dl.Plan == "ghost" && dl.RunID == events.RunID(req) && dl.Consumer == "picky":
			reqSeq = strconv.FormatUint(dl.Seq, 10)
		case dl.EventID == step.ID() && dl.Type == events.StepCompleted && dl.Step == "snapshot":
			stepSeq = strconv.FormatUint(dl.Seq, 10)
		}
	}
	if reqSeq == "" || stepSeq == "" {
		t.Fatalf("dead letters %+v: want the request and the step.completed", list)
	}

	tests := []struct {
		name         string
		role         string
		method, path string
		want         int
		wantBody     string
	}{
		{"anonymous list", "", "GET", "/v1/dlq", 401, "authentication required"},
		{"anonymous show", "", "GET", "/v1/dlq/" + reqSeq, 401, "authentication required"},
		{"anonymous replay", "", "POST", "/v1/dlq/" + reqSeq + "/replay", 401, "authentication required"},
		{"anonymous purge", "", "DELETE", "/v1/dlq/" + reqSeq, 401, "authentication required"},
		{"list by plan and consumer", "read", "GET", "/v1/dlq?plan=ghost&consumer=picky", 200, `"seq": ` + reqSeq},
		{"list by another consumer", "read", "GET", "/v1/dlq?consumer=nobody", 200, "[]"},
		{"list by a wildcard consumer", "read", "GET", "/v1/dlq?consumer=a.*", 400, `consumer \"a.*\"`},
		{"show", "read", "GET", "/v1/dlq/" + reqSeq, 200, `"Backstream-Dead-Reason": [`},
		{"show an unknown one", "read", "GET", "/v1/dlq/999", 404, "dead letter 999: no such dead letter"},
		{"show a bad seq", "read", "GET", "/v1/dlq/abc", 400, `seq \"abc\": want a dead letter's sequence number`},
		{"read cannot replay", "read", "POST", "/v1/dlq/" + reqSeq + "/replay", 403, "needs the restore role"},
		{"trigger cannot replay", "trigger", "POST", "/v1/dlq/" + reqSeq + "/replay", 403, "needs the restore role"},
		{"read cannot purge", "read", "DELETE", "/v1/dlq/" + reqSeq, 403, "needs the restore role"},
		{"trigger cannot purge", "trigger", "DELETE", "/v1/dlq/" + reqSeq, 403, "needs the restore role"},
		{"replay an unknown one", "restore", "POST", "/v1/dlq/999/replay", 404, "no such dead letter"},
		{"purge an unknown one", "restore", "DELETE", "/v1/dlq/999", 404, "no such dead letter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, e.tokens[tt.role], "")
			if r.status != tt.want || !strings.Contains(r.raw, tt.wantBody) {
				t.Errorf("%s %s as %q: %d %s, want %d with %q", tt.method, tt.path, tt.role, r.status, r.raw, tt.want, tt.wantBody)
			}
		})
	}

	// Paged: a page of one links to the next, which holds the other.
	var paged []string
	for path, pages := "/v1/dlq?limit=1", 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		r := e.do("GET", path, e.tokens["read"], "")
		var page []bus.DeadLetter
		if err := json.Unmarshal([]byte(r.raw), &page); err != nil || r.status != http.StatusOK || len(page) > 1 {
			t.Fatalf("GET %s: %d %s, want at most one dead letter", path, r.status, r.raw)
		}
		for _, dl := range page {
			paged = append(paged, strconv.FormatUint(dl.Seq, 10))
		}
		path = ""
		if link := r.header.Get("Link"); link != "" {
			next, _, _ := strings.Cut(strings.TrimPrefix(link, "<"), ">")
			if !strings.Contains(next, "limit=1") || !strings.HasSuffix(link, `>; rel="next"`) {
				t.Fatalf("Link %q, want the next page with the same limit", link)
			}
			path = next
		}
	}
	if want := []uint64{list[0].Seq, list[1].Seq}; fmt.Sprint(paged) != fmt.Sprint(want) {
		t.Errorf("pages hold %v, want %v", paged, want)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=-1"} {
		r := e.do("GET", "/v1/dlq?"+q, e.tokens["read"], "")
		name, _, _ := strings.Cut(q, "=")
		if msg, _ := r.body["error"].(string); r.status != http.StatusBadRequest || !strings.HasPrefix(msg, name+": ") {
			t.Errorf("GET /v1/dlq?%s: %d %s, want 400 naming %s", q, r.status, r.raw, name)
		}
	}

	// Shown: the reason, and the event as JSON.
	r := e.do("GET", "/v1/dlq/"+reqSeq, e.tokens["read"], "")
	var shown api.DeadLetterResponse
	if err := json.Unmarshal([]byte(r.raw), &shown); err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(shown.Event, &ev); err != nil || ev["id"] != req.ID() || !strings.Contains(shown.Reason, `plan "ghost": plan not found`) {
		t.Errorf("shown: %s", r.raw)
	}

	// Nothing a refused role asked for happened.
	if p.handled(req.ID()) {
		t.Fatal("the request was handled before any replay")
	}
	p.fixed.Store(true)
	r = e.do("POST", "/v1/dlq/"+reqSeq+"/replay", e.tokens["restore"], "")
	if r.status != http.StatusAccepted || r.body["msgId"] != req.ID()+":dlq:"+reqSeq || r.body["duplicate"] != nil {
		t.Fatalf("replay: %d %s", r.status, r.raw)
	}
	waitHandled(t, p, req.ID())
	if !strings.Contains(e.log.String(), "api dead letter replayed") || !strings.Contains(e.log.String(), "by=api:ci-restore") {
		t.Errorf("the replay is not logged with who asked for it")
	}

	// As the api role of a split deployment: it may read, replay the
	// requests it may make anyway, and delete; a step.completed it may not
	// publish, which the server refuses.
	base, token := asAPIRole(t, e)
	call := func(method, path string) response {
		t.Helper()
		saved := e.base
		e.base = base
		defer func() { e.base = saved }()
		return e.do(method, path, token, "")
	}
	if r := call("GET", "/v1/dlq"); r.status != http.StatusOK || !strings.Contains(r.raw, `"seq": `+stepSeq) {
		t.Errorf("list as the api role: %d %s", r.status, r.raw)
	}
	start := time.Now()
	r = call("POST", "/v1/dlq/"+stepSeq+"/replay")
	want := "the api's NATS user may not publish bs.events.step.completed.ghost; replay with `backstream dlq replay " + stepSeq + "` as admin"
	if r.status != http.StatusForbidden || r.body["error"] != want {
		t.Errorf("replay of a step.completed as the api role: %d %s, want 403 %q", r.status, r.raw, want)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	if p.handled(step.ID()) {
		t.Error("the refused replay reached the consumer")
	}
	// The same entry again within the duplicate window: stored once.
	if r := call("POST", "/v1/dlq/"+reqSeq+"/replay"); r.status != http.StatusAccepted || r.body["duplicate"] != true {
		t.Errorf("second replay of the request as the api role: %d %s, want 202 with duplicate", r.status, r.raw)
	}
	if r := call("DELETE", "/v1/dlq/"+reqSeq); r.status != http.StatusOK || r.body["eventId"] != req.ID() {
		t.Errorf("purge as the api role: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/dlq/"+reqSeq, e.tokens["read"], ""); r.status != http.StatusNotFound {
		t.Errorf("a purged dead letter: %d %s, want 404", r.status, r.raw)
	}

	// The admin's API replays the step.completed.
	if r := e.do("POST", "/v1/dlq/"+stepSeq+"/replay", e.tokens["admin"], ""); r.status != http.StatusAccepted {
		t.Errorf("replay of the step.completed as admin: %d %s", r.status, r.raw)
	}
	waitHandled(t, p, step.ID())
	if r := e.do("DELETE", "/v1/dlq/"+stepSeq, e.tokens["restore"], ""); r.status != http.StatusOK {
		t.Errorf("purge: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/dlq", e.tokens["read"], ""); r.status != http.StatusOK || strings.TrimSpace(r.raw) != "[]" {
		t.Errorf("list after purging both: %d %s, want []", r.status, r.raw)
	}
}

func waitHandled(t *testing.T, p *picky, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !p.handled(id) {
		if time.Now().After(deadline) {
			t.Fatalf("event %s never handled after its replay", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
