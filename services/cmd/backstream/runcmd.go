package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"gopkg.in/yaml.v3"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// writeYAMLValue writes v as YAML with the field names of its JSON form.
func writeYAMLValue(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeYAML(w, data)
}

func writeYAML(w io.Writer, jsonData []byte) error {
	var v any
	if err := json.Unmarshal(jsonData, &v); err != nil {
		return err
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	return enc.Encode(v)
}

func newTriggerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "trigger PLAN [--wait] [--reason TEXT]",
		Short: "Start a backup of a plan now",
		Long: `Asks for a backup of PLAN now. It prints the run's id on a line of its own,
then what it did; with --wait it follows the run step by step, with progress,
until it succeeds (exit 0) or fails (exit 1, after its compensation). Ctrl-C
stops following, not the run (exit 130).

With -o json or -o yaml it prints one document: {"runId", "plan"}, and with
--wait also "run", the run's record when it ended; the steps then go to
stderr.`,
		Example: `  backstream trigger demo --wait
  id=$(backstream trigger demo | head -1)
  backstream trigger demo --wait -o json | jq .run.phase`,
		Args: exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	wait := c.Flags().Bool("wait", false, "follow the run and exit non-zero if it fails")
	reason := c.Flags().String("reason", "", "free text recorded with the run")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		stdout, steps := cmd.OutOrStdout(), cmd.OutOrStdout()
		if output.structured() {
			steps = cmd.ErrOrStderr()
		}
		announce := func(runID string) {
			if !output.structured() {
				// The id alone first: id=$(backstream trigger p | head -1).
				fmt.Fprintln(stdout, runID)
			}
			fmt.Fprintf(steps, "run %s of plan %s requested\n", runID, args[0])
		}
		t, err := follow(cmd.Context(), natsFlag, args[0], *reason, *wait, announce, steps)
		if t.RunID == "" || !output.structured() {
			return err
		}
		if werr := output.write(stdout, t, nil); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	return c
}

// triggered is what trigger -o json prints: the run requested and, with
// --wait, its record when it ended.
type triggered struct {
	RunID string    `json:"runId"`
	Plan  string    `json:"plan"`
	Run   *runs.Run `json:"run,omitempty"`
}

// follow triggers a backup of planName, calls announce with its run id
// and, with wait, prints the run's steps to out as they happen until it
// succeeds (nil) or fails (exit code 1); the run's record is then in the
// result.
func follow(ctx context.Context, to targeter, planName, reason string, wait bool, announce func(runID string), out io.Writer) (triggered, error) {
	b, store, err := connect(ctx, to)
	if err != nil {
		return triggered{}, err
	}
	defer b.Close()
	var startSeq uint64
	if wait {
		if startSeq, err = nextEventSeq(ctx, b); err != nil {
			return triggered{}, err
		}
	}
	runID, err := stage.RequestBackup(ctx, b, store, planName, events.TriggerCLI, cliUser(), reason)
	if err != nil {
		return triggered{}, err
	}
	t := triggered{RunID: runID, Plan: planName}
	announce(runID)
	if !wait {
		return t, nil
	}
	err = followRun(ctx, b, planName, runID, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   startSeq,
	}, out)
	// Read also after Ctrl-C (exit code 130): the record as it stands.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if r, rerr := runs.NewStore(b.Runs).Get(rctx, runID); rerr == nil {
		t.Run = r
	}
	return t, err
}

// nextEventSeq is the sequence the events stream gives its next event:
// where a follower of what a request is about to cause starts.
func nextEventSeq(ctx context.Context, b *bus.Bus) (uint64, error) {
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq + 1, nil
}

