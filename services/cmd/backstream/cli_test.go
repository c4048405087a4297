package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasHelpWithAnExample walks the command tree: each
// command's --help exits 0 and shows its synopsis and an example, as a
// newcomer finds them.
func TestEveryCommandHasHelpWithAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	var paths [][]string
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd(nil, nil))
	if len(paths) < 25 {
		t.Fatalf("walked %d commands, want every command and subcommand", len(paths))
	}
	for _, p := range paths {
		t.Run(strings.Join(append([]string{"backstream"}, p...), " "), func(t *testing.T) {
			for _, flag := range []string{"--help", "-h"} {
				var out, errOut strings.Builder
				err := run(context.Background(), append(append([]string{}, p...), flag), &out, &errOut)
				if err != nil {
					t.Fatalf("%s: %v\n%s", flag, err, errOut.String())
				}
				text := out.String()
				for _, want := range []string{"Usage:\n  backstream", "Examples:\n  ", "-h, --help"} {
					if !strings.Contains(text, want) {
						t.Errorf("%s lacks %q:\n%s", flag, want, text)
					}
				}
			}
		})
	}
}

func TestCommandLineMistakesAreUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"trigg"}, `unknown command "trigg"; did you mean trigger?`},
		{"unknown subcommand", []string{"plan", "lst"}, `plan: unknown command "lst"`},
		{"group without a subcommand", []string{"dlq"}, "dlq: want a subcommand: list, purge, replay, show"},
		{"missing argument", []string{"trigger"}, "trigger: want PLAN"},
		{"extra argument", []string{"trigger", "p", "extra"}, `trigger: unexpected argument "extra"`},
		{"extra argument to a list", []string{"runs", "p"}, `runs: unexpected argument "p"`},
		{"unknown output", []string{"runs", "-o", "xml"}, `invalid argument "xml" for "-o, --output" flag: want table, json, yaml`},
		{"unknown output of a subcommand", []string{"plan", "get", "p", "--output", "table2"}, "want yaml, json, table"},
		{"unknown flag", []string{"backups", "--fs2", "x"}, "unknown flag: --fs2"},
		{"single-dash long flag", []string{"backups", "-plan-file", "x"}, "unknown shorthand flag"},
		{"bad flag value", []string{"cancel", "x", "--wait", "soon"}, `invalid argument "soon"`},
		{"no sequence number", []string{"dlq", "show", "x"}, `"x" is not a dead letter's sequence number`},
		{"version takes no argument", []string{"version", "1"}, `unexpected argument "1"`},
		{"unknown data plane", []string{"serve", "--data-plane", "memory"}, `serve: --data-plane: "memory" is neither auto nor jetstream`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut strings.Builder
			err := run(context.Background(), tt.args, &out, &errOut)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("got %v, want a usage error (exit code 2)", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "--help`") {
				t.Errorf("error %q lacks %q or where the help is", err, tt.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errOut strings.Builder
		if err := run(context.Background(), args, &out, &errOut); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.HasPrefix(out.String(), "backstream dev (go1.") {
			t.Errorf("%v printed %q, want the version and the Go release", args, out.String())
		}
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"version", "-o", "json"}, &out, &out); err != nil || !strings.Contains(out.String(), `"version": "dev"`) {
		t.Errorf("version -o json: %v\n%s", err, out.String())
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		name string
		n    int64
		d    time.Duration
		want string
	}{
		{"no time yet", 500_000, 0, ""},
		{"too short to mean a rate", 500_000, 40 * time.Millisecond, ""},
		{"over the step's time", 10 << 20, 4 * time.Second, "2.5 MiB/s over 4s"},
		{"rounded", 3 << 30, 1500 * time.Millisecond, "2.0 GiB/s over 1.5s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rate(tt.n, tt.d); got != tt.want {
				t.Errorf("rate(%d, %s) = %q, want %q", tt.n, tt.d, got, tt.want)
			}
		})
	}
	if got := rateOrTime(1000, 40*time.Millisecond); got != "in 40ms" {
		t.Errorf("rateOrTime of a short step = %q, want its time", got)
	}
}
