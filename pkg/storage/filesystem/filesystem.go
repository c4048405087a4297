// Package filesystem is the storage backend on a local (or mounted) directory.
//
// An object is a plain file at Path/key. Put writes a temp file named .tmp-*
// in the target directory, fsyncs it, renames it over the key and fsyncs the
// directory, so a reader sees either the old or the new complete object and a
// crash leaves at most a temp file, which List hides and New removes once it
// is an hour old. Tags live in a sidecar file .tags-<name> beside the object,
// also hidden from List. Renames into the tree and removals hold a flock(2)
// on the root directory, which makes PutIf's compare and rename atomic to
// every writer (on a network filesystem, as far as its flock is). It must
// never leave a partial file under a key name.
package filesystem

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/backstream/backstream/pkg/ctxio"

	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/writeback"
)

const (
	tmpPrefix  = ".tmp-"
	tagsPrefix = ".tags-"
	// staleAge is how old a temp file must be before New removes it: older
	// than any Put still running, we assume.
	staleAge = time.Hour
)

// Config is the filesystem backend's plugin block.
type Config struct {
	// Path is the root directory; it is created if missing.
	Path string `yaml:"path" json:"path"`
}

// Validate reports every problem of c with its field name.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("path: required")
	}
	return nil
}

// FS is a Storage on a directory.
type FS struct {
	root string
}

var (
	_ storage.Storage = (*FS)(nil)
	_ storage.Tagger  = (*FS)(nil)
	_ storage.Sweeper = (*FS)(nil)
)

// New opens (creating if needed) the directory c.Path and removes temp files
// older than an hour left there by interrupted Puts.
func New(ctx context.Context, c Config) (storage.Storage, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("filesystem config: %w", err)
	}
	root, err := filepath.Abs(c.Path)
	if err != nil {
		return nil, fmt.Errorf("filesystem root: %w", err)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("filesystem root: %w", err)
	}
	s := &FS{root: root}
	if _, err := s.RemoveIncomplete(ctx, "", time.Now().Add(-staleAge)); err != nil {
		return nil, err
	}
	return s, nil
}

// OpenExisting opens the directory c.Path for a reader that must change
// nothing (`backstream backups`, an offline restore): a directory that does
// not exist is an error wrapping fs.ErrNotExist — a typo must not create
// it and then report an empty storage — and no temp file is swept.
func OpenExisting(c Config) (storage.Storage, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("filesystem config: %w", err)
	}
	root, err := filepath.Abs(c.Path)
	if err != nil {
		return nil, fmt.Errorf("filesystem root: %w", err)
	}
	st, err := os.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("filesystem root %s does not exist (a reader creates nothing: check the path): %w", root, fs.ErrNotExist)
	case err != nil:
		return nil, fmt.Errorf("filesystem root: %w", err)
	case !st.IsDir():
		return nil, fmt.Errorf("filesystem root %s: not a directory", root)
	}
	return &FS{root: root}, nil
}

// Incomplete implements storage.Sweeper. A temp file has no key yet: it is
// named by its directory (a key prefix ending in '/', or "" for the root),
// listed when prefix could name a key in that directory.
func (s *FS) Incomplete(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	err := s.temps(ctx, prefix, func(dirKey, _ string, _ fs.DirEntry) error {
		out = append(out, dirKey)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list temp files: %w", err)
	}
	return out, nil
}

// RemoveIncomplete implements storage.Sweeper: it deletes the temp files of
// interrupted Puts, in the directories Incomplete would list for prefix,
// last modified before cutoff. New runs it for the whole tree with a cutoff
// of an hour ago.
func (s *FS) RemoveIncomplete(ctx context.Context, prefix string, cutoff time.Time) (int, error) {
	n := 0
	err := s.temps(ctx, prefix, func(_, p string, d fs.DirEntry) error {
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.ModTime().Before(cutoff) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("remove stale temp files: %w", err)
	}
	return n, nil
}

// temps calls fn for every temp file in a directory that may hold keys
// with prefix.
func (s *FS) temps(ctx context.Context, prefix string, fn func(dirKey, path string, d fs.DirEntry) error) error {
	if err := storage.CheckPrefix(prefix); err != nil {
		return err
	}
	return filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(s.root, filepath.Dir(p))
		if err != nil {
			return err
		}
		dirKey := ""
		if rel != "." {
			dirKey = filepath.ToSlash(rel) + "/"
		}
		if strings.HasPrefix(dirKey, prefix) || strings.HasPrefix(prefix, dirKey) {
			return fn(dirKey, p, d)
		}
		return nil
	})
}

