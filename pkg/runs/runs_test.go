package runs_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
)

func TestUpdateIsCompareAndSetUnderConcurrentWriters(t *testing.T) {
	_, b := bustest.Start(t)
	concurrentUpdates(t, runs.NewStore(b.Runs))
}

// On a replicated bucket the server refuses a write to a key that another
// write is still committing with a code of its own (10164, not 10071):
// that is a lost compare-and-set too, and Update retries it.
func TestUpdateIsCompareAndSetOnAReplicatedBucket(t *testing.T) {
	_, url := bustest.Cluster(t, 3)
	b := bustest.ConnectWith(t, url, "test", bus.RoleAdmin, bus.Config{Replicas: 3})
	concurrentUpdates(t, runs.NewStore(b.Runs))
}

// concurrentUpdates has 20 writers change one run at once; none may fail
// and none may lose another's change.
func concurrentUpdates(t *testing.T, store *runs.Store) {
	t.Helper()
	ctx := context.Background()
	id := events.NewID()
	if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: "p", Kind: runs.KindBackup}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := store.Update(ctx, id, func(r *runs.Run) error {
				r.Step("step-" + string(rune('a'+i))).Phase = runs.Succeeded
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	r, err := store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Steps) != 20 {
		t.Fatalf("%d steps recorded, want 20: a concurrent write was lost", len(r.Steps))
	}
}

