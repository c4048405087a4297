package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/writeback"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/restore"
)

// storageFlags say where backups are, without NATS: a plan file and one of
// its destinations, or a storage given directly.
type storageFlags struct {
	planFile, destination        string
	fsPaths                      []string
	s3Endpoint, s3Bucket, prefix string
	s3AccessEnv, s3SecretEnv     string
	s3Insecure                   bool
}

func (f *storageFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.planFile, "plan-file", "", "plan YAML whose destination holds the backup")
	fs.StringVar(&f.destination, "destination", "", "destination of --plan-file to read (restore: read first; default: its first)")
	fs.StringArrayVar(&f.fsPaths, "fs", nil, "filesystem storage: `DIR` holding the backups (restore: may be repeated)")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 storage: endpoint host:port")
	fs.StringVar(&f.s3Bucket, "s3-bucket", "", "S3 storage: bucket")
	fs.StringVar(&f.prefix, "s3-prefix", "", "S3 storage: key prefix")
	fs.StringVar(&f.s3AccessEnv, "s3-access-key-env", "AWS_ACCESS_KEY_ID", "S3 storage: environment variable of the access key")
	fs.StringVar(&f.s3SecretEnv, "s3-secret-key-env", "AWS_SECRET_ACCESS_KEY", "S3 storage: environment variable of the secret key")
	fs.BoolVar(&f.s3Insecure, "s3-insecure", false, "S3 storage: plain http")
}

// open returns the storage, and the plan when one was given. It reads one
// storage: with several --fs, or --fs and --s3-*, it refuses.
func (f *storageFlags) open(ctx context.Context) (storage.Storage, *plan.Plan, error) {
	if len(f.fsPaths) > 1 || (len(f.fsPaths) == 1 && f.s3Endpoint != "") {
		return nil, nil, usageError("give one storage: one --fs DIR or the --s3-* flags")
	}
	dests, open, p, err := f.destinations()
	if err != nil {
		return nil, nil, err
	}
	preferred, err := f.preferred(dests)
	if err != nil {
		return nil, nil, err
	}
	st, err := open(ctx, preferred)
	return st, p, err
}

// destinations returns every storage the flags name, in order of
// preference, with what opens each, and the plan when one was given: a
// plan file's destinations in plan order, or each --fs (named fs:DIR, in
// the order given) then the --s3-* storage (named s3:BUCKET).
func (f *storageFlags) destinations() ([]string, restore.Opener, *plan.Plan, error) {
	switch {
	case f.planFile != "":
		p, err := plan.ParseFile(f.planFile)
		if err != nil {
			return nil, nil, nil, err
		}
		p.Defaults()
		reg := plugins.Default()
		if err := p.Validate(reg); err != nil {
			return nil, nil, nil, err
		}
		var names []string
		for _, d := range p.Spec.Destinations {
			names = append(names, d.Name)
		}
		return names, func(ctx context.Context, d string) (storage.Storage, error) {
			// Reading changes nothing: a filesystem destination that does
			// not exist is an error, not a new empty directory.
			for _, pd := range p.Spec.Destinations {
				if pd.Name == d && pd.Type == "filesystem" {
					var c filesystem.Config
					if err := pd.Decode(&c); err != nil {
						return nil, fmt.Errorf("destination %s: %w", d, err)
					}
					st, err := filesystem.OpenExisting(c)
					if err != nil {
						return nil, fmt.Errorf("destination %s: %w", d, err)
					}
					return st, nil
				}
			}
			return reg.Storage(ctx, p, d)
		}, p, nil
	case len(f.fsPaths) > 0 || f.s3Endpoint != "":
		var names []string
		byName := map[string]func(context.Context) (storage.Storage, error){}
		for _, dir := range f.fsPaths {
			name := "fs:" + dir
			names = append(names, name)
			byName[name] = func(ctx context.Context) (storage.Storage, error) {
				return filesystem.OpenExisting(filesystem.Config{Path: dir})
			}
		}
		if f.s3Endpoint != "" {
			name := "s3:" + f.s3Bucket
			names = append(names, name)
			byName[name] = func(ctx context.Context) (storage.Storage, error) {
				return s3.New(ctx, s3.Config{
					Endpoint: f.s3Endpoint, Bucket: f.s3Bucket, Prefix: f.prefix, Insecure: f.s3Insecure,
					AccessKey: secret.Ref{Env: f.s3AccessEnv}, SecretKey: secret.Ref{Env: f.s3SecretEnv},
				})
			}
		}
		return names, func(ctx context.Context, d string) (storage.Storage, error) {
			open, ok := byName[d]
			if !ok {
				return nil, fmt.Errorf("destination %q: not a storage given", d)
			}
			return open(ctx)
		}, nil, nil
	}
	return nil, nil, nil, usageError("say where the backups are: --plan-file FILE [--destination NAME], --fs DIR, or --s3-endpoint/--s3-bucket")
}

