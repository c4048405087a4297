package bus_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
)

// TestListKeysIsCompleteOrAnError: every key (or every key a filter
// matches), none as an empty list, and a listing its context cut short
// as an error, never as a shorter list.
func TestListKeysIsCompleteOrAnError(t *testing.T) {
	_, b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := b.Leases
	if keys, err := bus.ListKeys(ctx, kv); err != nil || len(keys) != 0 {
		t.Fatalf("an empty bucket: %v %v", keys, err)
	}
	for _, k := range []string{"a.1", "a.2", "b.1"} {
		if _, err := kv.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := bus.ListKeys(ctx, kv)
	slices.Sort(keys)
	if err != nil || !slices.Equal(keys, []string{"a.1", "a.2", "b.1"}) {
		t.Errorf("every key: %v %v", keys, err)
	}
	keys, err = bus.ListKeys(ctx, kv, "a.*")
	slices.Sort(keys)
	if err != nil || !slices.Equal(keys, []string{"a.1", "a.2"}) {
		t.Errorf("keys under a.*: %v %v", keys, err)
	}
	if keys, err := bus.ListKeys(ctx, kv, "c.*"); err != nil || len(keys) != 0 {
		t.Errorf("a filter that matches nothing: %v %v", keys, err)
	}
	ended, stop := context.WithCancel(ctx)
	stop()
	if keys, err := bus.ListKeys(ended, kv); err == nil {
		t.Errorf("a listing whose context ended: %v and no error", keys)
	}
}

// TestKeysSinceListsWhatWasWrittenSince: since 0 is every key; since a
// revision, the keys whose latest value is at least that revision, in
// revision order, deleted ones left out; a listing cut short is an error.
func TestKeysSinceListsWhatWasWrittenSince(t *testing.T) {
	_, b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := b.Leases
	keys := func(since uint64, filters ...string) []string {
		t.Helper()
		got, err := bus.KeysSince(ctx, kv, since, filters...)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for i, k := range got {
			if i > 0 && k.Revision <= got[i-1].Revision {
				t.Errorf("%s (revision %d) after revision %d", k.Key, k.Revision, got[i-1].Revision)
			}
			out = append(out, k.Key)
		}
		return out
	}
	if got := keys(0, ">"); len(got) != 0 {
		t.Fatalf("an empty bucket: %v", got)
	}
	put := func(k string) uint64 {
		t.Helper()
		rev, err := kv.Put(ctx, k, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	put("a.1")
	put("a.2")
	put("b.1")
	mid := put("a.3")
	put("a.1") // written again since mid
	if err := kv.Delete(ctx, "a.2"); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(0, "a.*", "b.*"), []string{"b.1", "a.3", "a.1"}; !slices.Equal(got, want) {
		t.Errorf("since 0: %v, want %v", got, want)
	}
	if got, want := keys(mid, "a.*"), []string{"a.3", "a.1"}; !slices.Equal(got, want) {
		t.Errorf("since %d: %v, want %v", mid, got, want)
	}
	if got := keys(mid+100, ">"); len(got) != 0 {
		t.Errorf("since a revision not reached yet: %v", got)
	}
	ended, stop := context.WithCancel(ctx)
	stop()
	if got, err := bus.KeysSince(ended, kv, 0, ">"); err == nil {
		t.Errorf("a listing whose context ended: %v and no error", got)
	}
}
