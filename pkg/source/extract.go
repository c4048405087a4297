package source

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/backstream/backstream/pkg/ctxio"
	"github.com/backstream/backstream/pkg/writeback"
)

// ExtractFunc is a plugin's Extract: it writes a backup stream that the
// plugin's Backup wrote as the files its service's own tools read (a
// pg_restore-able .dump per database, an SQL file the mariadb client loads,
// dump.rdb, mongorestore's directory layout, a tar) into dir, and returns
// their names relative to dir, slash-separated, in the order written.
//
// The contract, for every plugin:
//   - It needs no configuration and never touches the service: the stream's
//     format belongs to the plugin type (the manifest's source.type), not to
//     a configured source, so a backup can be extracted on any machine.
//   - It streams: memory stays bounded whatever the dump's size (one entry
//     buffer, one document at most); it never holds a whole dump.
//   - dir is made (0700) when missing. A name that already exists in dir is
//     never replaced: the extract fails with an error wrapping os.ErrExist.
//   - All or nothing: a file appears under its name only when its content is
//     complete, and when the extract fails (a stream cut short or corrupt,
//     wrapping ErrCorrupt; ctx cancelled; a write that fails) every file it
//     made is removed again, so a directory never holds a partial dump that
//     looks whole.
//   - Names from the stream (database, collection) are escaped with
//     FileName, so nothing is written outside dir.
//
// It may run concurrently with other extracts into other directories.
type ExtractFunc func(ctx context.Context, r io.Reader, dir string) ([]string, error)

// Extract is what a plugin's ExtractFunc is built on: it opens dir, runs fill
// with it and returns the committed names, or removes them and returns
// fill's error.
func Extract(ctx context.Context, dir string, fill func(d *ExtractDir) error) ([]string, error) {
	d, err := openExtractDir(dir)
	if err != nil {
		return nil, err
	}
	if err := fill(d); err != nil {
		d.remove()
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		d.remove()
		return nil, err
	}
	return d.names, nil
}

// ExtractDir is the directory one Extract writes into. It is not safe for
// concurrent use.
type ExtractDir struct {
	dir   string
	made  []string // directories this extract created, deepest last
	names []string // committed files, relative and slash-separated
	open  []*ExtractFile
}

func openExtractDir(dir string) (*ExtractDir, error) {
	if dir == "" {
		return nil, errors.New("extract: directory required")
	}
	d := &ExtractDir{dir: dir}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("extract: %w", err)
		}
		d.made = append(d.made, dir)
	} else if err != nil {
		return nil, fmt.Errorf("extract: %w", err)
	}
	return d, nil
}

// Create starts the file name (slash-separated, each element made with
// FileName by the caller). Its parent directories are made as needed. The
// file is written under a temporary name until Commit.
func (d *ExtractDir) Create(name string) (*ExtractFile, error) {
	elems := strings.Split(name, "/")
	for _, e := range elems {
		if e == "" || e == "." || e == ".." || strings.ContainsAny(e, "\\\x00") {
			return nil, fmt.Errorf("extract: bad file name %q", name)
		}
	}
	parent := d.dir
	for _, e := range elems[:len(elems)-1] {
		parent = filepath.Join(parent, e)
		if err := os.Mkdir(parent, 0o700); err == nil {
			d.made = append(d.made, parent)
		} else if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("extract %s: %w", name, err)
		}
	}
	final := filepath.Join(d.dir, filepath.FromSlash(name))
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("extract %s: %w", name, os.ErrExist)
	}
	f, err := os.CreateTemp(parent, "."+elems[len(elems)-1]+".partial-*")
	if err != nil {
		return nil, fmt.Errorf("extract %s: %w", name, err)
	}
	ef := &ExtractFile{d: d, f: f, w: bufio.NewWriterSize(writeback.New(f), 256<<10), name: name, final: final}
	d.open = append(d.open, ef)
	return ef, nil
}

// Copy writes r, to its end, as the file name and commits it.
func (d *ExtractDir) Copy(ctx context.Context, name string, r io.Reader) error {
	f, err := d.Create(name)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, ctxio.Reader(ctx, r)); err != nil {
		f.Abort()
		return fmt.Errorf("extract %s: %w", name, err)
	}
	return f.Commit()
}

// Names lists the files committed so far, in the order committed.
func (d *ExtractDir) Names() []string { return slices.Clone(d.names) }