// preferred is --destination, or the first of dests.
func (f *storageFlags) preferred(dests []string) (string, error) {
	if f.destination == "" {
		return dests[0], nil
	}
	if _, err := restore.Order(dests, f.destination); err != nil {
		return "", usageError("--destination: %v", err)
	}
	return f.destination, nil
}

func newRestoreCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "restore BACKUP (--to FILE|- | --into-source) (--plan-file FILE [--destination NAME] | storage flags)",
		Short: "Restore a backup from its storage alone, with no NATS",
		Long: `Restores BACKUP (PLAN/ID, ID or PLAN/latest) from the storage and the key
alone: no NATS and no running service is needed. The storage is a plan file's
destination (--plan-file, --destination read first), one or more --fs
directories, or the --s3-* flags. Every copy is checked (frame CRCs, the
plaintext digest); when one fails, the next destination's copy is read, and with
--fallback-older the previous verified backup.

--to FILE writes the data to FILE (put in place only once it checked out); a
FILE that exists is replaced only with --overwrite. --to - writes it to
stdout, and a FILE that is a character device or a named pipe (/dev/null, a
FIFO) is written into the same way. --into-source restores into the plan's
source: beside the live data with --target NAME, or over it with --in-place.
Progress goes to stderr (docs/operations.md, "Restore with the platform gone").`,
		Example: `  backstream restore demo/latest --fs data/backups --to /tmp/demo.tar
  backstream restore orders/01JNR4S7Q0M5T2V8X9Y1Z3A4B5 --plan-file orders.yaml --identity key.txt --to - | gunzip
  backstream restore orders/latest --plan-file orders.yaml --into-source --target orders_restored --create`,
		Args: exactArgs("BACKUP"),
	}
	fs := c.Flags()
	var sf storageFlags
	sf.register(fs)
	var o restoreOptions
	fs.StringVar(&o.to, "to", "", "write the restored data to FILE, or - for stdout")
	fs.BoolVar(&o.overwrite, "overwrite", false, "with --to FILE: replace FILE when it exists")
	fs.BoolVar(&o.intoSource, "into-source", false, "restore into the plan's source (needs --plan-file)")
	fs.StringVar(&o.target, "target", "", "with --into-source: database name or directory to restore into, beside the live data")
	fs.BoolVar(&o.inPlace, "in-place", false, "with --into-source and no --target: restore over the plan's live source, replacing what the backup holds there")
	fs.BoolVar(&o.create, "create", false, "with --into-source: create the target database or directory when missing")
	fs.BoolVar(&o.clean, "clean", false, "with --into-source: drop or empty what is in the target's way first")
	fs.StringVar(&o.identity, "identity", "", "age identity file")
	fs.StringVar(&o.passEnv, "passphrase-env", "", "environment variable holding the passphrase")
	fs.BoolVar(&o.allowFailed, "allow-failed", false, "also restore a backup whose run failed after it was stored (never picked by latest)")
	fs.BoolVar(&o.fallbackOlder, "fallback-older", false, "when every copy of the backup fails its checks, restore the previous verified backup (and so on)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return restoreBackup(cmd.Context(), &sf, args[0], o, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
	return c
}

type restoreOptions struct {
	to, target, identity, passEnv                                  string
	intoSource, inPlace, create, clean, allowFailed, fallbackOlder bool
	// overwrite lets --to FILE replace a regular file that exists.
	overwrite bool
	// extract is the directory `backstream extract` writes the backup's
	// native files into (source.ExtractFunc).
	extract string
}

