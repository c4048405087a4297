package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/testenv"
)

// natsServer is bin/nats-server (built from the Go module proxy by
// scripts/install-tools.sh) running the configuration deploy/ ships,
// rendered from the role table for one node on a free loopback port, with
// TLS from a CA made for the test and every role's password in its
// environment.
type natsServer struct {
	URL       string
	CA        string
	Conf      string
	passwords map[string]string
	out       *testenv.Buffer
}

func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	bin := testenv.Bin(t, "nats-server")
	if bin == "" {
		testenv.Missing(t, "bin/nats-server (run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	ca, cert, key := makeCerts(t, dir)
	port := testenv.FreePort(t)
	c := bus.DeployServerConf()
	c.Listen = testenv.Addr(port)
	c.StoreDir = filepath.Join(dir, "store")
	c.Cluster = nil // one node; the cluster block is run by TestShippedNATSConfigRunsAThreeNodeCluster
	c.TLS = &bus.ConfTLS{CertFile: cert, KeyFile: key, CAFile: ca}
	conf := bus.RenderServerConf(c)
	shipped, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// The users and permissions the test runs are exactly those shipped.
	if a, b := authBlock(conf), authBlock(shipped); a == "" || a != b {
		t.Fatal("deploy/nats-server.conf's authorization block differs from the role table's (go test ./pkg/bus -run TestDeployServerConf -update)")
	}
	file := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(file, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &natsServer{URL: fmt.Sprintf("tls://127.0.0.1:%d", port), CA: ca, Conf: file, passwords: map[string]string{}}
	env := os.Environ()
	for _, r := range bus.RoleNames() {
		s.passwords[r] = "pw" + randomHex(t, 16)
		env = append(env, bus.PasswordEnv(r)+"="+s.passwords[r])
	}
	s.out = runNATSServer(t, bin, env, "-c", file)
	return s
}

// runNATSServer runs bin/nats-server with args and env until the test
// ends, and waits until it is ready.
func runNATSServer(t *testing.T, bin string, env []string, args ...string) *testenv.Buffer {
	t.Helper()
	out := &testenv.Buffer{}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("nats-server %v output:\n%s", args, out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Server is ready") {
		select {
		case <-done:
			t.Fatalf("nats-server %v exited:\n%s", args, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %v not ready after 30s:\n%s", args, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

// authBlock is the authorization section of a configuration.
func authBlock(conf []byte) string {
	i := strings.Index(string(conf), "\nauthorization {")
	if i < 0 {
		return ""
	}
	return string(conf[i:])
}

// flags are the command-line flags of a backstream command connecting as
// role; its password goes through env (never argv).
func (s *natsServer) flags(role string) []string {
	return []string{"--nats", s.URL, "--nats-user", role, "--nats-tls-ca", s.CA}
}

// env is role's password for a backstream process.
func (s *natsServer) env(role string) []string {
	return []string{bus.EnvPassword + "=" + s.passwords[role]}
}

// auth is role's credentials for an in-test bus.
func (s *natsServer) auth(role string) bus.Auth {
	return bus.Auth{User: role, Password: s.passwords[role], TLSCA: s.CA}
}

// connect is a plain nats.go connection as role (its inbox is its own)
// whose asynchronous errors — the server's permission violations — arrive
// on the returned channel.
func (s *natsServer) connect(t *testing.T, role string) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	nc, err := nats.Connect(s.URL, nats.UserInfo(role, s.passwords[role]), nats.RootCAs(s.CA),
		nats.CustomInboxPrefix(bus.InboxPrefix(role)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// bus connects a bus as role.
func (s *natsServer) bus(t *testing.T, role string) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, s.URL, "test-"+role, bus.Config{Auth: s.auth(role)}, nil)
	if err != nil {
		t.Fatalf("connect bus as %s: %v", role, err)
	}
	t.Cleanup(func() { b.NC.Close() })
	return b
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// makeCerts writes a CA and a certificate for 127.0.0.1 signed by it, fit
// for both ends of a connection as deploy/'s cluster certificates must be.
func makeCerts(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string]*pem.Block{ca: {Type: "CERTIFICATE", Bytes: caDER}, cert: {Type: "CERTIFICATE", Bytes: der}, key: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, cert, key
}
