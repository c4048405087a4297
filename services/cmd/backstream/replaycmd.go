package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/runs"
)

// replayCmd starts the next attempt of a failed or cancelled run at the
// stage that failed (or --stage), reusing what succeeded; --from-start
// runs the whole workflow again as a new attempt of the same run.
func replayCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlag := addNATSFlags(fs, "NATS URL")
	stageFlag := fs.String("stage", "", "where the attempt starts: verify, a hook step (hook:db/unlock), retention (of a succeeded run) or compensation (pay owed inverse ops now); default: where the run failed")
	destination := fs.String("destination", "", "copy the backup into this destination, whose upload failed, from another that holds it (no new dump)")
	fromStart := fs.Bool("from-start", false, "run the whole workflow again (the dump too) as a new attempt of the same run")
	wait := fs.Bool("wait", false, "follow the new attempt until it ends; exit non-zero unless it succeeds")
	id, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("replay: %v", err)
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	}
	if id == "" {
		return usageError("replay: want a run ID")
	}
	stageName := *stageFlag
	if *destination != "" {
		if stageName != "" || *fromStart {
			return usageError("replay: --destination excludes --stage and --from-start")
		}
		stageName = "upload:" + *destination
	}
	if *fromStart {
		if stageName != "" {
			return usageError("replay: --from-start and --stage exclude each other")
		}
		stageName = runs.ReplayStart
	}
	b, _, err := connect(ctx, natsFlag)
	if err != nil {
		return err
	}
	defer b.Close()
	if stageName == "compensation" {
		if _, err := retryOwedNow(ctx, b, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "run %s: its owed inverse ops are due now; the hook service's owed-inverse loop runs them (follow: backstream run %s)\n", id, id)
		return nil
	}
	var startSeq uint64
	if *wait {
		if startSeq, err = nextEventSeq(ctx, b); err != nil {
			return err
		}
	}
	r, o, err := runs.Remote{NC: b.NC}.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: id, Step: stageName, Owner: "cli:" + os.Getenv("USER")})
	if err != nil {
		return err
	}
	reused := "nothing"
	if len(o.Reused) > 0 {
		reused = strings.Join(o.Reused, ", ")
	}
	fmt.Fprintf(stdout, "run %s of plan %s: attempt %d starts at %s, reusing %s\n", id, r.Plan, r.CurrentAttempt(), o.Stage, reused)
	if !*wait {
		return nil
	}
	if o.Stage == runs.ReplayRetention {
		fmt.Fprintf(stdout, "retention runs on its own; see backstream runs and the retention events\n")
		return nil
	}
	if r.Phase == runs.Succeeded {
		return waitRepair(ctx, runs.NewStore(b.Runs), r.ID, strings.TrimPrefix(o.Stage, "upload:"), stdout)
	}
	return followRun(ctx, b, r.Plan, r.ID, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   startSeq,
	}, stdout)
}

// waitRepair waits until the succeeded, degraded run id holds its copy in
// dest again (verified: the run is no longer degraded there), or the copy
// failed.
func waitRepair(ctx context.Context, store *runs.Store, id, dest string, out io.Writer) error {
	for {
		r, err := store.Get(ctx, id)
		if err != nil {
			return err
		}
		if !slices.Contains(r.Degraded, dest) {
			fmt.Fprintf(out, "run %s: the copy in %s is whole again\n", id, dest)
			return nil
		}
		for _, name := range []string{"upload:" + dest, "verify:" + dest} {
			if st := r.FindStep(name); st != nil && st.Phase == runs.Failed {
				return &exitError{code: 1, err: fmt.Errorf("run %s: %s failed again: %s", id, name, st.Error)}
			}
		}
		select {
		case <-ctx.Done():
			return &exitError{code: 130, err: fmt.Errorf("stopped waiting; the copy into %s goes on: see backstream run %s", dest, id)}
		case <-time.After(250 * time.Millisecond):
		}
	}
}