// checkKey applies the shared key rules and the names this backend reserves.
func checkKey(key string) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	for _, seg := range strings.Split(key, "/") {
		if reserved(seg) {
			return fmt.Errorf("key %q: %w: segment %q is reserved by the filesystem backend (%s*, %s*)",
				key, storage.ErrInvalidKey, seg, tmpPrefix, tagsPrefix)
		}
	}
	return nil
}

func reserved(name string) bool {
	return strings.HasPrefix(name, tmpPrefix) || strings.HasPrefix(name, tagsPrefix)
}

func (s *FS) path(key string) string { return filepath.Join(s.root, filepath.FromSlash(key)) }

func tagsPath(p string) string {
	return filepath.Join(filepath.Dir(p), tagsPrefix+filepath.Base(p))
}

// Put implements storage.Storage.
func (s *FS) Put(ctx context.Context, key string, r io.Reader, o storage.PutOptions) (storage.Info, error) {
	if err := checkKey(key); err != nil {
		return storage.Info{}, err
	}
	p := s.path(key)
	info, err := s.put(ctx, p, r, o, nil)
	if err != nil {
		return storage.Info{}, fmt.Errorf("put %s: %w", key, err)
	}
	info.Key = key
	return info, nil
}

// ReadVersion implements storage.Storage. The version is the SHA-256 of
// the bytes read: a file is replaced whole (by rename), so the bytes one
// open reads are one version.
func (s *FS) ReadVersion(ctx context.Context, key string, max int64) ([]byte, string, error) {
	data, err := s.readSmall(ctx, key, max)
	if err != nil {
		return nil, "", err
	}
	return data, version(data), nil
}

// PutIf implements storage.Storage: the new file is written and synced
// first; under the tree's lock the file at key is read again and renamed
// over only if its bytes are still those of version.
func (s *FS) PutIf(ctx context.Context, key string, data []byte, ver string, o storage.PutOptions) (storage.Info, error) {
	if err := checkKey(key); err != nil {
		return storage.Info{}, err
	}
	p := s.path(key)
	info, err := s.put(ctx, p, bytes.NewReader(data), o, func() error {
		cur, err := s.readSmall(ctx, key, int64(len(data))+maxVersioned)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return fmt.Errorf("%w: deleted", storage.ErrChanged)
		case err != nil:
			return err
		case version(cur) != ver:
			return storage.ErrChanged
		}
		return nil
	})
	if err != nil {
		return storage.Info{}, fmt.Errorf("put %s: %w", key, err)
	}
	info.Key = key
	return info, nil
}

// maxVersioned bounds what PutIf reads of the object it replaces beyond
// the new one's size: versioned objects are small (manifests), and one
// much larger than its replacement has changed anyway.
const maxVersioned = 16 << 20

func version(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// readSmall reads the object at key whole (Open), refusing one of more
// than max bytes.
func (s *FS) readSmall(ctx context.Context, key string, max int64) ([]byte, error) {
	rc, err := s.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: larger than %d bytes", key, max)
	}
	return data, nil
}

// put writes r to a temp file beside p and renames it over p, under the
// tree's lock (see locked), after check, when given, found nothing wrong.
func (s *FS) put(ctx context.Context, p string, r io.Reader, o storage.PutOptions, check func() error) (info storage.Info, err error) {
	dir := filepath.Dir(p)
	f, err := createTemp(dir)
	if err != nil {
		return info, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			// An aborted first object of a prefix leaves no empty
			// directory behind (a plan's, on its first failed backup).
			s.prune(dir)
		}
	}()
	if _, err = io.Copy(writeback.New(f), ctxio.Reader(ctx, r)); err != nil {
		return info, err
	}
	if err = f.Sync(); err != nil {
		return info, fmt.Errorf("sync: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return info, err
	}
	if err = f.Close(); err != nil {
		return info, err
	}
	if err = ctx.Err(); err != nil {
		return info, err
	}
	err = s.locked(func() error {
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		// The tags belong to the new object: write (or drop) them just
		// before the rename that makes it visible.
		if err := writeTags(tagsPath(p), o.Tags); err != nil {
			return err
		}
		return os.Rename(f.Name(), p)
	})
	if err != nil {
		return info, err
	}
	if err = syncDir(dir); err != nil {
		return info, err
	}
	return storage.Info{Size: fi.Size(), Modified: fi.ModTime(), Tags: cloneTags(o.Tags)}, nil
}

// createTemp makes the directory and a temp file in it, retrying when a
// concurrent Delete removed the freshly made, still empty directory.
func createTemp(dir string) (*os.File, error) {
	var err error
	for range 5 {
		if err = os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
		var f *os.File
		f, err = os.CreateTemp(dir, tmpPrefix+"*")
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return nil, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}

// Open implements storage.Storage.
func (s *FS) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", key, notFound(err))
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		err = storage.ErrNotFound
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	return f, nil
}

