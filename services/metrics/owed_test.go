package metrics

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
)

// TestOwedGaugeFollowsTheRunsThatOweInverseOps: the watchdog exports
// backstream_compensation_owed per existing plan from the runs bucket's
// owing index: 1 while a failed run owes its unlock, 0 once it is paid,
// and nothing for a plan that does not exist.
func TestOwedGaugeFollowsTheRunsThatOweInverseOps(t *testing.T) {
	ctx := context.Background()
	d := newDeps(t)
	if _, err := d.Plans.Put(ctx, testPlan(t, "")); err != nil {
		t.Fatal(err)
	}
	s := New(d)
	owing := func(planName string) string {
		id := events.NewID()
		if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: planName, Kind: runs.KindBackup, Phase: runs.Failed, CompensationDone: true,
			Compensation: []runs.Compensation{{Step: "hook:db/unlock", Undoes: "hook:db/lock", Phase: runs.Failed, Attempts: 4}}}); err != nil {
			t.Fatal(err)
		}
		if err := d.Runs.MarkOwing(ctx, id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	id := owing("hourly")
	owing("deleted-plan")
	scrape := func() string {
		t.Helper()
		if err := s.Watch(ctx); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		var lines []string
		for _, l := range strings.Split(rec.Body.String(), "\n") {
			if strings.HasPrefix(l, "backstream_compensation_owed{") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	if got := scrape(); got != `backstream_compensation_owed{plan="hourly"} 1` {
		t.Fatalf("while owed: %q", got)
	}
	if _, err := d.Runs.Update(ctx, id, func(r *runs.Run) error {
		r.Compensation[0].Phase = runs.Succeeded
		r.Announced = map[string]bool{runs.AnnouncedCompensation: true}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := scrape(); got != `backstream_compensation_owed{plan="hourly"} 0` {
		t.Fatalf("once paid: %q", got)
	}
}
