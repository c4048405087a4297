package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is the release this binary was built as: the Makefile's build
// sets it with -ldflags "-X main.version=…"; a plain go build says dev.
var version = "dev"

// exitCodes is the one table of what the exit status means; `backstream
// --help` and docs/operations.md show it.
const exitCodes = `Exit codes:
  0    done (a --wait or --follow: what was followed succeeded)
  1    failed: the error is printed on stderr
  2    usage: an unknown command, flag or value, a missing or extra argument
  3    scrub --wait: incomplete (a destination could not be scrubbed, nothing found damaged)
  130  stopped waiting (Ctrl-C during --wait or --follow): what was followed goes on`

// exitError carries the exit code a command wants.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is a mistake in the command line: exit code 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// run executes the command line args. An error that is not an *exitError
// is a failure (exit code 1), except when cobra returns it before the
// command ran: then it is about the command line (flags, arguments, an
// unknown command) and a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ran := false
	root := newRootCmd(stdout, stderr)
	root.PersistentPreRun = func(*cobra.Command, []string) { ran = true }
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return nil
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		if ran {
			return err
		}
		ee = &exitError{code: 2, err: err}
	}
	if ee.code != 2 {
		return err
	}
	// A usage error says where the right usage is.
	return &exitError{code: 2, err: fmt.Errorf("%w\nusage: %s\nsee `%s --help`", err, cmd.UseLine(), cmd.CommandPath())}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "backstream",
		Short: "event-driven backup and restore on NATS JetStream",
		Long: `backstream — event-driven backup and restore on NATS JetStream

One binary: ` + "`serve`" + ` runs every service in one process on an embedded NATS
server, or a subset of them against an existing NATS cluster; the other
commands manage plans, trigger and follow runs, and restore backups (also with
no NATS at all).

Every command that talks to NATS uses --nats, else $BACKSTREAM_NATS, else
nats://127.0.0.1:4250, and authenticates with --nats-nkey FILE, --nats-creds
FILE or --nats-user NAME (password from $BACKSTREAM_NATS_PASSWORD), with
--nats-tls-ca/-cert/-key for TLS; without them it uses the admin key of a local
serve under $BACKSTREAM_DATA or ./data (docs/security.md).

Commands that list or show take -o table|json|yaml.

` + exitCodes,
		Example: `  backstream serve --data ./data --apply examples/demo.yaml --trigger demo
  backstream trigger demo --wait
  backstream runs -o json`,
		Version:           versionString(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				cmd.SetOut(cmd.ErrOrStderr())
				_ = cmd.Help()
				return usageError("no command")
			}
			return unknownSubcommand(cmd, args[0])
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("backstream {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError("%s%v", prefix(c), err)
	})
	root.AddCommand(
		newServeCmd(), newSetupCmd(), newPlanCmd(), newTriggerCmd(), newRunsCmd(), newRunCmd(),
		newCancelCmd(), newReplayCmd(), newDrillCmd(), newScrubCmd(), newRestoreCmd(), newExtractCmd(), newBackupsCmd(),
		newScheduleCmd(), newRetentionCmd(), newAPITokenCmd(), newDLQCmd(), newKeyringCmd(), newVersionCmd(),
	)
	// cobra's own help and completion commands, made now so they get
	// examples like every other command.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			c.Example = "  backstream help restore"
		case "completion":
			c.Example = "  source <(backstream completion bash)\n  backstream completion zsh > \"${fpath[1]}/_backstream\""
			for _, sh := range c.Commands() {
				if sh.Example == "" {
					sh.Example = "  backstream completion " + sh.Name() + " > backstream." + sh.Name()
				}
			}
		}
	}
	return root
}

func versionString() string {
	return fmt.Sprintf("%s (%s %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func newVersionCmd() *cobra.Command {
	var output *outputFlag
	c := &cobra.Command{
		Use:     "version",
		Short:   "Print the version of backstream and the Go release it was built with",
		Example: "  backstream version\n  backstream version -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := struct {
				Version string `json:"version"`
				Go      string `json:"go"`
				OS      string `json:"os"`
				Arch    string `json:"arch"`
			}{version, runtime.Version(), runtime.GOOS, runtime.GOARCH}
			return output.write(cmd.OutOrStdout(), v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "backstream %s\n", versionString())
				return err
			})
		},
	}
	output = addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	return c
}

