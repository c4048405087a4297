// Package app assembles backstream's services in one process: the embedded
// NATS server when no cluster is given, the bus, the stages that were asked
// for, and the HTTP API. It is what `backstream serve` runs, and what tests
// run in-process. Every goroutine it starts is owned by one errgroup and
// ends when the context is cancelled.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/services/api"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/hook"
	"github.com/backstream/backstream/services/metrics"
	"github.com/backstream/backstream/services/schedule"
	"github.com/backstream/backstream/services/stage"
)

// Names of the services `--services` accepts, in start order.
var Names = func() []string {
	out := []string{"control", "schedule"}
	out = append(out, stageOrder...)
	return append(out, "api")
}()

// runner is a service with a loop of its own besides its consumers.
type runner interface {
	Run(ctx context.Context) error
}

// Config configures one process.
type Config struct {
	// DataDir holds the embedded server's store (DataDir/nats).
	DataDir string
	// NATS is the URL of an existing NATS; empty starts the embedded server
	// on EmbeddedAddr.
	NATS         string
	EmbeddedHost string
	EmbeddedPort int
	// NATSAuth authenticates to an existing NATS. The embedded server's own
	// credentials are generated under DataDir/auth.
	NATSAuth bus.Auth
	// EmbeddedTLSCert and EmbeddedTLSKey are the embedded server's TLS
	// certificate; beyond loopback it generates one when they are empty.
	EmbeddedTLSCert string
	EmbeddedTLSKey  string
	// Services to run; empty means all.
	Services []string
	// Listen is the API's address; empty disables it.
	Listen string
	// API says who may use the API and whether it serves HTTPS.
	API api.Config
	// IdentityFile and PassphraseEnv give verify and restore their keys.
	IdentityFile  string
	PassphraseEnv string
	// Consumer tunes every durable consumer (AckWait, Backoff, Grace).
	Consumer bus.ConsumerSpec
	// Data tunes chunk streams.
	Data bus.DataOptions
	// DataPlane is how chunks pass between snapshot, filter and upload:
	// DataPlaneAuto (or empty) in memory where writer and reader both run
	// in this process and through JetStream where they do not;
	// DataPlaneJetStream always through JetStream, the path before the
	// in-process one, kept to compare and as a safety valve
	// (docs/dataplane.md).
	DataPlane string
	// Replicas of every stream and bucket: 1 on one server, 3 on a cluster.
	Replicas int
	// Influx is where the metrics stage writes points; no URL: none.
	Influx metrics.InfluxConfig
	// RefuseExec is serve --allow-exec=false: no command source, exec or
	// kubernetes hook, or dump tool binDir runs (see stage.Deps.RefuseExec).
	// The zero value allows them, as serve does by default.
	RefuseExec bool
	// ScheduleTick is how often the scheduler looks for due slots.
	ScheduleTick time.Duration
	// Compensation tunes the hook service's retries of inverse ops; zero
	// fields keep the hook package's defaults.
	Compensation hook.Tuning
	Log          *slog.Logger
	// Ready, when set, is called once everything is listening.
	Ready func(natsURL, apiAddr string)
	// Wrap, when set, wraps every consumer's handler: cross-cutting
	// behaviour such as fault injection in tests or extra logging.
	Wrap func(consumer string, h bus.Handler) bus.Handler
}

// The values of Config.DataPlane (serve --data-plane).
const (
	DataPlaneAuto      = "auto"
	DataPlaneJetStream = "jetstream"
)

// ParseServices checks a --services list.
func ParseServices(list string) ([]string, error) {
	if list == "" || list == "all" {
		return Names, nil
	}
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(Names, s) {
			return nil, fmt.Errorf("--services: unknown service %q (known: %s)", s, strings.Join(Names, ", "))
		}
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool { return slices.Index(Names, out[i]) < slices.Index(Names, out[j]) })
	return out, nil
}

// Keys loads the identity or passphrase verify and restore use.
func Keys(identityFile, passphraseEnv string) (format.Keys, error) {
	var k format.Keys
	if identityFile != "" {
		ids, err := format.ParseIdentityFile(identityFile)
		if err != nil {
			return k, fmt.Errorf("identity file: %w", err)
		}
		k.Identities = ids
	}
	if passphraseEnv != "" {
		v, ok := os.LookupEnv(passphraseEnv)
		if !ok {
			return k, fmt.Errorf("passphrase: environment variable %s is not set", passphraseEnv)
		}
		secret.Register(v) // redacted like a plan's secrets
		k.Passphrase = v
	}
	return k, nil
}