// followRun prints run runID's events as they happen, from where from
// starts in the events stream, until the run succeeds (nil), fails or is
// cancelled (exit code 1, after its compensation), or ctx ends: stopping
// to follow does not stop the run, and the error says how to follow it
// again or cancel it (exit code 130).
func followRun(ctx context.Context, b *bus.Bus, planName, runID string, from jetstream.OrderedConsumerConfig, out io.Writer) error {
	from.FilterSubjects = []string{events.SubjectRoot + ".*.*." + planName}
	c, err := b.JS.OrderedConsumer(ctx, bus.EventsStream, from)
	if err != nil {
		return err
	}
	iter, err := c.Messages()
	if err != nil {
		return err
	}
	defer iter.Stop()
	go func() { <-ctx.Done(); iter.Stop() }()
	p := newProgress(out)
	begin := time.Now()
	var failed *events.BackupFailedData
	for {
		msg, err := iter.Next()
		if err != nil {
			if ctx.Err() != nil {
				return &exitError{code: 130, err: fmt.Errorf("stopped following; run %s goes on: follow it again with `backstream run %s --follow`, cancel it with `backstream cancel %s`", runID, runID, runID)}
			}
			return err
		}
		e, err := bus.Decode(msg.Data())
		if err != nil || events.RunID(e) != runID {
			continue
		}
		pl, err := events.Decode(e)
		if err != nil {
			continue
		}
		line := describe(e, pl)
		switch d := pl.(type) {
		case *events.ProgressData:
			// The step's own rate: ElapsedMs counts from when that step
			// (and destination) started, not from the trigger.
			step := strings.TrimSuffix(strings.TrimPrefix(e.Type(), events.TypePrefix), ".progressed")
			if d.Destination != "" {
				step += " " + d.Destination
			}
			p.update(step, join(human(d.Bytes), rate(d.Bytes, time.Duration(d.ElapsedMs)*time.Millisecond)))
			continue
		case *events.BackupSucceededData:
			took := time.Duration(d.DurationMs) * time.Millisecond
			if took <= 0 {
				took = time.Since(begin)
			}
			p.line(fmt.Sprintf("%s  backup succeeded: %s in, %s stored, sha256 %s, in %s", stamp(e), human(d.Bytes), human(d.StoredBytes), d.PlaintextSHA256, took.Round(time.Millisecond)))
			return nil
		case *events.BackupFailedData:
			failed = d
			p.line(line)
			if !hasCompensation(ctx, b, runID) {
				return &exitError{code: 1, err: fmt.Errorf("run %s failed in %s: %s", runID, d.Stage, d.Reason)}
			}
			continue
		case *events.BackupCancelledData:
			failed = &events.BackupFailedData{Stage: "cancel", Reason: "cancelled by " + d.By}
			p.line(fmt.Sprintf("%s  run CANCELLED by %s %s", stamp(e), d.By, d.Reason))
			if !hasCompensation(ctx, b, runID) {
				return &exitError{code: 1, err: fmt.Errorf("run %s cancelled by %s", runID, d.By)}
			}
			continue
		case *events.CompensationCompletedData:
			p.line(line)
			if failed == nil {
				continue // an owed inverse paid after a success
			}
			return &exitError{code: 1, err: fmt.Errorf("run %s failed in %s: %s", runID, failed.Stage, failed.Reason)}
		case *events.CompensationFailedData:
			p.line(line)
			// The first pass is recorded done before its events go out:
			// when it owes an inverse op, no compensation.completed comes
			// until a later retry pays it.
			if r, err := runs.NewStore(b.Runs).Get(ctx, runID); err == nil && r.CompensationDone && len(r.Owed()) > 0 && failed != nil {
				for _, l := range owedLines(r, time.Now()) {
					p.line(strings.TrimPrefix(l, "\n"))
				}
				return &exitError{code: 1, err: fmt.Errorf("run %s failed in %s: %s; an inverse op is still owed", runID, failed.Stage, failed.Reason)}
			}
			continue
		}
		if line != "" {
			p.line(line)
		}
	}
}

// hasCompensation reports whether the failed run's plan has hooks whose
// inverse ops will report, so the follower waits for them.
func hasCompensation(ctx context.Context, b *bus.Bus, runID string) bool {
	r, err := runs.NewStore(b.Runs).Get(ctx, runID)
	if err != nil {
		return false
	}
	for _, s := range r.Steps {
		if strings.HasPrefix(s.Name, "hook:") && s.Phase != runs.Pending && s.Phase != runs.Skipped {
			return true
		}
	}
	return false
}

func stamp(e events.Event) string { return e.Time().Local().Format("15:04:05.000") }

