package bus

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/pkg/secret"
)

// Auth is how a client proves who it is to NATS and how it checks the server.
// At most one of CredsFile, NKeyFile and User is set. Secret material is only
// ever read from files or the environment, never taken from argv.
type Auth struct {
	// CredsFile is a decentralised-auth credentials file (JWT and nkey seed).
	CredsFile string
	// NKeyFile holds an nkey user seed (SU…); the server knows its public key.
	NKeyFile string
	// User and Password authenticate with a user of the server's
	// configuration; the password comes from the environment.
	User     string
	Password string
	// TLSCA verifies the server's certificate; TLSCert and TLSKey are the
	// client's own certificate where the server asks for one.
	TLSCA   string
	TLSCert string
	TLSKey  string
	// Inbox is the prefix of this client's reply subjects. Each user may
	// only subscribe to its own inbox, so no user can read the replies (and
	// the chunk deliveries) meant for another. Empty derives it from the
	// user name or the nkey's public key (InboxPrefix).
	Inbox string
}

// Environment variables every backstream command reads its NATS credentials
// from when no flag names them.
const (
	EnvCreds    = "BACKSTREAM_NATS_CREDS"
	EnvNKey     = "BACKSTREAM_NATS_NKEY"
	EnvUser     = "BACKSTREAM_NATS_USER"
	EnvPassword = "BACKSTREAM_NATS_PASSWORD"
	EnvTLSCA    = "BACKSTREAM_NATS_TLS_CA"
	EnvTLSCert  = "BACKSTREAM_NATS_TLS_CERT"
	EnvTLSKey   = "BACKSTREAM_NATS_TLS_KEY"
	EnvInbox    = "BACKSTREAM_NATS_INBOX_PREFIX"
	// EnvData is the data directory of a local `backstream serve` whose
	// generated credentials the CLI uses when none are given.
	EnvData = "BACKSTREAM_DATA"
)

// AuthFromEnv fills the fields of a that are empty from the environment.
func AuthFromEnv(a Auth) Auth {
	fill := func(dst *string, env string) {
		if *dst == "" {
			*dst = os.Getenv(env)
		}
	}
	fill(&a.CredsFile, EnvCreds)
	fill(&a.NKeyFile, EnvNKey)
	fill(&a.User, EnvUser)
	fill(&a.TLSCA, EnvTLSCA)
	fill(&a.TLSCert, EnvTLSCert)
	fill(&a.TLSKey, EnvTLSKey)
	fill(&a.Inbox, EnvInbox)
	if a.User != "" && a.Password == "" {
		a.Password = os.Getenv(EnvPassword)
	}
	secret.Register(a.Password) // redacted like a plan's secrets
	return a
}

// IsZero reports whether a names no credentials at all.
func (a Auth) IsZero() bool { return a.CredsFile == "" && a.NKeyFile == "" && a.User == "" }

// Validate reports every problem of a, by the flag that sets it.
func (a Auth) Validate() error {
	var errs []error
	n := 0
	for _, s := range []string{a.CredsFile, a.NKeyFile, a.User} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("nats credentials: give one of --nats-creds, --nats-nkey, --nats-user"))
	}
	if a.User != "" && a.Password == "" {
		errs = append(errs, fmt.Errorf("--nats-user %s: the password comes from $%s, which is empty", a.User, EnvPassword))
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		errs = append(errs, errors.New("--nats-tls-cert and --nats-tls-key: give both or neither"))
	}
	for flag, f := range map[string]string{"--nats-creds": a.CredsFile, "--nats-nkey": a.NKeyFile, "--nats-tls-ca": a.TLSCA, "--nats-tls-cert": a.TLSCert, "--nats-tls-key": a.TLSKey} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	return errors.Join(errs...)
}

