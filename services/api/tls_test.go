package api_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/services/api"
)

// ca is a certificate authority made for one test.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf certificate: a server's for 127.0.0.1 when server,
// else a client's with subject CN and OUs.
func (c *ca) issue(t *testing.T, cn string, ous []string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: ous},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func write(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientFor trusts serverCA and presents the client certificate, if any.
func clientFor(t *testing.T, serverCA *ca, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(serverCA.cert)
	tc := &tls.Config{RootCAs: pool}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// Sent whatever CAs the server names, so that a certificate of
		// another CA reaches the server's verification.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

func TestClientCertificatesAuthenticate(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, "test CA")
	srvCert, srvKey := root.issue(t, "backstream", nil, true)
	cfg := api.Config{
		TLSCert:  write(t, dir, "server.crt", srvCert),
		TLSKey:   write(t, dir, "server.key", srvKey),
		ClientCA: write(t, dir, "ca.crt", root.pem),
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := start(t, cfg)

	triggerCert, triggerKey := root.issue(t, "ci-deploy", []string{"platform", "trigger"}, false)
	noRoleCert, noRoleKey := root.issue(t, "someone", []string{"platform"}, false)
	tests := []struct {
		name         string
		client       *http.Client
		method, path string
		body         string
		want         int
	}{
		{"OU trigger triggers", clientFor(t, root, triggerCert, triggerKey), "POST", "/v1/plans/files/trigger", "", 202},
		{"OU trigger reads", clientFor(t, root, triggerCert, triggerKey), "GET", "/v1/runs", "", 200},
		{"OU trigger cannot restore", clientFor(t, root, triggerCert, triggerKey), "POST", "/v1/plans/files/restore", `{"backupId": "latest", "destination": "local", "target": "/t"}`, 403},
		{"no client certificate", clientFor(t, root, nil, nil), "GET", "/v1/runs", "", 401},
		{"a certificate whose OUs name no role", clientFor(t, root, noRoleCert, noRoleKey), "GET", "/v1/runs", "", 403},
		{"health needs no certificate", clientFor(t, root, nil, nil), "GET", "/healthz", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.doWith(tt.client, tt.method, tt.path, "", tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.raw)
			}
		})
	}
	t.Run("requestedBy is the certificate's CN", func(t *testing.T) {
		r := e.doWith(clientFor(t, root, triggerCert, triggerKey), "POST", "/v1/plans/files/trigger", "", `{"requestedBy": "mallory"}`)
		if r.status != 202 {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		if got := event[events.BackupRequestedData](t, e.bus, r.body["runId"].(string)).RequestedBy; got != "api:ci-deploy" {
			t.Errorf("requestedBy %q, want api:ci-deploy", got)
		}
	})
	t.Run("a certificate of another CA is refused in the handshake", func(t *testing.T) {
		other := newCA(t, "other CA")
		c, k := other.issue(t, "intruder", []string{"admin"}, false)
		req, _ := http.NewRequest("GET", e.base+"/v1/runs", nil)
		resp, err := clientFor(t, root, c, k).Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a certificate of another CA got %s", resp.Status)
		}
		// The refusal is the server's TLS handshake; it is logged at warn.
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(e.log.String(), "level=WARN msg=\"http: TLS handshake error"); {
			if time.Now().After(deadline) {
				t.Fatalf("the refused handshake was not logged:\n%s", e.log.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if !strings.Contains(e.log.String(), `reason="client certificate OUs [\"platform\"] name no role" identity=someone via=certificate`) {
		t.Errorf("the certificate without a role was not logged:\n%s", e.log.String())
	}
}

func TestTokensAndCertificatesCombine(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, "test CA")
	srvCert, srvKey := root.issue(t, "backstream", nil, true)
	tokens := filepath.Join(dir, "tokens")
	tok, err := api.AddToken(tokens, "ops", api.RoleRead)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, api.Config{
		TokensFile: tokens,
		TLSCert:    write(t, dir, "server.crt", srvCert),
		TLSKey:     write(t, dir, "server.key", srvKey),
		ClientCA:   write(t, dir, "ca.crt", root.pem),
	})
	adminCert, adminKey := root.issue(t, "root-ops", []string{"admin"}, false)
	tests := []struct {
		name   string
		client *http.Client
		token  string
		want   int
	}{
		{"a token without a certificate", clientFor(t, root, nil, nil), tok, 200},
		{"a certificate without a token", clientFor(t, root, adminCert, adminKey), "", 202},
		// The Authorization header decides when it is given: a read token
		// does not borrow the certificate's admin role.
		{"a token beside a certificate counts alone", clientFor(t, root, adminCert, adminKey), tok, 403},
		{"a bad token is not rescued by a certificate", clientFor(t, root, adminCert, adminKey), "bad", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := "POST", "/v1/plans/files/trigger"
			if tt.want == 200 {
				method, path = "GET", "/v1/runs"
			}
			if r := e.doWith(tt.client, method, path, tt.token, ""); r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.raw)
			}
		})
	}
}

