package runs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
)

func TestUpdateIsCompareAndSetUnderConcurrentWriters(t *testing.T) {
	_, b := bustest.Start(t)
	store := runs.NewStore(b.Runs)
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
	list, err := store.List(ctx, "")
	if err != nil || len(list) != 2 {
		t.Fatalf("List: %d runs %v, want the 2 runs and no index entries", len(list), err)
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
