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
