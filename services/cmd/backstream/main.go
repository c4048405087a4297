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
	"syscall"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/supervise"
)

const usage = `backstream — event-driven backup and restore on NATS JetStream

usage:
  backstream serve [--data DIR] [--services LIST] [--nats URL] [--listen ADDR] [--apply FILE|DIR] [--trigger PLAN]
  backstream setup [--replicas N]
  backstream plan apply -f FILE|DIR | plan list | plan get NAME | plan delete NAME
  backstream trigger PLAN [--wait] [--reason TEXT]
  backstream runs [--plan PLAN] [-o table|json]
  backstream run ID [-o table|json] [--compensate] [--follow]
  backstream cancel ID [--reason TEXT] [--wait DURATION]
  backstream replay ID [--stage verify|hook:H/OP|retention|compensation | --destination NAME | --from-start] [--wait]
  backstream drill PLAN [--backup ID] [--reason TEXT] [--wait]
  backstream scrub PLAN [--mode full|ciphertext] [--destination NAME] [--reason TEXT] [--wait]
  backstream restore BACKUP --to FILE|- (--plan-file FILE [--destination NAME] | storage flags) [--identity FILE | --passphrase-env VAR] [--allow-failed] [--fallback-older]
  backstream backups (--plan-file FILE --destination NAME | storage flags) [--plan PLAN] [--all]
  backstream schedule PLAN [--count N]
  backstream retention simulate --policy FILE --backups FILE
  backstream retention PLAN --dry-run [--destination NAME]
  backstream retention export-lifecycle PLAN [--format json|xml] [--destination NAME]
  backstream api-token create --name NAME --role read|trigger|restore|admin [--file FILE]
  backstream dlq list [-o table|json] [--consumer C] [--plan P] | dlq show SEQ [-o text|json]
  backstream dlq replay SEQ... | dlq purge SEQ...

Every command that talks to NATS uses --nats, else $BACKSTREAM_NATS, else nats://127.0.0.1:4250,
and authenticates with --nats-nkey FILE, --nats-creds FILE or --nats-user NAME (password from
$BACKSTREAM_NATS_PASSWORD), with --nats-tls-ca/-cert/-key for TLS; without them it uses the admin
key of a local serve under $BACKSTREAM_DATA or ./data (docs/security.md).
`

// exitError carries the exit code a command wants.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is a mistake in the command line: exit code 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func main() {
	// Returns at once unless this process is an op's supervisor (hidden
	// command __supervise, started by the hook service; pkg/supervise).
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

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError("no command")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCmd(ctx, rest, stdout, stderr)
	case "setup":
		return setupCmd(ctx, rest, stdout, stderr)
	case "plan":
		return planCmd(ctx, rest, stdout, stderr)
	case "trigger":
		return triggerCmd(ctx, rest, stdout, stderr)
	case "runs":
		return runsCmd(ctx, rest, stdout)
	case "run":
		return runCmd(ctx, rest, stdout)
	case "cancel":
		return cancelCmd(ctx, rest, stdout, stderr)
	case "replay":
		return replayCmd(ctx, rest, stdout, stderr)
	case "drill":
		return drillCmd(ctx, rest, stdout, stderr)
	case "scrub":
		return scrubCmd(ctx, rest, stdout, stderr)
	case "restore":
		return restoreCmd(ctx, rest, stdout, stderr)
	case "backups":
		return backupsCmd(ctx, rest, stdout)
	case "schedule":
		return scheduleCmd(ctx, rest, stdout)
	case "api-token":
		return apiTokenCmd(rest, stdout, stderr)
	case "retention":
		return retentionCmd(ctx, rest, stdout)
	case "dlq":
		return dlqCmd(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError("unknown command %q", cmd)
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
