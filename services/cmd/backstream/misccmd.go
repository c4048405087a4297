package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/retention"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/pkg/storage/s3"
	retstage "github.com/backstream/backstream/services/retention"
	"github.com/backstream/backstream/services/schedule"
)

func newScheduleCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "schedule PLAN [--count N]",
		Short:   "Print the next scheduled slots of a plan and when each fires (with its jitter)",
		Example: "  backstream schedule orders --count 3\n  backstream schedule orders -o json",
		Args:    exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	count := c.Flags().Int("count", 10, "how many slots to print")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return showSchedule(cmd.Context(), natsFlag, args[0], *count, output, cmd.OutOrStdout())
	}
	return c
}

// slots is what schedule -o json prints.
type slots struct {
	Plan     string `json:"plan"`
	Cron     string `json:"cron"`
	Timezone string `json:"timezone"`
	Jitter   string `json:"jitter"`
	Slots    []slot `json:"slots"`
}

type slot struct {
	Slot  time.Time `json:"slot"`
	Fires time.Time `json:"fires"`
}

func showSchedule(ctx context.Context, natsFlag *natsFlags, planName string, count int, output *outputFlag, stdout io.Writer) error {
	b, p, err := loadPlan(ctx, natsFlag, planName)
	if err != nil {
		return err
	}
	defer b.Close()
	if p.Spec.Schedule == nil {
		return fmt.Errorf("plan %s has no schedule", planName)
	}
	s, err := sched.Parse(schedule.Spec(p.Spec.Schedule))
	if err != nil {
		return err
	}
	out := slots{Plan: planName, Cron: p.Spec.Schedule.Cron, Timezone: s.Location().String(),
		Jitter: sched.Jitter(planName, time.Time{}, p.Spec.Schedule.Jitter.Std()).String(), Slots: []slot{}}
	now := time.Now()
	for i := 0; i < count; i++ {
		at, fire := s.NextFire(planName, now)
		if at.IsZero() {
			break
		}
		out.Slots = append(out.Slots, slot{at.In(s.Location()), fire.In(s.Location())})
		now = fire
	}
	return output.write(stdout, out, func(w io.Writer) error {
		fmt.Fprintf(w, "plan %s: %q in %s, jitter %s\n", out.Plan, out.Cron, out.Timezone, out.Jitter)
		for _, sl := range out.Slots {
			fmt.Fprintf(w, "%s  fires at %s\n", sl.Slot.Format("2006-01-02 15:04 MST"), sl.Fires.Format("15:04:05"))
		}
		return nil
	})
}

func newRetentionCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "retention PLAN --dry-run [--destination NAME]",
		Short: "Show what retention would keep and remove; simulate a policy; export S3 lifecycle rules",
		Long: `retention PLAN --dry-run prints, for each destination of PLAN, what the
retention stage would keep and remove now, and why; it removes nothing (the
stage applies the policy after every verified backup). The subcommands
simulate a policy on a list of backups and export a plan's policy as S3
lifecycle rules (docs/retention.md).`,
		Example: `  backstream retention orders --dry-run
  backstream retention orders --dry-run --destination s3 -o json
  backstream retention simulate --policy policy.yaml --backups backups.json
  backstream retention export-lifecycle orders --format xml`,
		Args: exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	dryRun := c.Flags().Bool("dry-run", false, "print the decisions, remove nothing (required)")
	dest := c.Flags().String("destination", "", "only this destination (default: every destination)")
	nowFlag := c.Flags().String("now", "", "RFC 3339 time to decide at (default: now)")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if !*dryRun {
			return usageError("retention %s: only --dry-run is supported; the retention stage applies the policy after every verified backup", args[0])
		}
		return retentionDryRun(cmd.Context(), natsFlag, args[0], *dest, *nowFlag, output, cmd.OutOrStdout())
	}
	c.AddCommand(newRetentionSimulateCmd(), newRetentionExportCmd())
	return c
}

