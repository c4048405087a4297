package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/keyring"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestKeyringList: the admin lists each passphrase plan's keyring (its
// recipient, work factor, when made) and nothing that opens it; a role
// that may not read keyrings is refused.
func TestKeyringList(t *testing.T) {
	srv, admin := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list := func(role string, extra ...string) (string, error) {
		t.Helper()
		auth, ok := bustest.AuthFor(srv.URL(), role)
		if !ok || auth.NKeyFile == "" {
			t.Fatalf("no %s credentials for the test server", role)
		}
		args := append([]string{"keyring", "list", "--nats", srv.URL(), "--nats-nkey", auth.NKeyFile}, extra...)
		if auth.TLSCA != "" {
			args = append(args, "--nats-tls-ca", auth.TLSCA)
		}
		var out, errOut testenv.Buffer
		err := run(ctx, args, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	if out, err := list(bus.RoleAdmin); err != nil || !strings.Contains(out, "no keyrings") {
		t.Fatalf("no keyrings yet: %v\n%s", err, out)
	}
	s := keyring.New(admin.Keyrings, nil)
	s.WorkFactor = 10
	k, err := s.Ensure(ctx, "orders", "correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	out, err := list(bus.RoleAdmin)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"PLAN", "orders", k.Recipient, " 10 "} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	out, err = list(bus.RoleAdmin, "-o", "json")
	if err != nil || !strings.Contains(out, `"recipient": "`+k.Recipient+`"`) || strings.Contains(out, "age-encryption") || strings.Contains(out, "wrapped") {
		t.Errorf("-o json: %v\n%s", err, out)
	}
	if out, err := list(bus.RoleTrigger); err == nil || !strings.Contains(err.Error(), "refused by the server") {
		t.Errorf("the trigger role listing keyrings: %v, want the server's refusal\n%s", err, out)
	}
}
