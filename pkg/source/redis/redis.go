// Package redis is the source plugin for Redis: the backup is an RDB
// snapshot taken over the replication protocol by `redis-cli --rdb -`
// (REPLCONF rdb-only, so the server forks a snapshot and streams it without
// writing dump.rdb to its own disk). The password reaches redis-cli only
// through REDISCLI_AUTH.
//
// A restore cannot be streamed into a running Redis: Restore writes the RDB
// as dump.rdb into a directory, and a server started there (or stopped,
// given the file, and started) loads it. docs/sources.md has the procedure.
package redis

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/backstream/backstream/pkg/ctxio"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/writeback"
)

// Name is the plugin's registry name.
const Name = "redis"

// DumpFile is the file name Restore writes, Redis's default dbfilename.
const DumpFile = "dump.rdb"

// Config is the plan block of a redis source.
type Config struct {
	// Addr is host:port.
	Addr string `yaml:"addr"`
	// User is the ACL user, when not "default".
	User     string     `yaml:"user"`
	Password secret.Ref `yaml:"password"`
	// TLS connects with TLS; CACert verifies the server with that bundle.
	TLS    bool   `yaml:"tls"`
	CACert string `yaml:"caCert"`
	// BinDir, when set, is where redis-cli is looked up instead of PATH.
	BinDir string `yaml:"binDir"`
}

// Validate reports every problem with its field name.
func (c *Config) Validate() error {
	var p source.Problems
	if c.Addr == "" {
		p.Addf("addr", "required")
	} else if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		p.Addf("addr", "want host:port: %v", err)
	}
	if !c.Password.IsZero() {
		if err := c.Password.Validate(); err != nil {
			p.Addf("password", "%v", err)
		}
	}
	if c.CACert != "" && !c.TLS {
		p.Addf("caCert", "needs tls: true")
	}
	return p.Err()
}

// ExecFields implements source.Execer: binDir chooses which redis-cli runs.
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

// Source snapshots one Redis server.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source { return &Source{cfg: c} }

func (s *Source) cli(ctx context.Context, op string, args []string, stdout io.Writer) error {
	host, port, err := net.SplitHostPort(s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("%s: addr: %w", op, err)
	}
	argv := []string{"redis-cli", "-h", host, "-p", port}
	if s.cfg.User != "" {
		argv = append(argv, "--user", s.cfg.User)
	}
	if s.cfg.TLS {
		argv = append(argv, "--tls")
		if s.cfg.CACert != "" {
			argv = append(argv, "--cacert", s.cfg.CACert)
		}
	}
	env, secrets, err := source.PasswordEnv(s.cfg.Password, "REDISCLI_AUTH")
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	argv = append(argv, args...)
	return source.Run(ctx, source.Cmd{Op: op, Argv: argv, BinDir: s.cfg.BinDir, Env: env, Stdout: stdout, Secrets: secrets})
}

// ErrNotRDB means a stream does not start like an RDB file.
var ErrNotRDB = errors.New("not an RDB stream")

// Backup streams an RDB snapshot into w. The snapshot is the server's
// point-in-time fork, consistent across all its databases. A stream that
// does not start with "REDIS" or does not end with a valid RDB trailer
// (EOF opcode and CRC-64) fails, even when redis-cli exits 0.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	var info bytes.Buffer
	// -e: a failing command (NOAUTH) exits non-zero with its error on stderr.
	if err := s.cli(ctx, "redis-cli info", []string{"-e", "INFO", "server"}, &info); err != nil {
		return nil, err
	}
	desc := source.Description{"server": "redis"}
	for _, line := range strings.Split(info.String(), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			desc["version"] = v
		}
	}
	if desc["version"] == "" {
		return nil, &source.Error{Op: "redis-cli info", Err: fmt.Errorf("no redis_version in INFO: %q", firstLine(info.String()))}
	}
	rw := &rdbWriter{w: w}
	if err := s.cli(ctx, "redis-cli --rdb", []string{"--rdb", "-"}, rw); err != nil {
		return nil, err
	}
	if err := rw.finish(); err != nil {
		return nil, &source.Error{Op: "redis-cli --rdb", Err: err}
	}
	return desc, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// Restore writes the RDB stream to o.Target/dump.rdb (o.Create makes the