// groupCmd is a command that only holds subcommands: without one, or with
// one it does not have, it is a usage error (cobra would print the help and
// exit 0).
func groupCmd(c *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageError("%swant a subcommand: %s", prefix(cmd), strings.Join(subcommandNames(cmd), ", "))
		}
		return unknownSubcommand(cmd, args[0])
	}
	c.AddCommand(subs...)
	return c
}

func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, s := range cmd.Commands() {
		if s.IsAvailableCommand() {
			names = append(names, s.Name())
		}
	}
	return names
}

func unknownSubcommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("%sunknown command %q", prefix(cmd), name)
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	} else {
		msg += "; want one of: " + strings.Join(subcommandNames(cmd), ", ")
	}
	return usageError("%s", msg)
}

// prefix starts an error of cmd with its path below the root ("plan get:
// "); main puts "backstream:" before every error.
func prefix(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return ""
	}
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ") + ": "
}

// exactArgs takes exactly the positional arguments named (PLAN, ID, …):
// one missing or one more is a usage error that says which.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < len(names) {
			return usageError("%swant %s", prefix(cmd), strings.Join(names[len(args):], " "))
		}
		if len(args) > len(names) {
			return usageError("%sunexpected argument %q", prefix(cmd), args[len(names)])
		}
		return nil
	}
}

// minArgs takes one or more of the argument named.
func minArgs(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageError("%swant one or more %s", prefix(cmd), name)
		}
		return nil
	}
}

// outputFlag is -o/--output: how a command prints what it lists or shows.
// A value it does not know is a usage error naming the ones it does.
type outputFlag struct {
	value   string
	allowed []string
}

func addOutputFlag(fs *pflag.FlagSet, def string, allowed ...string) *outputFlag {
	o := &outputFlag{value: def, allowed: allowed}
	fs.VarP(o, "output", "o", "output format: "+strings.Join(allowed, ", "))
	return o
}

func (o *outputFlag) String() string { return o.value }
func (o *outputFlag) Type() string   { return "format" }

func (o *outputFlag) Set(v string) error {
	if !slices.Contains(o.allowed, v) {
		return fmt.Errorf("want %s", strings.Join(o.allowed, ", "))
	}
	o.value = v
	return nil
}

// structured reports whether the output is a document (json or yaml), so
// what is said for a person goes to stderr instead.
func (o *outputFlag) structured() bool { return o.value == "json" || o.value == "yaml" }

// write prints v as JSON or YAML (YAML with the JSON field names), or
// calls human for the other formats.
func (o *outputFlag) write(w io.Writer, v any, human func(io.Writer) error) error {
	switch o.value {
	case "json":
		return writeJSON(w, v)
	case "yaml":
		return writeYAMLValue(w, v)
	}
	return human(w)
}

// defaultPage is how many entries a paged listing (runs, dlq list) shows
// unless --limit says otherwise.
const defaultPage = 50

// checkPageLimit refuses a paged listing's --limit outside 1 to max.
func checkPageLimit(limit, max int) error {
	if limit < 1 || limit > max {
		return fmt.Errorf("--limit: %d is not from 1 to %d", limit, max)
	}
	return nil
}

// nextPage says on w how to list the page after this one: lead, then
// command with flags (name, value pairs; those without a value left out)
// and --limit unless it is the default.
func nextPage(w io.Writer, lead string, limit int, command string, flags ...string) {
	line := command
	for i := 0; i+1 < len(flags); i += 2 {
		if flags[i+1] != "" {
			line += " " + flags[i] + " " + flags[i+1]
		}
	}
	if limit != defaultPage {
		line += " --limit " + strconv.Itoa(limit)
	}
	fmt.Fprintf(w, "%s: %s\n", lead, line)
}
