package api

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Limits of every request and connection.
const (
	// MaxBodyBytes bounds a request body; a larger one is answered 413.
	MaxBodyBytes = 64 << 10
	// MaxHeaderBytes bounds a request's header.
	MaxHeaderBytes    = 16 << 10
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 60 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// Config says who may use the API and how it is served. Bearer tokens and
// client certificates may be combined; at least one of them is in force
// (Prepare fills the local default).
type Config struct {
	// TokensFile holds the hashed bearer tokens (`NAME ROLE sha256:HEX`).
	TokensFile string
	// TLSCert and TLSKey serve HTTPS; both or neither.
	TLSCert string
	TLSKey  string
	// ClientCA verifies client certificates (mTLS); needs TLSCert. A
	// verified certificate's CN is the identity and its first OU that
	// names a role is the role.
	ClientCA string
}

// TLS reports whether the API is served over HTTPS.
func (c Config) TLS() bool { return c.TLSCert != "" }

// Validate reports every problem of the configuration, by flag.
func (c Config) Validate() error {
	var errs []error
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--api-tls-cert, --api-tls-key: give both or neither"))
	}
	if c.ClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--api-client-ca: client certificates need HTTPS (--api-tls-cert, --api-tls-key)"))
	}
	for _, f := range []struct{ flag, path string }{
		{"--api-tokens", c.TokensFile}, {"--api-tls-cert", c.TLSCert}, {"--api-tls-key", c.TLSKey}, {"--api-client-ca", c.ClientCA},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.flag, err))
		}
	}
	return errors.Join(errs...)
}

// CheckListen refuses to serve plain HTTP beyond loopback: bearer tokens
// would cross the network in clear text.
func (c Config) CheckListen(addr string) error {
	if c.TLS() {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", addr, err)
	}
	if !loopback(host) {
		return fmt.Errorf("--listen %s: not a loopback address; serving the API beyond loopback needs HTTPS (--api-tls-cert and --api-tls-key), or listen on 127.0.0.1", addr)
	}
	return nil
}

// loopback reports whether host can only be reached from this machine: a
// loopback IP or "localhost". Other names count as not loopback, since
// what they resolve to can change.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Prepare checks cfg for an API on addr and fills the local default: with
// neither a tokens file nor a client CA, the tokens file under dataDir
// (made on first start with the local-admin token, see LocalTokens).
func Prepare(cfg Config, addr, dataDir string, log *slog.Logger) (Config, error) {
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	if err := cfg.CheckListen(addr); err != nil {
		return cfg, err
	}
	if cfg.TokensFile != "" || cfg.ClientCA != "" {
		return cfg, nil
	}
	path, created, err := LocalTokens(dataDir)
	if err != nil {
		return cfg, err
	}
	cfg.TokensFile = path
	if created {
		// The path only: the token itself is never logged.
		log.Info("api tokens file created with an admin token", "tokens", path, "adminToken", filepath.Join(dataDir, LocalAdminFile))
	} else {
		log.Info("api tokens file", "tokens", path)
	}
	return cfg, nil
}

// tlsConfig loads the server certificate and the client CA.
func (c Config) tlsConfig() (*tls.Config, error) {
	if !c.TLS() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--api-tls-cert, --api-tls-key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("--api-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--api-client-ca: %s holds no PEM certificate", c.ClientCA)
		}
		tc.ClientCAs = pool
		// A certificate is optional because a bearer token may stand in
		// for it; one that is given must verify.
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// Listen listens on addr, over TLS when the API is configured for it.
func (s *Server) Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", addr, err)
	}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	return ln, nil
}

// HTTPServer is an http.Server for h with the API's limits, logging its
// connection errors (TLS handshakes refused) at warn.
func HTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
