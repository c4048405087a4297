// Package mariadb is the source plugin for MariaDB and MySQL servers.
//
// Logical mode streams mariadb-dump's SQL inside one transaction
// (--single-transaction: a consistent snapshot of InnoDB tables across all
// dumped databases). Physical mode streams `mariabackup --backup
// --stream=xbstream`, which must run on the database host. The password goes
// to children through MYSQL_PWD or a 0600 defaults file, never argv.
package mariadb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
)

// Name is the plugin's registry name.
const Name = "mariadb"

// Modes.
const (
	Logical  = "logical"
	Physical = "physical"
)

// singleHeader opens a single-database logical dump. The dump after it has
// no CREATE DATABASE / USE, so Restore can put it into any database; the
// line is an SQL comment, so `mariadb NAME < dump.sql` still works by hand.
const singleHeader = "-- backstream-mariadb single database: "

// xbstreamMagic opens every mariabackup xbstream chunk.
const xbstreamMagic = "XBSTCK01"

// Config is the plan block of a mariadb source.
type Config struct {
	Host     string     `yaml:"host"`
	Port     int        `yaml:"port"`
	Socket   string     `yaml:"socket"`
	User     string     `yaml:"user"`
	Password secret.Ref `yaml:"password"`
	// Databases to dump; empty means all (--all-databases, including mysql).
	Databases []string `yaml:"databases"`
	// Mode is "logical" (default) or "physical".
	Mode string `yaml:"mode"`
	// ExtraArgs are appended to mariadb-dump or mariabackup. Never secrets.
	ExtraArgs []string `yaml:"extraArgs"`
	// BinDir, when set, is where mariadb, mariadb-dump, mariabackup and
	// mbstream are looked up instead of PATH.
	BinDir string `yaml:"binDir"`
}

// Validate reports every problem with its field name and fills defaults.
func (c *Config) Validate() error {
	var p source.Problems
	if c.Mode == "" {
		c.Mode = Logical
	}
	if c.Mode != Logical && c.Mode != Physical {
		p.Addf("mode", "must be %q or %q, not %q", Logical, Physical, c.Mode)
	}
	if c.Port < 0 || c.Port > 65535 {
		p.Addf("port", "out of range")
	}
	if c.Host != "" && c.Socket != "" {
		p.Addf("socket", "set host or socket, not both")
	}
	if !c.Password.IsZero() {
		if err := c.Password.Validate(); err != nil {
			p.Addf("password", "%v", err)
		}
	}
	for i, d := range c.Databases {
		if d == "" || strings.ContainsAny(d, "\x00/\\") {
			p.Addf(fmt.Sprintf("databases[%d]", i), "bad name %q", d)
		}
	}
	if c.Mode == Physical && len(c.Databases) > 0 {
		p.Addf("databases", "physical mode copies the whole server; leave empty")
	}
	for i, a := range c.ExtraArgs {
		if strings.HasPrefix(a, "--password") || strings.HasPrefix(a, "-p") {
			p.Addf(fmt.Sprintf("extraArgs[%d]", i), "no passwords on the command line; use password")
		}
	}
	return p.Err()
}

// ExecFields implements source.Execer: binDir chooses which programs run,
// and extraArgs reach tools that load code from options (--plugin-dir with
// --default-auth, mariabackup's --plugin-load).
func (c *Config) ExecFields() []string {
	var out []string
	if c.BinDir != "" {
		out = append(out, "binDir")
	}
	if len(c.ExtraArgs) > 0 {
		out = append(out, "extraArgs")
	}
	return out
}

// Plugin returns the registry entry.
func Plugin() source.Plugin {
	p := source.PluginOf[Config](Name, New)
	p.Extract = Extract
	return p
}

// Source dumps one MariaDB server.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source {
	if c.Mode == "" {
		c.Mode = Logical
	}
	return &Source{cfg: c}
}

// conn returns the connection arguments and the environment carrying the password.
func (s *Source) conn() (args, env, secrets []string, err error) {
	c := s.cfg
	if c.Host != "" {
		args = append(args, "--host="+c.Host)
	}
	if c.Port != 0 {
		args = append(args, "--port="+strconv.Itoa(c.Port))
	}
	if c.Socket != "" {
		args = append(args, "--socket="+c.Socket)
	}
	if c.User != "" {
		args = append(args, "--user="+c.User)
	}
	pwEnv, secrets, err := source.PasswordEnv(c.Password, "MYSQL_PWD")
	if err != nil {
		return nil, nil, nil, err
	}
	return args, append(env, pwEnv...), secrets, nil
}

// query runs one statement with the mariadb client and returns its output.
func (s *Source) query(ctx context.Context, db, sql string) (string, error) {
	args, env, secrets, err := s.conn()
	if err != nil {
		return "", err
	}
	argv := append([]string{"mariadb"}, args...)
	argv = append(argv, "--batch", "--skip-column-names")
	if db != "" {
		argv = append(argv, "--database="+db)
	}
	argv = append(argv, "--execute="+sql)
	var out bytes.Buffer
	err = source.Run(ctx, source.Cmd{Op: "mariadb", Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdout: &out, Secrets: secrets})
	return strings.TrimSpace(out.String()), err
}

