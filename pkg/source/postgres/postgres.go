// Package postgres is the source plugin for PostgreSQL: pg_dump -Fc of each
// database and, optionally, pg_dumpall --globals-only (roles, tablespaces),
// framed into one stream with package archive. Restore uses pg_restore and
// psql. The password reaches children only through PGPASSWORD.
package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
)

// Name is the plugin's registry name.
const Name = "postgres"

// Archive entry names.
const (
	IndexEntry   = "databases"   // first entry: the dumped database names, one per line
	GlobalsEntry = "globals.sql" // pg_dumpall --globals-only, plain SQL
	dbPrefix     = "db/"         // db/<name>.dump: pg_dump -Fc of one database
	dbSuffix     = ".dump"
)

// Config is the plan block of a postgres source.
type Config struct {
	Host     string     `yaml:"host"`
	Port     int        `yaml:"port"`
	User     string     `yaml:"user"`
	Password secret.Ref `yaml:"password"`
	// Databases to dump; empty means every database that accepts
	// connections, templates excluded.
	Databases []string `yaml:"databases"`
	// Globals adds roles and tablespaces (pg_dumpall --globals-only) to the
	// backup, and applies them on restore.
	Globals bool `yaml:"globals"`
	// SSLMode is passed as PGSSLMODE when set (disable, require, verify-full, ...).
	SSLMode string `yaml:"sslMode"`
	// ExtraArgs are appended to each pg_dump. Never secrets.
	ExtraArgs []string `yaml:"extraArgs"`
	// BinDir, when set, is where psql, pg_dump, pg_dumpall and pg_restore
	// are looked up instead of PATH.
	BinDir string `yaml:"binDir"`
}

// Validate reports every problem with its field name.
func (c *Config) Validate() error {
	var p source.Problems
	if c.Port < 0 || c.Port > 65535 {
		p.Addf("port", "out of range")
	}
	if !c.Password.IsZero() {
		if err := c.Password.Validate(); err != nil {
			p.Addf("password", "%v", err)
		}
	}
	seen := map[string]bool{}
	for i, d := range c.Databases {
		switch {
		case d == "" || strings.ContainsRune(d, 0):
			p.Addf(fmt.Sprintf("databases[%d]", i), "bad name %q", d)
		case seen[d]:
			p.Addf(fmt.Sprintf("databases[%d]", i), "duplicate %q", d)
		}
		seen[d] = true
	}
	switch c.SSLMode {
	case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		p.Addf("sslMode", "unknown mode %q", c.SSLMode)
	}
	return p.Err()
}

// ExecFields implements source.Execer: binDir chooses which programs run.
// extraArgs only reach pg_dump, which has no option that runs a program or
// loads code.
func (c *Config) ExecFields() []string {
	if c.BinDir != "" {
		return []string{"binDir"}
	}
	return nil
}

// Plugin returns the registry entry.
func Plugin() source.Plugin {
	p := source.PluginOf[Config](Name, New)
	p.Extract = Extract
	return p
}

// Source dumps databases of one PostgreSQL server.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source { return &Source{cfg: c} }

func (s *Source) conn() (args, env, secrets []string, err error) {
	c := s.cfg
	if c.Host != "" {
		args = append(args, "--host="+c.Host)
	}
	if c.Port != 0 {
		args = append(args, "--port="+strconv.Itoa(c.Port))
	}
	if c.User != "" {
		args = append(args, "--username="+c.User)
	}
	args = append(args, "--no-password") // never prompt
	if c.SSLMode != "" {
		env = append(env, "PGSSLMODE="+c.SSLMode)
	}
	pwEnv, secrets, err := source.PasswordEnv(c.Password, "PGPASSWORD")
	if err != nil {
		return nil, nil, nil, err
	}
	return args, append(env, pwEnv...), secrets, nil
}

// run runs one client program with the connection arguments.
func (s *Source) run(ctx context.Context, op string, prog string, args []string, stdin io.Reader, stdout io.Writer) error {
	conn, env, secrets, err := s.conn()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	argv := append(append([]string{prog}, conn...), args...)
	return source.Run(ctx, source.Cmd{Op: op, Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdin: stdin, Stdout: stdout, Secrets: secrets})
}

func (s *Source) query(ctx context.Context, db, sql string) ([]string, error) {
	var out bytes.Buffer
	if err := s.run(ctx, "psql", "psql", []string{"-X", "--no-align", "--tuples-only", "--dbname=" + db, "--command=" + sql}, nil, &out); err != nil {
		return nil, err
	}
	text := strings.TrimRight(out.String(), "\n")
	if text == "" {
		return nil, nil
	}
	return strings.Split(text, "\n"), nil
}