// inbox is the reply prefix a's client uses: its user's own, named after
// the user or the nkey's public key, which is all that user may subscribe to.
func (a Auth) inbox() (string, error) {
	switch {
	case a.Inbox != "":
		return a.Inbox, nil
	case a.User != "":
		return InboxPrefix(a.User), nil
	case a.NKeyFile != "":
		pub, err := publicKeyOf(a.NKeyFile)
		if err != nil {
			return "", fmt.Errorf("--nats-nkey: %w", err)
		}
		return InboxPrefix(pub), nil
	}
	return "", nil
}

// InboxPrefix is the reply-subject prefix of a role: the only inbox its
// users may subscribe to.
func InboxPrefix(role string) string { return "_INBOX_" + role }

// options turns a into nats.go options.
func (a Auth) options() ([]nats.Option, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case a.CredsFile != "":
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	case a.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(a.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", a.NKeyFile, err)
		}
		opts = append(opts, o)
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	p, err := a.inbox()
	if err != nil {
		return nil, err
	}
	if p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	return opts, nil
}

// AuthDirName is where, under a serve's --data directory, the embedded server
// keeps the credentials it generated.
const AuthDirName = "auth"

// nkeyFile is the seed file of role in an auth directory.
func nkeyFile(dir, role string) string { return filepath.Join(dir, "nats-"+role+".nk") }

// caFile is the certificate of the CA that signed the embedded server's TLS
// certificate, when it generated one.
func caFile(dir string) string { return filepath.Join(dir, "nats-ca.pem") }

// ErrNoLocalAuth means a data directory holds no credentials of an embedded
// server (it never ran there).
var ErrNoLocalAuth = errors.New("no credentials of a local backstream serve")

// LocalAuth returns the credentials of role that the embedded server of a
// serve with --data dataDir generated on its first start.
func LocalAuth(dataDir, role string) (Auth, error) {
	return authFromDir(filepath.Join(dataDir, AuthDirName), role)
}

// authFromDir returns the credentials of role in an embedded server's auth
// directory.
func authFromDir(dir, role string) (Auth, error) {
	f := nkeyFile(dir, role)
	if _, err := os.Stat(f); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Auth{}, fmt.Errorf("%w: %s", ErrNoLocalAuth, f)
		}
		return Auth{}, fmt.Errorf("local nats credentials: %w", err)
	}
	a := Auth{NKeyFile: f}
	if _, err := os.Stat(caFile(dir)); err == nil {
		a.TLSCA = caFile(dir)
	}
	return a, nil
}

// ResolveAuth is how every command finds its NATS credentials: what flags
// gave (a), completed from the environment; failing both, and only for a
// server on this machine, the admin credentials of the local serve whose data
// directory is $BACKSTREAM_DATA or ./data — so a fresh `backstream serve`
// and the CLI beside it need no set-up.
func ResolveAuth(a Auth, natsURL string) (Auth, error) {
	a = AuthFromEnv(a)
	if !a.IsZero() || !Loopback(natsURL) {
		return a, a.Validate()
	}
	dataDir := os.Getenv(EnvData)
	if dataDir == "" {
		dataDir = "data"
	}
	local, err := LocalAuth(dataDir, RoleAdmin)
	if err != nil {
		// Nothing local: connect as given; the server says what it lacks.
		return a, a.Validate()
	}
	if a.TLSCA != "" {
		local.TLSCA = a.TLSCA
	}
	local.TLSCert, local.TLSKey, local.Inbox = a.TLSCert, a.TLSKey, a.Inbox
	return local, local.Validate()
}

// Loopback reports whether every server of a NATS URL list is on this
// machine (loopback addresses or localhost).
func Loopback(urls string) bool {
	if urls == "" {
		return true
	}
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if !strings.Contains(u, "://") {
			u = "nats://" + u
		}
		pu, err := url.Parse(u)
		if err != nil || !LoopbackHost(pu.Hostname()) {
			return false
		}
	}
	return true
}

// LoopbackHost reports whether host names this machine only.
func LoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serverTLS loads the server's certificate.
func serverTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("nats server tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
