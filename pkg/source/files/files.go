// Package files is the source plugin for a directory tree: the backup is a
// tar stream (regular files with their holes, hard links, directories,
// symlinks, modes, mtimes), and a restore unpacks it into a target directory
// without ever writing outside it, whatever the archive holds. Neither side
// holds a file's content in memory.
package files

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/backstream/backstream/pkg/source"
)

// Name is the plugin's registry name.
const Name = "files"

// Config is the plan block of a files source.
type Config struct {
	// Path is the absolute root of the tree; also the default restore target.
	Path string `yaml:"path"`
	// Include, when set, keeps only files and symlinks matching one of these
	// globs (directories on the way are kept). "**" matches any depth; a
	// pattern without "/" matches base names at any depth.
	Include []string `yaml:"include"`
	// Exclude drops matching entries; an excluded directory is not descended.
	Exclude []string `yaml:"exclude"`
}

// Validate reports every problem with its field name.
func (c *Config) Validate() error {
	var p source.Problems
	switch {
	case c.Path == "":
		p.Addf("path", "required")
	case !filepath.IsAbs(c.Path):
		p.Addf("path", "must be absolute")
	}
	for i, g := range c.Include {
		if !validPattern(g) {
			p.Addf(fmt.Sprintf("include[%d]", i), "bad glob %q", g)
		}
	}
	for i, g := range c.Exclude {
		if !validPattern(g) {
			p.Addf(fmt.Sprintf("exclude[%d]", i), "bad glob %q", g)
		}
	}
	return p.Err()
}

// Plugin returns the registry entry. An empty tree still makes a tar end
// record, so a complete dump is never 0 bytes.
func Plugin() source.Plugin {
	return source.PluginOf[Config](Name, New)
}

// Source archives one tree.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source { return &Source{cfg: c} }

// ErrUnsafeEntry is returned by Restore for an archive entry that would
// write outside the target.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// ErrChanged is returned by Backup when a file shrank while it was read.
var ErrChanged = errors.New("file changed while being read")

// Backup writes the tree as a tar stream. Files are read as they are: there
// is no snapshot, so quiesce writers (a hook) for a consistent tree. A file
// that shrinks while read fails the backup; one that grows is cut at the
// size it had when its header was written.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	root := s.cfg.Path
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("files backup: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("files backup: %s is not a directory", root)
	}
	tw := tar.NewWriter(w)
	written := map[string]bool{}
	// First name archived of each file with several names; the other names
	// become hard link entries to it.
	links := map[inode]string{}
	var nfiles, nbytes int64
	var writeDir func(rel string) error
	writeDir = func(rel string) error {
		if rel == "." || written[rel] {
			return nil
		}
		if err := writeDir(path.Dir(rel)); err != nil {
			return err
		}
		info, err := os.Lstat(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		written[rel] = true
		return tw.WriteHeader(header(info, rel+"/", ""))
	}
	walkErr := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if matchAny(s.cfg.Exclude, rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if len(s.cfg.Include) == 0 {
				return writeDir(rel)
			}
			return nil
		case len(s.cfg.Include) > 0 && !matchAny(s.cfg.Include, rel):
			return nil
		}
		if err := writeDir(path.Dir(rel)); err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return tw.WriteHeader(header(info, rel, target))
		case info.Mode().IsRegular():
			nfiles++
			id, multi := linkID(info)
			if first, ok := links[id]; multi && ok {
				h := header(info, rel, "")
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(h)
			}
			if multi {
				links[id] = rel
			}
			nbytes += info.Size()
			return writeFile(tw, w, p, rel, info)
		default:
			return nil // sockets, devices, fifos are not data
		}
	})
	if walkErr != nil {
		return nil, fmt.Errorf("files backup: %w", walkErr)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("files backup: %w", err)
	}
	return source.Description{"path": root, "files": fmt.Sprint(nfiles), "bytes": fmt.Sprint(nbytes)}, nil
}

