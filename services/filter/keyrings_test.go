package filter_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/services/filter"
)

// The filter service makes and unlocks the keyring of a plan with a
// passphrase when it starts and when such a plan is applied, before any
// backup: the scrypt then runs while nothing streams. A plan sealed for
// recipients gets no keyring, and the backup that follows seals with the
// keyring already there.
func TestKeyringsAreReadyBeforeTheFirstBackup(t *testing.T) {
	const env = "BS_FILTER_TEST_WARM_PASSPHRASE"
	t.Setenv(env, "warm before the first backup")
	r := newRigEncrypted(t, "64KiB", "256KiB", "{type: aes-256-gcm, passphrase: {env: "+env+"}}")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc := filter.New(r.d)
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { done <- svc.Run(runCtx) }()

	waitKeyring := func(name string) []byte {
		t.Helper()
		for {
			e, err := r.d.Bus.Keyrings.Get(ctx, name)
			if err == nil {
				return e.Value()
			}
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("keyring of %s: %v", name, err)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no keyring of %s before any backup: %v", name, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	first := waitKeyring(r.p.Name())

	// A plan applied while the service runs is watched for too; one that
	// seals for recipients is not given a keyring.
	for _, give := range []struct{ name, encryption string }{
		{"later", "{type: aes-256-gcm, passphrase: {env: " + env + "}}"},
		{"recipients", fmt.Sprintf("{recipients: [%s]}", r.identity.Recipient())},
	} {
		p, err := plan.Parse(give.name+".yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  filters: {encryption: %s}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, give.name, give.encryption, r.dir)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.d.Plans.Put(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	waitKeyring("later")
	if _, err := r.d.Bus.Keyrings.Get(ctx, "recipients"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("a plan sealed for recipients has a keyring: %v", err)
	}

	a := r.seal(gen(100 * kib))
	h, _, err := format.ReadHeader(bytes.NewReader(a.object))
	if err != nil {
		t.Fatal(err)
	}
	if h.KeyWrap.Scheme != format.SchemeAgeKeyring || !bytes.Contains(first, []byte(h.KeyWrap.Recipients[0])) {
		t.Fatalf("the backup sealed with %s %q, the keyring made ahead is %s", h.KeyWrap.Scheme, h.KeyWrap.Recipients, first)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run after its context ended: %v", err)
	}
}
