package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/services/stage"
)

const drillHelp = `Asks for a fire drill of PLAN (docs/drills.md): the restore service restores
the backup (default: the newest verified in any destination) into a scratch
target made for the drill, never into the plan's source, runs the plan's
spec.drill.check on it and removes it again.

With --wait it follows the drill until it ends. Exit codes:
  0  the drill succeeded (or, without --wait, was requested)
  1  the drill failed (the stage and the reason are printed)
  2  the command line is wrong
  130  stopped waiting (the drill goes on)`

func newDrillCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "drill PLAN [--backup ID] [--reason TEXT] [--wait] [-o table|json|yaml]",
		Short:   "Run a fire drill: restore a backup into a scratch target, check it, remove it",
		Long:    drillHelp,
		Example: "  backstream drill orders --wait\n  backstream drill orders --backup 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --wait",
		Args:    exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	backupID := c.Flags().String("backup", "", "the backup to drill (default: latest verified)")
	reason := c.Flags().String("reason", "", "free text recorded with the drill")
	wait := c.Flags().Bool("wait", false, "follow the drill; exit 1 unless it succeeds")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, planName, stdout := cmd.Context(), args[0], cmd.OutOrStdout()
		doc := sideResult{Plan: planName}
		if output.structured() {
			// The document goes to stdout; what is said for a person to stderr.
			stdout = cmd.ErrOrStderr()
			defer func() { _ = output.write(cmd.OutOrStdout(), doc, nil) }()
		}
		if *backupID == "latest" {
			*backupID = ""
		}
		b, store, err := connect(ctx, natsFlag)
		if err != nil {
			return err
		}
		defer b.Close()
		var startSeq uint64
		if *wait {
			if startSeq, err = nextEventSeq(ctx, b); err != nil {
				return err
			}
		}
		id, err := stage.RequestDrill(ctx, b, store, planName, events.DrillRequestedData{
			Trigger: events.TriggerCLI, RequestedBy: cliUser(), Reason: *reason, BackupID: *backupID})
		if err != nil {
			return err
		}
		doc.DrillID = id
		fmt.Fprintf(stdout, "drill %s of plan %s requested\n", id, planName)
		if !*wait {
			return nil
		}
		return followSide(ctx, b, planName, id, "drill", startSeq, func(e events.Event, p events.Payload) (bool, error) {
			doc.set(e, p)
			switch d := p.(type) {
			case *events.DrillSucceededData:
				fmt.Fprintf(stdout, "%s  drill succeeded: backup %s from %s restored into %s (%s, %s), check %d rows (%s), %s in all; the scratch target is removed\n",
					stamp(e), d.BackupID, d.Destination, d.Target, human(d.Bytes), ms(d.RestoreMs), d.Rows, ms(d.CheckMs), ms(d.DurationMs))
				return true, nil
			case *events.DrillFailedData:
				fmt.Fprintf(stdout, "%s  drill FAILED in %s after %s: %s\n", stamp(e), d.Stage, ms(d.DurationMs), d.Error)
				if d.BackupID != "" {
					fmt.Fprintf(stdout, "  backup %s from %s\n", d.BackupID, d.Destination)
				}
				if d.Stage == events.DrillStageCleanup && d.Target != "" {
					fmt.Fprintf(stdout, "  the scratch target %s may still exist: remove it by hand\n", d.Target)
				}
				return true, &exitError{code: 1, err: fmt.Errorf("drill %s failed in %s", id, d.Stage)}
			}
			return false, nil
		})
	}
	return c
}

// sideResult is what drill and scrub print with -o json|yaml: the id of
// what was requested and, with --wait, its result event's type and data.
type sideResult struct {
	Plan    string         `json:"plan"`
	DrillID string         `json:"drillId,omitempty"`
	ScrubID string         `json:"scrubId,omitempty"`
	Type    string         `json:"type,omitempty"`
	Result  events.Payload `json:"result,omitempty"`
}

func (r *sideResult) set(e events.Event, p events.Payload) {
	switch p.(type) {
	case *events.DrillSucceededData, *events.DrillFailedData, *events.ScrubCompletedData, *events.ScrubFailedData:
		r.Type, r.Result = e.Type(), p
	}
}

func ms(n int64) string { return (time.Duration(n) * time.Millisecond).String() }

// followSide follows the events of scrub or drill id of planName from
// startSeq in the events stream, handing each to result until it says
// the scrub or drill is done. Stopping to follow (ctx) is exit code 130.
func followSide(ctx context.Context, b *bus.Bus, planName, id, what string, startSeq uint64, result func(events.Event, events.Payload) (bool, error)) error {
	c, err := b.JS.OrderedConsumer(ctx, bus.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectRoot + ".*.*." + planName},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    startSeq,
	})
	if err != nil {
		return err
	}
	iter, err := c.Messages()
	if err != nil {
		return err
	}
	defer iter.Stop()
	go func() { <-ctx.Done(); iter.Stop() }()
	for {
		msg, err := iter.Next()
		if err != nil {
			if ctx.Err() != nil {
				return &exitError{code: 130, err: fmt.Errorf("stopped following; %s %s goes on (its result is the %s.* event with runid %s)", what, id, what, id)}
			}
			return err
		}
		e, err := bus.Decode(msg.Data())
		if err != nil || events.RunID(e) != id {
			continue
		}
		p, err := events.Decode(e)
		if err != nil {
			continue
		}
		if done, err := result(e, p); done {
			return err
		}
	}
}
