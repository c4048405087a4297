package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/backstream/backstream/pkg/bus"
)

// setupCmd creates or updates backstream's streams and buckets and exits.
// On a NATS cluster with one user per role (deploy/nats-server.conf) only
// the admin may do that; the services, connecting with their own roles,
// then bind to what it set up.
func setupCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlag := addNATSFlags(fs, "NATS URL")
	replicas := fs.Int("replicas", 0, "replicas of every stream and bucket (3 on a NATS cluster; default: keep what exists, 1 for new ones)")
	if err := fs.Parse(args); err != nil {
		return usageError("setup: %v", err)
	}
	if fs.NArg() > 0 {
		return usageError("setup: unexpected argument %q", fs.Arg(0))
	}
	if *replicas < 0 {
		return usageError("setup: --replicas %d: must be >= 0", *replicas)
	}
	t, err := natsFlag.target()
	if err != nil {
		return err
	}
	b, err := bus.Connect(ctx, t.URL, "setup", bus.Config{Auth: t.Auth, Replicas: *replicas}, newLogger(os.Stderr, "error"))
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	defer b.Close()
	for _, name := range []string{bus.EventsStream, bus.DeadLetterStream, bus.DataStream,
		"KV_" + bus.PlansBucket, "KV_" + bus.RunsBucket, "KV_" + bus.LeasesBucket} {
		s, err := b.JS.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("setup: stream %s: %w", name, err)
		}
		fmt.Fprintf(stdout, "%s: ready, %d replica(s)\n", name, s.CachedInfo().Config.Replicas)
	}
	return nil
}
