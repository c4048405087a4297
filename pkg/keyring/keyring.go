// Package keyring keeps the plan keyrings the filter seals with (key scheme
// age-keyring, docs/security.md) in the KV bucket bus.KeyringsBucket: one
// per plan, under the plan's name, made on the plan's first backup with a
// passphrase and replaced when the plan's passphrase no longer opens it.
//
// The bucket is the writer's only: it holds no secret (a keyring's
// identity is wrapped with the passphrase, and every object it seals
// carries the same bytes in its header) and no restore reads it, since
// objects are self-contained. The package never stores, logs or returns a
// passphrase.
package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
)

// Value is what the bucket holds for a plan, as JSON.
type Value struct {
	Recipient  string    `json:"recipient"`  // age1…
	Wrapped    []byte    `json:"wrapped"`    // the identity, age-encrypted with the passphrase (base64 in JSON)
	WorkFactor int       `json:"workFactor"` // scrypt log2 N of Wrapped
	Created    time.Time `json:"created"`
}

// Keyring returns the format's keyring of v.
func (v Value) Keyring() format.Keyring {
	return format.Keyring{Recipient: v.Recipient, Wrapped: v.Wrapped}
}

// attempts bounds Ensure's reads and writes when other writers keep
// changing a plan's keyring under it.
const attempts = 4

// Store keeps plan keyrings in a KV bucket. It is safe for concurrent use,
// also by several processes on one bucket: they agree on one keyring per
// plan (create and replace are revision-checked).
type Store struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	// WorkFactor is the scrypt work factor (log2 N) of the keyrings Ensure
	// makes and the most it accepts in a stored one: a keyring that
	// demands more (which Ensure never makes) is replaced rather than paid
	// for. 0 means format.DefaultKeyringWorkFactor.
	WorkFactor int
	// Now is the clock of Value.Created (time.Now when nil).
	Now func() time.Time
	// plans holds a one-slot semaphore per plan: one Ensure of a plan at a
	// time in this process, so its callers (the filter's warm-up and a
	// backup starting, say) never run scrypt side by side for one keyring
	// (two creations at once held 2 × 64 MiB).
	plans sync.Map // plan name → chan struct{}
	// made counts the keyrings this Store made, for tests.
	made atomic.Int64
}

// New returns a Store over kv (the bucket bus.KeyringsBucket).
func New(kv jetstream.KeyValue, log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	return &Store{kv: kv, log: log}
}

// Entry is what List says of a plan's current keyring: enough to tell
// which keyring new backups are wrapped for (Recipient is the key
// reference in their headers) and since when, nothing to open it with.
type Entry struct {
	Plan       string    `json:"plan"`
	Recipient  string    `json:"recipient,omitempty"`
	WorkFactor int       `json:"workFactor,omitempty"`
	Created    time.Time `json:"created,omitzero"`
	// Problem says why a stored value is not a keyring the filter can use
	// (it replaces such a value on the plan's next backup).
	Problem string `json:"problem,omitempty"`
}

// List returns the current keyring of every plan that has one, sorted by
// plan name. A stored value that is not a valid keyring is listed with its
// Problem rather than hidden; err is for the bucket itself.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	plans, err := bus.ListKeys(ctx, s.kv)
	if err != nil {
		return nil, fmt.Errorf("list keyrings: %w", err)
	}
	sort.Strings(plans)
	out := make([]Entry, 0, len(plans))
	for _, plan := range plans {
		e, err := s.kv.Get(ctx, plan)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("keyring of plan %s: get: %w", plan, err)
		}
		v, err := decode(e.Value())
		entry := Entry{Plan: plan, Recipient: v.Recipient, WorkFactor: v.WorkFactor, Created: v.Created}
		if err != nil {
			entry.Problem = err.Error()
		} else {
			entry.WorkFactor, _ = v.Keyring().WorkFactor() // what opening it costs, from its header
		}
		out = append(out, entry)
	}
	return out, nil
}