// exec runs one statement with ON_ERROR_STOP.
func (s *Source) exec(ctx context.Context, db, sql string) error {
	return s.run(ctx, "psql", "psql", []string{"-X", "--quiet", "--set=ON_ERROR_STOP=1", "--dbname=" + db, "--command=" + sql}, nil, io.Discard)
}

// Backup writes an archive stream: the "databases" index, globals.sql when Globals, then
// db/<name>.dump per database. Each database is a consistent snapshot of its
// own (pg_dump's transaction); databases are dumped one after another, not
// in one snapshot. pg_dump runs with --compress=0 because the pipeline's
// filter compresses; ExtraArgs can override it.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	version, err := s.query(ctx, "postgres", "SHOW server_version")
	if err != nil {
		return nil, err
	}
	dbs := s.cfg.Databases
	if len(dbs) == 0 {
		if dbs, err = s.query(ctx, "postgres", "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"); err != nil {
			return nil, err
		}
	}
	desc := source.Description{"server": "postgresql", "databases": strings.Join(dbs, ",")}
	if len(version) > 0 {
		desc["version"] = version[0]
	}
	aw := archive.NewWriter(w)
	iw, err := aw.Create(IndexEntry)
	if err == nil {
		_, err = io.WriteString(iw, strings.Join(dbs, "\n"))
	}
	if err == nil {
		err = iw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("postgres backup: %w", err)
	}
	if s.cfg.Globals {
		desc["globals"] = "true"
		if err := s.entry(ctx, aw, GlobalsEntry, "pg_dumpall globals", "pg_dumpall", []string{"--globals-only"}); err != nil {
			return nil, err
		}
	}
	for _, db := range dbs {
		args := append([]string{"--format=custom", "--compress=0"}, s.cfg.ExtraArgs...)
		args = append(args, "--dbname="+db)
		if err := s.entry(ctx, aw, dbPrefix+db+dbSuffix, "pg_dump "+db, "pg_dump", args); err != nil {
			return nil, err
		}
	}
	if err := aw.Close(); err != nil {
		return nil, fmt.Errorf("postgres backup: %w", err)
	}
	return desc, nil
}