// directory). It writes a temporary file first and renames it only after the
// whole stream passed the RDB checks, so a cut stream leaves no dump.rdb. An
// existing dump.rdb is replaced only with o.Clean. Start (or restart) a
// stopped redis-server with --dir o.Target --dbfilename dump.rdb to load it.
func (s *Source) Restore(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	if o.Target == "" {
		return fmt.Errorf("redis restore: target directory required: %w", source.ErrUnsupported)
	}
	if o.Create {
		if err := os.MkdirAll(o.Target, 0o750); err != nil {
			return fmt.Errorf("redis restore: %w", err)
		}
	}
	final := filepath.Join(o.Target, DumpFile)
	if _, err := os.Lstat(final); err == nil && !o.Clean {
		return fmt.Errorf("redis restore: %s exists (use clean to replace it)", final)
	}
	f, err := os.CreateTemp(o.Target, ".dump-*.rdb.tmp")
	if err != nil {
		return fmt.Errorf("redis restore: %w", err)
	}
	defer os.Remove(f.Name()) // after a successful rename this is a no-op
	bw := bufio.NewWriterSize(writeback.New(f), 256<<10)
	rw := &rdbWriter{w: bw}
	_, err = io.Copy(rw, ctxio.Reader(ctx, r))
	if err == nil {
		if err = rw.finish(); err != nil {
			err = fmt.Errorf("%w: %w", source.ErrCorrupt, err)
		}
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("redis restore: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o640); err != nil {
		return fmt.Errorf("redis restore: %w", err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("redis restore: %w", err)
	}
	return nil
}

// crcTable is Redis's CRC-64 (Jones polynomial, reflected).
var crcTable = crc64.MakeTable(0x95ac9329ac4bc9b5)

// markerLen is the length of the EOF mark of a diskless transfer
// ("$EOF:<40 hex>"). redis-cli 7.0 writing to stdout (--rdb -) leaves the
// mark after the RDB; rdbWriter strips it.
const markerLen = 40

// holdBack is how much rdbWriter keeps until finish: the mark, the EOF
// opcode and the CRC-64.
const holdBack = markerLen + 9

// rdbWriter passes an RDB stream to w while checking it: the "REDIS" magic,
// the EOF opcode (0xFF) and the CRC-64 of everything before the last 8 bytes
// (zero when the server runs with rdbchecksum no). It holds the last bytes
// back until finish, which decides whether a trailing transfer mark must go.
type rdbWriter struct {
	w    io.Writer
	n    int64  // bytes written to w
	head []byte // first 5 bytes
	crc  uint64 // Redis convention: init 0, no final xor, over bytes written to w
	hold []byte
}

func (c *rdbWriter) Write(p []byte) (int, error) {
	if len(c.head) < 5 {
		c.head = append(c.head, p[:min(len(p), 5-len(c.head))]...)
	}
	c.hold = append(c.hold, p...)
	if over := len(c.hold) - holdBack; over > 0 {
		if err := c.emit(c.hold[:over]); err != nil {
			return 0, err
		}
		c.hold = append(c.hold[:0], c.hold[over:]...)
	}
	return len(p), nil
}

func (c *rdbWriter) emit(b []byte) error {
	c.crc = ^crc64.Update(^c.crc, crcTable, b)
	c.n += int64(len(b))
	_, err := c.w.Write(b)
	return err
}

func isHex(b []byte) bool {
	for _, x := range b {
		if !('0' <= x && x <= '9' || 'a' <= x && x <= 'f') {
			return false
		}
	}
	return true
}

// finish checks the end of the stream and writes the held-back RDB bytes.
func (c *rdbWriter) finish() error {
	if string(c.head) != "REDIS" {
		return fmt.Errorf("%w: starts with %q", ErrNotRDB, c.head)
	}
	// tailOK reports whether body completes a valid RDB after what was emitted.
	tailOK := func(body []byte) bool {
		if len(body) < 9 || c.n+int64(len(body)) < 18 {
			return false
		}
		rest := body[:len(body)-8]
		if rest[len(rest)-1] != 0xff {
			return false
		}
		sum := binary.LittleEndian.Uint64(body[len(body)-8:])
		return sum == 0 || sum == ^crc64.Update(^c.crc, crcTable, rest)
	}
	body := c.hold
	switch {
	case len(body) >= holdBack && isHex(body[len(body)-markerLen:]) && tailOK(body[:len(body)-markerLen]):
		body = body[:len(body)-markerLen]
	case tailOK(body):
	default:
		return fmt.Errorf("%w: no valid end (EOF opcode and CRC-64) after %d bytes: cut short or corrupt", ErrNotRDB, c.n+int64(len(body)))
	}
	return c.emit(body)
}

var _ source.Drillable = (*Source)(nil)

// ScratchKind implements source.Drillable: a drill writes the RDB file
// into a private directory of its own (nothing reaches the server).
func (s *Source) ScratchKind() (source.ScratchKind, error) { return source.ScratchDirectory, nil }

// Owns implements source.Drillable: a restore never writes into the
// server, so no directory is the source's own.
func (s *Source) Owns(string) bool { return false }
