package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
)

// connect dials NATS for a CLI command.
func connect(ctx context.Context, to targeter) (*bus.Bus, *planstore.Store, error) {
	t, err := to.target()
	if err != nil {
		return nil, nil, err
	}
	// Errors only: a permission the server refused is said as it happens.
	b, err := bus.Connect(ctx, t.URL, "cli", bus.Config{Auth: t.Auth}, newLogger(os.Stderr, "error"))
	if err != nil {
		return nil, nil, err
	}
	return b, planstore.New(b.Plans, plugins.Default()), nil
}

// loadPlan connects to NATS and reads one plan; the caller closes the bus.
func loadPlan(ctx context.Context, to targeter, name string) (*bus.Bus, *plan.Plan, error) {
	b, store, err := connect(ctx, to)
	if err != nil {
		return nil, nil, err
	}
	p, err := store.Get(ctx, name)
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return b, p, nil
}

func planCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("plan: want apply, list, get or delete")
	}
	fs := flag.NewFlagSet("plan "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlag := addNATSFlags(fs, "NATS URL")
	file := fs.String("f", "", "plan FILE or DIR (apply)")
	output := fs.String("o", "yaml", "get: json or yaml")
	name, rest := "", args[1:]
	if args[0] == "get" || args[0] == "delete" {
		name, rest = splitName(rest)
	}
	if err := fs.Parse(rest); err != nil {
		return usageError("plan: %v", err)
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	}
	switch args[0] {
	case "apply":
		if *file == "" {
			return usageError("plan apply: -f FILE|DIR is required")
		}
		return applyPlans(ctx, natsFlag, *file, stdout)
	case "list":
		b, store, err := connect(ctx, natsFlag)
		if err != nil {
			return err
		}
		defer b.Close()
		ps, bad, err := store.List(ctx)
		if err != nil {
			return err
		}
		return listPlans(stdout, ps, bad)
	case "get", "delete":
		if name == "" {
			return usageError("plan %s: want one plan NAME", args[0])
		}
		b, store, err := connect(ctx, natsFlag)
		if err != nil {
			return err
		}
		defer b.Close()
		if args[0] == "delete" {
			if err := store.Delete(ctx, name); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "plan %s deleted\n", name)
			return nil
		}
		p, err := store.Get(ctx, name)
		if err != nil {
			return err
		}
		data, err := p.Marshal()
		if err != nil {
			return err
		}
		if *output == "json" {
			var v any
			_ = json.Unmarshal(data, &v)
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		return writeYAML(stdout, data)
	}
	return usageError("plan: unknown subcommand %q", args[0])
}

// listPlans prints the plans as a table. A stored plan that fails
// validation (written to the bucket without plan apply) is a row marked
// INVALID and its problems follow the table; the listing still shows every
// other plan, and the command exits 1 so a script notices.
func listPlans(stdout io.Writer, ps []*plan.Plan, bad map[string]error) error {
	rows := map[string]string{}
	for _, p := range ps {
		var dests []string
		for _, d := range p.Spec.Destinations {
			dests = append(dests, d.Name+"("+d.Type+")")
		}
		sched := "-"
		if p.Spec.Schedule != nil {
			sched = p.Spec.Schedule.Cron
		}
		rows[p.Name()] = fmt.Sprintf("%s\t%s\t%s\t%s", p.Name(), p.Spec.Source.Type, strings.Join(dests, ","), sched)
	}
	for name := range bad {
		rows[name] = name + "\tINVALID\t-\t-"
	}
	names := make([]string, 0, len(rows))
	for n := range rows {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tDESTINATIONS\tSCHEDULE")
	for _, n := range names {
		fmt.Fprintln(tw, rows[n])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(bad) == 0 {
		return nil
	}
	for _, n := range names {
		if err, ok := bad[n]; ok {
			fmt.Fprintln(stdout, err)
		}
	}
	return &exitError{code: 1, err: fmt.Errorf("%d stored plan(s) invalid, nothing of them runs: apply a valid plan over it or plan delete it", len(bad))}
}

// applyPlans validates every plan under path and stores them only if all are
// valid: a refused plan stores nothing, and every problem is printed.
func applyPlans(ctx context.Context, to targeter, path string, stdout io.Writer) error {
	plans, err := plan.LoadPath(path)
	if err != nil {
		return err
	}
	reg := plugins.Default()
	var problems []string
	for _, p := range plans {
		p.Defaults()
		if err := p.Validate(reg); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("plans refused, nothing stored:\n%s", strings.Join(problems, "\n"))}
	}
	b, store, err := connect(ctx, to)
	if err != nil {
		return err
	}
	defer b.Close()
	for _, p := range plans {
		st, err := store.Put(ctx, p)
		if err != nil {
			var ve *plan.ValidationError
			if errors.As(err, &ve) {
				return &exitError{code: 1, err: err}
			}
			return err
		}
		state := "unchanged"
		if st.Changed {
			state = "applied"
		}
		// The revision is what a run records as the plan it runs.
		fmt.Fprintf(stdout, "plan %s %s (revision %d)\n", p.Name(), state, st.Revision)
	}
	return nil
}
