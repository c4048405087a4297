package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

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

func newPlanCmd() *cobra.Command {
	apply := &cobra.Command{
		Use:   "apply -f FILE|DIR",
		Short: "Validate plans and store them, all or none",
		Long: `Validates every plan in FILE (or every *.yaml in DIR) and stores them only if
all are valid: a refused plan stores nothing, and every problem is printed. The
revision printed is what a run records as the plan it runs.`,
		Example: "  backstream plan apply -f examples/demo.yaml\n  backstream plan apply -f plans/ -o json",
		Args:    exactArgs(),
	}
	applyNATS := addNATSFlags(apply.Flags(), "NATS URL")
	file := apply.Flags().StringP("file", "f", "", "plan FILE or DIR (required)")
	applyOut := addOutputFlag(apply.Flags(), "table", "table", "json", "yaml")
	apply.RunE = func(cmd *cobra.Command, _ []string) error {
		if *file == "" {
			return usageError("plan apply: -f FILE|DIR is required")
		}
		return applyPlans(cmd.Context(), applyNATS, *file, applyOut, cmd.OutOrStdout())
	}

	list := &cobra.Command{
		Use:   "list",
		Short: "List the stored plans",
		Long: `Lists the stored plans. A stored plan that fails validation (written to the
bucket without plan apply) is listed as INVALID with its problems, and the
command exits 1.`,
		Example: "  backstream plan list\n  backstream plan list -o json",
		Args:    exactArgs(),
	}
	listNATS := addNATSFlags(list.Flags(), "NATS URL")
	listOut := addOutputFlag(list.Flags(), "table", "table", "json", "yaml")
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		b, store, err := connect(cmd.Context(), listNATS)
		if err != nil {
			return err
		}
		defer b.Close()
		ps, bad, err := store.List(cmd.Context())
		if err != nil {
			return err
		}
		return listPlans(cmd.OutOrStdout(), listOut, ps, bad)
	}

	get := &cobra.Command{
		Use:     "get NAME",
		Short:   "Print a stored plan (YAML by default)",
		Example: "  backstream plan get demo\n  backstream plan get demo -o json",
		Args:    exactArgs("NAME"),
	}
	getNATS := addNATSFlags(get.Flags(), "NATS URL")
	getOut := addOutputFlag(get.Flags(), "yaml", "yaml", "json", "table")
	get.RunE = func(cmd *cobra.Command, args []string) error {
		b, store, err := connect(cmd.Context(), getNATS)
		if err != nil {
			return err
		}
		defer b.Close()
		p, err := store.Get(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		if getOut.value == "table" {
			return listPlans(cmd.OutOrStdout(), getOut, []*plan.Plan{p}, nil)
		}
		data, err := p.Marshal()
		if err != nil {
			return err
		}
		if getOut.value == "json" {
			var v any
			if err := json.Unmarshal(data, &v); err != nil {
				return err
			}
			return writeJSON(cmd.OutOrStdout(), v)
		}
		return writeYAML(cmd.OutOrStdout(), data)
	}

	del := &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a stored plan (its revisions stay for the runs that used them)",
		Example: "  backstream plan delete demo",
		Args:    exactArgs("NAME"),
	}
	delNATS := addNATSFlags(del.Flags(), "NATS URL")
	del.RunE = func(cmd *cobra.Command, args []string) error {
		b, store, err := connect(cmd.Context(), delNATS)
		if err != nil {
			return err
		}
		defer b.Close()
		if err := store.Delete(cmd.Context(), args[0]); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "plan %s deleted\n", args[0])
		return nil
	}

	return groupCmd(&cobra.Command{
		Use:     "plan",
		Short:   "Apply, list, get and delete plans (docs/plans.md)",
		Example: "  backstream plan apply -f examples/demo.yaml\n  backstream plan list",
	}, apply, list, get, del)
}

// planRow is one plan as plan list shows it.
type planRow struct {
	Name         string        `json:"name"`
	Source       string        `json:"source,omitempty"`
	Destinations []planDestRow `json:"destinations,omitempty"`
	Schedule     string        `json:"schedule,omitempty"`
	// Invalid is why a stored plan fails validation.
	Invalid string `json:"invalid,omitempty"`
}

type planDestRow struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// listPlans prints the plans as a table. A stored plan that fails
// validation (written to the bucket without plan apply) is a row marked
// INVALID and its problems follow the table; the listing still shows every
// other plan, and the command exits 1 so a script notices.
func listPlans(stdout io.Writer, output *outputFlag, ps []*plan.Plan, bad map[string]error) error {
	rows := map[string]planRow{}
	for _, p := range ps {
		r := planRow{Name: p.Name(), Source: p.Spec.Source.Type}
		for _, d := range p.Spec.Destinations {
			r.Destinations = append(r.Destinations, planDestRow{d.Name, d.Type})
		}
		if p.Spec.Schedule != nil {
			r.Schedule = p.Spec.Schedule.Cron
		}
		rows[p.Name()] = r
	}
	for name, err := range bad {
		rows[name] = planRow{Name: name, Invalid: err.Error()}
	}
	names := slices.Sorted(maps.Keys(rows))
	list := make([]planRow, 0, len(names))
	for _, n := range names {
		list = append(list, rows[n])
	}
	err := output.write(stdout, list, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSOURCE\tDESTINATIONS\tSCHEDULE")
		for _, r := range list {
			if r.Invalid != "" {
				fmt.Fprintf(tw, "%s\tINVALID\t-\t-\n", r.Name)
				continue
			}
			var dests []string
			for _, d := range r.Destinations {
				dests = append(dests, d.Name+"("+d.Type+")")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Source, strings.Join(dests, ","), orDash(r.Schedule))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, r := range list {
			if r.Invalid != "" {
				fmt.Fprintln(w, r.Invalid)
			}
		}
		return nil
	})
	if err != nil || len(bad) == 0 {
		return err
	}
	return &exitError{code: 1, err: fmt.Errorf("%d stored plan(s) invalid, nothing of them runs: apply a valid plan over it or plan delete it", len(bad))}
}

// applyPlans validates every plan under path and stores them only if all are
// valid: a refused plan stores nothing, and every problem is printed.
func applyPlans(ctx context.Context, to targeter, path string, output *outputFlag, stdout io.Writer) error {
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
	type applied struct {
		Name     string `json:"name"`
		Changed  bool   `json:"changed"`
		Revision uint64 `json:"revision"`
	}
	var done []applied
	for _, p := range plans {
		st, err := store.Put(ctx, p)
		if err != nil {
			var ve *plan.ValidationError
			if errors.As(err, &ve) {
				return &exitError{code: 1, err: err}
			}
			return err
		}
		done = append(done, applied{p.Name(), st.Changed, st.Revision})
	}
	return output.write(stdout, done, func(w io.Writer) error {
		for _, a := range done {
			state := "unchanged"
			if a.Changed {
				state = "applied"
			}
			// The revision is what a run records as the plan it runs.
			fmt.Fprintf(w, "plan %s %s (revision %d)\n", a.Name, state, a.Revision)
		}
		return nil
	})
}
