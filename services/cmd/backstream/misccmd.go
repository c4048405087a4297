package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/retention"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/pkg/storage/s3"
	retstage "github.com/backstream/backstream/services/retention"
	"github.com/backstream/backstream/services/schedule"
)

func scheduleCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule", flag.ContinueOnError)
	natsFlag := addNATSFlags(fs, "NATS URL")
	count := fs.Int("count", 10, "how many slots to print")
	planName, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("schedule: %v", err)
	}
	if planName == "" {
		return usageError("schedule: want a PLAN")
	}
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
	fmt.Fprintf(stdout, "plan %s: %q in %s, jitter %s\n", planName, p.Spec.Schedule.Cron, s.Location(), sched.Jitter(planName, time.Time{}, p.Spec.Schedule.Jitter.Std()))
	now := time.Now()
	for i := 0; i < *count; i++ {
		slot, fire := s.NextFire(planName, now)
		if slot.IsZero() {
			break
		}
		fmt.Fprintf(stdout, "%s  fires at %s\n", slot.In(s.Location()).Format("2006-01-02 15:04 MST"), fire.In(s.Location()).Format("15:04:05"))
		now = fire
	}
	return nil
}

func retentionCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError("retention: want simulate, export-lifecycle PLAN, or PLAN --dry-run")
	}
	switch args[0] {
	case "simulate":
		return retentionSimulate(args[1:], stdout)
	case "export-lifecycle":
		return retentionExport(ctx, args[1:], stdout)
	}
	return retentionDryRun(ctx, args, stdout)
}

// retentionDryRun prints the decision table for the real backups of each
// destination of a plan: what the retention stage would keep and remove now.
func retentionDryRun(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("retention", flag.ContinueOnError)
	natsFlag := addNATSFlags(fs, "NATS URL")
	dryRun := fs.Bool("dry-run", false, "print the decisions, remove nothing (required)")
	dest := fs.String("destination", "", "only this destination (default: every destination)")
	nowFlag := fs.String("now", "", "RFC 3339 time to decide at (default: now)")
	planName, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("retention: %v", err)
	}
	if planName == "" {
		return usageError("retention: want a PLAN")
	}
	if !*dryRun {
		return usageError("retention %s: only --dry-run is supported; the retention stage applies the policy after every verified backup", planName)
	}
	now := time.Now()
	if *nowFlag != "" {
		var err error
		if now, err = time.Parse(time.RFC3339, *nowFlag); err != nil {
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
	for _, d := range p.Spec.Destinations {
		if *dest != "" && d.Name != *dest {
			continue
		}
		found = true
		if p.Spec.RetentionFor(d.Name) == nil {
			fmt.Fprintf(stdout, "destination %s: no retention policy, nothing is removed\n", d.Name)
			continue
		}
		policies++
		o, err := v.Decide(ctx, d.Name, "", now)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, o.Table())
	}
	if !found {
		return usageError("retention %s: no destination %q", planName, *dest)
	}
	if policies == 0 {
		return fmt.Errorf("retention %s: %w", planName, retstage.ErrNoPolicy)
	}
	return nil
}

// retentionExport prints the S3 lifecycle configuration that expires each
// policy cycle of a plan at the plan's ages.
func retentionExport(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("retention export-lifecycle", flag.ContinueOnError)
	natsFlag := addNATSFlags(fs, "NATS URL")
	formatFlag := fs.String("format", "json", "json (aws s3api, mc ilm import) or xml (S3 API)")
	dest := fs.String("destination", "", "destination whose policy and S3 prefix the rules get (default: the plan's first s3 destination)")
	planName, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("retention export-lifecycle: %v", err)
	}
	if planName == "" {
		return usageError("retention export-lifecycle: want a PLAN")
	}
	if *formatFlag != "json" && *formatFlag != "xml" {
		return usageError("retention export-lifecycle: --format: %q is not json or xml", *formatFlag)
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
		if (*dest == "" && d.Type == "s3") || d.Name == *dest {
			target = &p.Spec.Destinations[i]
			break
		}
	}
	switch {
	case target == nil && *dest != "":
		return usageError("retention export-lifecycle %s: no destination %q", planName, *dest)
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
	if *formatFlag == "xml" {
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

func retentionSimulate(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("retention simulate", flag.ContinueOnError)
	policyFile := fs.String("policy", "", "retention block (YAML or JSON)")
	backupsFile := fs.String("backups", "", `JSON list [{"id": "...", "time": "RFC 3339", "tags": []}]`)
	tz := fs.String("timezone", "UTC", "time zone of the calendar buckets")
	nowFlag := fs.String("now", "", "RFC 3339 time to simulate at (default: now)")
	if err := fs.Parse(args); err != nil {
		return usageError("retention simulate: %v", err)
	}
	if *policyFile == "" || *backupsFile == "" {
		return usageError("retention simulate: --policy and --backups are required")
	}
	policy, err := os.ReadFile(*policyFile)
	if err != nil {
		return err
	}
	backups, err := os.ReadFile(*backupsFile)
	if err != nil {
		return err
	}
	loc, err := time.LoadLocation(*tz)
	if err != nil {
		return usageError("retention simulate: --timezone: %v", err)
	}
	now := time.Now()
	if *nowFlag != "" {
		if now, err = time.Parse(time.RFC3339, *nowFlag); err != nil {
			return usageError("retention simulate: --now: %v", err)
		}
	}
	out, err := retention.Simulate(policy, backups, now, loc)
	if err != nil {
		return err
	}
	_, err = stdout.Write(append(out, '\n'))
	return err
}
