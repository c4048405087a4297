package bus

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/sys/unix"
)

// DefaultURL is where every backstream command looks for NATS when neither
// --nats nor $BACKSTREAM_NATS says otherwise: the embedded server of
// `backstream serve`. Not 4222, where another NATS may already run.
const DefaultURL = "nats://127.0.0.1:4250"

// DefaultMaxPayload is the embedded server's max_payload. Chunks stay well
// below it with their headers.
const DefaultMaxPayload = 8 << 20

// DefaultDataMaxBytes bounds the in-memory chunk stream.
const DefaultDataMaxBytes = 512 << 20

// ServerConfig configures an embedded nats-server with JetStream on disk.
type ServerConfig struct {
	// Host and Port to listen on; Port -1 picks a free port (tests).
	Host string
	Port int
	// StoreDir holds JetStream's file store.
	StoreDir string
	// Name is the server name; required in a cluster.
	Name string
	// Cluster, when set, makes the server one node of a JetStream cluster.
	Cluster *ClusterConfig
	// MaxStore bounds JetStream's disk use; 0 lets the server decide.
	MaxStore int64
	// AuthDir holds the users the server accepts, one nkey per role
	// (generated there on first start, mode 0600 in a 0700 directory), and
	// the TLS certificate it generated when it listens beyond loopback. The
	// server never accepts anonymous clients. Cluster nodes share one.
	AuthDir string
	// TLSCert and TLSKey are the server's certificate. Without them a
	// server listening beyond loopback generates its own CA and
	// certificate in AuthDir; on loopback it serves plain TCP.
	TLSCert string
	TLSKey  string
}

// ClusterConfig joins an embedded server to a cluster of them.
type ClusterConfig struct {
	Name   string
	Host   string
	Port   int
	Routes []string // nats-route://host:port of the other nodes
}

// Server is a running embedded nats-server.
type Server struct {
	ns      *server.Server
	authDir string
	lock    *os.File
}

// Auth returns the credentials of role on this server.
func (s *Server) Auth(role string) (Auth, error) {
	return authFromDir(s.authDir, role)
}

// StartServer starts an embedded nats-server and waits until it accepts
// connections and, in a cluster, until JetStream is ready.
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("start nats server: StoreDir: required")
	}
	if cfg.AuthDir == "" {
		return nil, errors.New("start nats server: AuthDir: required (the server never accepts anonymous clients)")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	lock, err := lockStore(cfg.StoreDir)
	if err != nil {
		return nil, fmt.Errorf("start nats server: %w", err)
	}
	started := false
	defer func() {
		if !started {
			_ = lock.Close()
		}
	}()
	if cfg.Port > 0 {
		// nats-server reports a port it cannot bind only to its log, and
		// the caller would wait for readiness in vain: try it first.
		addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("start nats server: listen on %s: %w (another serve or NATS server holds it? choose another address)", addr, err)
		}
		_ = l.Close()
	}
	users, err := ensureUsers(cfg.AuthDir)
	if err != nil {
		return nil, fmt.Errorf("start nats server: %w", err)
	}
	opts := &server.Options{
		ServerName:        cfg.Name,
		Host:              cfg.Host,
		Port:              cfg.Port,
		JetStream:         true,
		StoreDir:          cfg.StoreDir,
		JetStreamMaxStore: cfg.MaxStore,
		MaxPayload:        DefaultMaxPayload,
		NoSigs:            true,
		NoLog:             true,
		// Room for the chunk stream (a bound, not an allocation).
		JetStreamMaxMemory: DefaultDataMaxBytes + 64<<20,
		Nkeys:              users,
	}
	tlsCert, tlsKey := cfg.TLSCert, cfg.TLSKey
	if tlsCert == "" && !LoopbackHost(cfg.Host) {
		if tlsCert, tlsKey, err = ensureServerCert(cfg.AuthDir, cfg.Host); err != nil {
			return nil, fmt.Errorf("start nats server: %w", err)
		}
	}
	if tlsCert != "" {
		tc, err := serverTLS(tlsCert, tlsKey)
		if err != nil {
			return nil, fmt.Errorf("start nats server: %w", err)
		}
		opts.TLS, opts.TLSConfig, opts.TLSTimeout = true, tc, 5
	}
	if c := cfg.Cluster; c != nil {
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: c.Host, Port: c.Port}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("start nats server: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("start nats server on %s:%d: not ready after 30s", cfg.Host, cfg.Port)
	}
	started = true
	return &Server{ns: ns, authDir: cfg.AuthDir, lock: lock}, nil
}

// ErrStoreInUse means another process runs an embedded server on the
// same store directory: two servers writing one JetStream store would each
// see a history the other contradicts.
var ErrStoreInUse = errors.New("store directory in use")

// lockName is the lock file beside JetStream's store.
const lockName = "backstream.lock"

// lockStore takes an exclusive lock on dir (creating it) for the life of
// the process, or fails at once naming the holder. The lock is flock(2)
// on dir/backstream.lock: the kernel drops it when the holder dies, so a
// crash never leaves a stale lock; the pid in the file is only for the
// message.
func lockStore(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := strings.TrimSpace(string(holder))
			if who == "" {
				who = "another process"
			}
			return nil, fmt.Errorf("%w: %s is held by %s; stop it, or give this one another --data", ErrStoreInUse, dir, who)
		}
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, since %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))), 0)
	return f, nil
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.ns.ClientURL() }

// JetStreamReady reports whether JetStream accepts requests (in a cluster:
// once a meta leader is elected).
func (s *Server) JetStreamReady() bool { return s.ns.JetStreamIsCurrent() }

// Shutdown stops the server and waits until it is down.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	if s.lock != nil {
		_ = s.lock.Close()
	}
}