// Run runs the configured services until ctx is cancelled.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	services := cfg.Services
	if len(services) == 0 {
		services = Names
	}
	keys, err := Keys(cfg.IdentityFile, cfg.PassphraseEnv)
	if err != nil {
		return err
	}
	if cfg.DataPlane != "" && cfg.DataPlane != DataPlaneAuto && cfg.DataPlane != DataPlaneJetStream {
		return fmt.Errorf("data plane %q: want %s or %s", cfg.DataPlane, DataPlaneAuto, DataPlaneJetStream)
	}
	// The API's settings are checked before anything starts, so that an
	// API that may not listen (plain HTTP beyond loopback) stops serve.
	apiCfg := cfg.API
	if cfg.Listen != "" && slices.Contains(services, "api") {
		if apiCfg, err = api.Prepare(cfg.API, cfg.Listen, cfg.DataDir, log); err != nil {
			return err
		}
	}

	url := cfg.NATS
	var embedded *bus.Server
	if url == "" {
		if cfg.DataDir == "" {
			return errors.New("--data: required for the embedded server")
		}
		port := cfg.EmbeddedPort
		if port == 0 {
			port = 4250
		}
		authDir := filepath.Join(cfg.DataDir, bus.AuthDirName)
		srv, err := bus.StartServer(bus.ServerConfig{Host: cfg.EmbeddedHost, Port: port, StoreDir: filepath.Join(cfg.DataDir, "nats"),
			AuthDir: authDir, TLSCert: cfg.EmbeddedTLSCert, TLSKey: cfg.EmbeddedTLSKey})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url, embedded = srv.URL(), srv
		log.Info("embedded nats server started", "url", url, "store", filepath.Join(cfg.DataDir, "nats"), "credentials", authDir)
	}

	b, err := bus.Connect(ctx, url, strings.Join(services, "+"), bus.Config{Replicas: cfg.Replicas, InProcess: embedded, Auth: cfg.NATSAuth,
		LocalData: cfg.DataPlane != DataPlaneJetStream}, log)
	if err != nil {
		return err
	}
	defer b.Close()

	reg := plugins.Default()
	// Each destination is opened once and shared by the stages (a
	// connection, a bucket check and a sweep on S3; a walk of the tree on
	// a filesystem), not once per event.
	defer reg.Share(plugins.DefaultShareFor, time.Now)() //nolint:errcheck // closing at exit: nothing to do about an error
	deps := &stage.Deps{
		Bus:      b,
		Runs:     runs.NewStore(b.Runs),
		Plans:    planstore.New(b.Plans, reg),
		Plugins:  reg,
		Owner:    runs.Remote{NC: b.NC},
		Log:      log,
		Instance: bus.SourceName("serve"),
		Keys:     keys,
		Data:     cfg.Data,
		Consumer: cfg.Consumer,
		Now:      time.Now,

		RefuseExec: cfg.RefuseExec,
	}

	g, gctx := errgroup.WithContext(ctx)
	var apiAddr string
	// The API serves /metrics: the metrics stage's figures when it runs in
	// this process, the Go runtime's otherwise.
	promHandler := promhttp.Handler()
	for _, name := range services {
		switch name {
		case "api":
			if cfg.Listen == "" {
				continue
			}
			a, err := api.New(deps, apiCfg)
			if err != nil {
				return err
			}
			a.Handle("GET /metrics", api.RoleRead, promHandler)
			ln, err := a.Listen(cfg.Listen)
			if err != nil {
				return err
			}
			apiAddr = ln.Addr().String()
			srv := api.HTTPServer(a.Handler(), log)
			g.Go(func() error {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					return fmt.Errorf("api: %w", err)
				}
				return nil
			})
			g.Go(func() error {
				<-gctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return srv.Shutdown(sctx)
			})
			log.Info("api listening", "addr", apiAddr)
		case "control":
			ctl := control.New(deps)
			g.Go(func() error { return ctl.Run(gctx) })
		case "schedule":
			sch := schedule.New(deps)
			if cfg.ScheduleTick > 0 {
				sch.Tick = cfg.ScheduleTick
			}
			g.Go(func() error { return sch.Run(gctx) })
		default:
			svc := stages[name](deps)
			if m, ok := svc.(*metrics.Service); ok {
				m.SetInflux(cfg.Influx)
				promHandler = m.Handler()
			}
			if h, ok := svc.(*hook.Service); ok {
				h.Tune(cfg.Compensation)
			}
			for _, spec := range svc.Consumers() {
				if cfg.Wrap != nil {
					spec.Handler = cfg.Wrap(spec.Name, spec.Handler)
				}
				g.Go(func() error { return b.Run(gctx, spec) })
			}
			if r, ok := svc.(runner); ok {
				g.Go(func() error { return r.Run(gctx) })
			}
		}
	}
	log.Info("backstream serving", "services", strings.Join(services, ","), "nats", url)
	if cfg.Ready != nil {
		cfg.Ready(url, apiAddr)
	}
	err = g.Wait()
	log.Info("backstream stopped")
	return err
}
