package runs_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/nats-io/nats.go/jetstream"
)

// seedRuns stores n finished run records of plans plan-0 … plan-(plans-1),
// round robin, each with the steps of a backup with a lock and two copies:
// what the bucket holds after months of schedules. It returns their ids
// in the order it stored them.
func seedRuns(tb testing.TB, kv jetstream.KeyValue, n, plans int) []string {
	tb.Helper()
	ctx := context.Background()
	ids := make([]string, n)
	start := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		ids[i] = events.NewID()
		at := start.Add(time.Duration(i) * time.Minute)
		r := runs.Run{ID: ids[i], Plan: fmt.Sprintf("plan-%d", i%plans), Kind: runs.KindBackup, Phase: runs.Succeeded,
			Trigger: "schedule", Created: at, Updated: at.Add(time.Minute), Finished: at.Add(time.Minute), Bytes: 1 << 30, StoredBytes: 1 << 28}
		for _, s := range []string{"hook:db/lock", "snapshot", "filter", "upload:a", "upload:b", "hook:db/unlock", "verify:a", "verify:b"} {
			st := r.Step(s)
			st.Phase, st.Started, st.Finished, st.Owner, st.Bytes = runs.Succeeded, at, at.Add(30*time.Second), "backstream/snapshot/host-1234", 1<<30
		}
		data, err := json.Marshal(r)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := kv.Put(ctx, ids[i], data); err != nil {
			tb.Fatal(err)
		}
	}
	return ids
}

// BenchmarkListRuns lists the newest page of runs, of all plans and of one
// (before and after IndexPlans), from a bucket holding 20 000 records of
// 200 plans.
//
//	go test -run XXX -bench ListRuns -benchmem ./runs/
func BenchmarkListRuns(b *testing.B) {
	_, bs := bustest.Start(b)
	seedRuns(b, bs.Runs, 20000, 200)
	store := runs.NewStore(bs.Runs)
	ctx := context.Background()
	list := func(plan string) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				if _, err := store.List(ctx, runs.ListOptions{Plan: plan}); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("every plan", list(""))
	b.Run("one plan, not indexed", list("plan-7"))
	start := time.Now()
	if err := store.IndexPlans(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexPlans of 20 000 records without an entry: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := store.IndexPlans(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexPlans again, every record with its entry: %s", time.Since(start).Round(time.Millisecond))
	b.Run("one plan, indexed", list("plan-7"))
}

// TestListPages: a page holds the newest runs (of one plan when asked),
// Next leads to the older ones, and the pages together hold every run once,
// in order of their ids; no page holds more than the limit allows.
func TestListPages(t *testing.T) {
	_, bs := bustest.Start(t)
	const n, plans = 250, 3
	ids := seedRuns(t, bs.Runs, n, plans) // oldest first
	store := runs.NewStore(bs.Runs)
	ctx := context.Background()
	// An index entry is not a run.
	if err := store.MarkOwing(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		plan  string
		limit int
		want  []string // newest first
	}{
		{"every plan", "", 40, reversed(ids)},
		{"one plan", "plan-1", 30, reversed(every(ids, plans, 1))},
		{"default limit", "", 0, reversed(ids)},
		{"one plan, its oldest run beyond the limit", "plan-1", n/plans - 1, reversed(every(ids, plans, 1))},
		{"one page", "plan-2", runs.MaxListLimit, reversed(every(ids, plans, 2))},
	}
	// First as a bucket of an earlier release holds them (no plan
	// entries: a page of one plan skips the others' records), then indexed.
	for _, indexed := range []bool{false, true} {
		if indexed {
			if err := store.IndexPlans(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/indexed=%v", tt.name, indexed), func(t *testing.T) {
				listAll(t, store, runs.ListOptions{Plan: tt.plan, Limit: tt.limit}, tt.want)
			})
		}
	}
}

// listAll pages through List from o on and checks that the pages hold
// want, in order, each within the limit.
func listAll(t *testing.T, store *runs.Store, o runs.ListOptions, want []string) {
	t.Helper()
	var got []string
	for pages := 0; ; pages++ {
		if pages > len(want)+1 {
			t.Fatal("paging does not end")
		}
		page, err := store.List(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if max := cmp.Or(o.Limit, runs.DefaultListLimit); len(page.Runs) > max {
			t.Fatalf("a page of %d runs, limit %d", len(page.Runs), max)
		}
		for _, r := range page.Runs {
			if o.Plan != "" && r.Plan != o.Plan {
				t.Fatalf("run %s of %s on a page of %s", r.ID, r.Plan, o.Plan)
			}
			got = append(got, r.ID)
		}
		if page.Next == "" {
			break
		}
		o.Before = page.Next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages hold %d runs, want %d in order, newest first", len(got), len(want))
	}
}

// TestRunsAreIndexedByPlan: a run created now is listed under its plan at
// once; IndexPlans gives the records written without an entry (an earlier
// release's, also one written after the bucket was marked, as during a
// rolling upgrade) their entries.
func TestRunsAreIndexedByPlan(t *testing.T) {
	_, bs := bustest.Start(t)
	store := runs.NewStore(bs.Runs)
	ctx := context.Background()
	old := seedRuns(t, bs.Runs, 3, 1) // plan-0, no entries
	if err := store.IndexPlans(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := events.NewID()
	if _, err := store.Ensure(ctx, runs.Run{ID: fresh, Plan: "plan-0", Kind: runs.KindBackup}); err != nil {
		t.Fatal(err)
	}
	other := events.NewID()
	if _, err := store.Ensure(ctx, runs.Run{ID: other, Plan: "plan-1", Kind: runs.KindBackup}); err != nil {
		t.Fatal(err)
	}
	want := reversed(append(old, fresh))
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, want)
	listAll(t, store, runs.ListOptions{Plan: "plan-1"}, []string{other})

	late := seedRuns(t, bs.Runs, 1, 1)
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, want) // not indexed yet
	if err := store.IndexPlans(ctx); err != nil {
		t.Fatal(err)
	}
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, reversed(append(append(old, fresh), late...)))
}

// reversed is s newest first: by id, as List orders (ids made within one
// millisecond are not in the order they were made).
func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

// every returns the ids of plan-k when seedRuns stored plans round robin.
func every(ids []string, plans, k int) []string {
	var out []string
	for i := k; i < len(ids); i += plans {
		out = append(out, ids[i])
	}
	return out
}