// Stat implements storage.Storage; Info.Tags holds the object's tags.
func (s *FS) Stat(ctx context.Context, key string) (storage.Info, error) {
	if err := checkKey(key); err != nil {
		return storage.Info{}, err
	}
	info, err := s.stat(key)
	if err != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return info, nil
}

func (s *FS) stat(key string) (storage.Info, error) {
	p := s.path(key)
	fi, err := os.Stat(p)
	if err != nil {
		return storage.Info{}, notFound(err)
	}
	if fi.IsDir() {
		return storage.Info{}, storage.ErrNotFound
	}
	tags, err := readTags(tagsPath(p))
	if err != nil {
		return storage.Info{}, err
	}
	return storage.Info{Key: key, Size: fi.Size(), Modified: fi.ModTime(), Tags: tags}, nil
}

// List implements storage.Storage. It walks only the directories that can
// hold keys with prefix, visiting entries so that keys come out in lexical
// byte order (a directory sorts as its name followed by '/').
func (s *FS) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if err := storage.CheckPrefix(prefix); err != nil {
		return err
	}
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	return s.walk(ctx, start, prefix, fn)
}

type entry struct {
	key  string // key of a file, key + "/" of a directory
	name string
	dir  bool
}

func (s *FS) walk(ctx context.Context, dirKey, prefix string, fn func(storage.Info) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	dirPath := s.root
	if dirKey != "" {
		dirPath = s.path(dirKey)
	}
	des, err := os.ReadDir(dirPath)
	if err != nil {
		if (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) && dirKey != "" {
			return nil // absent, or removed while we listed
		}
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	entries := make([]entry, 0, len(des))
	for _, de := range des {
		name := de.Name()
		if reserved(name) {
			continue
		}
		key := path.Join(dirKey, name)
		if de.IsDir() {
			entries = append(entries, entry{key: key + "/", name: name, dir: true})
			continue
		}
		if !de.Type().IsRegular() {
			continue
		}
		entries = append(entries, entry{key: key, name: name})
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	for _, e := range entries {
		if e.dir {
			// Descend only where a key may start with prefix.
			if strings.HasPrefix(e.key, prefix) || strings.HasPrefix(prefix, e.key) {
				if err := s.walk(ctx, strings.TrimSuffix(e.key, "/"), prefix, fn); err != nil {
					return err
				}
			}
			continue
		}
		if !strings.HasPrefix(e.key, prefix) {
			continue
		}
		fi, err := os.Stat(filepath.Join(dirPath, e.name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted while we listed
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := fn(storage.Info{Key: e.key, Size: fi.Size(), Modified: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Storage. It also removes the object's tags and
// the directories the deletion left empty.
func (s *FS) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	p := s.path(key)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil // a key prefix, not an object
	}
	err = s.locked(func() error {
		if err := os.Remove(tagsPath(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tags: %w", err)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	s.prune(filepath.Dir(p))
	return nil
}

// prune removes dir and its parents below the root while they are empty.
// Best effort: a directory that is not empty (or just got a new file)
// stays, which is the correct outcome; a Put racing it retries
// (createTemp).
func (s *FS) prune(dir string) {
	for ; dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
}

// SetTags implements storage.Tagger.
func (s *FS) SetTags(ctx context.Context, key string, tags map[string]string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if _, err := s.stat(key); err != nil {
		return fmt.Errorf("set tags %s: %w", key, err)
	}
	if err := writeTags(tagsPath(s.path(key)), tags); err != nil {
		return fmt.Errorf("set tags %s: %w", key, err)
	}
	return nil
}

// GetTags implements storage.Tagger.
func (s *FS) GetTags(ctx context.Context, key string) (map[string]string, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	info, err := s.stat(key)
	if err != nil {
		return nil, fmt.Errorf("get tags %s: %w", key, err)
	}
	return info.Tags, nil
}

// Close implements storage.Storage; there is nothing to release.
func (s *FS) Close() error { return nil }

// writeTags replaces the sidecar at p atomically, or removes it for no tags.
func writeTags(p string, tags map[string]string) (err error) {
	if len(tags) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tags: %w", err)
		}
		return nil
	}
	b, err := json.Marshal(tags)
	if err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(b); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	if err = os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	return nil
}

func readTags(p string) (map[string]string, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tags: %w", err)
	}
	tags := map[string]string{}
	if err := json.Unmarshal(b, &tags); err != nil {
		return nil, fmt.Errorf("tags %s: %w", p, err)
	}
	return tags, nil
}

func cloneTags(t map[string]string) map[string]string {
	out := make(map[string]string, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// notFound maps a missing file (or a missing parent, or a parent that is a
// file) to storage.ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	return err
}