func (s *Store) workFactor() int {
	if s.WorkFactor == 0 {
		return format.DefaultKeyringWorkFactor
	}
	return s.WorkFactor
}

// Ensure returns the keyring of plan, one that passphrase opens. It reads
// the stored keyring and unlocks it (scrypt once per process and keyring,
// format's cache), makes and stores a new one when the plan has none, and
// replaces the stored one when passphrase does not open it (the plan's
// passphrase changed, or someone else wrote the bucket), logging a
// warning: backups sealed before keep their keyring in their headers and
// need the passphrase they were made with.
//
// Concurrent Ensures of one plan, in this process or others, return the
// same keyring unless their passphrases differ.
func (s *Store) Ensure(ctx context.Context, plan, passphrase string) (format.Keyring, error) {
	if passphrase == "" {
		return format.Keyring{}, fmt.Errorf("keyring of plan %s: empty passphrase", plan)
	}
	sem, _ := s.plans.LoadOrStore(plan, make(chan struct{}, 1))
	select {
	case sem.(chan struct{}) <- struct{}{}:
		defer func() { <-sem.(chan struct{}) }()
	case <-ctx.Done():
		return format.Keyring{}, fmt.Errorf("keyring of plan %s: %w", plan, ctx.Err())
	}
	for range attempts {
		e, err := s.kv.Get(ctx, plan)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			k, err := s.write(ctx, plan, passphrase, 0, false)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another writer made it first: use theirs
			}
			return k, err
		}
		if err != nil {
			return format.Keyring{}, fmt.Errorf("keyring of plan %s: get: %w", plan, err)
		}
		old, why := s.open(e.Value(), passphrase)
		if why == nil {
			return old.Keyring(), nil
		}
		k, err := s.write(ctx, plan, passphrase, e.Revision(), true)
		if bus.Conflict(err) {
			continue // changed meanwhile: look at the new one
		}
		if err != nil {
			return format.Keyring{}, err
		}
		s.log.Warn(fmt.Sprintf("keyring of plan %s does not open with the plan's passphrase; a new keyring replaces it (backups made before need the old passphrase)", plan),
			"plan", plan, "old", old.Recipient, "new", k.Recipient, "reason", why.Error())
		return k, nil
	}
	return format.Keyring{}, fmt.Errorf("keyring of plan %s: the bucket changed under each of %d attempts", plan, attempts)
}

// open decodes a stored value and unlocks it with passphrase; the error
// says why it cannot serve (never naming the passphrase).
func (s *Store) open(b []byte, passphrase string) (Value, error) {
	v, err := decode(b)
	if err != nil {
		return v, err
	}
	if err := v.Keyring().Unlock(passphrase, s.workFactor()); err != nil {
		return v, err
	}
	return v, nil
}

// decode decodes a stored value and checks that it is a keyring; the
// error says why it is not one the filter can use.
func decode(b []byte) (Value, error) {
	var v Value
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode: %w", err)
	}
	return v, v.Keyring().Validate()
}

// write makes a new keyring and stores it: created when replace is false,
// else updated over revision rev.
func (s *Store) write(ctx context.Context, plan, passphrase string, rev uint64, replace bool) (format.Keyring, error) {
	k, err := format.NewKeyring(passphrase, s.workFactor())
	if err != nil {
		return format.Keyring{}, fmt.Errorf("keyring of plan %s: %w", plan, err)
	}
	s.made.Add(1)
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	b, err := json.Marshal(Value{Recipient: k.Recipient, Wrapped: k.Wrapped, WorkFactor: s.workFactor(), Created: now().UTC()})
	if err != nil {
		return format.Keyring{}, fmt.Errorf("keyring of plan %s: encode: %w", plan, err)
	}
	if replace {
		_, err = s.kv.Update(ctx, plan, b, rev)
	} else {
		_, err = bus.Create(ctx, s.kv, plan, b)
	}
	if err != nil {
		return format.Keyring{}, fmt.Errorf("keyring of plan %s: store: %w", plan, err)
	}
	return k, nil
}