// remove deletes what the extract made: open temporary files, committed
// files and the directories it created (when empty).
func (d *ExtractDir) remove() {
	for _, f := range d.open {
		f.Abort()
	}
	for _, n := range d.names {
		_ = os.Remove(filepath.Join(d.dir, filepath.FromSlash(n)))
	}
	for i := len(d.made) - 1; i >= 0; i-- {
		_ = os.Remove(d.made[i])
	}
	d.names = nil
}

// ExtractFile is one file of an extract, written under a temporary name.
type ExtractFile struct {
	d     *ExtractDir
	f     *os.File
	w     *bufio.Writer
	name  string
	final string
	done  bool
}

func (f *ExtractFile) Write(p []byte) (int, error) { return f.w.Write(p) }

// Commit flushes and syncs the file and gives it its name. An existing file
// of that name (made meanwhile by someone else) is not replaced: the hard
// link that names it fails with os.ErrExist.
func (f *ExtractFile) Commit() error {
	if f.done {
		return nil
	}
	err := f.w.Flush()
	if err == nil {
		err = f.f.Sync()
	}
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.f.Name(), 0o600)
	}
	if err == nil {
		err = os.Link(f.f.Name(), f.final)
	}
	_ = os.Remove(f.f.Name())
	f.done = true
	if err != nil {
		return fmt.Errorf("extract %s: %w", f.name, err)
	}
	f.d.names = append(f.d.names, f.name)
	return nil
}

// Abort drops the file; after Commit it does nothing.
func (f *ExtractFile) Abort() {
	if f.done {
		return
	}
	f.done = true
	_ = f.f.Close()
	_ = os.Remove(f.f.Name())
}

// FileName turns a name from a stream (a database, a collection) into one
// file name element: '%', '/', '\', control characters and a leading '.'
// are percent-encoded (%2F), as mongodump does for collection names, so a
// name can neither leave the directory nor hide as a dot file. Every other
// byte, UTF-8 included, is kept.
func FileName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c == '/' || c == '\\' || c < 0x20 || c == 0x7f || (i == 0 && c == '.') {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	if b.Len() == 0 {
		return "%00"
	}
	return b.String()
}

// TarExtract returns the ExtractFunc of a plugin whose stream already is a
// tar: it writes the stream unchanged as name, after reading it through
// archive/tar to the end-of-archive record, so a stream cut short (also at
// an entry boundary, which archive/tar alone reports as a clean end) is
// ErrCorrupt and leaves nothing.
func TarExtract(name string) ExtractFunc {
	return func(ctx context.Context, r io.Reader, dir string) ([]string, error) {
		return Extract(ctx, dir, func(d *ExtractDir) error {
			f, err := d.Create(name)
			if err != nil {
				return err
			}
			tw := &teeWriter{w: f}
			cr := &countReader{r: io.TeeReader(ctxio.Reader(ctx, r), tw)}
			err = checkTar(cr)
			if err == nil {
				// What follows the end record (the zero padding of a 10 KiB
				// record) belongs to the file too.
				_, err = io.Copy(io.Discard, cr)
			}
			switch {
			case tw.err != nil:
				err = tw.err
			case ctx.Err() != nil:
				err = ctx.Err()
			}
			if err != nil {
				f.Abort()
				return fmt.Errorf("extract %s: %w", name, err)
			}
			return f.Commit()
		})
	}
}

// checkTar reads a tar stream to its end record; every failure is ErrCorrupt
// (the caller tells a failed write or a cancel apart).
func checkTar(cr *countReader) error {
	tr := tar.NewReader(cr)
	for {
		// Read the rest of the previous entry, so cr.n is where its data
		// ends (a sparse entry's header gives only its real size).
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		end := cr.n + (-cr.n & 511)
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// A complete stream has two zero blocks after the last entry.
			if cr.n < end+1024 {
				return fmt.Errorf("%w: tar end record missing", ErrCorrupt)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
	}
}

// teeWriter keeps the first write error, so a full disk is not reported
// as a corrupt stream.
type teeWriter struct {
	w   io.Writer
	err error
}

func (t *teeWriter) Write(p []byte) (int, error) {
	if t.err != nil {
		return 0, t.err
	}
	n, err := t.w.Write(p)
	t.err = err
	return n, err
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
