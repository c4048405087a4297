// Package source defines the plugins that dump a data service to a byte
// stream and restore it from one, and the registry that names them.
//
// A plugin only writes: the snapshot service cuts the stream into chunks,
// seals and uploads it. A plugin must never buffer a whole dump in memory or
// on disk, never put a secret on a command line, and never return nil from
// Backup for a dump that is not complete.
package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Sentinel errors of this package; test with errors.Is.
var (
	// ErrUnknownPlugin is returned by Registry.Lookup for a name nobody registered.
	ErrUnknownPlugin = errors.New("unknown source plugin")
	// ErrInvalidConfig wraps every Config.Validate failure.
	ErrInvalidConfig = errors.New("invalid source config")
	// ErrUnsupported means the plugin cannot do what the options ask
	// (for example renaming the databases of a multi-database dump).
	ErrUnsupported = errors.New("not supported by this source")
	// ErrCorrupt means a restore stream is not what the plugin writes, or was cut short.
	ErrCorrupt = errors.New("corrupt or truncated source stream")
)

// Source dumps and restores one service.
//
// Backup writes one consistent dump to w and returns nil only when the dump
// is complete; a child that exits non-zero, a dump cut short, a write to w
// that fails or a ctx cancel returns an error (a *Error where a child ran).
// Backup never closes w. It may be called again after it returned, but not
// concurrently on the same Source.
//
// Restore reads a stream that Backup of the same plugin wrote and applies it
// according to o. It reads r to its end or returns an error; a stream that is
// cut short returns an error wherever the format can tell (see docs/sources.md).
type Source interface {
	Backup(ctx context.Context, w io.Writer) (Description, error)
	Restore(ctx context.Context, r io.Reader, o RestoreOptions) error
}

// Description is what a backup records in its manifest: server version,
// databases, mode. It never holds a secret.
type Description map[string]string

// RestoreOptions steer a restore.
type RestoreOptions struct {
	// Target overrides where the data goes: the database name for a
	// single-database dump, the directory for files, redis and physical dumps.
	Target string
	// Clean removes what is in the way first (drop database, empty directory).
	Clean bool
	// Create creates the target database or directory when it is missing.
	Create bool
	// Jobs is a parallelism hint; plugins that cannot use it from a stream ignore it.
	Jobs int
}

