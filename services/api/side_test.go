package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/services/api"
)

// TestDrillAndScrubRequests: the trigger role asks for drills and scrubs
// with optional bodies mirroring the CLI's flags; the answer is 202 with
// the id the request event carries as its runid; an unknown plan is 404,
// a plan without spec.drill 409, bad input 400 naming the field.
func TestDrillAndScrubRequests(t *testing.T) {
	e := start(t, api.Config{})
	p, err := plan.Parse("drilled.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: drilled}
spec:
  source: {type: files, files: {path: %q}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %q}}]
  drill: {check: {command: ["true"]}}
`, t.TempDir(), t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planstore.New(e.bus.Plans, plugins.Default()).Put(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		role    string
		path    string
		body    string
		want    int
		wantErr string
	}{
		{"drill with no body", "trigger", "/v1/plans/drilled/drill", "", 202, ""},
		{"drill of a backup", "trigger", "/v1/plans/drilled/drill", `{"backupId": "01ABC", "reason": "quarterly"}`, 202, ""},
		{"read cannot drill", "read", "/v1/plans/drilled/drill", "", 403, "needs the trigger role"},
		{"drill of a missing plan", "trigger", "/v1/plans/nope/drill", "", 404, "nope"},
		{"drill of a plan without spec.drill", "trigger", "/v1/plans/files/drill", "", 409, "spec.drill"},
		{"drill with a misspelt field", "trigger", "/v1/plans/drilled/drill", `{"backup": "x"}`, 400, `unknown field "backup"`},
		{"scrub with no body", "trigger", "/v1/plans/files/scrub", "", 202, ""},
		{"scrub of one destination in full", "trigger", "/v1/plans/files/scrub", `{"mode": "full", "destination": "local", "reason": "r"}`, 202, ""},
		{"read cannot scrub", "read", "/v1/plans/files/scrub", "", 403, "needs the trigger role"},
		{"scrub of a missing plan", "trigger", "/v1/plans/nope/scrub", "", 404, "nope"},
		{"scrub in an unknown mode", "trigger", "/v1/plans/files/scrub", `{"mode": "deep"}`, 400, "mode"},
		{"scrub of an unknown destination", "trigger", "/v1/plans/files/scrub", `{"destination": "elsewhere"}`, 400, `destination "elsewhere"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("POST", tt.path, e.tokens[tt.role], tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.raw)
			}
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", msg, tt.wantErr)
			}
		})
	}

	r := e.do("POST", "/v1/plans/drilled/drill", e.tokens["trigger"], `{"backupId": "01XYZ", "reason": "audit"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("drill: %d %s", r.status, r.raw)
	}
	d := event[events.DrillRequestedData](t, e.bus, r.body["drillId"].(string))
	if d.RequestedBy != "api:ci-trigger" || d.Trigger != events.TriggerAPI || d.BackupID != "01XYZ" || d.Reason != "audit" {
		t.Errorf("drill.requested %+v", d)
	}
	r = e.do("POST", "/v1/plans/files/scrub", e.tokens["trigger"], `{"mode": "ciphertext", "destination": "local"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("scrub: %d %s", r.status, r.raw)
	}
	sc := event[events.ScrubRequestedData](t, e.bus, r.body["scrubId"].(string))
	if sc.RequestedBy != "api:ci-trigger" || sc.Trigger != events.TriggerAPI || sc.Mode != "ciphertext" || sc.Destination != "local" {
		t.Errorf("scrub.requested %+v", sc)
	}
}
