package keyring_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/keyring"
	"github.com/backstream/backstream/pkg/testenv"
)

const (
	pass  = "correct horse battery staple"
	other = "Tr0ub4dor&3"
)

// newStore is a Store on a fresh embedded server's keyrings bucket, at a
// work factor that keeps the tests fast, and its log.
func newStore(t *testing.T) (*keyring.Store, jetstream.KeyValue, *testenv.Buffer) {
	t.Helper()
	_, b := bustest.Start(t)
	return storeOn(b.Keyrings)
}

func storeOn(kv jetstream.KeyValue) (*keyring.Store, jetstream.KeyValue, *testenv.Buffer) {
	log := &testenv.Buffer{}
	s := keyring.New(kv, slog.New(slog.NewTextHandler(log, nil)))
	s.WorkFactor = 10
	return s, kv, log
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// stored returns the plan's value and revision.
func stored(t *testing.T, kv jetstream.KeyValue, plan string) (keyring.Value, uint64) {
	t.Helper()
	e, err := kv.Get(ctx(t), plan)
	if err != nil {
		t.Fatalf("get %s: %v", plan, err)
	}
	var v keyring.Value
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatal(err)
	}
	return v, e.Revision()
}

func TestEnsureCreatesOnce(t *testing.T) {
	s, kv, log := newStore(t)
	k, err := s.Ensure(ctx(t), "orders", pass)
	if err != nil {
		t.Fatal(err)
	}
	v, rev := stored(t, kv, "orders")
	if v.Recipient != k.Recipient || !bytes.Equal(v.Wrapped, k.Wrapped) || v.WorkFactor != 10 || v.Created.IsZero() {
		t.Fatalf("stored %+v for keyring %+v", v, k)
	}
	if err := k.Unlock(pass, 0); err != nil {
		t.Fatalf("the keyring does not open with the passphrase: %v", err)
	}
	// Later backups, and another Store on the bucket (another filter),
	// use it as it is.
	s2, _, _ := storeOn(kv)
	for _, st := range []*keyring.Store{s, s, s2} {
		again, err := st.Ensure(ctx(t), "orders", pass)
		if err != nil || again.Recipient != k.Recipient || !bytes.Equal(again.Wrapped, k.Wrapped) {
			t.Fatalf("Ensure again: %+v, %v; want %s", again, err, k.Recipient)
		}
	}
	if _, rev2 := stored(t, kv, "orders"); rev2 != rev {
		t.Fatalf("revision %d → %d: Ensure wrote a keyring it had", rev, rev2)
	}
	// Each plan has its own.
	k2, err := s.Ensure(ctx(t), "billing", pass)
	if err != nil || k2.Recipient == k.Recipient {
		t.Fatalf("keyring of another plan: %+v, %v", k2, err)
	}
	if strings.Contains(log.String(), "level=WARN") {
		t.Fatalf("warned:\n%s", log)
	}
}

func TestEnsureConcurrent(t *testing.T) {
	_, b := bustest.Start(t)
	const n = 6
	got := make([]format.Keyring, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		s, _, _ := storeOn(b.Keyrings) // one Store per filter replica
		wg.Go(func() {
			<-start
			got[i], errs[i] = s.Ensure(ctx(t), "orders", pass)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Ensure %d: %v", i, errs[i])
		}
		if got[i].Recipient != got[0].Recipient || !bytes.Equal(got[i].Wrapped, got[0].Wrapped) {
			t.Fatalf("Ensure %d made %s, Ensure 0 %s", i, got[i].Recipient, got[0].Recipient)
		}
	}
	v, _ := stored(t, b.Keyrings, "orders")
	if v.Recipient != got[0].Recipient {
		t.Fatalf("stored %s, returned %s", v.Recipient, got[0].Recipient)
	}
}

// TestEnsureOnceInAProcess: callers of one Store that ask for a new
// plan's keyring at once (the filter's warm-up and a backup) make it once:
// scrypt does not run side by side for one keyring.
func TestEnsureOnceInAProcess(t *testing.T) {
	_, b := bustest.Start(t)
	s, _, _ := storeOn(b.Keyrings)
	const n = 6
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = s.Ensure(ctx(t), "orders", pass)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Ensure %d: %v", i, err)
		}
	}
	if got := keyring.Made(s); got != 1 {
		t.Fatalf("%d concurrent Ensures of a new plan made %d keyrings, want 1", n, got)
	}
}