func header(info fs.FileInfo, name, link string) *tar.Header {
	h := &tar.Header{
		Name:    name,
		ModTime: info.ModTime(),
		Format:  tar.FormatPAX,
	}
	// tar encodes the special bits as in chmod(2), not as fs.FileMode does.
	h.Mode = int64(info.Mode().Perm())
	if info.Mode()&fs.ModeSetuid != 0 {
		h.Mode |= 0o4000
	}
	if info.Mode()&fs.ModeSetgid != 0 {
		h.Mode |= 0o2000
	}
	if info.Mode()&fs.ModeSticky != 0 {
		h.Mode |= 0o1000
	}
	switch {
	case info.IsDir():
		h.Typeflag = tar.TypeDir
	case info.Mode()&fs.ModeSymlink != 0:
		h.Typeflag = tar.TypeSymlink
		h.Linkname = link
	default:
		h.Typeflag = tar.TypeReg
		h.Size = info.Size()
	}
	return h
}

// writeFile writes one regular file: with its holes left out when the file
// system reports any, else as a plain entry. w is what tw writes to.
func writeFile(tw *tar.Writer, w io.Writer, p, rel string, info fs.FileInfo) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := header(info, rel, "")
	if regions := dataRegions(f, h.Size); !isDense(regions, h.Size) {
		return writeSparse(tw, w, f, h, regions)
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	// By position: looking for holes moved the file's offset.
	n, err := io.CopyN(tw, io.NewSectionReader(f, 0, h.Size), h.Size)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w (read %d of %d bytes)", rel, ErrChanged, n, h.Size)
	}
	return err
}

// Restore unpacks the tar stream into o.Target, or Config.Path when empty.
// o.Create makes the target directory; o.Clean empties it first. It refuses
// (ErrUnsafeEntry) absolute names, ".." components, symlinks whose target
// leaves the tree, hard links to outside, and any entry whose parent path
// goes through a symlink, so nothing is written outside the target. The
// target is opened as an os.Root, which enforces the same at the system call.
// A stream cut short is an error, even at an entry boundary.
func (s *Source) Restore(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	target := o.Target
	if target == "" {
		target = s.cfg.Path
	}
	if target == "" {
		return errors.New("files restore: no target directory")
	}
	if o.Create {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("files restore: %w", err)
		}
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return fmt.Errorf("files restore: %w", err)
	}
	defer root.Close()
	if o.Clean {
		if err := clean(root, target); err != nil {
			return fmt.Errorf("files restore: clean: %w", err)
		}
	}
	if err := unpack(ctx, root, r); err != nil {
		return fmt.Errorf("files restore: %w", err)
	}
	return nil
}

func clean(root *os.Root, target string) error {
	entries, err := os.ReadDir(target)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := root.RemoveAll(e.Name()); err != nil {
			return err
		}
	}
	return nil
}

// countingReader counts bytes so Restore can tell a tar end record from a
// stream that stops at an entry boundary (archive/tar reports io.EOF for both).
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// safeName cleans an archive name and refuses one that leaves the root.
func safeName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || filepath.IsAbs(name) || strings.Contains(name, "\\") {
		return "", fmt.Errorf("%w: %q: absolute or empty name", ErrUnsafeEntry, name)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		if seg == ".." {
			return "", fmt.Errorf("%w: %q: \"..\" component", ErrUnsafeEntry, name)
		}
	}
	return path.Clean(name), nil
}

type dirMeta struct {
	name string
	hdr  *tar.Header
}