func TestIndexesFollowTheRunPhases(t *testing.T) {
	_, b := bustest.Start(t)
	store := runs.NewStore(b.Runs)
	ctx := context.Background()
	ok, bad := events.NewID(), events.NewID()
	for _, id := range []string{ok, bad} {
		if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: "orders", Kind: runs.KindBackup}); err != nil {
			t.Fatal(err)
		}
	}
	active, err := store.Active(ctx)
	if err != nil || len(active) != 2 {
		t.Fatalf("active runs: %d %v, want 2", len(active), err)
	}
	finished := time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)
	if _, err := store.Update(ctx, ok, func(r *runs.Run) error {
		r.Phase, r.Finished = runs.Succeeded, finished
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Update(ctx, bad, func(r *runs.Run) error {
		r.Fail("snapshot", "exit status 2", finished)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if active, _ := store.Active(ctx); len(active) != 0 {
		t.Fatalf("%d runs still active after both ended", len(active))
	}
	times, err := store.Successes(ctx, "orders")
	if err != nil || len(times) != 1 || !times[0].Equal(finished) {
		t.Fatalf("successes of orders: %v %v, want exactly %v", times, err, finished)
	}
	list, err := store.List(ctx, runs.ListOptions{})
	if err != nil || len(list.Runs) != 2 {
		t.Fatalf("List: %d runs %v, want the 2 runs and no index entries", len(list.Runs), err)
	}
	// The indexes are no runs, and nothing that is not a run id is looked up.
	for _, id := range []string{"_idx.active." + ok, "_idx.success.orders", "a*b", ""} {
		if _, err := store.Get(ctx, id); !errors.Is(err, runs.ErrNotFound) || !strings.Contains(err.Error(), "is not a run id") {
			t.Errorf("Get(%q): %v, want ErrNotFound saying it is not a run id", id, err)
		}
	}
	// A stale active entry (crash between the record and its index) is dropped.
	if _, err := b.Runs.Put(ctx, "_idx.active."+ok, nil); err != nil {
		t.Fatal(err)
	}
	if active, _ := store.Active(ctx); len(active) != 0 {
		t.Fatalf("a stale active entry was returned")
	}
	if _, err := b.Runs.Get(ctx, "_idx.active."+ok); err == nil {
		t.Fatalf("a stale active entry was kept")
	}
}

func TestStampKeepsTheRecordsOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := &runs.Run{Steps: []runs.Step{{Name: "hook:db/lock", Started: t0, Finished: t0.Add(time.Second)}},
		Compensation: []runs.Compensation{{Step: "hook:db/unlock", Started: t0.Add(2 * time.Second)}}}
	tests := []struct {
		name string
		now  time.Time
		want time.Time
	}{
		{"a later clock is taken as is", t0.Add(time.Minute), t0.Add(time.Minute)},
		{"a clock behind the record", t0, t0.Add(2*time.Second + time.Microsecond)},
		{"a clock equal to the latest time", t0.Add(2 * time.Second), t0.Add(2*time.Second + time.Microsecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.Stamp(tt.now); !got.Equal(tt.want) {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestOwingIndex(t *testing.T) {
	_, b := bustest.Start(t)
	store := runs.NewStore(b.Runs)
	ctx := context.Background()
	owing, paid, pending := events.NewID(), events.NewID(), events.NewID()
	for _, tc := range []struct {
		id  string
		run runs.Run
	}{
		{owing, runs.Run{Phase: runs.Failed, CompensationDone: true, Compensation: []runs.Compensation{{Step: "hook:db/unlock", Phase: runs.Failed}}}},
		{paid, runs.Run{Phase: runs.Failed, CompensationDone: true, Compensation: []runs.Compensation{{Step: "hook:db/unlock", Phase: runs.Succeeded}},
			Announced: map[string]bool{runs.AnnouncedCompensation: true}}},
		// The first pass still runs: kept, though it owes nothing yet.
		{pending, runs.Run{Phase: runs.Failed, Compensation: []runs.Compensation{{Step: "hook:db/unlock", Phase: runs.Running}}}},
	} {
		seed := tc.run
		seed.ID, seed.Plan, seed.Kind = tc.id, "p", runs.KindBackup
		if _, err := store.Ensure(ctx, seed); err != nil {
			t.Fatal(err)
		}
		if err := store.MarkOwing(ctx, tc.id); err != nil {
			t.Fatal(err)
		}
	}
	for pass := range 2 {
		got, err := store.Owing(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]int{}
		for _, r := range got {
			ids[r.ID] = len(r.Owed())
		}
		if len(ids) != 2 || ids[owing] != 1 || ids[pending] != 0 {
			t.Fatalf("pass %d: owing %v, want %s (1 owed) and %s (first pass running)", pass, ids, owing, pending)
		}
	}
	if l, err := store.List(ctx, runs.ListOptions{}); err != nil || len(l.Runs) != 3 {
		t.Errorf("List sees %d runs (%v): the index must not show as runs", len(l.Runs), err)
	}
}

// A run one process creates is there for the next process that reads it,
// whichever node of a cluster each is connected to: the record is read
// from the bucket's leader, never from a follower that may not have
// applied the write yet.
func TestARunIsReadableEverywhereOnceCreated(t *testing.T) {
	_, url := bustest.Cluster(t, 3)
	nodes := strings.Split(url, ",")
	wb := bustest.ConnectWith(t, url, "writer", bus.RoleAdmin, bus.Config{Replicas: 3})
	writer := runs.NewStore(wb.Runs)
	var readers []*runs.Store
	for _, node := range nodes {
		b := bustest.ConnectWith(t, node, "reader", bus.RoleAdmin, bus.Config{Replicas: 3})
		readers = append(readers, runs.NewStore(b.Runs))
	}
	// Followers lag most while the bucket takes large writes.
	ctx, cancel := context.WithCancel(context.Background())
	var load sync.WaitGroup
	defer load.Wait()
	defer cancel()
	for w := range 4 {
		load.Add(1)
		go func() {
			defer load.Done()
			big := make([]byte, 256<<10)
			for ctx.Err() == nil {
				_, _ = wb.Runs.Put(ctx, "load-"+string(rune('a'+w)), big)
			}
		}()
	}
	for i := range 100 {
		id := events.NewID()
		// Ensure itself reads the record back after creating it.
		if _, err := writer.Ensure(ctx, runs.Run{ID: id, Plan: "p", Kind: runs.KindBackup}); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		for j, r := range readers {
			if _, err := r.Get(ctx, id); err != nil {
				t.Fatalf("run %d read through node %d right after it was created: %v", i, j, err)
			}
		}
	}
}

// Several stages ensure a run at once (each event of a new run may be the
// first its stage sees). On a replicated bucket the losers' creates are
// refused while the winner's is still committing, in words that say the key
// exists when it does not yet; each Ensure still returns the record.
func TestConcurrentEnsuresOnAReplicatedBucketAllSeeTheRun(t *testing.T) {
	_, url := bustest.Cluster(t, 3)
	b := bustest.ConnectWith(t, url, "test", bus.RoleAdmin, bus.Config{Replicas: 3})
	store := runs.NewStore(b.Runs)
	ctx := context.Background()
	for i := range 50 {
		id := events.NewID()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := store.Ensure(ctx, runs.Run{ID: id, Plan: "p", Kind: runs.KindBackup}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", i, err)
		}
	}
}
