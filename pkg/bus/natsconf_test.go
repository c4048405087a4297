package bus

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

var update = flag.Bool("update", false, "rewrite deploy/nats-server.conf from the role table")

const deployConf = "../../deploy/nats-server.conf"

// TestDeployServerConf keeps deploy/nats-server.conf what the role table
// renders, so the shipped configuration never drifts from the permissions
// the embedded server enforces. -update rewrites it.
func TestDeployServerConf(t *testing.T) {
	want := RenderServerConf(DeployServerConf())
	if *update {
		if err := os.WriteFile(deployConf, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(deployConf)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs from the role table; run: go test ./pkg/bus -run TestDeployServerConf -update", deployConf)
	}
}

// TestRenderedServerConfIsWhatTheServerReads parses a rendered
// configuration (cluster and TLS included) with nats-server's own parser:
// every role is a user with its password from the environment and exactly
// its permissions, and a password that is not set stops the server.
func TestRenderedServerConfIsWhatTheServerReads(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := ensureServerCert(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	c := DeployServerConf()
	c.StoreDir = filepath.Join(dir, "store")
	c.TLS = &ConfTLS{CertFile: cert, KeyFile: key, CAFile: caFile(dir)}
	file := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(file, RenderServerConf(c), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range Roles() {
		t.Setenv(PasswordEnv(r.Name), "pw-"+r.Name+"-x/y+z=")
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats-server cannot read the rendered configuration: %v", err)
	}
	if opts.TLSConfig == nil || opts.Cluster.TLSConfig == nil || opts.Cluster.Port != 6222 || !opts.JetStream {
		t.Fatalf("tls %v, cluster tls %v, cluster port %d, jetstream %v: want TLS for clients and routes, a cluster and JetStream",
			opts.TLSConfig != nil, opts.Cluster.TLSConfig != nil, opts.Cluster.Port, opts.JetStream)
	}
	if len(opts.Users) != len(Roles()) || len(opts.Nkeys) != 0 || opts.NoAuthUser != "" {
		t.Fatalf("%d users, %d nkeys, no_auth_user %q; want exactly one user per role and no anonymous access", len(opts.Users), len(opts.Nkeys), opts.NoAuthUser)
	}
	for _, u := range opts.Users {
		r, ok := RoleNamed(u.Username)
		if !ok {
			t.Errorf("user %q has no role", u.Username)
			continue
		}
		if u.Password != "pw-"+r.Name+"-x/y+z=" {
			t.Errorf("user %s: password %q, not the one in $%s", u.Username, u.Password, PasswordEnv(r.Name))
		}
		want := r.ForUser(r.Name)
		p := u.Permissions
		if p == nil || p.Publish == nil || p.Subscribe == nil ||
			!slices.Equal(p.Publish.Allow, want.Publish) || !slices.Equal(p.Publish.Deny, want.DenyPublish) ||
			!slices.Equal(p.Subscribe.Allow, want.Subscribe) || len(p.Subscribe.Deny) != 0 {
			t.Errorf("user %s: the server reads permissions %+v, want %s", u.Username, p, want)
		}
	}

	os.Unsetenv(PasswordEnv("hook"))
	if _, err := server.ProcessConfigFile(file); err == nil || !strings.Contains(err.Error(), PasswordEnv("hook")) {
		t.Fatalf("a password that is not set: got %v, want an error naming %s", err, PasswordEnv("hook"))
	}
}

// TestRolesEachPinTheirOwnConsumers checks the table's structure: every
// durable consumer of the events stream belongs to exactly one role, and
// every role that may read the events stream through generated consumer
// names is denied the others' durables.
func TestRolesEachPinTheirOwnConsumers(t *testing.T) {
	owner := map[string]string{}
	for _, r := range Roles() {
		for _, s := range r.Publish {
			name, ok := strings.CutPrefix(s, "$JS.ACK."+EventsStream+".")
			if !ok {
				continue
			}
			name = strings.TrimSuffix(name, ".>")
			if o, dup := owner[name]; dup {
				t.Errorf("consumer %s belongs to %s and %s", name, o, r.Name)
			}
			owner[name] = r.Name
		}
	}
	if len(owner) < 10 {
		t.Fatalf("found %d durable consumers (%v), want every stage's", len(owner), owner)
	}
	for _, r := range Roles() {
		if r.Name == RoleAdmin || !slices.Contains(r.Publish, jsAPI+"CONSUMER.CREATE."+EventsStream+".>") {
			continue
		}
		for name, o := range owner {
			if o == r.Name {
				continue
			}
			for _, verb := range []string{"CREATE", "DELETE", "MSG.NEXT"} {
				if s := jsAPI + "CONSUMER." + verb + "." + EventsStream + "." + name; !slices.Contains(r.DenyPublish, s) {
					t.Errorf("role %s may %s on %s's consumer %s", r.Name, verb, o, name)
				}
			}
		}
	}
}

// TestSecurityDocNamesEveryRole keeps docs/security.md's role table whole.
func TestSecurityDocNamesEveryRole(t *testing.T) {
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Roles() {
		if !strings.Contains(string(doc), "\n| "+r.Name+" |") {
			t.Errorf("docs/security.md has no row for role %s", r.Name)
		}
	}
}

// TestKeyringsBucketIsTheFilters: besides the admin, only the filter reads
// and writes plan keyrings (it makes and replaces them); the others may
// only look the bucket up, as they do every bucket.
func TestKeyringsBucketIsTheFilters(t *testing.T) {
	for _, r := range Roles() {
		var uses []string
		for _, s := range r.Publish {
			if strings.Contains(s, KeyringsBucket) && s != jsAPI+"STREAM.INFO.KV_"+KeyringsBucket {
				uses = append(uses, s)
			}
		}
		writes := slices.Contains(r.Publish, "$KV."+KeyringsBucket+".>") || slices.Contains(r.Publish, ">")
		switch r.Name {
		case RoleAdmin:
			if !writes {
				t.Errorf("admin cannot write the keyrings bucket")
			}
		case "filter":
			if !writes || !slices.Contains(r.Publish, jsAPI+"DIRECT.GET.KV_"+KeyringsBucket+".>") {
				t.Errorf("filter cannot read and write the keyrings bucket: %v", uses)
			}
		default:
			if len(uses) > 0 {
				t.Errorf("role %s may use the keyrings bucket: %v", r.Name, uses)
			}
		}
	}
}
