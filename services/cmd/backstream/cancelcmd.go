package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/backstream/backstream/pkg/runs"
)

// cancelCmd cancels a running run: the owner of run state ends it
// Cancelled and announces it; the stages stop its dump and uploads and
// compensation undoes what its ops did. With --wait it waits for the
// compensation to end.
func cancelCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlag := addNATSFlags(fs, "NATS URL")
	reason := fs.String("reason", "", "free text recorded with the cancellation")
	wait := fs.Duration("wait", 0, "wait up to this long for compensation to end (e.g. 2m)")
	id, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("cancel: %v", err)
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	}
	if id == "" {
		return usageError("cancel: want a run ID")
	}
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
	who := "cli:" + os.Getenv("USER")
	r, _, err := runs.Remote{NC: b.NC}.Ask(ctx, "admin", runs.Request{Op: runs.OpCancel, Run: id, Owner: who, Error: *reason})
	if err != nil {
		return err
	}
	if r.Phase != runs.Cancelled {
		return fmt.Errorf("run %s ended %s before it could be cancelled", id, r.Phase)
	}
	fmt.Fprintf(stdout, "run %s of plan %s cancelled; its dump and uploads stop and compensation undoes its ops (follow: backstream run %s)\n", id, r.Plan, id)
	if *wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(*wait)
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
