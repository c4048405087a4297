package bustest

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// UpdatesFail returns kv with every Update failing for a reason that is
// not a lost compare-and-set (as if the bucket's stream were gone); every
// other call goes to kv.
func UpdatesFail(kv jetstream.KeyValue) jetstream.KeyValue { return failingUpdates{kv} }

type failingUpdates struct{ jetstream.KeyValue }

func (failingUpdates) Update(context.Context, string, []byte, uint64) (uint64, error) {
	return 0, jetstream.ErrStreamNotFound
}
