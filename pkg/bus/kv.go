package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Create is kv.Create that tells "the key exists" from "the server could
// not tell yet". A replicated stream's leader refuses a write that expects
// a revision (a Create expects none) while another write to the same key
// is still being committed, with code 10164, and nats.go reports that as
// ErrKeyExists whatever the fate of the other write: the key may not exist
// yet, or ever. Create waits such an answer out and asks again, until the
// server decides (created, or exists: code 10071) or ctx ends.
func Create(ctx context.Context, kv jetstream.KeyValue, key string, value []byte) (uint64, error) {
	wait := 5 * time.Millisecond
	for {
		rev, err := kv.Create(ctx, key, value)
		if !undecided(err) {
			return rev, err
		}
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// undecided reports whether err is a replicated stream's refusal to check
// an expected revision while another write to the key is in flight (code
// 10164). For a compare-and-set it is a conflict like any other; for a
// Create it says nothing about whether the key exists.
func undecided(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// Conflict reports whether a compare-and-set lost to another writer: an
// Update whose revision is no longer the key's or a Create of a key that
// exists (nats.go maps both server codes, 10071 and a replicated stream's
// 10164, to these). Anything else — a timeout, a refusal, a full stream —
// is an error of its own and must not pass for "another replica won".
func Conflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// ListKeys returns the keys of kv, or of those matching filters when
// given; none is an empty list, not an error. nats.go's lister closes its
// channel when ctx ends without saying so, which would pass a listing cut
// short (a refused watch, a deadline) for a complete one: here that is
// ctx's error, never a shorter list.
func ListKeys(ctx context.Context, kv jetstream.KeyValue, filters ...string) ([]string, error) {
	var lister jetstream.KeyLister
	var err error
	if len(filters) > 0 {
		lister, err = kv.ListKeysFiltered(ctx, filters...)
	} else {
		lister, err = kv.ListKeys(ctx)
	}
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing cut short: %w", err)
	}
	return keys, nil
}

// KeyRevision is a key and the revision of its latest value.
type KeyRevision struct {
	Key      string
	Revision uint64
}

// KeysSince returns the keys matching filters whose latest value has a
// revision of at least since (since 0: every key), in revision order: what
// was written since a pass that ended below since. Deleted keys are left
// out. As ListKeys, a listing cut short is ctx's error, never a shorter
// list.
func KeysSince(ctx context.Context, kv jetstream.KeyValue, since uint64, filters ...string) ([]KeyRevision, error) {
	opts := []jetstream.WatchOpt{jetstream.IgnoreDeletes(), jetstream.MetaOnly()}
	if since > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(since))
	}
	w, err := kv.WatchFiltered(ctx, filters, opts...)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var out []KeyRevision
	for e := range w.Updates() {
		if e == nil {
			return out, nil
		}
		out = append(out, KeyRevision{e.Key(), e.Revision()})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing cut short: %w", err)
	}
	return nil, errors.New("listing cut short: the watch ended")
}
