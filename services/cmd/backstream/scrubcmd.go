package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/services/stage"
)

const scrubHelp = `Asks for a scrub of PLAN's stored backups: every copy in every destination
(or only NAME) read back and checked again, a damaged or missing copy
repaired from a verified one where the plan's spec.scrub.repair allows.
--mode overrides spec.scrub.mode: ciphertext (sizes, digests, frame CRCs; no
key) or full (every frame opened, the plaintext digest; needs the key).

With --wait it follows the scrub and prints what each destination held.
Exit codes:
  0  clean, or every damaged copy repaired (or, without --wait, requested)
  1  a damaged copy is left, or the scrub could not run
  2  the command line is wrong
  3  incomplete: a destination could not be scrubbed, nothing found damaged
  130  stopped waiting (the scrub goes on)`

func newScrubCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "scrub PLAN [--mode full|ciphertext] [--destination NAME] [--reason TEXT] [--wait] [-o table|json|yaml]",
		Short:   "Read every stored copy back, check it, and repair damage from a verified copy",
		Long:    scrubHelp,
		Example: "  backstream scrub orders --wait\n  backstream scrub orders --mode ciphertext --destination s3-dr --wait",
		Args:    exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	mode := c.Flags().String("mode", "", "full or ciphertext (default: the plan's spec.scrub.mode)")
	destination := c.Flags().String("destination", "", "scrub only this destination")
	reason := c.Flags().String("reason", "", "free text recorded with the scrub")
	wait := c.Flags().Bool("wait", false, "follow the scrub; exit non-zero unless it is clean or repaired")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, planName, stdout := cmd.Context(), args[0], cmd.OutOrStdout()
		doc := sideResult{Plan: planName}
		if output.structured() {
			stdout = cmd.ErrOrStderr()
			defer func() { _ = output.write(cmd.OutOrStdout(), doc, nil) }()
		}
		switch *mode {
		case "", events.ScrubFull, events.ScrubCiphertext:
		default:
			return usageError("scrub: --mode %q: want full or ciphertext", *mode)
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
		id, err := stage.RequestScrub(ctx, b, store, planName, events.ScrubRequestedData{
			Trigger: events.TriggerCLI, RequestedBy: cliUser(), Reason: *reason, Mode: *mode, Destination: *destination})
		if err != nil {
			return err
		}
		doc.ScrubID = id
		fmt.Fprintf(stdout, "scrub %s of plan %s requested\n", id, planName)
		if !*wait {
			return nil
		}
		return followSide(ctx, b, planName, id, "scrub", startSeq, func(e events.Event, p events.Payload) (bool, error) {
			doc.set(e, p)
			switch d := p.(type) {
			case *events.ScrubCompletedData:
				return true, scrubSummary(stdout, e, id, d)
			case *events.ScrubFailedData:
				fmt.Fprintf(stdout, "%s  scrub FAILED: %s\n", stamp(e), d.Error)
				return true, &exitError{code: 1, err: fmt.Errorf("scrub %s could not run", id)}
			}
			return false, nil
		})
	}
	return c
}

// scrubSummary prints what a scrub found and returns the error its
// status calls for (nil for clean and repaired).
func scrubSummary(w io.Writer, e events.Event, id string, d *events.ScrubCompletedData) error {
	fmt.Fprintf(w, "%s  scrub %s (%s) in %s\n", stamp(e), d.Status, d.Mode, ms(d.DurationMs))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tCHECKED\tVERIFIED\tCORRUPT\tMISSING\tREPAIRED\tREAD\tERROR")
	for _, ds := range d.Destinations {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", ds.Destination, ds.Checked, ds.Verified, ds.Corrupt, ds.Missing, ds.Repaired, human(ds.Bytes), truncate(ds.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range d.Damaged {
		line := fmt.Sprintf("  %s copy of backup %s in %s", c.Problem, c.BackupID, c.Destination)
		if c.Error != "" {
			line += ": " + c.Error
		}
		switch {
		case c.RepairedFrom != "":
			line += "; repaired from " + c.RepairedFrom
		case c.RepairError != "":
			line += "; NOT repaired: " + c.RepairError
		default:
			line += "; not repaired"
		}
		fmt.Fprintln(w, line)
	}
	switch d.Status {
	case events.ScrubClean, events.ScrubRepaired:
		return nil
	case events.ScrubIncomplete:
		return &exitError{code: 3, err: fmt.Errorf("scrub %s incomplete: a destination could not be scrubbed", id)}
	}
	return &exitError{code: 1, err: fmt.Errorf("scrub %s found damage it did not repair", id)}
}