// Error is what a failed child process (or a failed native dump) returns.
type Error struct {
	Op         string // what ran: "mariadb-dump", "pg_restore db orders"
	ExitStatus *int   // nil when the child never exited on its own
	StderrTail string // the last ~4 KiB of the child's stderr, secrets scrubbed
	Err        error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.ExitStatus != nil {
		fmt.Fprintf(&b, ": exit status %d", *e.ExitStatus)
	}
	if _, exited := e.Err.(errExited); e.Err != nil && !exited {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if tail := strings.TrimSpace(e.StderrTail); tail != "" {
		b.WriteString(": stderr: ")
		b.WriteString(tail)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Plugin is one registered kind of source.
type Plugin struct {
	Name string
	// CanBeEmpty says a complete dump may be 0 bytes; when false, the snapshot
	// service fails a run whose dump is empty.
	CanBeEmpty bool
	// Check decodes and validates a plan's source block without touching the
	// service. decode fills the plugin's Config strictly (unknown fields fail).
	Check func(decode func(any) error) error
	// New decodes, validates and builds a Source. It does not connect yet.
	New func(decode func(any) error) (Source, error)
	// Exec, when set, decodes a block and lists its fields that choose a
	// program to run or code to load (argv, binDir, tool options that load
	// plugins), so a serve that refuses exec can refuse the plan. Nil means
	// the plugin never runs anything the plan names.
	Exec func(decode func(any) error) ([]string, error)
	// Extract, when set, writes a backup stream of this plugin as the files
	// the service's own tools read (see ExtractFunc for the contract). It is
	// a function of the plugin, not a method of a Source, because it needs
	// no configuration: the manifest names the plugin type but holds no
	// plan, and a Source cannot be built without a valid one. Nil means the
	// plugin has no native form to write; call it through Plugin.ExtractTo.
	Extract ExtractFunc
}

// ExtractTo runs p.Extract, or returns an error wrapping ErrUnsupported when
// the plugin has none.
func (p Plugin) ExtractTo(ctx context.Context, r io.Reader, dir string) ([]string, error) {
	if p.Extract == nil {
		return nil, fmt.Errorf("extract %s backup: %w", p.Name, ErrUnsupported)
	}
	return p.Extract(ctx, r, dir)
}

// Execer is a Config whose fields may choose a program to run or code to
// load; PluginOf wires it into Plugin.Exec.
type Execer interface {
	// ExecFields lists the set fields that do, by their plan names.
	ExecFields() []string
}

// Registry maps plugin names to plugins. It is built in one place
// (package source/all), as the storage backends' is (storage/registry),
// read-only after construction and safe for concurrent use.
type Registry struct {
	plugins map[string]Plugin
}

// NewRegistry builds a registry of plugins. A duplicate or empty name, or
// a plugin without New or Check, is a programming error and panics.
func NewRegistry(plugins ...Plugin) *Registry {
	r := &Registry{plugins: make(map[string]Plugin, len(plugins))}
	for _, p := range plugins {
		if p.Name == "" || p.New == nil || p.Check == nil {
			panic(fmt.Sprintf("source registry: plugin %q: name, Check and New are required", p.Name))
		}
		if _, dup := r.plugins[p.Name]; dup {
			panic(fmt.Sprintf("source registry: duplicate plugin %q", p.Name))
		}
		r.plugins[p.Name] = p
	}
	return r
}

// Lookup returns the plugin called name, or an error wrapping ErrUnknownPlugin.
func (r *Registry) Lookup(name string) (Plugin, error) {
	p, ok := r.plugins[name]
	if !ok {
		return Plugin{}, fmt.Errorf("source %q: %w (have %s)", name, ErrUnknownPlugin, strings.Join(r.Names(), ", "))
	}
	return p, nil
}

// Names lists the registered names, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.plugins))
	for n := range r.plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// YAMLDecoder returns a decode function for Plugin.Check and Plugin.New that
// fills a Config from a YAML document strictly: unknown fields are errors.
func YAMLDecoder(doc []byte) func(any) error {
	return func(v any) error {
		d := yaml.NewDecoder(bytes.NewReader(doc))
		d.KnownFields(true)
		if err := d.Decode(v); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("decode source config: %w", err)
		}
		return nil
	}
}

// NodeDecoder is YAMLDecoder for an already parsed node (a plan's source block).
func NodeDecoder(n *yaml.Node) func(any) error {
	return func(v any) error {
		b, err := yaml.Marshal(n)
		if err != nil {
			return fmt.Errorf("decode source config: %w", err)
		}
		return YAMLDecoder(b)(v)
	}
}

// PluginOf builds the registry entry of a plugin whose config type C
// validates itself (through *C) and whose constructor takes a validated C:
// Check and New both decode strictly and validate, so every plugin checks
// its block the same way.
func PluginOf[C any, PC interface {
	*C
	Validator
}, S Source](name string, newSource func(C) S) Plugin {
	var exec func(decode func(any) error) ([]string, error)
	if _, ok := any(PC(new(C))).(Execer); ok {
		exec = func(decode func(any) error) ([]string, error) {
			var c C
			if err := decode(PC(&c)); err != nil {
				return nil, err
			}
			return any(PC(&c)).(Execer).ExecFields(), nil
		}
	}
	return Plugin{
		Exec: exec,
		Name: name,
		Check: func(decode func(any) error) error {
			// Bare problems: the plan's validation names where they are.
			var c C
			if err := decode(PC(&c)); err != nil {
				return err
			}
			return PC(&c).Validate()
		},
		New: func(decode func(any) error) (Source, error) {
			var c C
			if err := Decode(decode, PC(&c)); err != nil {
				return nil, err
			}
			return newSource(c), nil
		},
	}
}

// Validator is a Config that checks itself.
type Validator interface{ Validate() error }

// Decode fills cfg with decode and validates it; the error wraps
// ErrInvalidConfig when validation fails.
func Decode(decode func(any) error, cfg Validator) error {
	if err := decode(cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Problems collects Validate findings as "field: problem" and joins them.
type Problems []string

// Addf records one problem about field.
func (p *Problems) Addf(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

// Err is nil without problems, otherwise one error listing all.
func (p Problems) Err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New(strings.Join(p, "; "))
}