// retentionDryRun prints the decision table for the real backups of each
// destination of a plan: what the retention stage would keep and remove now.
func retentionDryRun(ctx context.Context, natsFlag *natsFlags, planName, dest, nowFlag string, output *outputFlag, stdout io.Writer) error {
	now := time.Now()
	if nowFlag != "" {
		var err error
		if now, err = time.Parse(time.RFC3339, nowFlag); err != nil {
			return usageError("retention: --now: %v", err)
		}
	}
	b, p, err := loadPlan(ctx, natsFlag, planName)
	if err != nil {
		return err
	}
	defer b.Close()
	// One view of every destination, so each table shows the last-copy
	// rule as the stage would apply it.
	v := retstage.NewView(plugins.Default(), p)
	defer v.Close()
	found, policies := false, 0
	var tables []string
	doc := []retentionDoc{}
	for _, d := range p.Spec.Destinations {
		if dest != "" && d.Name != dest {
			continue
		}
		found = true
		if p.Spec.RetentionFor(d.Name) == nil {
			tables = append(tables, fmt.Sprintf("destination %s: no retention policy, nothing is removed\n", d.Name))
			doc = append(doc, retentionDoc{Destination: d.Name, NoPolicy: true})
			continue
		}
		policies++
		o, err := v.Decide(ctx, d.Name, "", now)
		if err != nil {
			return err
		}
		tables = append(tables, o.Table())
		doc = append(doc, retentionDocOf(&o))
	}
	if !found {
		return usageError("retention %s: no destination %q", planName, dest)
	}
	if policies == 0 {
		return fmt.Errorf("retention %s: %w", planName, retstage.ErrNoPolicy)
	}
	return output.write(stdout, doc, func(w io.Writer) error {
		_, err := fmt.Fprint(w, strings.Join(tables, ""))
		return err
	})
}

// retentionDoc is one destination's decisions as retention --dry-run -o
// json prints them.
type retentionDoc struct {
	Destination string `json:"destination"`
	// NoPolicy says the destination has no retention policy: nothing is
	// removed.
	NoPolicy   bool                `json:"noPolicy,omitempty"`
	Held       string              `json:"held,omitempty"`
	LastCopies int                 `json:"lastCopies,omitempty"`
	Decisions  []retentionDecision `json:"decisions,omitempty"`
	Unreadable map[string]string   `json:"unreadable,omitempty"`
}

type retentionDecision struct {
	BackupID string    `json:"backupId"`
	Time     time.Time `json:"time"`
	Verify   string    `json:"verify"`
	Action   string    `json:"action"`
	Reasons  []string  `json:"reasons"`
}

func retentionDocOf(o *retstage.Outcome) retentionDoc {
	d := retentionDoc{Destination: o.Destination, Held: o.Held, LastCopies: o.LastCopies, Decisions: []retentionDecision{}}
	verify := map[string]string{}
	for _, m := range o.Manifests {
		verify[m.BackupID] = m.Verify.Status
	}
	for _, dec := range o.Decisions {
		action := "keep"
		if !dec.Keep {
			action = "remove"
		}
		d.Decisions = append(d.Decisions, retentionDecision{dec.Backup.ID, dec.Backup.Time.In(o.Location), verify[dec.Backup.ID], action, dec.Reasons})
	}
	for k, err := range o.Unreadable {
		if d.Unreadable == nil {
			d.Unreadable = map[string]string{}
		}
		d.Unreadable[k] = err.Error()
	}
	return d
}

func newRetentionExportCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "export-lifecycle PLAN [--format json|xml] [--destination NAME]",
		Short: "Print the S3 lifecycle configuration that expires a plan's backups at its policy's ages",
		Example: `  backstream retention export-lifecycle orders > lifecycle.json
  aws s3api put-bucket-lifecycle-configuration --bucket backups --lifecycle-configuration file://lifecycle.json`,
		Args: exactArgs("PLAN"),
	}
	natsFlag := addNATSFlags(c.Flags(), "NATS URL")
	formatFlag := c.Flags().String("format", "json", "json (aws s3api, mc ilm import) or xml (S3 API)")
	dest := c.Flags().String("destination", "", "destination whose policy and S3 prefix the rules get (default: the plan's first s3 destination)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return retentionExport(cmd.Context(), natsFlag, args[0], *formatFlag, *dest, cmd.OutOrStdout())
	}
	return c
}

