package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/keyring"
)

// newKeyringCmd shows the plan keyrings (docs/security.md#plan-keyrings):
// which keyring each passphrase plan's new backups are wrapped for, and
// since when. It never prints anything that opens one.
func newKeyringCmd() *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List each passphrase plan's current keyring",
		Long: `Lists the keyring each plan with a passphrase wraps its new backups for: its
recipient (the key reference in those backups' headers and manifests), the
scrypt work factor that opening it with the passphrase costs, and when it
was made. Changing a plan's passphrase makes a new one on its next backup;
backups made before keep theirs and need the passphrase they were made with.
Nothing listed opens a backup. Needs the admin (keyrings are the filter's).`,
		Example: "  backstream keyring list\n  backstream keyring list -o json",
		Args:    exactArgs(),
	}
	listNATS := addNATSFlags(list.Flags(), "NATS URL")
	out := addOutputFlag(list.Flags(), "table", "table", "json", "yaml")
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		b, _, err := connect(cmd.Context(), listNATS)
		if err != nil {
			return err
		}
		defer b.Close()
		return b.Guard(cmd.Context(), func(ctx context.Context) error {
			return keyringList(ctx, keyring.New(b.Keyrings, nil), out, cmd.OutOrStdout())
		})
	}
	return groupCmd(&cobra.Command{
		Use:     "keyring",
		Short:   "Show the plan keyrings that passphrase plans wrap their backups for",
		Example: "  backstream keyring list",
	}, list)
}

func keyringList(ctx context.Context, s *keyring.Store, output *outputFlag, w io.Writer) error {
	list, err := s.List(ctx)
	if err != nil {
		return err
	}
	if output.structured() {
		return output.write(w, list, nil)
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no keyrings (a plan with a passphrase gets one on its first backup)")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLAN\tRECIPIENT\tWORK FACTOR\tCREATED\tPROBLEM")
	for _, e := range list {
		created := "-"
		if !e.Created.IsZero() {
			created = e.Created.Local().Format(time.RFC3339)
		}
		// A stored value is whatever the bucket holds: cleaned for the
		// terminal like a dead letter.
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", cell(e.Plan, 63), cell(e.Recipient, 80), e.WorkFactor, created, cell(e.Problem, 80))
	}
	return tw.Flush()
}