func unpack(ctx context.Context, root *os.Root, r io.Reader) error {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	var dirs []dirMeta
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Read what is left of the previous entry (all of it for most), so
		// cr.n is where its data ends; a sparse entry's header gives only
		// its real size, not what it takes in the stream.
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		end := cr.n + padding(cr.n)
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// A complete stream ends with two zero blocks after the last entry.
			if cr.n < end+1024 {
				return fmt.Errorf("%w: tar end record missing", source.ErrCorrupt)
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name, err := safeName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if err := checkParents(root, name); err != nil {
			return err
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			fi, err := root.Lstat(name)
			switch {
			case err == nil && !fi.IsDir():
				if err := root.Remove(name); err != nil {
					return err
				}
				fallthrough
			case errors.Is(err, fs.ErrNotExist):
				if err := root.Mkdir(name, 0o700); err != nil {
					return err
				}
			case err != nil:
				return err
			}
			dirs = append(dirs, dirMeta{name, h})
		case tar.TypeReg, tar.TypeGNUSparse:
			if err := removeNonDir(root, name); err != nil {
				return err
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			if isSparse(h) {
				err = copySparse(f, tr)
			} else {
				_, err = io.Copy(f, tr)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", name, err)
			}
			if err := root.Chmod(name, applyBits(mode, h.Mode)); err != nil {
				return err
			}
			if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := checkLink(name, h.Linkname, true); err != nil {
				return err
			}
			if err := removeNonDir(root, name); err != nil {
				return err
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
			if err := lchtimes(root, name, h.ModTime); err != nil {
				return err
			}
		case tar.TypeLink:
			if err := checkLink(name, h.Linkname, false); err != nil {
				return err
			}
			old, _ := safeName(h.Linkname)
			if err := removeNonDir(root, name); err != nil {
				return err
			}
			if err := root.Link(old, name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %q: entry type %q not restored", ErrUnsafeEntry, name, h.Typeflag)
		}
	}
	// Directory modes and times last, since writing into them changes both.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, applyBits(fs.FileMode(d.hdr.Mode).Perm(), d.hdr.Mode)); err != nil {
			return err
		}
		if err := root.Chtimes(d.name, d.hdr.ModTime, d.hdr.ModTime); err != nil {
			return err
		}
	}
	return nil
}

func applyBits(perm fs.FileMode, mode int64) fs.FileMode {
	if mode&0o4000 != 0 {
		perm |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		perm |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		perm |= fs.ModeSticky
	}
	return perm
}

// checkParents refuses a name whose parent path is not plain directories:
// writing through a symlink (one the archive placed earlier, or one already
// in the target) could leave the tree.
func checkParents(root *os.Root, name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	segs := strings.Split(dir, "/")
	for i := range segs {
		p := strings.Join(segs[:i+1], "/")
		fi, err := root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(p, 0o755); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %q: parent %q is a symlink", ErrUnsafeEntry, name, p)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %q: parent %q is not a directory", ErrUnsafeEntry, name, p)
		}
	}
	return nil
}

// checkLink refuses a link target outside the tree. A symlink's target is
// relative to the link's directory; a hard link's to the root.
func checkLink(name, link string, symlink bool) error {
	if link == "" || path.IsAbs(link) || filepath.IsAbs(link) {
		return fmt.Errorf("%w: %q: link to absolute or empty %q", ErrUnsafeEntry, name, link)
	}
	p := link
	if symlink {
		p = path.Join(path.Dir(name), link)
	}
	p = path.Clean(p)
	if p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("%w: %q: link to %q leaves the target", ErrUnsafeEntry, name, link)
	}
	if !symlink {
		if _, err := safeName(link); err != nil {
			return err
		}
	}
	return nil
}

func removeNonDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%w: %q: a directory is in the way", ErrUnsafeEntry, name)
	}
	return root.Remove(name)
}

var _ source.Drillable = (*Source)(nil)

// ScratchKind implements source.Drillable: a drill unpacks the tree into a
// private directory of its own.
func (s *Source) ScratchKind() (source.ScratchKind, error) { return source.ScratchDirectory, nil }

// Owns implements source.Drillable: target is the tree's root, inside it,
// or holds it.
func (s *Source) Owns(target string) bool { return source.PathOverlaps(target, s.cfg.Path) }