// TestEnsureReplaces: a keyring the plan's passphrase does not open is
// replaced, with a warning, whoever wrote it; the old one keeps opening
// with its own passphrase, as the objects sealed with it need.
func TestEnsureReplaces(t *testing.T) {
	foreign, err := format.NewKeyring(other, 10)
	if err != nil {
		t.Fatal(err)
	}
	value := func(v keyring.Value) []byte { b, _ := json.Marshal(v); return b }
	hard, err := format.NewKeyring(pass, 12)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		before func(t *testing.T, s *keyring.Store, kv jetstream.KeyValue) // leaves the plan's keyring in the bucket
		reason string
	}{
		{"the plan's passphrase changed", func(t *testing.T, s *keyring.Store, _ jetstream.KeyValue) {
			if _, err := s.Ensure(ctx(t), "orders", other); err != nil {
				t.Fatal(err)
			}
		}, "passphrase does not open the keyring"},
		{"someone else wrote it, with another passphrase", func(t *testing.T, _ *keyring.Store, kv jetstream.KeyValue) {
			if _, err := kv.Put(ctx(t), "orders", value(keyring.Value{Recipient: foreign.Recipient, Wrapped: foreign.Wrapped, WorkFactor: 10})); err != nil {
				t.Fatal(err)
			}
		}, "passphrase does not open the keyring of " + foreign.Recipient},
		{"a recipient that is not its identity's", func(t *testing.T, s *keyring.Store, kv jetstream.KeyValue) {
			mine, err := format.NewKeyring(pass, 10)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx(t), "orders", value(keyring.Value{Recipient: foreign.Recipient, Wrapped: mine.Wrapped, WorkFactor: 10})); err != nil {
				t.Fatal(err)
			}
		}, "holds the identity of"},
		{"more scrypt work than the store makes", func(t *testing.T, _ *keyring.Store, kv jetstream.KeyValue) {
			if _, err := kv.Put(ctx(t), "orders", value(keyring.Value{Recipient: hard.Recipient, Wrapped: hard.Wrapped, WorkFactor: 12})); err != nil {
				t.Fatal(err)
			}
		}, "scrypt work factor too large"},
		{"not JSON", func(t *testing.T, _ *keyring.Store, kv jetstream.KeyValue) {
			if _, err := kv.Put(ctx(t), "orders", []byte("{not json")); err != nil {
				t.Fatal(err)
			}
		}, "decode"},
		{"not a keyring", func(t *testing.T, _ *keyring.Store, kv jetstream.KeyValue) {
			if _, err := kv.Put(ctx(t), "orders", value(keyring.Value{Recipient: "age1nope", Wrapped: []byte("x")})); err != nil {
				t.Fatal(err)
			}
		}, "recipient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, kv, log := newStore(t)
			tt.before(t, s, kv)
			e, err := kv.Get(ctx(t), "orders")
			if err != nil {
				t.Fatal(err)
			}
			k, err := s.Ensure(ctx(t), "orders", pass)
			if err != nil {
				t.Fatal(err)
			}
			v, rev := stored(t, kv, "orders")
			if bytes.Contains(e.Value(), []byte(k.Recipient)) || v.Recipient != k.Recipient || rev <= e.Revision() {
				t.Fatalf("keyring %s (stored %s, revision %d → %d), was %s: not replaced", k.Recipient, v.Recipient, e.Revision(), rev, e.Value())
			}
			if err := k.Unlock(pass, 0); err != nil {
				t.Fatalf("the new keyring does not open with the passphrase: %v", err)
			}
			msg := log.String()
			want := "keyring of plan orders does not open with the plan's passphrase; a new keyring replaces it (backups made before need the old passphrase)"
			if !strings.Contains(msg, "level=WARN") || !strings.Contains(msg, want) || !strings.Contains(msg, tt.reason) {
				t.Fatalf("log:\n%s\nwant a warning %q with the reason %q", msg, want, tt.reason)
			}
			if strings.Contains(msg, pass) || strings.Contains(msg, other) {
				t.Fatalf("the log shows a passphrase:\n%s", msg)
			}
			// The next backup keeps the new keyring.
			if again, err := s.Ensure(ctx(t), "orders", pass); err != nil || again.Recipient != k.Recipient {
				t.Fatalf("Ensure after the replacement: %s, %v; want %s", again.Recipient, err, k.Recipient)
			}
		})
	}
	t.Run("the old keyring still opens with the old passphrase", func(t *testing.T) {
		s, kv, _ := newStore(t)
		k1, err := s.Ensure(ctx(t), "orders", other)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Ensure(ctx(t), "orders", pass); err != nil {
			t.Fatal(err)
		}
		if err := k1.Unlock(other, 0); err != nil {
			t.Fatalf("old keyring, old passphrase: %v", err)
		}
		if err := k1.Unlock(pass, 0); !errors.Is(err, format.ErrWrongKey) {
			t.Fatalf("old keyring, new passphrase: %v", err)
		}
		if v, _ := stored(t, kv, "orders"); v.Recipient == k1.Recipient {
			t.Fatal("not replaced")
		}
	})
}