func restoreBackup(ctx context.Context, sf *storageFlags, ref string, o restoreOptions, stdout, stderr io.Writer) error {
	if o.extract == "" && (o.to == "") == !o.intoSource {
		return usageError("restore: give one of --to FILE|- or --into-source")
	}
	switch {
	case !o.intoSource && (o.target != "" || o.inPlace):
		return usageError("restore: --target and --in-place go with --into-source")
	case o.intoSource && o.target != "" && o.inPlace:
		return usageError("restore: give --target (beside the live data) or --in-place (over it), not both")
	case o.intoSource && o.target == "" && !o.inPlace:
		return usageError("restore: --into-source without --target would restore over the plan's live source; " +
			"give --target NAME to restore beside it, or --in-place to replace what the backup holds there")
	case o.overwrite && (o.to == "" || o.to == "-"):
		return usageError("restore: --overwrite goes with --to FILE")
	}
	// The file is looked at before the storage is: a restore that would
	// replace a file without --overwrite, or into a directory, is refused
	// before anything is listed or read. A device or a pipe is opened only
	// when a copy reaches it, which restore.Stream allows once the copy's
	// first frame checked out: a loader reading a FIFO must not take a
	// restore that found nothing, or only bad copies, for an empty dump.
	var stream bool
	var part *partialFile
	if o.to != "" && o.to != "-" {
		var err error
		if stream, err = streamTarget(o.to); err != nil {
			return err
		}
		if !stream {
			if part, err = newPartialFile(o.to, o.overwrite); err != nil {
				return err
			}
			defer part.discard()
		}
	}
	keys, err := app.Keys(o.identity, o.passEnv)
	if err != nil {
		return usageError("restore: %v", err)
	}
	dests, open, p, err := sf.destinations()
	if err != nil {
		return err
	}
	preferred, err := sf.preferred(dests)
	if err != nil {
		return err
	}
	order, _ := restore.Order(dests, preferred)
	planName, id, hasPlan := strings.Cut(ref, "/")
	if !hasPlan {
		planName, id = "", ref
		if p != nil {
			planName = p.Name()
		}
	}
	if planName == "" && id == "latest" {
		return usageError("restore: latest needs its plan: PLAN/latest")
	}
	held := restore.Gather(ctx, open, order, planName)
	copies, err := restore.Candidates(held, restore.Choice{ID: id, FallbackOlder: o.fallbackOlder, AllowFailed: o.allowFailed})
	if errors.Is(err, backup.ErrFailed) {
		return fmt.Errorf("%w (--allow-failed restores it anyway)", err)
	}
	if err != nil {
		return fmt.Errorf("%w%s", err, restore.Unlisted(held))
	}
	if m := copies[0].Manifest; !backup.CanOpen(m, keys) {
		return usageError("restore: backup %s is encrypted (%s): give --identity or --passphrase-env", m.BackupID, m.KeyWrap.Scheme)
	}
	prog := newProgress(stderr)
	// begin is when the copy being read started: a fallback to another
	// copy starts the rate again.
	var begin time.Time
	counted := func(total int64) func(io.Reader) io.Reader {
		begin = time.Now()
		return func(r io.Reader) io.Reader {
			return &countingReader{r: r, last: begin, every: 250 * time.Millisecond, report: func(n int64) {
				prog.update("restore", join(human(n)+" of "+human(total), rate(n, time.Since(begin))))
			}}
		}
	}
	var consume restore.Consume
	var finish func() error
	var extracted []string
	switch {
	case o.extract != "":
		// An extract is all or nothing (source.ExtractFunc): a copy that
		// fails its checks mid-stream leaves nothing, and the next copy
		// starts into the same directory.
		consume = func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
			sp, err := plugins.Default().Sources.Lookup(c.Manifest.Source.Type)
			if err != nil {
				return err
			}
			extracted, err = sp.ExtractTo(ctx, counted(c.Manifest.Bytes)(r), o.extract)
			return err
		}
	case o.intoSource:
		if p == nil {
			return usageError("restore: --into-source needs --plan-file")
		}
		src, _, err := plugins.Default().Source(p)
		if err != nil {
			return err
		}
		if o.inPlace {
			prog.line(fmt.Sprintf("restoring IN PLACE over the live %s source of plan %s: %s", p.Spec.Source.Type, p.Name(), replaced(copies[0].Manifest)))
		}
		into := restore.IntoSource(p.Spec.Source.Type, src, source.RestoreOptions{Target: o.target, Create: o.create, Clean: o.clean}, nil)
		consume = func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
			return into(ctx, attempt, c, counted(c.Manifest.Bytes)(r))
		}
	case o.to == "-":
		consume = streamTo(stdout, "stdout", counted)
	case stream:
		var f *os.File
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
		var write restore.Consume
		consume = func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
			if f == nil {
				var err error
				if f, err = os.OpenFile(o.to, os.O_WRONLY, 0); err != nil {
					return fmt.Errorf("restore to %s: %w", o.to, err)
				}
				write = streamTo(f, o.to, counted)
			}
			return write(ctx, attempt, c, r)
		}
		finish = func() error { // a copy reached it: f is open
			err := f.Close()
			f = nil
			return err
		}
	default:
		consume = func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
			return part.write(counted(c.Manifest.Bytes)(r))
		}
		finish = part.commit
	}
	prog.line(fmt.Sprintf("reading %s", copies[0]))
	used, stats, failed, err := restore.Fallback(ctx, open, copies, keys, func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		// Not attempt > 0: a copy that failed at its first frame never
		// reached the target, and the one after it is attempt 0.
		if c.Destination != copies[0].Destination || c.Manifest.BackupID != copies[0].Manifest.BackupID {
			prog.line(fmt.Sprintf("the copy before failed its checks: falling back to %s", c))
		}
		return consume(ctx, attempt, c, r)
	})
	for _, a := range failed {
		prog.line(fmt.Sprintf("copy failed: %s: %v", a.Copy, a.Err))
	}
	if err != nil {
		return err
	}
	if finish != nil {
		if err := finish(); err != nil {
			return err
		}
	}
	m := used.Manifest
	for _, name := range extracted {
		fmt.Fprintln(stdout, name)
	}
	prog.line(fmt.Sprintf("restored backup %s of plan %s from destination %s: %s, sha256 %s verified, %s", m.BackupID, m.Plan, used.Destination, human(stats.Bytes), m.PlaintextSHA256, rateOrTime(stats.Bytes, time.Since(begin))))
	if len(failed) > 0 {
		prog.line(fmt.Sprintf("used a fallback copy: %d copies before it failed their checks (above)", len(failed)))
	}
	return nil
}

