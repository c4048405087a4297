package runs_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/nats-io/nats.go/jetstream"
)

// seedRuns stores n finished run records of plans plan-0 … plan-(plans-1),
// round robin, each with the steps of a backup with a lock and two copies,
// as a release before the list entries wrote them (no entry): what the
// bucket holds after months of schedules. Run i was made at at(i) (its id
// too) or, with at nil, a minute after the run before it, the last a minute
// ago. It returns their ids in the order it stored them.
func seedRuns(tb testing.TB, kv jetstream.KeyValue, n, plans int, at func(i int) time.Time) []string {
	tb.Helper()
	ctx := context.Background()
	if at == nil {
		now := time.Now()
		at = func(i int) time.Time { return now.Add(-time.Duration(n-i) * time.Minute) }
	}
	ids := make([]string, n)
	for i := range n {
		at := at(i)
		ids[i] = ulid.MustNew(ulid.Timestamp(at), rand.Reader).String()
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

// BenchmarkListRuns lists a page of 100 runs, of all plans and of one
// (before and after IndexRuns), from a bucket holding 20 000 records of 200
// plans made over the last 4 days (200 hourly plans), and 200 000 records
// over 42 days with -runs.big.
//
//	go test -run XXX -bench ListRuns -benchmem ./runs/ [-runs.big]
func BenchmarkListRuns(b *testing.B) {
	n := 20000
	if *big {
		n = 200000
	}
	_, bs := bustest.Start(b)
	now := time.Now()
	ids := seedRuns(b, bs.Runs, n, 200, func(i int) time.Time { return now.Add(-time.Duration(n-i) * 18 * time.Second) })
	store := runs.NewStore(bs.Runs)
	ctx := context.Background()
	list := func(o runs.ListOptions) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				if _, err := store.List(ctx, o); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	back := runs.ListOptions{Before: ids[n-3*4800]} // three days back
	b.Run("every plan, not indexed", list(runs.ListOptions{}))
	b.Run("one plan, not indexed", list(runs.ListOptions{Plan: "plan-7"}))
	start := time.Now()
	if err := store.IndexRuns(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexRuns of %d records without an entry: %s", n, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := store.IndexRuns(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexRuns again, over the entries the first pass wrote: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := store.IndexRuns(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexRuns again, nothing written since: %s", time.Since(start).Round(time.Millisecond))
	// An hour of 200 hourly plans since, as an earlier release wrote them.
	seedRuns(b, bs.Runs, 200, 200, func(i int) time.Time { return now.Add(time.Duration(i) * 18 * time.Second) })
	start = time.Now()
	if err := store.IndexRuns(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("IndexRuns again, 200 records without an entry written since: %s", time.Since(start).Round(time.Millisecond))
	b.Run("every plan", list(runs.ListOptions{}))
	b.Run("every plan, three days back", list(back))
	b.Run("one plan", list(runs.ListOptions{Plan: "plan-7"}))
}

var big = flag.Bool("runs.big", false, "BenchmarkListRuns with 200 000 runs")

// TestListPages: a page holds the newest runs (of one plan when asked),
// Next leads to the older ones, and the pages together hold every run once,
// in order of their ids; no page holds more than the limit allows.
func TestListPages(t *testing.T) {
	_, bs := bustest.Start(t)
	const n, plans = 250, 3
	// Over 78 days: three runs a day, a week with none in the middle, the
	// newest made tomorrow by a clock that runs ahead.
	now := time.Now()
	ids := seedRuns(t, bs.Runs, n, plans, func(i int) time.Time { // oldest first
		at := now.Add(-78*24*time.Hour + time.Duration(i)*7*time.Hour)
		switch {
		case i == n-1:
			return now.Add(20 * time.Hour)
		case i >= n/2:
			return at.Add(7 * 24 * time.Hour)
		}
		return at
	})
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
		{"a page a day", "", 3, reversed(ids)},
	}
	// First as a bucket of an earlier release holds them (no list
	// entries: a page of one plan skips the others' records), then indexed.
	for _, indexed := range []bool{false, true} {
		if indexed {
			if err := store.IndexRuns(ctx); err != nil {
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

// TestRunsAreIndexedForListing: a run created now is listed at once, of
// every plan and of its own; IndexRuns gives the records written without
// an entry (an earlier release's, also those written after the bucket was
// marked, as during a rolling upgrade) their entries, and a run without one
// gets it when it ends. The earlier release's mark is removed, so that its
// replicas read the records rather than miss this release's runs.
func TestRunsAreIndexedForListing(t *testing.T) {
	_, bs := bustest.Start(t)
	store := runs.NewStore(bs.Runs)
	ctx := context.Background()
	old := seedRuns(t, bs.Runs, 3, 1, nil) // plan-0, no entries
	if _, err := bs.Runs.Put(ctx, "_idx.plans-indexed", nil); err != nil {
		t.Fatal(err)
	}
	if err := store.IndexRuns(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Runs.Get(ctx, "_idx.plans-indexed"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the earlier release's mark after IndexRuns: %v, want it removed", err)
	}
	ensure := func(plan string) string {
		t.Helper()
		id := events.NewID()
		if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: plan, Kind: runs.KindBackup}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	fresh, other := ensure("plan-0"), ensure("plan-1")
	plan0 := append(old, fresh)
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, reversed(plan0))
	listAll(t, store, runs.ListOptions{Plan: "plan-1"}, []string{other})
	listAll(t, store, runs.ListOptions{}, reversed(append(plan0, other)))

	// Written by an earlier release after the mark: a run still going, and
	// one that ended.
	going := events.NewID()
	data, _ := json.Marshal(runs.Run{ID: going, Plan: "plan-0", Kind: runs.KindBackup, Phase: runs.Running})
	if _, err := bs.Runs.Put(ctx, going, data); err != nil {
		t.Fatal(err)
	}
	ended := seedRuns(t, bs.Runs, 1, 1, func(int) time.Time { return time.Now() })
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, reversed(plan0)) // neither has an entry yet
	listAll(t, store, runs.ListOptions{}, reversed(append(plan0, other)))
	if _, err := store.Update(ctx, going, func(r *runs.Run) error {
		r.Phase, r.Finished = runs.Succeeded, time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	plan0 = append(plan0, going)
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, reversed(plan0))
	if err := store.IndexRuns(ctx); err != nil {
		t.Fatal(err)
	}
	plan0 = append(plan0, ended...)
	listAll(t, store, runs.ListOptions{Plan: "plan-0"}, reversed(plan0))
	listAll(t, store, runs.ListOptions{}, reversed(append(plan0, other)))
}

// TestListRefusesABadCursor: before must be a run id.
func TestListRefusesABadCursor(t *testing.T) {
	_, bs := bustest.Start(t)
	_, err := runs.NewStore(bs.Runs).List(context.Background(), runs.ListOptions{Before: "yesterday"})
	if !errors.Is(err, runs.ErrBadListOption) || !strings.Contains(err.Error(), `before: "yesterday" is not a run id`) {
		t.Errorf("List before yesterday: %v, want ErrBadListOption naming before", err)
	}
}

// reversed is s newest first: by id, as List orders.
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