// Backup streams a logical or physical dump into w.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	version, err := s.query(ctx, "", "SELECT VERSION()")
	if err != nil {
		return nil, err
	}
	desc := source.Description{"server": "mariadb", "version": version, "mode": s.cfg.Mode}
	if s.cfg.Mode == Physical {
		return desc, s.backupPhysical(ctx, w)
	}
	args, env, secrets, err := s.conn()
	if err != nil {
		return nil, fmt.Errorf("mariadb backup: %w", err)
	}
	argv := append([]string{"mariadb-dump"}, args...)
	argv = append(argv, "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob")
	argv = append(argv, s.cfg.ExtraArgs...)
	switch len(s.cfg.Databases) {
	case 0:
		argv = append(argv, "--all-databases")
		desc["databases"] = "*"
	case 1:
		argv = append(argv, "--", s.cfg.Databases[0])
		desc["databases"] = s.cfg.Databases[0]
		if _, err := io.WriteString(w, singleHeader+s.cfg.Databases[0]+"\n"); err != nil {
			return nil, fmt.Errorf("mariadb backup: %w", err)
		}
	default:
		argv = append(argv, "--databases")
		argv = append(argv, s.cfg.Databases...)
		desc["databases"] = strings.Join(s.cfg.Databases, ",")
	}
	if err := source.Run(ctx, source.Cmd{Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdout: w, Secrets: secrets}); err != nil {
		return nil, err
	}
	return desc, nil
}

// defaultsFile writes the client options mariabackup needs (it has no
// MYSQL_PWD) into a 0600 file and returns the --defaults-extra-file argument.
func (s *Source) defaultsFile() (arg string, remove func(), secrets []string, err error) {
	var b strings.Builder
	b.WriteString("[client]\n")
	if !s.cfg.Password.IsZero() {
		pw, err := s.cfg.Password.Resolve()
		if err != nil {
			return "", nil, nil, fmt.Errorf("password: %w", err)
		}
		if strings.ContainsAny(pw, "\n\r") {
			return "", nil, nil, errors.New("password: contains a newline")
		}
		// Option files take a quoted value with backslash escapes.
		q := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(pw)
		fmt.Fprintf(&b, "password=\"%s\"\n", q)
		secrets = append(secrets, pw)
	}
	path, remove, err := source.SecretFile("backstream-mariadb-*.cnf", b.String())
	if err != nil {
		return "", nil, nil, err
	}
	return "--defaults-extra-file=" + path, remove, secrets, nil
}

func (s *Source) backupPhysical(ctx context.Context, w io.Writer) error {
	extra, remove, secrets, err := s.defaultsFile()
	if err != nil {
		return fmt.Errorf("mariabackup: %w", err)
	}
	defer remove()
	tmp, err := os.MkdirTemp("", "backstream-mariabackup-")
	if err != nil {
		return fmt.Errorf("mariabackup: %w", err)
	}
	defer os.RemoveAll(tmp)
	args, _, _, err := s.conn() // password is in the defaults file
	if err != nil {
		return fmt.Errorf("mariabackup: %w", err)
	}
	argv := append([]string{"mariabackup", extra, "--backup", "--stream=xbstream", "--target-dir=" + tmp}, args...)
	argv = append(argv, s.cfg.ExtraArgs...)
	return source.Run(ctx, source.Cmd{Argv: argv, BinDir: s.cfg.BinDir, Stdout: w, Secrets: secrets})
}

func quoteIdent(name string) string { return "`" + strings.ReplaceAll(name, "`", "``") + "`" }

// Restore applies a dump. The kind is read from the stream itself:
//   - single-database logical: into o.Target, or the dumped name. o.Clean
//     drops that database first; o.Clean or o.Create create it.
//   - multi-database logical: replayed as is (its CREATE DATABASE IF NOT
//     EXISTS statements make the databases); o.Target and o.Clean are
//     ErrUnsupported.
//   - physical: o.Target is a directory (made with o.Create, which must be
//     empty); the stream is unpacked with mbstream and prepared with
//     mariabackup --prepare. Moving it into a stopped server's datadir is
//     the operator's step (docs/sources.md).
func (s *Source) Restore(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(len(xbstreamMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("mariadb restore: %w", err)
	}
	if len(head) == 0 {
		return fmt.Errorf("mariadb restore: empty stream: %w", source.ErrCorrupt)
	}
	if string(head) == xbstreamMagic {
		return s.restorePhysical(ctx, br, o)
	}
	db := ""
	if first, err := br.Peek(len(singleHeader)); err == nil && string(first) == singleHeader {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("mariadb restore: header: %w", source.ErrCorrupt)
		}
		db = strings.TrimSuffix(line[len(singleHeader):], "\n")
	}
	if db == "" && (o.Target != "" || o.Clean) {
		return fmt.Errorf("mariadb restore: target and clean need a single-database backup: %w", source.ErrUnsupported)
	}
	if o.Target != "" {
		db = o.Target
	}
	if db != "" {
		if o.Clean {
			if _, err := s.query(ctx, "", "DROP DATABASE IF EXISTS "+quoteIdent(db)); err != nil {
				return err
			}
		}
		if o.Clean || o.Create {
			if _, err := s.query(ctx, "", "CREATE DATABASE IF NOT EXISTS "+quoteIdent(db)); err != nil {
				return err
			}
		}
	}
	args, env, secrets, err := s.conn()
	if err != nil {
		return fmt.Errorf("mariadb restore: %w", err)
	}
	argv := append([]string{"mariadb"}, args...)
	argv = append(argv, "--batch", "--binary-mode")
	if db != "" {
		argv = append(argv, "--database="+db)
	}
	tail := &tailReader{r: br}
	if err := source.Run(ctx, source.Cmd{Op: "mariadb restore", Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdin: tail, Secrets: secrets}); err != nil {
		return err
	}
	// The client applies SQL as it comes and cannot tell a cut stream from a
	// whole one; mariadb-dump's last line can. What was applied stays applied.
	if !bytes.Contains(tail.last, []byte(dumpCompleted)) {
		return fmt.Errorf("mariadb restore: stream lacks %q, the dump was cut short: %w", dumpCompleted, source.ErrCorrupt)
	}
	return nil
}

