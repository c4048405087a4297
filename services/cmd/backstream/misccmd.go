package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/backstream/backstream/pkg/retention"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/schedule"
)

func scheduleCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("schedule", flag.ContinueOnError)
	natsFlag := fs.String("nats", "", "NATS URL")
	count := fs.Int("count", 10, "how many slots to print")
	planName, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("schedule: %v", err)
	}
	if planName == "" {
		return usageError("schedule: want a PLAN")
	}
	b, store, err := connect(ctx, *natsFlag)
	if err != nil {
		return err
	}
	defer b.Close()
	p, err := store.Get(ctx, planName)
	if err != nil {
		return err
	}
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
		now = slot
	}
	return nil
}

func retentionCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "simulate" {
		return usageError("retention: want simulate --policy FILE --backups FILE")
	}
	fs := flag.NewFlagSet("retention simulate", flag.ContinueOnError)
	policyFile := fs.String("policy", "", "retention block (YAML or JSON)")
	backupsFile := fs.String("backups", "", `JSON list [{"id": "...", "time": "RFC 3339", "tags": []}]`)
	tz := fs.String("timezone", "UTC", "time zone of the calendar buckets")
	nowFlag := fs.String("now", "", "RFC 3339 time to simulate at (default: now)")
	if err := fs.Parse(args[1:]); err != nil {
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