// streamTo consumes a restore by writing it to w, which cannot take back
// what reached it (stdout, a device, a pipe): a later copy is read only
// when the bad one failed before its first byte.
func streamTo(w io.Writer, name string, counted func(int64) func(io.Reader) io.Reader) func(context.Context, int, restore.Copy, io.Reader) error {
	var written int64
	return func(ctx context.Context, attempt int, c restore.Copy, r io.Reader) error {
		if written > 0 {
			return fmt.Errorf("%w: %d bytes of an earlier copy already went to %s; restore to a regular file (--to FILE) to let it fall back to %s", restore.ErrNotRestartable, written, name, c)
		}
		n, err := copyLarge(w, counted(c.Manifest.Bytes)(r))
		written += n
		return err
	}
}

// streamTarget reports whether path is (or links to) a character device
// or a named pipe — /dev/null to try a restore, a FIFO a loader reads —
// which is written into as stdout is. Replacing it with the restored file,
// as a partialFile does, destroys it: a restore run as root `--to
// /dev/null` once left a regular file in its place, and every program on
// the machine writing to /dev/null failed after it. It returns false for a
// regular file or a path that does not exist (a partialFile's business),
// and refuses anything else before a byte is read.
func streamTarget(path string) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("restore to %s: %w", path, err)
	}
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		return false, nil
	case mode&fs.ModeCharDevice != 0, mode&fs.ModeNamedPipe != 0:
		return true, nil
	case mode.IsDir():
		return false, fmt.Errorf("restore to %s: a directory; --to names the file to write (--extract DIR unpacks a files backup into a directory)", path)
	default:
		return false, fmt.Errorf("restore to %s: a %s, neither a regular file, a character device nor a named pipe; restore to a file, or with --to - into a pipe of your own", path, fileKind(mode))
	}
}

// fileKind names the type of a file mode.
func fileKind(mode fs.FileMode) string {
	switch {
	case mode&fs.ModeDevice != 0:
		return "block device"
	case mode&fs.ModeSocket != 0:
		return "socket"
	default:
		return mode.Type().String()
	}
}

// partialFile is the temporary file beside path a restore writes into; it
// is given path's name only once a copy opened whole and its digest
// matched, so a failed restore leaves no file that could pass for a good
// one, and a fallback to another copy starts it again from empty.
//
// A file already at path is replaced only when the caller said so
// (overwrite): restoring over last night's dump, or over the one file an
// operator meant to compare with, is a destructive operation that asks for
// its permission, as --in-place does for a source. Without overwrite an
// existing file is refused before anything is read, and the finished file
// is named by a hard link, so that a file made at path meanwhile is not
// replaced either (as extract names its files).
type partialFile struct {
	path      string
	overwrite bool
	tmp       *os.File
	done      bool
}

// errFileExists is why a restore that would replace a file stopped.
var errFileExists = errors.New("the file exists; give --overwrite to replace it")

func newPartialFile(path string, overwrite bool) (*partialFile, error) {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("restore to %s: %w", path, errFileExists)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return nil, fmt.Errorf("restore to %s: %w", path, err)
	}
	return &partialFile{path: path, overwrite: overwrite, tmp: tmp}, nil
}