// retentionExport prints the S3 lifecycle configuration that expires each
// policy cycle of a plan at the plan's ages.
func retentionExport(ctx context.Context, natsFlag *natsFlags, planName, formatFlag, dest string, stdout io.Writer) error {
	if formatFlag != "json" && formatFlag != "xml" {
		return usageError("retention export-lifecycle: --format: %q is not json or xml", formatFlag)
	}
	b, p, err := loadPlan(ctx, natsFlag, planName)
	if err != nil {
		return err
	}
	defer b.Close()
	// The rules are the chosen destination's: its own retention block, else
	// the plan's.
	var target *plan.Destination
	for i, d := range p.Spec.Destinations {
		if (dest == "" && d.Type == "s3") || d.Name == dest {
			target = &p.Spec.Destinations[i]
			break
		}
	}
	switch {
	case target == nil && dest != "":
		return usageError("retention export-lifecycle %s: no destination %q", planName, dest)
	case target == nil && len(p.Spec.Destinations) > 0:
		// No s3 destination: the rules of the first, without a prefix.
		target = &p.Spec.Destinations[0]
	case target == nil:
		return fmt.Errorf("retention export-lifecycle %s: the plan has no destination", planName)
	}
	l, err := retstage.Lifecycle(p, target.Name)
	if err != nil {
		return err
	}
	prefix := ""
	if target.Type == "s3" {
		var c s3.Config
		if err := target.Decode(&c); err != nil {
			return fmt.Errorf("destination %s: %w", target.Name, err)
		}
		prefix = c.Prefix
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
	}
	cfg := retstage.ToS3(l, prefix)
	var out []byte
	if formatFlag == "xml" {
		out, err = xml.MarshalIndent(cfg, "", "  ")
		out = append([]byte(xml.Header), out...)
	} else {
		out, err = json.MarshalIndent(cfg, "", "  ")
	}
	if err != nil {
		return fmt.Errorf("retention export-lifecycle: %w", err)
	}
	_, err = stdout.Write(append(out, '\n'))
	return err
}

func newRetentionSimulateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "simulate --policy FILE --backups FILE",
		Short:   "Print what a retention policy keeps and removes of a list of backups (JSON)",
		Example: `  backstream retention simulate --policy policy.yaml --backups backups.json --now 2026-01-31T00:00:00Z`,
		Args:    exactArgs(),
	}
	fs := c.Flags()
	policyFile := fs.String("policy", "", "retention block (YAML or JSON)")
	backupsFile := fs.String("backups", "", `JSON list [{"id": "...", "time": "RFC 3339", "tags": []}]`)
	tz := fs.String("timezone", "UTC", "time zone of the calendar buckets")
	nowFlag := fs.String("now", "", "RFC 3339 time to simulate at (default: now)")
	output := addOutputFlag(fs, "json", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return retentionSimulate(*policyFile, *backupsFile, *tz, *nowFlag, output, cmd.OutOrStdout())
	}
	return c
}

func retentionSimulate(policyFile, backupsFile, tz, nowFlag string, output *outputFlag, stdout io.Writer) error {
	if policyFile == "" || backupsFile == "" {
		return usageError("retention simulate: --policy and --backups are required")
	}
	policy, err := os.ReadFile(policyFile)
	if err != nil {
		return err
	}
	backups, err := os.ReadFile(backupsFile)
	if err != nil {
		return err
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return usageError("retention simulate: --timezone: %v", err)
	}
	now := time.Now()
	if nowFlag != "" {
		if now, err = time.Parse(time.RFC3339, nowFlag); err != nil {
			return usageError("retention simulate: --now: %v", err)
		}
	}
	out, err := retention.Simulate(policy, backups, now, loc)
	if err != nil {
		return err
	}
	if output.value == "yaml" {
		return writeYAML(stdout, out)
	}
	_, err = stdout.Write(append(out, '\n'))
	return err
}
