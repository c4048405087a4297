package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/bus"
)

// newSetupCmd creates or updates backstream's streams and buckets and
// exits. On a NATS cluster with one user per role
// (deploy/nats-server.conf) only the admin may do that; the services,
// connecting with their own roles, then bind to what it set up.
func newSetupCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "setup [--replicas N]",
		Short: "Create or update backstream's streams and buckets (admin)",
		Long: `Creates or updates backstream's streams and buckets and exits. On a NATS
cluster with one user per role (deploy/nats-server.conf) only the admin may do
that; the services, connecting with their own roles, bind to what it set up.`,
		Example: "  backstream setup --replicas 3 --nats nats://nats-1:4222 --nats-user admin",
		Args:    exactArgs(),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	replicas := c.Flags().Int("replicas", 0, "replicas of every stream and bucket (3 on a NATS cluster; default: keep what exists, 1 for new ones)")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if *replicas < 0 {
			return usageError("setup: --replicas %d: must be >= 0", *replicas)
		}
		t, err := natsFlag.target()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		b, err := bus.Connect(ctx, t.URL, "setup", bus.Config{Auth: t.Auth, Replicas: *replicas}, newLogger(os.Stderr, "error"))
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		defer b.Close()
		type ready struct {
			Stream   string `json:"stream"`
			Replicas int    `json:"replicas"`
		}
		var out []ready
		for _, name := range []string{bus.EventsStream, bus.DeadLetterStream, bus.DataStream,
			"KV_" + bus.PlansBucket, "KV_" + bus.RunsBucket, "KV_" + bus.LeasesBucket, "KV_" + bus.KeyringsBucket} {
			s, err := b.JS.Stream(ctx, name)
			if err != nil {
				return fmt.Errorf("setup: stream %s: %w", name, err)
			}
			out = append(out, ready{name, s.CachedInfo().Config.Replicas})
		}
		return output.write(cmd.OutOrStdout(), out, func(w io.Writer) error {
			for _, r := range out {
				fmt.Fprintf(w, "%s: ready, %d replica(s)\n", r.Stream, r.Replicas)
			}
			return nil
		})
	}
	return c
}