// describe is one line for an event of a followed run.
func describe(e events.Event, p events.Payload) string {
	t := strings.TrimPrefix(e.Type(), events.TypePrefix)
	s := stamp(e)
	switch d := p.(type) {
	case *events.BackupRequestedData:
		return fmt.Sprintf("%s  requested (%s)", s, d.Trigger)
	case *events.HookCompletedData:
		if d.Inverse {
			return fmt.Sprintf("%s  compensation %s/%s completed", s, d.Hook, d.Op)
		}
		return fmt.Sprintf("%s  hook %s/%s completed (%dms)", s, d.Hook, d.Op, d.DurationMs)
	case *events.HookFailedData:
		return fmt.Sprintf("%s  hook %s/%s FAILED (onError %s): %s", s, d.Hook, d.Op, d.OnError, d.Error)
	case *events.SnapshotStartedData:
		return fmt.Sprintf("%s  snapshot started (%s, %s chunks)", s, d.Source, human(d.ChunkSize))
	case *events.SnapshotCompletedData:
		return fmt.Sprintf("%s  snapshot completed: %s in %d chunks, sha256 %s (%s)", s, human(d.Bytes), d.Chunks, d.SHA256, rateOrTime(d.Bytes, time.Duration(d.DurationMs)*time.Millisecond))
	case *events.SnapshotFailedData:
		return fmt.Sprintf("%s  snapshot FAILED: %s", s, d.Error)
	case *events.FilterCompletedData:
		return fmt.Sprintf("%s  filter completed: %d frames, %s → %s [%s]", s, d.Frames, human(d.BytesIn), human(d.BytesOut), strings.Join(d.Chain, "+"))
	case *events.FilterFailedData:
		return fmt.Sprintf("%s  filter FAILED: %s", s, d.Error)
	case *events.UploadCompletedData:
		return fmt.Sprintf("%s  upload to %s completed: %s (%s)", s, d.Destination, d.Key, human(d.Size))
	case *events.UploadFailedData:
		return fmt.Sprintf("%s  upload to %s FAILED: %s", s, d.Destination, d.Error)
	case *events.VerifyCompletedData:
		return fmt.Sprintf("%s  verify %s completed (%s)", s, d.Destination, d.Mode)
	case *events.VerifyFailedData:
		return fmt.Sprintf("%s  verify %s FAILED: %s", s, d.Destination, d.Error)
	case *events.BackupFailedData:
		return fmt.Sprintf("%s  backup FAILED in %s: %s", s, d.Stage, d.Reason)
	case *events.CompensationCompletedData:
		return fmt.Sprintf("%s  compensation completed: %s", s, strings.Join(d.Ops, ", "))
	case *events.CompensationFailedData:
		return fmt.Sprintf("%s  compensation %s FAILED after %d attempts (%s may still hold): %s", s, d.Op, d.Attempts, d.Undoes, d.Error)
	case *events.StepCompletedData:
		return ""
	}
	return fmt.Sprintf("%s  %s", s, t)
}

// progress prints live progress: one rewritten line on a terminal, plain
// lines (at most one a second per step) otherwise.
type progress struct {
	w       io.Writer
	tty     bool
	pending bool
	// last is when each step last printed a plain line.
	last map[string]time.Time
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && term.IsTerminal(int(f.Fd())), last: map[string]time.Time{}}
}

// update shows where step is; s says it (bytes, rate).
func (p *progress) update(step, s string) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%-16s %s", step, s)
		p.pending = true
		return
	}
	if time.Since(p.last[step]) >= time.Second {
		fmt.Fprintf(p.w, "progress %s  %s\n", step, s)
		p.last[step] = time.Now()
	}
}

