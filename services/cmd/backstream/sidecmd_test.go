package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/testenv"
)

// answer stands in for the stage: to every request of type req it
// publishes the result reply builds, with the request's runid.
func answer(t *testing.T, ctx context.Context, b *bus.Bus, req string, reply events.Payload) {
	t.Helper()
	c, err := b.JS.OrderedConsumer(ctx, bus.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	iter, err := c.Messages()
	if err != nil {
		t.Fatal(err)
	}
	go func() { <-ctx.Done(); iter.Stop() }()
	go func() {
		for {
			msg, err := iter.Next()
			if err != nil {
				return
			}
			e, err := bus.Decode(msg.Data())
			if err != nil || e.Type() != req {
				continue
			}
			out, err := events.New(b.Meta(e.Subject(), events.RunID(e), ""), reply)
			if err == nil {
				err = b.Publish(ctx, out)
			}
			// After the test ended (ctx) the answer to the last request
			// has nobody to reach.
			if err != nil && ctx.Err() == nil {
				t.Errorf("answer %s: %v", req, err)
			}
		}
	}()
}

// TestDrillAndScrubWait runs `drill --wait` and `scrub --wait` with the
// trigger role's credentials against an embedded server where the stage's
// answer is faked: each prints its summary and exits with the code its
// help promises.
func TestDrillAndScrubWait(t *testing.T) {
	srv, admin := bustest.Start(t)
	url := srv.URL()
	trigger, ok := bustest.AuthFor(url, bus.RoleTrigger)
	if !ok || trigger.NKeyFile == "" {
		t.Fatal("no trigger credentials for the test server")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := plan.Parse("p.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: p}
spec:
  source: {type: files, files: {path: %q}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %q}}, {name: far, type: filesystem, filesystem: {path: %q}}]
  drill: {check: {command: ["true"]}}
`, t.TempDir(), t.TempDir(), t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planstore.New(admin.Plans, plugins.Default()).Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	answer(t, ctx, admin, events.DrillRequested, events.DrillFailedData{Stage: events.DrillStageCheck, Error: "spec.drill.check.sql returned no rows",
		BackupID: "01B", Destination: "local", Target: "bsdrill_x", DurationMs: 1500})
	answer(t, ctx, admin, events.ScrubRequested, events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubIncomplete, DurationMs: 20,
		Destinations: []events.ScrubDestination{{Destination: "local", Checked: 3, Verified: 2, Corrupt: 1, Repaired: 1, Bytes: 4096},
			{Destination: "far", Error: "far: connection refused"}},
		Damaged: []events.ScrubDamage{{Destination: "local", BackupID: "01C", Problem: events.CopyCorrupt, Error: "frame 2: bad CRC", RepairedFrom: "far"}}})

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
	}{
		{"drill fails in check", []string{"drill", "p", "--backup", "01B", "--wait"}, 1,
			[]string{"drill FAILED in check", "returned no rows", "backup 01B from local"}},
		{"scrub is incomplete", []string{"scrub", "p", "--mode", "ciphertext", "--wait"}, 3,
			[]string{"scrub incomplete (ciphertext)", "far: connection refused", "corrupt copy of backup 01C in local: frame 2: bad CRC; repaired from far"}},
		{"drill without --wait", []string{"drill", "p"}, 0, []string{"drill ", " of plan p requested"}},
		// -o json: one document on stdout, the person's lines on stderr.
		{"drill -o json", []string{"drill", "p", "--wait", "-o", "json"}, 1,
			[]string{`"plan": "p"`, `"drillId": "`, `"type": "io.backstream.drill.failed"`, `"stage": "check"`}},
		{"scrub -o yaml", []string{"scrub", "p", "--wait", "-o", "yaml"}, 3,
			[]string{"scrubId: ", "type: io.backstream.scrub.completed", "status: incomplete", "repairedFrom: far"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut testenv.Buffer
			wctx, wcancel := context.WithTimeout(ctx, time.Minute)
			defer wcancel()
			args := append(tt.args, "--nats", url, "--nats-nkey", trigger.NKeyFile)
			if trigger.TLSCA != "" {
				args = append(args, "--nats-tls-ca", trigger.TLSCA)
			}
			err := run(wctx, args, &out, &errOut)
			code := 0
			var ee *exitError
			if errors.As(err, &ee) {
				code = ee.code
			} else if err != nil {
				code = -1
			}
			if code != tt.wantCode {
				t.Fatalf("exit code %d (%v), want %d; stdout:\n%s\nstderr:\n%s", code, err, tt.wantCode, out.String(), errOut.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if slices.Contains(tt.args, "-o") && strings.Contains(out.String(), "requested") {
				t.Errorf("-o %s: a line for a person went to stdout:\n%s", tt.args[len(tt.args)-1], out.String())
			}
		})
	}

	usage := []struct {
		name string
		args []string
	}{
		{"drill without a plan", []string{"drill"}},
		{"scrub in an unknown mode", []string{"scrub", "p", "--mode", "deep"}},
	}
	for _, tt := range usage {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut testenv.Buffer
			var ee *exitError
			if err := run(ctx, tt.args, &out, &errOut); !errors.As(err, &ee) || ee.code != 2 {
				t.Errorf("got %v, want a usage error (exit code 2)", err)
			}
		})
	}
}