// dumpCompleted is mariadb-dump's last comment (absent with --skip-comments).
const dumpCompleted = "-- Dump completed"

// tailReader keeps the last 512 bytes read through it.
type tailReader struct {
	r    io.Reader
	last []byte
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.last = append(t.last, p[:n]...)
	if over := len(t.last) - 512; over > 0 {
		t.last = append(t.last[:0], t.last[over:]...)
	}
	return n, err
}

func (s *Source) restorePhysical(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	dir := o.Target
	if dir == "" {
		return fmt.Errorf("mariadb restore: physical backup needs a target directory: %w", source.ErrUnsupported)
	}
	if o.Clean {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("mariadb restore: %w", err)
		}
	}
	if o.Create || o.Clean {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("mariadb restore: %w", err)
		}
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return fmt.Errorf("mariadb restore: %w", err)
	} else if len(ents) > 0 {
		return fmt.Errorf("mariadb restore: target %s is not empty (use clean)", dir)
	}
	if err := source.Run(ctx, source.Cmd{Argv: []string{"mbstream", "-x", "-C", dir}, BinDir: s.cfg.BinDir, Stdin: r}); err != nil {
		return err
	}
	return source.Run(ctx, source.Cmd{Op: "mariabackup prepare", Argv: []string{"mariabackup", "--prepare", "--target-dir=" + dir}, BinDir: s.cfg.BinDir})
}

var _ source.Scratcher = (*Source)(nil)

// ScratchKind implements source.Drillable: a logical backup is drilled in
// a database of its own on the same server. A physical one is not: it
// restores into a directory that only a stopped server can start from.
func (s *Source) ScratchKind() (source.ScratchKind, error) {
	if s.cfg.Mode == Physical {
		return 0, fmt.Errorf("mariadb: a physical backup (mode: physical) is prepared into a directory a stopped server must start from, so a drill cannot check it; drill a plan with mode: logical and one database: %w", source.ErrUnsupported)
	}
	return source.ScratchDatabase, nil
}

// Owns implements source.Drillable: target is one of the databases the
// plan dumps, or one of the server's own schemas.
func (s *Source) Owns(target string) bool {
	switch strings.ToLower(target) {
	case "mysql", "sys", "information_schema", "performance_schema":
		return true
	}
	for _, d := range s.cfg.Databases {
		if d == target {
			return true
		}
	}
	return false
}

// DropScratch implements source.Scratcher: DROP DATABASE IF EXISTS.
func (s *Source) DropScratch(ctx context.Context, target string) error {
	if target == "" || s.Owns(target) {
		return fmt.Errorf("mariadb drop scratch %q: a database the plan backs up: %w", target, source.ErrUnsupported)
	}
	if _, err := s.ScratchKind(); err != nil {
		return err
	}
	_, err := s.query(ctx, "", "DROP DATABASE IF EXISTS "+quoteIdent(target))
	return err
}

// QueryRows implements source.Scratcher. In batch mode the client ends
// every row with a newline and escapes the newlines inside values, so the
// rows are the newlines it printed (an empty value is still a row).
func (s *Source) QueryRows(ctx context.Context, target, sql string) (int64, error) {
	args, env, secrets, err := s.conn()
	if err != nil {
		return 0, fmt.Errorf("mariadb check: %w", err)
	}
	argv := append([]string{"mariadb"}, args...)
	argv = append(argv, "--batch", "--skip-column-names", "--database="+target, "--execute="+sql)
	var out bytes.Buffer
	if err := source.Run(ctx, source.Cmd{Op: "mariadb check " + target, Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdout: &out, Secrets: secrets}); err != nil {
		return 0, err
	}
	return int64(bytes.Count(out.Bytes(), []byte{'\n'})), nil
}
