package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
)

// succeeded is a backup.succeeded of planName as verify would publish it,
// with the payload's start time given.
func succeeded(t *testing.T, planName string, started time.Time) events.Event {
	t.Helper()
	sha := strings.Repeat("a", 64)
	id := events.NewID()
	e, err := events.New(events.Meta{Source: "test/verify", Plan: planName, RunID: id}, events.BackupSucceededData{
		BackupID: id, PlaintextSHA256: sha, Source: "command", Started: started, DurationMs: 1000,
		Objects: []events.BackupObject{{Destination: "local", Key: "k", ManifestKey: "m", SHA256: sha}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestEventsOfUnknownPlansMakeNoSeries runs the metrics consumer on a real
// bus: events of a plan that is not in the plan store are dead-lettered
// and counted by reason, and no series carries their plan name; the known
// plan's figures are made as before.
func TestEventsOfUnknownPlansMakeNoSeries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := newDeps(t)
	b := d.Bus
	if _, err := d.Plans.Put(ctx, testPlan(t, "")); err != nil {
		t.Fatal(err)
	}
	s := New(d)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, s.Consumers()[0]) }()

	const ghosts = 20
	for i := range ghosts {
		name := "ghost-" + string(rune('a'+i))
		failed, err := events.New(events.Meta{Source: "test/x", Plan: name, RunID: events.NewID()}, events.BackupFailedData{Stage: "snapshot", Reason: "forged"})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, failed, succeeded(t, name, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, succeeded(t, "hourly", time.Now().Add(-time.Minute))); err != nil {
		t.Fatal(err)
	}

	waitUntil(t, "every event settled", func() bool {
		c, err := b.JS.Consumer(ctx, bus.EventsStream, "metrics")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Consumer >= 2*ghosts+1
	})
	if got := testutil.ToFloat64(s.prom.refused.WithLabelValues(refusedUnknownPlan)); got != 2*ghosts {
		t.Errorf("refused{unknown_plan} = %v, want %d", got, 2*ghosts)
	}
	if n := deadLetterCount(t, b, "metrics"); n != 2*ghosts {
		t.Errorf("%d dead letters of the metrics consumer, want %d", n, 2*ghosts)
	}
	families, err := s.prom.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	hourly := false
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "plan" && strings.HasPrefix(l.GetValue(), "ghost-") {
					t.Errorf("series %s{plan=%q} made for a plan that does not exist", f.GetName(), l.GetValue())
				}
				if l.GetName() == "plan" && l.GetValue() == "hourly" && f.GetName() == "backstream_backup_runs_total" {
					hourly = true
				}
			}
		}
	}
	if !hourly {
		t.Error("no backstream_backup_runs_total series for the plan that exists")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLastSuccessGaugeNeverInTheFuture: a backup.succeeded whose payload
// says it finished in 2099 (its envelope time is now, so the edge lets it
// through) moves the gauge to now at most, so the missing-success alert can
// still fire.
func TestLastSuccessGaugeNeverInTheFuture(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	if _, err := d.Plans.Put(ctx, testPlan(t, "")); err != nil {
		t.Fatal(err)
	}
	s := New(d)
	forged := succeeded(t, "hourly", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC))
	if _, err := s.handle(ctx, forged); err != nil {
		t.Fatal(err)
	}
	got := testutil.ToFloat64(s.prom.lastSuccess.WithLabelValues("hourly"))
	if limit := float64(time.Now().Unix()); got > limit || got < limit-60 {
		t.Errorf("last-success gauge = %v, want about now (%v), never later", got, limit)
	}
	s.prom.setLastSuccess("hourly", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC).Unix())
	if got := testutil.ToFloat64(s.prom.lastSuccess.WithLabelValues("hourly")); got > float64(time.Now().Unix()) {
		t.Errorf("setLastSuccess moved the gauge into the future: %v", got)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func deadLetterCount(t *testing.T, b *bus.Bus, consumer string) int {
	t.Helper()
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(events.DeadLetterRoot+"."+consumer))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[events.DeadLetterRoot+"."+consumer])
}
