// Command backstream is the one binary of backstream: `serve` runs every
// service in one process on an embedded NATS server, or a subset of them
// against an existing NATS cluster; the other commands manage plans, trigger
// and follow runs, and restore backups (also with no NATS at all).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"syscall"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/supervise"
)

func main() {
	// Returns at once unless this process is an op's supervisor (hidden
	// command __supervise, started by the hook service; pkg/supervise):
	// it runs before the CLI so the supervisor never parses flags.
	supervise.Main()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if err.Error() != "" {
			fmt.Fprintln(os.Stderr, "backstream:", secret.Redact(err.Error()))
		}
		os.Exit(code)
	}
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	// Redacted as formatted lines, not as attributes: a secret is found in
	// any attribute, group, error text or value logged before it was
	// resolved, in the quoted form the handler writes it in.
	return slog.New(slog.NewTextHandler(secret.LineWriter{W: w}, &slog.HandlerOptions{Level: l}))
}

// natsURL is --nats, else $BACKSTREAM_NATS, else the embedded default.
func natsURL(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("BACKSTREAM_NATS"); v != "" {
		return v
	}
	return "nats://127.0.0.1:4250"
}

// cliUser names who runs this command, for the records of what it asks
// (requestedBy, a replay's or a cancel's owner): $USER, else the
// account's name (cron jobs and containers often have no $USER), else "".
func cliUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
