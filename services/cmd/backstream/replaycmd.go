package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/runs"
)

// replayCmd starts the next attempt of a failed or cancelled run at the
// stage that failed (or --stage), reusing what succeeded; --from-start
// runs the whole workflow again as a new attempt of the same run.
func newReplayCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "replay ID [--stage STAGE | --destination NAME | --from-start] [--wait] [-o table|json|yaml]",
		Short: "Start the next attempt of a failed or cancelled run, reusing what succeeded",
		Long: `Starts the next attempt of a failed or cancelled run at the stage that failed
(or --stage), reusing what succeeded; --destination copies the backup into a
destination whose upload failed from one that holds it; --from-start runs the
whole workflow again as a new attempt of the same run (docs/operations.md).
--stage compensation makes the inverse ops the run owes due now.`,
		Example: `  backstream replay 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --wait
  backstream replay 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --destination s3-dr --wait
  backstream replay 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --from-start`,
		Args: exactArgs("ID"),
	}
	fs := c.Flags()
	natsFlag := addNATSFlags(fs, "NATS URL")
	stageFlag := fs.String("stage", "", "where the attempt starts: verify, a hook step (hook:db/unlock), retention (of a succeeded run) or compensation (pay owed inverse ops now); default: where the run failed")
	destination := fs.String("destination", "", "copy the backup into this destination, whose upload failed, from another that holds it (no new dump)")
	fromStart := fs.Bool("from-start", false, "run the whole workflow again (the dump too) as a new attempt of the same run")
	wait := fs.Bool("wait", false, "follow the new attempt until it ends; exit non-zero unless it succeeds")
	output := addOutputFlag(fs, "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return withRunDoc(cmd, natsFlag, output, args[0], func(out io.Writer) error {
			return replay(cmd.Context(), natsFlag, args[0], *stageFlag, *destination, *fromStart, *wait, out)
		})
	}
	return c
}

func replay(ctx context.Context, natsFlag *natsFlags, id, stageName, destination string, fromStart, wait bool, stdout io.Writer) error {
	if destination != "" {
		if stageName != "" || fromStart {
			return usageError("replay: --destination excludes --stage and --from-start")
		}
		stageName = "upload:" + destination
	}
	if fromStart {
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
	if err := awaitCompensation(ctx, runs.NewStore(b.Runs), id, compensationWait, stdout); err != nil {
		return err
	}
	var startSeq uint64
	if wait {
		if startSeq, err = nextEventSeq(ctx, b); err != nil {
			return err
		}
	}
	r, o, err := runs.Remote{NC: b.NC}.Ask(ctx, "admin", runs.Request{Op: runs.OpReplay, Run: id, Step: stageName, Owner: "cli:" + cliUser()})
	if err != nil {
		return err
	}
	reused := "nothing"
	if len(o.Reused) > 0 {
		reused = strings.Join(o.Reused, ", ")
	}
	fmt.Fprintf(stdout, "run %s of plan %s: attempt %d starts at %s, reusing %s\n", id, r.Plan, r.CurrentAttempt(), o.Stage, reused)
	if !wait {
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

// compensationWait bounds how long replay waits for compensation to go
// over a failed attempt's hook ops before it asks anyway (and the owner
// refuses, saying so).
const compensationWait = time.Minute

// awaitCompensation waits, up to limit, until compensation has gone over
// the hook ops of run id's failed attempt: the owner of run state refuses
// a replay before then (runs.Run.AwaitsCompensation), and an operator
// replaying a run that just failed should not have to time it.
func awaitCompensation(ctx context.Context, store *runs.Store, id string, limit time.Duration, stdout io.Writer) error {
	deadline := time.Now().Add(limit)
	said := false
	for {
		r, err := store.Get(ctx, id)
		if err != nil || !r.AwaitsCompensation() || time.Now().After(deadline) {
			return nil // the owner answers (a missing run, a refusal)
		}
		if !said {
			fmt.Fprintf(stdout, "run %s: waiting for compensation to go over the hook ops attempt %d ran\n", id, r.CurrentAttempt())
			said = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
