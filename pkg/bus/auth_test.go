package bus_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
)

func TestEmbeddedServerRefusesAnonymousClients(t *testing.T) {
	srv := bustest.Server(t)
	_, err := nats.Connect(srv.URL())
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connect: got %v, want an authorization violation", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = bus.Connect(ctx, srv.URL(), "anon", bus.Config{}, bustest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "no credentials given") {
		t.Fatalf("bus.Connect without credentials: got %v, want a hint at the credentials flags", err)
	}
}

func TestEmbeddedServerCredentialsAreOwnerOnlyAndStable(t *testing.T) {
	data := t.TempDir()
	start := func() *bus.Server {
		srv, err := bus.StartServer(bus.ServerConfig{Port: -1, StoreDir: filepath.Join(data, "nats"), AuthDir: filepath.Join(data, bus.AuthDirName)})
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	st, err := os.Stat(filepath.Join(data, bus.AuthDirName))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("auth dir: %v, mode %v; want 0700", err, st.Mode().Perm())
	}
	for _, role := range bus.RoleNames() {
		a, err := bus.LocalAuth(data, role)
		if err != nil {
			t.Fatalf("LocalAuth(%s): %v", role, err)
		}
		st, err := os.Stat(a.NKeyFile)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", a.NKeyFile, err, st.Mode().Perm())
		}
	}
	seed, _ := os.ReadFile(filepath.Join(data, bus.AuthDirName, "nats-admin.nk"))
	srv.Shutdown()
	// A restart keeps the users: the CLI's credentials stay valid.
	srv = start()
	defer srv.Shutdown()
	again, _ := os.ReadFile(filepath.Join(data, bus.AuthDirName, "nats-admin.nk"))
	if string(seed) != string(again) {
		t.Fatal("restart replaced the admin credentials")
	}
	a, _ := bus.LocalAuth(data, bus.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, srv.URL(), "cli", bus.Config{Auth: a}, bustest.Logger(t))
	if err != nil {
		t.Fatalf("connect with the local admin credentials: %v", err)
	}
	b.NC.Close()
}