func TestListenBeyondLoopbackNeedsTLS(t *testing.T) {
	withTLS := api.Config{TLSCert: "c.pem", TLSKey: "k.pem"}
	tests := []struct {
		name    string
		cfg     api.Config
		addr    string
		wantErr bool
	}{
		{"IPv4 loopback", api.Config{}, "127.0.0.1:4251", false},
		{"IPv6 loopback", api.Config{}, "[::1]:4251", false},
		{"localhost", api.Config{}, "localhost:4251", false},
		{"every interface", api.Config{}, "0.0.0.0:4251", true},
		{"every interface, no host", api.Config{}, ":4251", true},
		{"IPv6 every interface", api.Config{}, "[::]:4251", true},
		{"a LAN address", api.Config{}, "10.1.2.3:4251", true},
		{"a host name", api.Config{}, "backstream.example:4251", true},
		{"every interface over TLS", withTLS, "0.0.0.0:4251", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.CheckListen(tt.addr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckListen(%s) = %v, want error %v", tt.addr, err, tt.wantErr)
			}
			if err != nil && (!strings.Contains(err.Error(), "--listen") || !strings.Contains(err.Error(), "--api-tls-cert")) {
				t.Errorf("error %q names neither --listen nor --api-tls-cert", err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	file := write(t, dir, "f", []byte("x"))
	tests := []struct {
		name    string
		cfg     api.Config
		wantErr []string
	}{
		{"empty", api.Config{}, nil},
		{"tokens", api.Config{TokensFile: file}, nil},
		{"full", api.Config{TokensFile: file, TLSCert: file, TLSKey: file, ClientCA: file}, nil},
		{"cert without key", api.Config{TLSCert: file}, []string{"--api-tls-cert, --api-tls-key: give both"}},
		{"client CA without TLS", api.Config{ClientCA: file}, []string{"--api-client-ca: client certificates need HTTPS"}},
		{"missing files", api.Config{TokensFile: filepath.Join(dir, "nope"), TLSCert: file, TLSKey: filepath.Join(dir, "nokey")},
			[]string{"--api-tokens: stat", "--api-tls-key: stat"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("Validate() = %v, want errors %q", err, tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestClientCAAloneTakesNoTokens: a deployment that chose mTLS gets no
// bearer token it did not ask for, neither accepted nor made.
func TestClientCAAloneTakesNoTokens(t *testing.T) {
	dir := t.TempDir()
	root := newCA(t, "test CA")
	srvCert, srvKey := root.issue(t, "backstream", nil, true)
	cfg := api.Config{
		TLSCert:  write(t, dir, "server.crt", srvCert),
		TLSKey:   write(t, dir, "server.key", srvKey),
		ClientCA: write(t, dir, "ca.crt", root.pem),
	}
	data := filepath.Join(dir, "data")
	got, err := api.Prepare(cfg, "0.0.0.0:4251", data, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got.TokensFile != "" {
		t.Errorf("tokens file %q, want none", got.TokensFile)
	}
	if _, err := os.Stat(filepath.Join(data, "auth")); !os.IsNotExist(err) {
		t.Errorf("%s/auth exists (%v): a local admin token was made", data, err)
	}
	e := start(t, cfg)
	if r := e.doWith(clientFor(t, root, nil, nil), "GET", "/v1/runs", "some-token", ""); r.status != http.StatusUnauthorized {
		t.Errorf("a bearer token with no tokens file: %d %s, want 401", r.status, r.raw)
	}
}