func (p *progress) line(s string) {
	if p.pending {
		fmt.Fprint(p.w, "\r\033[K")
		p.pending = false
	}
	fmt.Fprintln(p.w, s)
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// minRateWindow is the least time a rate is computed over: the first
// instants of a step say nothing about its speed.
const minRateWindow = time.Second

// rate is n bytes over d, the time the step that moved them has run, in
// the units human uses ("12.3 MiB/s over 4.2s"); nothing while d is too
// short to mean anything.
func rate(n int64, d time.Duration) string {
	if d < minRateWindow {
		return ""
	}
	return fmt.Sprintf("%s/s over %s", human(int64(float64(n)/d.Seconds())), d.Round(100*time.Millisecond))
}

// rateOrTime is rate, or how long a step too short for one took.
func rateOrTime(n int64, d time.Duration) string {
	if r := rate(n, d); r != "" {
		return r
	}
	return "in " + d.Round(time.Millisecond).String()
}

// join puts the non-empty parts on one line.
func join(parts ...string) string {
	var out []string
	for _, s := range parts {
		if s != "" {
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}

func newRunsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "runs [--plan PLAN] [--limit N] [--before ID]",
		Short: "List runs with phase, duration, bytes and error, newest first",
		Long: `Lists runs newest first, at most --limit of them (default 50, at most 1000).
When older runs are left, a line on stderr says how to list them (--before
the last run shown).`,
		Example: "  backstream runs\n  backstream runs --plan demo -o json\n  backstream runs --limit 200 --before 01JNR4S7Q0M5T2V8X9Y1Z3A4B5",
		Args:    exactArgs(),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	planName := c.Flags().String("plan", "", "only runs of this plan")
	limit := c.Flags().Int("limit", defaultPage, fmt.Sprintf("most runs to list (1 to %d)", runs.MaxListLimit))
	before := c.Flags().String("before", "", "only runs older than this run id (the last one of the previous listing)")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkPageLimit(*limit, runs.MaxListLimit); err != nil {
			return err
		}
		b, _, err := connect(cmd.Context(), natsFlag)
		if err != nil {
			return err
		}
		defer b.Close()
		page, err := runs.NewStore(b.Runs).List(cmd.Context(), runs.ListOptions{Plan: *planName, Limit: *limit, Before: *before})
		if err != nil {
			return err
		}
		list := page.Runs
		if list == nil {
			list = []*runs.Run{}
		}
		err = output.write(cmd.OutOrStdout(), list, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tPLAN\tKIND\tPHASE\tATTEMPT\tSTARTED\tDURATION\tBYTES\tERROR")
			for _, r := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Plan, r.Kind, r.Phase, r.CurrentAttempt(),
					r.Created.Local().Format("2006-01-02 15:04:05"), runDuration(r), human(r.Bytes), truncate(r.Error, 60))
			}
			return tw.Flush()
		})
		if err == nil && page.Next != "" {
			nextPage(cmd.ErrOrStderr(), "older runs", *limit, "backstream runs", "--before", page.Next, "--plan", *planName)
		}
		return err
	}
	return c
}

func runDuration(r *runs.Run) string {
	end := r.Finished
	if end.IsZero() {
		end = time.Now()
	}
	return end.Sub(r.Created).Round(time.Millisecond).String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRunCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "run ID [--follow] [--compensate]",
		Short: "Show one run: its attempts, steps and compensations",
		Long: `Shows one run: its attempts, steps and compensations, and every inverse op it
still owes. --follow prints a running run's events from its start as they
happen until it ends (exit 0 if it succeeded, 1 if not; Ctrl-C stops following,
not the run: exit 130). --compensate makes the inverse ops it owes due now.`,
		Example: "  backstream run 01JNR4S7Q0M5T2V8X9Y1Z3A4B5\n  backstream run 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --follow\n  backstream run 01JNR4S7Q0M5T2V8X9Y1Z3A4B5 -o json",
		Args:    exactArgs("ID"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	compensate := c.Flags().Bool("compensate", false, "retry the inverse ops the run still owes now, also past their deadline (the hook service's owed-inverse loop runs them)")
	followFlag := c.Flags().Bool("follow", false, "print the run's events (from its start) as they happen until it ends; Ctrl-C stops following, not the run")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, id, stdout := cmd.Context(), args[0], cmd.OutOrStdout()
		b, _, err := connect(ctx, natsFlag)
		if err != nil {
			return err
		}
		defer b.Close()
		store := runs.NewStore(b.Runs)
		r, err := store.Get(ctx, id)
		if err != nil {
			return err
		}
		if *compensate {
			if r, err = retryOwedNow(ctx, b, id); err != nil {
				return err
			}
		}
		if *followFlag && !r.Phase.Done() {
			// From a little before the run was requested: its events so
			// far, then the rest as they come.
			return followRun(ctx, b, r.Plan, r.ID, jetstream.OrderedConsumerConfig{
				DeliverPolicy: jetstream.DeliverByStartTimePolicy,
				OptStartTime:  ptr(r.Created.Add(-events.MaxClockSkew)),
			}, stdout)
		}
		return output.write(stdout, r, func(w io.Writer) error {
			return showRun(w, r)
		})
	}
	return c
}