func (s *Source) entry(ctx context.Context, aw *archive.Writer, name, op, prog string, args []string) error {
	ew, err := aw.Create(name)
	if err != nil {
		return fmt.Errorf("postgres backup %s: %w", name, err)
	}
	if err := s.run(ctx, op, prog, args, nil, ew); err != nil {
		return err
	}
	if err := ew.Close(); err != nil {
		return fmt.Errorf("postgres backup %s: %w", name, err)
	}
	return nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteLit(s string) string   { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// Restore applies an archive stream entry by entry, as it arrives. The
// first entry lists the databases, so options that need a single database
// are refused before anything is changed.
//
// globals.sql is applied with psql to the postgres database only when
// Config.Globals is set; statements that fail there (a role that exists)
// are reported on stderr and skipped, as pg_dumpall output expects.
//
// Each database dump goes through pg_restore --exit-on-error reading stdin:
//   - o.Target renames a single-database backup (a second database in the
//     stream is ErrUnsupported);
//   - o.Clean drops the database (WITH (FORCE)) first;
//   - o.Clean or o.Create create it when missing. Without a rename this is
//     pg_restore --create, which also restores database-level properties.
//
// o.Jobs is ignored: pg_restore -j needs a seekable file, and a stream is
// restored without staging it on disk.
func (s *Source) Restore(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	ar := archive.NewReader(r)
	ndb := 0
	for {
		name, err := ar.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("postgres restore: %w: %w", source.ErrCorrupt, err)
		}
		switch {
		case name == IndexEntry:
			b, err := io.ReadAll(io.LimitReader(ar, 1<<20))
			if err != nil {
				return fmt.Errorf("postgres restore: %w: %w", source.ErrCorrupt, err)
			}
			if n := len(strings.Split(string(b), "\n")); o.Target != "" && n != 1 {
				return fmt.Errorf("postgres restore: target needs a single-database backup, this has %d: %w", n, source.ErrUnsupported)
			}
		case name == GlobalsEntry:
			if !s.cfg.Globals {
				continue
			}
			if err := s.run(ctx, "psql globals", "psql", []string{"-X", "--quiet", "--dbname=postgres", "--file=-"}, ar, io.Discard); err != nil {
				return err
			}
		case strings.HasPrefix(name, dbPrefix) && strings.HasSuffix(name, dbSuffix):
			ndb++
			if ndb > 1 && o.Target != "" {
				return fmt.Errorf("postgres restore: target needs a single-database backup: %w", source.ErrUnsupported)
			}
			db := strings.TrimSuffix(strings.TrimPrefix(name, dbPrefix), dbSuffix)
			if err := s.restoreDB(ctx, ar, db, o); err != nil {
				return err
			}
		default:
			return fmt.Errorf("postgres restore: unknown entry %q: %w", name, source.ErrCorrupt)
		}
	}
	if ndb == 0 && !s.cfg.Globals {
		return fmt.Errorf("postgres restore: no database in the stream: %w", source.ErrCorrupt)
	}
	return nil
}

func (s *Source) restoreDB(ctx context.Context, r io.Reader, db string, o source.RestoreOptions) error {
	args := []string{"--exit-on-error", "--format=custom"}
	target := db
	if o.Target != "" {
		target = o.Target
	}
	op := "pg_restore " + target
	if target == db && (o.Create || o.Clean) {
		// pg_restore creates the database named in the dump, with its properties.
		args = append(args, "--create", "--dbname=postgres")
		if o.Clean {
			if err := s.exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+quoteIdent(db)+" WITH (FORCE)"); err != nil {
				return err
			}
		} else {
			exists, err := s.query(ctx, "postgres", "SELECT 1 FROM pg_database WHERE datname = "+quoteLit(db))
			if err != nil {
				return err
			}
			if len(exists) > 0 {
				args = slicesDelete(args, "--create")
				args[len(args)-1] = "--dbname=" + db
			}
		}
		return s.run(ctx, op, "pg_restore", args, r, nil)
	}
	if o.Clean {
		if err := s.exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+quoteIdent(target)+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	if o.Clean || o.Create {
		exists, err := s.query(ctx, "postgres", "SELECT 1 FROM pg_database WHERE datname = "+quoteLit(target))
		if err != nil {
			return err
		}
		if len(exists) == 0 {
			if err := s.exec(ctx, "postgres", "CREATE DATABASE "+quoteIdent(target)); err != nil {
				return err
			}
		}
	}
	args = append(args, "--dbname="+target)
	return s.run(ctx, op, "pg_restore", args, r, nil)
}

func slicesDelete(s []string, v string) []string {
	out := s[:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

var _ source.Scratcher = (*Source)(nil)

// ScratchKind implements source.Drillable: a drill restores into a
// database of its own on the same server.
func (s *Source) ScratchKind() (source.ScratchKind, error) { return source.ScratchDatabase, nil }

// Owns implements source.Drillable: target is one of the databases the
// plan dumps, or the postgres maintenance database the plugin connects
// to. With no databases listed (every database is dumped) only the
// backup itself knows its names; Restore refuses a target for a backup of
// more than one database, and a drill's scratch name is its own.
func (s *Source) Owns(target string) bool {
	if target == "postgres" || strings.HasPrefix(target, "template") {
		return true
	}
	for _, d := range s.cfg.Databases {
		if d == target {
			return true
		}
	}
	return false
}

// DropScratch implements source.Scratcher: DROP DATABASE IF EXISTS ...
// WITH (FORCE), which ends the sessions still connected to it.
func (s *Source) DropScratch(ctx context.Context, target string) error {
	if target == "" || s.Owns(target) {
		return fmt.Errorf("postgres drop scratch %q: a database the plan backs up: %w", target, source.ErrUnsupported)
	}
	return s.exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+quoteIdent(target)+" WITH (FORCE)")
}

// QueryRows implements source.Scratcher. psql separates the rows with a
// zero byte (--record-separator-zero), so a value holding a newline is
// still one row; ON_ERROR_STOP makes a failing statement an error.
func (s *Source) QueryRows(ctx context.Context, target, sql string) (int64, error) {
	var out bytes.Buffer
	err := s.run(ctx, "psql check "+target, "psql", []string{"-X", "--no-align", "--tuples-only", "--record-separator-zero",
		"--set=ON_ERROR_STOP=1", "--dbname=" + target, "--command=" + sql}, nil, &out)
	if err != nil {
		return 0, err
	}
	return int64(bytes.Count(out.Bytes(), []byte{0})), nil
}