// TestRolesAreRefusedWhatTheyMustNotDo checks the permissions the server
// enforces for roles an outsider may hold, on the embedded server (the same
// table makes deploy/nats-server.conf).
func TestRolesAreRefusedWhatTheyMustNotDo(t *testing.T) {
	srv := bustest.Server(t)
	admin := bustest.Connect(t, srv.URL(), "admin") // sets up streams and buckets
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.Plans.Put(ctx, "demo", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	trigger := bustest.ConnectAs(t, srv.URL(), "outsider", bus.RoleTrigger)
	req := events.MustNew(trigger.Meta("demo", events.NewID(), ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err := trigger.Publish(ctx, req); err != nil {
		t.Fatalf("trigger role cannot request a backup: %v", err)
	}
	if _, err := trigger.Plans.Get(ctx, "demo"); err != nil {
		t.Fatalf("trigger role cannot read a plan: %v", err)
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want refused", what)
		}
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	c, cc := short()
	_, err := trigger.JS.Publish(c, events.Subject(events.BackupSucceeded, "demo"), []byte(`{"forged":true}`))
	denied("trigger publishes backup.succeeded", err)
	cc()
	c, cc = short()
	_, err = trigger.Plans.Put(c, "demo", []byte(`{"evil":true}`))
	denied("trigger writes the plans bucket", err)
	cc()
	c, cc = short()
	_, err = trigger.Runs.Put(c, "01ARZ3NDEKTSV4RRFFQ69G5FAV", []byte(`{}`))
	denied("trigger writes the runs bucket", err)
	cc()
	_, err = trigger.NC.SubscribeSync(bus.DataRoot + ".>")
	if err == nil {
		err = trigger.NC.Flush()
		if err == nil {
			err = trigger.NC.LastError()
		}
	}
	denied("trigger subscribes to chunk subjects", err)
	_, err = trigger.NC.SubscribeSync("_INBOX_filter.>")
	if err == nil {
		err = trigger.NC.Flush()
		if err == nil {
			err = trigger.NC.LastError()
		}
	}
	denied("trigger subscribes to the filter's inbox", err)
	c, cc = short()
	denied("trigger deletes the events stream", trigger.JS.DeleteStream(c, bus.EventsStream))
	cc()

	viewer := bustest.ConnectAs(t, srv.URL(), "viewer", bus.RoleViewer)
	c, cc = short()
	denied("viewer requests a backup", viewer.Publish(c, events.MustNew(viewer.Meta("demo", events.NewID(), ""), events.BackupRequestedData{Trigger: events.TriggerCLI})))
	cc()
}

// TestEmbeddedServerBeyondLoopbackSpeaksTLSOnly binds every address: the
// server then generates a CA and certificate under its auth directory,
// refuses plain connections, and LocalAuth hands clients the CA.
func TestEmbeddedServerBeyondLoopbackSpeaksTLSOnly(t *testing.T) {
	data := t.TempDir()
	srv, err := bus.StartServer(bus.ServerConfig{Host: "0.0.0.0", Port: -1, StoreDir: filepath.Join(data, "nats"), AuthDir: filepath.Join(data, bus.AuthDirName)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	url := strings.Replace(srv.URL(), "0.0.0.0", "127.0.0.1", 1)
	a, err := bus.LocalAuth(data, bus.RoleAdmin)
	if err != nil || a.TLSCA == "" {
		t.Fatalf("LocalAuth: %+v, %v; want the generated CA", a, err)
	}
	plain, _ := nats.NkeyOptionFromSeed(a.NKeyFile)
	if nc, err := nats.Connect(url, plain); err == nil {
		nc.Close()
		t.Fatal("plain connection beyond loopback: accepted, want TLS required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, url, "cli", bus.Config{Auth: a}, bustest.Logger(t))
	if err != nil {
		t.Fatalf("connect with the generated CA: %v", err)
	}
	if !b.NC.TLSRequired() {
		t.Error("connection is not TLS")
	}
	b.NC.Close()
}

// TestARoleThatMayNotSetUpSaysSo: a least-privileged role connecting before
// the streams exist is told the server refused to create them, at the first
// refusal instead of after every retry.
func TestARoleThatMayNotSetUpSaysSo(t *testing.T) {
	srv := bustest.Server(t)
	a, _ := bustest.AuthFor(srv.URL(), "filter")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := bus.Connect(ctx, srv.URL(), "filter", bus.Config{Auth: a}, bustest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "refused by the server") || !strings.Contains(err.Error(), "backstream setup") {
		t.Fatalf("connect as filter before setup: %v; want the server's refusal and the hint to run setup", err)
	}
}

// TestASecondServerOnTheSameStoreFailsAtOnce: two embedded servers on one
// --data would each write a JetStream store the other contradicts; the
// second fails at once naming the holder, and starts once the first is
// gone. A port another process holds fails with its cause, not with "not
// ready after 30s".
func TestASecondServerOnTheSameStoreFailsAtOnce(t *testing.T) {
	data := t.TempDir()
	cfg := bus.ServerConfig{Port: -1, StoreDir: filepath.Join(data, "nats"), AuthDir: filepath.Join(data, bus.AuthDirName)}
	first, err := bus.StartServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = bus.StartServer(cfg)
	if !errors.Is(err, bus.ErrStoreInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second server on the same store: %v, want ErrStoreInUse naming pid %d", err, os.Getpid())
	}
	first.Shutdown()
	again, err := bus.StartServer(cfg)
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	again.Shutdown()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := t.TempDir()
	_, err = bus.StartServer(bus.ServerConfig{Port: l.Addr().(*net.TCPAddr).Port, StoreDir: filepath.Join(other, "nats"), AuthDir: filepath.Join(other, bus.AuthDirName)})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("port clash: %v, want the cause", err)
	}
}