// showRun prints a run for a person.
func showRun(w io.Writer, r *runs.Run) error {
	fmt.Fprintf(w, "run %s  plan %s  kind %s  phase %s  trigger %s\n", r.ID, r.Plan, r.Kind, r.Phase, r.Trigger)
	fmt.Fprintf(w, "started %s  duration %s  bytes %s  stored %s\n", r.Created.Local().Format(time.RFC3339), runDuration(r), human(r.Bytes), human(r.StoredBytes))
	switch {
	case r.Error == "":
	case r.Phase == runs.Cancelled:
		fmt.Fprintf(w, "%s\n", r.Error)
	default:
		fmt.Fprintf(w, "failed in %s: %s\n", r.FailedStage, r.Error)
	}
	fmt.Fprintf(w, "plan revision %d  deadline %s\n", r.PlanRevision, r.Deadline.Local().Format(time.RFC3339))
	if len(r.Attempts) > 0 {
		aw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(aw, "\nATTEMPT\tSTARTS AT\tBY\tSTARTED\tPHASE\tREUSED\tERROR")
		for i, a := range r.Attempts {
			phase, errText := a.Phase, a.Error
			if i == len(r.Attempts)-1 {
				phase, errText = r.Phase, r.Error
			}
			reused := strings.Join(a.Reused, ",")
			if reused == "" {
				reused = "-"
			}
			fmt.Fprintf(aw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Number, a.Stage, a.By, a.Started.Local().Format(time.RFC3339), phase, reused, truncate(errText, 60))
		}
		if err := aw.Flush(); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// A replayed run says which attempt ran each step: the reused ones
	// are an earlier attempt's.
	replayed := len(r.Attempts) > 0
	if replayed {
		fmt.Fprintln(tw, "\nSTEP\tPHASE\tATTEMPT\tDURATION\tBYTES\tERROR")
	} else {
		fmt.Fprintln(tw, "\nSTEP\tPHASE\tDURATION\tBYTES\tERROR")
	}
	for _, s := range r.Steps {
		phase := string(s.Phase)
		if replayed {
			claimed := "-"
			if s.Attempt > 0 {
				claimed = strconv.Itoa(s.Attempt)
			}
			phase += "\t" + claimed
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, phase, s.Duration(time.Now()).Round(time.Millisecond), human(s.Bytes), truncate(s.Error, 80))
	}
	for _, c := range r.Compensation {
		d := time.Duration(0)
		if !c.Finished.IsZero() {
			d = c.Finished.Sub(c.Started)
		}
		phase := string(c.Phase)
		if c.Attempts > 1 {
			phase += fmt.Sprintf(" (%d attempts)", c.Attempts)
		}
		fmt.Fprintf(tw, "compensate %s\t%s\t%s\t-\t%s\n", c.Step, phase, d.Round(time.Millisecond), truncate(c.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case r.AwaitsCompensation():
		fmt.Fprintln(w, "compensation: has not gone over the hook ops of this attempt yet (a replay waits for it)")
	case r.Phase.Unsuccessful() && r.CompensationDone && len(r.Owed()) == 0:
		fmt.Fprintln(w, "compensation: ended, nothing owed")
	}
	for _, line := range owedLines(r, time.Now()) {
		fmt.Fprintln(w, line)
	}
	return nil
}

// owedLines say, for every inverse op the run still owes, which op may
// still hold, why, and what happens next.
func owedLines(r *runs.Run, now time.Time) []string {
	var out []string
	for _, c := range r.Owed() {
		undoes, inv := strings.TrimPrefix(c.Undoes, "hook:"), strings.TrimPrefix(c.Step, "hook:")
		if undoes == "" {
			undoes = "an op"
		}
		_, op, _ := strings.Cut(inv, "/")
		line := fmt.Sprintf("\nhook %s not undone: %s", undoes, op)
		switch {
		case c.Phase == runs.Running:
			line += fmt.Sprintf(" is being retried (attempt %d)", c.Attempts+1)
		default:
			line += fmt.Sprintf(" failed after %d attempts: %s", c.Attempts, c.Error)
		}
		out = append(out, line)
		switch {
		case c.Phase == runs.Running:
		case !c.RetryAt.IsZero():
			out = append(out, fmt.Sprintf("  retried automatically at %s (every few minutes until %s)",
				c.RetryAt.Local().Format(time.RFC3339), c.Until.Local().Format(time.RFC3339)))
		default:
			out = append(out, fmt.Sprintf("  no automatic retry left (deadline %s passed): check the data service, then `backstream run %s --compensate`",
				c.Until.Local().Format(time.RFC3339), r.ID))
		}
	}
	return out
}

// retryOwedNow makes every inverse op the run owes due now, with a fresh
// deadline of an hour, so the hook service's owed-inverse loop retries it
// on its next pass (within --compensation-retry-every's tick).
func retryOwedNow(ctx context.Context, b *bus.Bus, id string) (*runs.Run, error) {
	r, _, err := runs.Remote{NC: b.NC}.Ask(ctx, "admin", runs.Request{Op: runs.OpRetryOwed, Run: id})
	return r, err
}

func ptr[T any](v T) *T { return &v }
