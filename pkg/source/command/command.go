// Package command is the source plugin for anything that can stream a dump:
// the child's stdout is the backup, and a restore pipes the stream into
// another child's stdin. It never runs a shell; argv is run as given.
package command

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
)

// Name is the plugin's registry name.
const Name = "command"

// Config is the plan block of a command source.
type Config struct {
	// Argv is the dump program and its arguments; its stdout is the backup.
	Argv []string `yaml:"argv"`
	// Env holds environment variables whose values are secrets, resolved where
	// the snapshot runs.
	Env map[string]secret.Ref `yaml:"env"`
	// Dir is the working directory of both children.
	Dir string `yaml:"dir"`
	// RestoreArgv reads the backup on its stdin. Restore fails without it.
	RestoreArgv []string `yaml:"restoreArgv"`
}

// Validate reports every problem with its field name.
func (c *Config) Validate() error {
	var p source.Problems
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		p.Addf("argv", "required")
	}
	if len(c.RestoreArgv) > 0 && c.RestoreArgv[0] == "" {
		p.Addf("restoreArgv", "empty program")
	}
	for _, k := range sortedKeys(c.Env) {
		if err := c.Env[k].Validate(); err != nil {
			p.Addf("env."+k, "%v", err)
		}
	}
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		p.Addf("dir", "must be absolute")
	}
	return p.Err()
}

// ExecFields implements source.Execer: a command source runs the plan's
// argv (and restoreArgv), whatever it names.
func (c *Config) ExecFields() []string {
	out := []string{"argv"}
	if len(c.RestoreArgv) > 0 {
		out = append(out, "restoreArgv")
	}
	return out
}

func sortedKeys(m map[string]secret.Ref) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Plugin returns the registry entry.
func Plugin() source.Plugin {
	return source.PluginOf[Config](Name, New)
}

// Source runs Config's programs.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source { return &Source{cfg: c} }

func (s *Source) env() ([]string, []string, error) {
	var env, secrets []string
	for _, k := range sortedKeys(s.cfg.Env) {
		v, err := s.cfg.Env[k].Resolve()
		if err != nil {
			return nil, nil, fmt.Errorf("env %s: %w", k, err)
		}
		env = append(env, k+"="+v)
		secrets = append(secrets, v)
	}
	return env, secrets, nil
}

// Backup runs Argv with its stdout into w.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	env, secrets, err := s.env()
	if err != nil {
		return nil, fmt.Errorf("command backup: %w", err)
	}
	if err := source.Run(ctx, source.Cmd{Argv: s.cfg.Argv, Env: env, Dir: s.cfg.Dir, Stdout: w, Secrets: secrets}); err != nil {
		return nil, err
	}
	return source.Description{"program": filepath.Base(s.cfg.Argv[0])}, nil
}

// Restore pipes r into RestoreArgv. o is ignored: the program decides.
func (s *Source) Restore(ctx context.Context, r io.Reader, _ source.RestoreOptions) error {
	if len(s.cfg.RestoreArgv) == 0 {
		return fmt.Errorf("command restore: restoreArgv not set: %w", source.ErrUnsupported)
	}
	env, secrets, err := s.env()
	if err != nil {
		return fmt.Errorf("command restore: %w", err)
	}
	return source.Run(ctx, source.Cmd{Argv: s.cfg.RestoreArgv, Env: env, Dir: s.cfg.Dir, Stdin: r, Secrets: secrets})
}
