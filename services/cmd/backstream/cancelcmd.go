package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/runs"
)

// newCancelCmd cancels a running run: the owner of run state ends it
// Cancelled and announces it; the stages stop its dump and uploads and
// compensation undoes what its ops did. With --wait it waits for the
// compensation to end.
func newCancelCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cancel ID [--reason TEXT] [--wait DURATION] [-o table|json|yaml]",
		Short: "Cancel a running run; compensation undoes what its ops did",
		Long: `Cancels a running run: the control service ends it Cancelled, the stages stop
its dump and uploads, and compensation undoes what its hooks' ops did. With
--wait it waits up to that long for the compensation to end (exit 1 if it ends
owing an inverse op or does not end in time).`,
		Example: "  backstream cancel 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --reason \"wrong window\" --wait 2m",
		Args:    exactArgs("ID"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	reason := c.Flags().String("reason", "", "free text recorded with the cancellation")
	wait := c.Flags().Duration("wait", 0, "wait up to this long for compensation to end (e.g. 2m)")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return withRunDoc(cmd, natsFlag, output, args[0], func(out io.Writer) error {
			return cancelRun(cmd.Context(), natsFlag, args[0], *reason, *wait, out)
		})
	}
	return c
}

func cancelRun(ctx context.Context, natsFlag *natsFlags, id, reason string, wait time.Duration, stdout io.Writer) error {
	b, _, err := connect(ctx, natsFlag)
	if err != nil {
		return err
	}
	defer b.Close()
	store := runs.NewStore(b.Runs)
	before, err := store.Get(ctx, id)
	if err != nil {
		return err
	}
	if before.Phase.Done() {
		return fmt.Errorf("run %s is %s already: only a running run can be cancelled", id, before.Phase)
	}
	who := "cli:" + cliUser()
	r, _, err := runs.Remote{NC: b.NC}.Ask(ctx, "admin", runs.Request{Op: runs.OpCancel, Run: id, Owner: who, Error: reason})
	if err != nil {
		return err
	}
	if r.Phase != runs.Cancelled {
		return fmt.Errorf("run %s ended %s before it could be cancelled", id, r.Phase)
	}
	fmt.Fprintf(stdout, "run %s of plan %s cancelled; its dump and uploads stop and compensation undoes its ops (follow: backstream run %s)\n", id, r.Plan, id)
	if wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	for {
		r, err = store.Get(ctx, id)
		if err != nil {
			return err
		}
		if r.CompensationDone {
			if owed := r.Owed(); len(owed) > 0 {
				return fmt.Errorf("run %s: compensation ended owing %d inverse op(s): see backstream run %s", id, len(owed), id)
			}
			fmt.Fprintf(stdout, "run %s: compensation completed\n", id)
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("cancel: compensation did not end within --wait; follow with backstream run " + id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// withRunDoc runs do, which acts on run id and tells a person what it did
// on the writer it gets. With -o json|yaml that writer is stderr, and the
// run's record as it stands afterwards, {"runId", "plan", "run"}, is the
// one document on stdout (also after a failure, whose exit code do's error
// keeps).
func withRunDoc(cmd *cobra.Command, natsFlag *natsFlags, output *outputFlag, id string, do func(io.Writer) error) error {
	if !output.structured() {
		return do(cmd.OutOrStdout())
	}
	err := do(cmd.ErrOrStderr())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 10*time.Second)
	defer cancel()
	b, _, cerr := connect(ctx, natsFlag)
	if cerr != nil {
		return errors.Join(err, cerr)
	}
	defer b.Close()
	doc := triggered{RunID: id}
	if r, rerr := runs.NewStore(b.Runs).Get(ctx, id); rerr == nil {
		doc.Run, doc.Plan = r, r.Plan
	}
	return errors.Join(err, output.write(cmd.OutOrStdout(), doc, nil))
}
