package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/hook"
	"github.com/backstream/backstream/services/metrics"
)

func newServeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Run the services: all of them on an embedded NATS server, or some against a NATS cluster",
		Long: `Runs backstream's services in one process. Without --nats it starts an
embedded NATS server (JetStream on disk in --data/nats, 127.0.0.1:4250) and
every service, and the HTTP API on --listen; with --nats and --services it runs
the listed services against an existing NATS cluster (docs/operations.md).`,
		Example: `  backstream serve --data ./data --apply examples/demo.yaml --trigger demo
  backstream serve --nats nats://nats-1:4222 --services snapshot,hook --nats-creds snapshot.creds`,
		Args: exactArgs(),
	}
	fs := c.Flags()
	data := fs.String("data", "./data", "directory of the embedded NATS server's store")
	services := fs.String("services", "all", "comma-separated services to run: "+fmt.Sprint(app.Names))
	natsFlag := addNATSFlags(fs, "URL of an existing NATS cluster (default: start the embedded server)")
	embedded := fs.String("embedded", "127.0.0.1:4250", "address of the embedded NATS server (beyond loopback it serves TLS only)")
	embeddedCert := fs.String("embedded-tls-cert", "", "certificate FILE of the embedded NATS server (default beyond loopback: one it generates under --data/auth)")
	embeddedKey := fs.String("embedded-tls-key", "", "key FILE of --embedded-tls-cert")
	listen := fs.String("listen", "127.0.0.1:4251", "address of the HTTP API (empty: no API)")
	apply := fs.String("apply", "", "plan FILE or DIR to apply at start")
	trigger := fs.String("trigger", "", "plan to trigger once at start")
	identity := fs.String("identity", "", "age identity file: verify opens every frame and restore decrypts")
	passEnv := fs.String("passphrase-env", "", "environment variable holding the passphrase for verify and restore")
	ackWait := fs.Duration("ack-wait", 30*time.Second, "how long an unacknowledged event waits before redelivery")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	influxURL := fs.String("influx-url", "", "InfluxDB 1.8 URL the metrics stage writes points to (empty: none)")
	influxDB := fs.String("influx-db", "backstream", "InfluxDB database the points go to")
	influxTokenEnv := fs.String("influx-token-env", "", "environment variable holding the InfluxDB token (user:password when 1.8 has auth on)")
	replicas := fs.Int("replicas", 1, "replicas of every stream and bucket (3 on a NATS cluster)")
	apiCfg := apiFlags(fs)
	allowExec := fs.Bool("allow-exec", true, "run command sources, exec and kubernetes hooks and dump tools from a plan's binDir; false refuses such plans at trigger and at use (docs/operations.md)")
	pprofAddr := fs.String("pprof", "", "address of a net/http/pprof listener, separate from the API (empty: none)")
	dataPlane := fs.String("data-plane", app.DataPlaneAuto, "how chunks pass between snapshot, filter and upload: auto (in memory where both ends run in this process, else through NATS) or jetstream (always through NATS) (docs/dataplane.md)")
	compRetry := fs.Duration("compensation-retry-every", hook.DefaultRetryEvery, "how often an inverse op still owed after its retries is tried again, until its hook's compensationDeadline (docs/hooks.md)")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		list, err := app.ParseServices(*services)
		if err != nil {
			return usageError("serve: %v", err)
		}
		if *dataPlane != app.DataPlaneAuto && *dataPlane != app.DataPlaneJetStream {
			return usageError("serve: --data-plane: %q is neither %s nor %s", *dataPlane, app.DataPlaneAuto, app.DataPlaneJetStream)
		}
		host, portText, err := net.SplitHostPort(*embedded)
		if err != nil {
			return usageError("serve: --embedded: %v", err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil {
			return usageError("serve: --embedded: port %q: %v", portText, err)
		}
		var influxToken string
		if *influxTokenEnv != "" {
			v, ok := os.LookupEnv(*influxTokenEnv)
			if !ok {
				return usageError("serve: --influx-token-env: environment variable %s is not set", *influxTokenEnv)
			}
			secret.Register(v) // redacted like a plan's secrets
			influxToken = v
		}
		log := newLogger(stderr, *logLevel)
		if _, set := os.LookupEnv("GOGC"); !set {
			debug.SetGCPercent(serveGCPercent)
		}
		if *pprofAddr != "" {
			stop, err := servePprof(*pprofAddr, log)
			if err != nil {
				return err
			}
			defer stop()
			log.Info("pprof listening", "addr", *pprofAddr)
		}
		cfg := app.Config{
			DataDir:       *data,
			NATS:          *natsFlag.url,
			EmbeddedHost:  host,
			EmbeddedPort:  port,
			Services:      list,
			Listen:        *listen,
			API:           *apiCfg,
			IdentityFile:  *identity,
			PassphraseEnv: *passEnv,
			Consumer:      bus.ConsumerSpec{AckWait: *ackWait},
			Influx:        metrics.InfluxConfig{URL: *influxURL, Database: *influxDB, Token: influxToken},
			Replicas:      *replicas,
			DataPlane:     *dataPlane,
			RefuseExec:    !*allowExec,
			Log:           log,
		}
		if *compRetry <= 0 {
			return usageError("serve: --compensation-retry-every: must be > 0")
		}
		cfg.Compensation.RetryEvery = *compRetry
		if (*embeddedCert == "") != (*embeddedKey == "") {
			return usageError("serve: --embedded-tls-cert and --embedded-tls-key: give both or neither")
		}
		cfg.EmbeddedTLSCert, cfg.EmbeddedTLSKey = *embeddedCert, *embeddedKey
		if *natsFlag.url != "" {
			t, err := natsFlag.target()
			if err != nil {
				return err
			}
			cfg.NATSAuth = t.Auth
		}
		cfg.Ready = func(url, apiAddr string) {
			// The plans to apply and the run to follow go through NATS like
			// any CLI: as admin of the embedded server, or with serve's own
			// credentials on a cluster.
			to := natsTarget{URL: url, Auth: cfg.NATSAuth}
			if cfg.NATS == "" {
				a, err := bus.LocalAuth(*data, bus.RoleAdmin)
				if err != nil {
					log.Error("local credentials", "err", err)
					return
				}
				to.Auth = a
			}
			go func() {
				if *apply != "" {
					if err := applyPlans(ctx, to, *apply, &outputFlag{value: "table"}, stdout); err != nil {
						log.Error("apply plans at start", "err", err)
						return
					}
				}
				if *trigger != "" {
					announce := func(runID string) { fmt.Fprintf(stdout, "run %s of plan %s requested\n", runID, *trigger) }
					if _, err := follow(ctx, to, *trigger, "triggered by serve --trigger", true, announce, stdout); err != nil {
						log.Error("trigger at start", "plan", *trigger, "err", err)
					}
				}
			}()
		}
		return app.Run(ctx, cfg)
	}
	return c
}

// serveGCPercent is serve's GOGC unless the environment sets one. Since
// chunks pass between the stages in memory (docs/dataplane.md) serve
// allocates ~50 MB per GiB backed up, so letting the heap grow by half its
// live size instead of all of it costs no CPU that the bench can tell
// from noise, and takes ~10 MiB off the peak RSS: a 16 GiB backup with a
// passphrase peaked at 139 MiB with 100 and at 129 with 50, the same as
// at 1 GiB (docs/bench.md, "Issue #16: where the targets stand").
const serveGCPercent = 50

// servePprof serves net/http/pprof on addr, on a mux of its own so the
// profiles never share the API's listener. stop closes it.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof stopped", "err", err)
		}
	}()
	return func() { _ = srv.Close(); <-done }, nil
}
