package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/restore"
)

// storageFlags say where backups are, without NATS: a plan file and one of
// its destinations, or a storage given directly.
type storageFlags struct {
	planFile, destination        string
	fsPath                       string
	s3Endpoint, s3Bucket, prefix string
	s3AccessEnv, s3SecretEnv     string
	s3Insecure                   bool
}

func (f *storageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.planFile, "plan-file", "", "plan YAML whose destination holds the backup")
	fs.StringVar(&f.destination, "destination", "", "destination of --plan-file (default: its first)")
	fs.StringVar(&f.fsPath, "fs", "", "filesystem storage: directory holding the backups")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 storage: endpoint host:port")
	fs.StringVar(&f.s3Bucket, "s3-bucket", "", "S3 storage: bucket")
	fs.StringVar(&f.prefix, "s3-prefix", "", "S3 storage: key prefix")
	fs.StringVar(&f.s3AccessEnv, "s3-access-key-env", "AWS_ACCESS_KEY_ID", "S3 storage: environment variable of the access key")
	fs.StringVar(&f.s3SecretEnv, "s3-secret-key-env", "AWS_SECRET_ACCESS_KEY", "S3 storage: environment variable of the secret key")
	fs.BoolVar(&f.s3Insecure, "s3-insecure", false, "S3 storage: plain http")
}

// open returns the storage, and the plan when one was given.
func (f *storageFlags) open(ctx context.Context) (storage.Storage, *plan.Plan, error) {
	switch {
	case f.planFile != "":
		p, err := plan.ParseFile(f.planFile)
		if err != nil {
			return nil, nil, err
		}
		p.Defaults()
		reg := plugins.Default()
		if err := p.Validate(reg); err != nil {
			return nil, nil, err
		}
		dest := f.destination
		if dest == "" {
			dest = p.Spec.Destinations[0].Name
		}
		st, err := reg.Storage(ctx, p, dest)
		return st, p, err
	case f.fsPath != "":
		st, err := filesystem.New(ctx, filesystem.Config{Path: f.fsPath})
		return st, nil, err
	case f.s3Endpoint != "":
		st, err := s3.New(ctx, s3.Config{
			Endpoint: f.s3Endpoint, Bucket: f.s3Bucket, Prefix: f.prefix, Insecure: f.s3Insecure,
			AccessKey: secret.Ref{Env: f.s3AccessEnv}, SecretKey: secret.Ref{Env: f.s3SecretEnv},
		})
		return st, nil, err
	}
	return nil, nil, usageError("say where the backups are: --plan-file FILE [--destination NAME], --fs DIR, or --s3-endpoint/--s3-bucket")
}

func restoreCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sf storageFlags
	sf.register(fs)
	to := fs.String("to", "", "write the restored data to FILE, or - for stdout")
	intoSource := fs.Bool("into-source", false, "restore into the plan's source (needs --plan-file)")
	target := fs.String("target", "", "with --into-source: database name or directory to restore into")
	create := fs.Bool("create", false, "with --into-source: create the target database or directory when missing")
	clean := fs.Bool("clean", false, "with --into-source: drop or empty what is in the target's way first")
	identity := fs.String("identity", "", "age identity file")
	passEnv := fs.String("passphrase-env", "", "environment variable holding the passphrase")
	allowFailed := fs.Bool("allow-failed", false, "also restore a backup whose run failed after it was stored (never picked by latest)")
	ref, rest := splitName(args)
	if err := fs.Parse(rest); err != nil {
		return usageError("restore: %v", err)
	}
	if ref == "" && fs.NArg() == 1 {
		ref = fs.Arg(0)
	}
	if ref == "" {
		return usageError("restore: want a BACKUP (PLAN/ID, ID or PLAN/latest)")
	}
	if (*to == "") == !*intoSource {
		return usageError("restore: give one of --to FILE|- or --into-source")
	}
	keys, err := app.Keys(*identity, *passEnv)
	if err != nil {
		return usageError("restore: %v", err)
	}
	st, p, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	find := backup.Find
	if *allowFailed {
		find = backup.FindFailed
	}
	m, err := find(ctx, st, ref)
	if errors.Is(err, backup.ErrFailed) {
		return fmt.Errorf("%w (--allow-failed restores it anyway)", err)
	}
	if err != nil {
		return err
	}
	if !backup.CanOpen(m, keys) {
		return usageError("restore: backup %s is encrypted (%s): give --identity or --passphrase-env", m.BackupID, m.KeyWrap.Scheme)
	}
	begin := time.Now()
	prog := newProgress(stderr)
	counted := func(r io.Reader) io.Reader {
		return &countingReader{r: r, every: 250 * time.Millisecond, report: func(n int64) {
			prog.update(fmt.Sprintf("restore  %s of %s  %s", human(n), human(m.Bytes), rate(n, time.Since(begin))))
		}}
	}
	var stats struct{ bytes int64 }
	switch {
	case *intoSource:
		if p == nil {
			return usageError("restore: --into-source needs --plan-file")
		}
		src, _, err := plugins.Default().Source(p)
		if err != nil {
			return err
		}
		s, err := restore.Stream(ctx, st, m, keys, func(r io.Reader) error {
			return src.Restore(ctx, counted(r), source.RestoreOptions{Target: *target, Create: *create, Clean: *clean})
		})
		if err != nil {
			return err
		}
		stats.bytes = s.Bytes
	case *to == "-":
		s, err := restore.Stream(ctx, st, m, keys, func(r io.Reader) error {
			_, err := io.Copy(stdout, counted(r))
			return err
		})
		if err != nil {
			return err
		}
		stats.bytes = s.Bytes
	default:
		n, err := restoreToFile(ctx, st, m, keys, *to, counted)
		if err != nil {
			return err
		}
		stats.bytes = n
	}
	prog.line(fmt.Sprintf("restored backup %s of plan %s: %s, sha256 %s verified, %s", m.BackupID, m.Plan, human(stats.bytes), m.PlaintextSHA256, rate(stats.bytes, time.Since(begin))))
	return nil
}

// restoreToFile writes into a temporary file beside path and renames it
// only once every frame opened and the digest matched: a failed restore
// leaves no file that could pass for a good one.
func restoreToFile(ctx context.Context, st storage.Storage, m format.Manifest, keys format.Keys, path string, wrap func(io.Reader) io.Reader) (int64, error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return 0, fmt.Errorf("restore to %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	s, err := restore.Stream(ctx, st, m, keys, func(r io.Reader) error {
		_, err := io.Copy(tmp, wrap(r))
		return err
	})
	if err != nil {
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("restore to %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("restore to %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return 0, fmt.Errorf("restore to %s: %w", path, err)
	}
	ok = true
	return s.Bytes, nil
}

type countingReader struct {
	r      io.Reader
	n      int64
	last   time.Time
	every  time.Duration
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if time.Since(c.last) >= c.every {
		c.last = time.Now()
		c.report(c.n)
	}
	return n, err
}

func backupsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("backups", flag.ContinueOnError)
	var sf storageFlags
	sf.register(fs)
	planName := fs.String("plan", "", "only backups of this plan")
	all := fs.Bool("all", false, "also list the backups of failed runs")
	if err := fs.Parse(args); err != nil {
		return usageError("backups: %v", err)
	}
	st, p, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if *planName == "" && p != nil {
		*planName = p.Name()
	}
	list, bad, err := backup.List(ctx, st, *planName)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLAN\tBACKUP\tCREATED\tBYTES\tSTORED\tVERIFY\tCHAIN")
	hidden := 0
	for _, m := range list {
		// A failed backup is not one: only --all shows it, with why.
		status := m.Verify.Status
		if backup.Failed(m) {
			if !*all {
				hidden++
				continue
			}
			status += ": " + truncate(m.Verify.Error, 60)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", m.Plan, m.BackupID, m.Created.Local().Format(time.RFC3339), human(m.Bytes), human(m.StoredBytes), status, m.Chain)
	}
	for k, err := range bad {
		fmt.Fprintf(tw, "?\t%s\t-\t-\t-\tunreadable\t%v\n", k, err)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if hidden > 0 {
		fmt.Fprintf(stdout, "(%d backups of failed runs not listed: backups --all lists them)\n", hidden)
	}
	if len(bad) > 0 {
		return errors.New("some manifests could not be read")
	}
	return nil
}