// write empties the file and writes r into it.
func (f *partialFile) write(r io.Reader) error {
	if err := f.tmp.Truncate(0); err != nil {
		return fmt.Errorf("restore to %s: %w", f.path, err)
	}
	if _, err := f.tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("restore to %s: %w", f.path, err)
	}
	// Through writeback: a restore of many GiB neither floods the page
	// cache nor leaves all of it for the closing fsync.
	_, err := io.Copy(writeback.New(f.tmp), r)
	return err
}

// copyLarge copies r to w in writes of up to 1 MiB: io.Copy into an
// *os.File goes through its ReadFrom, which writes 32 KiB at a time from
// a reader it cannot splice (0.35 core-s per GiB of write calls measured
// on a restore), and the restore's readers are such readers.
func copyLarge(w io.Writer, r io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, make([]byte, 1<<20))
}

func (f *partialFile) commit() error {
	if err := f.tmp.Sync(); err != nil {
		return fmt.Errorf("restore to %s: %w", f.path, err)
	}
	if err := f.tmp.Close(); err != nil {
		return fmt.Errorf("restore to %s: %w", f.path, err)
	}
	if f.overwrite {
		if err := os.Rename(f.tmp.Name(), f.path); err != nil {
			return fmt.Errorf("restore to %s: %w", f.path, err)
		}
		f.done = true
		return nil
	}
	// discard removes the temporary name whatever the link did.
	if err := os.Link(f.tmp.Name(), f.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("restore to %s: made while the restore ran: %w", f.path, errFileExists)
		}
		return fmt.Errorf("restore to %s: %w (on a filesystem without hard links, give --overwrite)", f.path, err)
	}
	f.done = true
	_ = os.Remove(f.tmp.Name())
	return nil
}

// discard removes the file unless it was committed.
func (f *partialFile) discard() {
	if !f.done {
		f.tmp.Close()
		os.Remove(f.tmp.Name())
	}
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

func newBackupsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "backups (--plan-file FILE [--destination NAME] | --fs DIR | --s3-* flags) [--plan PLAN] [--all]",
		Short: "List the backups a storage holds, with no NATS",
		Long: `Lists the backups one storage holds, read from their manifests: no NATS is
needed. Backups of failed runs are listed only with --all. A manifest that
cannot be read is listed as unreadable and the command exits 1.`,
		Example: "  backstream backups --fs data/backups\n  backstream backups --plan-file orders.yaml --destination s3-dr -o json",
		Args:    exactArgs(),
	}
	var sf storageFlags
	sf.register(c.Flags())
	planName := c.Flags().String("plan", "", "only backups of this plan")
	all := c.Flags().Bool("all", false, "also list the backups of failed runs")
	output := addOutputFlag(c.Flags(), "table", "table", "json", "yaml")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return listBackups(cmd.Context(), &sf, *planName, *all, output, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
	return c
}

func listBackups(ctx context.Context, sf *storageFlags, planName string, all bool, output *outputFlag, stdout, stderr io.Writer) error {
	st, p, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if planName == "" && p != nil {
		planName = p.Name()
	}
	list, bad, err := backup.List(ctx, st, planName)
	if err != nil {
		return err
	}
	// A failed backup is not one: only --all shows it, with why.
	shown := []format.Manifest{}
	for _, m := range list {
		if all || !backup.Failed(m) {
			shown = append(shown, m)
		}
	}
	hidden := len(list) - len(shown)
	err = output.write(stdout, shown, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PLAN\tBACKUP\tCREATED\tBYTES\tSTORED\tVERIFY\tCHAIN")
		for _, m := range shown {
			status := m.Verify.Status
			if backup.Failed(m) {
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
			fmt.Fprintf(w, "(%d backups of failed runs not listed: backups --all lists them)\n", hidden)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		if output.structured() {
			// The document holds the readable ones; say which are not.
			for k, err := range bad {
				fmt.Fprintf(stderr, "unreadable manifest %s: %v\n", k, err)
			}
		}
		return errors.New("some manifests could not be read")
	}
	return nil
}

// replaced says what an in-place restore of m replaces, from what the
// backup recorded of its source.
func replaced(m format.Manifest) string {
	d := m.Source.Describe
	for _, k := range []string{"databases", "database", "path", "dir"} {
		if v := d[k]; v != "" {
			return k + " " + v + " will be replaced by backup " + m.BackupID
		}
	}
	return "what backup " + m.BackupID + " holds will be replaced"
}