// TestValueHoldsNoSecret: what the bucket holds is the recipient, the
// passphrase-wrapped identity, its work factor and a time, nothing else.
func TestValueHoldsNoSecret(t *testing.T) {
	s, kv, _ := newStore(t)
	k, err := s.Ensure(ctx(t), "orders", pass)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx(t), "orders")
	if err != nil {
		t.Fatal(err)
	}
	raw := e.Value()
	if bytes.Contains(raw, []byte(pass)) || bytes.Contains(raw, []byte("AGE-SECRET-KEY")) {
		t.Fatalf("the value holds the passphrase or an identity in clear: %s", raw)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(m)); !slices.Equal(keys, []string{"created", "recipient", "workFactor", "wrapped"}) {
		t.Fatalf("value fields %v", keys)
	}
	if wf, err := k.WorkFactor(); err != nil || wf != 10 || m["workFactor"] != float64(10) {
		t.Fatalf("work factor %v in the value, %d (%v) in the keyring", m["workFactor"], wf, err)
	}
}

func TestEnsureEmptyPassphrase(t *testing.T) {
	s, kv, _ := newStore(t)
	if _, err := s.Ensure(ctx(t), "orders", ""); err == nil {
		t.Fatal("Ensure with an empty passphrase")
	}
	if _, err := kv.Get(ctx(t), "orders"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("something was stored: %v", err)
	}
}

// TestFilterRole: the filter role, as a split deployment runs it, makes
// and replaces keyrings with its own permissions.
func TestFilterRole(t *testing.T) {
	srv, _ := bustest.Start(t)
	b := bustest.ConnectAs(t, srv.URL(), "filter", "filter")
	s, _, _ := storeOn(b.Keyrings)
	k, err := s.Ensure(ctx(t), "orders", pass)
	if err != nil {
		t.Fatalf("filter role: %v", err)
	}
	k2, err := s.Ensure(ctx(t), "orders", other)
	if err != nil || k2.Recipient == k.Recipient {
		t.Fatalf("filter role replacing: %v", err)
	}
}

// TestEveryRoleBinds: every role looks the keyrings bucket up when it
// connects, as it does every bucket, and so binds to it once the admin
// set it up; none but the filter needs more.
func TestEveryRoleBinds(t *testing.T) {
	srv, _ := bustest.Start(t)
	for _, role := range bus.RoleNames() {
		if b := bustest.ConnectAs(t, srv.URL(), role, role); b.Keyrings == nil {
			t.Errorf("role %s: no keyrings bucket", role)
		}
	}
}

// TestListSaysEachPlansKeyringAndNothingToOpenIt: every plan's current
// keyring by name, with what tells it apart (recipient, work factor, when
// made); a stored value that is no keyring is listed with why.
func TestListSaysEachPlansKeyringAndNothingToOpenIt(t *testing.T) {
	s, kv, _ := newStore(t)
	if got, err := s.List(ctx(t)); err != nil || len(got) != 0 {
		t.Fatalf("an empty bucket lists %+v, %v", got, err)
	}
	orders, err := s.Ensure(ctx(t), "orders", pass)
	if err != nil {
		t.Fatal(err)
	}
	billing, err := s.Ensure(ctx(t), "billing", pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx(t), "broken", []byte(`{"recipient":"age1nope","wrapped":"eA=="}`)); err != nil {
		t.Fatal(err)
	}
	got, err := s.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Plan != "billing" || got[1].Plan != "broken" || got[2].Plan != "orders" {
		t.Fatalf("listed %+v, want billing, broken, orders", got)
	}
	for i, k := range map[int]string{0: billing.Recipient, 2: orders.Recipient} {
		if e := got[i]; e.Recipient != k || e.WorkFactor != 10 || e.Created.IsZero() || e.Problem != "" {
			t.Errorf("entry %+v, want recipient %s, work factor 10, a creation time", e, k)
		}
	}
	if e := got[1]; !strings.Contains(e.Problem, "recipient") {
		t.Errorf("a stored value that is no keyring: %+v, want its problem", e)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "wrapped") || strings.Contains(string(b), "age-encryption") {
		t.Errorf("List carries the wrapped identity: %s", b)
	}
}
