// Package storage is the interface every backup destination implements, with
// the key rules they share. Backends live in subpackages (filesystem, s3) and
// are assembled by name in storage/registry; storagetest is the conformance
// suite every backend runs against the real thing.
//
// A backend stores opaque bytes under keys. It never interprets them, never
// retries on its own (retry wraps a Storage, it is not inside one) and never
// leaves a partial object visible at a key.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ErrNotFound means no object exists at the key. Open, Stat and GetTags
// return an error that matches it with errors.Is.
var ErrNotFound = errors.New("object not found")

// ErrInvalidKey means a key breaks the key rules (see CheckKey). Every method
// taking a key returns an error matching it before doing any I/O.
var ErrInvalidKey = errors.New("invalid key")

// ErrAccessDenied means the server refused the credentials the storage was
// opened with, or their permission for the operation (S3's AccessDenied,
// InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken). A process that
// keeps a storage open drops it on this error, so the next open reads the
// credentials again (a rotated key).
var ErrAccessDenied = errors.New("access denied")

// ErrChanged means a conditional write (PutIf) found the object at its
// key no longer the version it was read as: replaced or deleted since.
// Nothing was written.
var ErrChanged = errors.New("object changed since it was read")

// PutOptions are the optional attributes of a stored object.
type PutOptions struct {
	// ContentType is recorded where the backend can (S3); filesystem ignores it.
	ContentType string
	// Tags are stored with the object, atomically with it where the backend
	// can (S3 sets them with the upload; filesystem writes its sidecar before
	// the rename). A backend without tags ignores them.
	Tags map[string]string
}

// Info describes a stored object.
type Info struct {
	Key      string
	Size     int64
	Modified time.Time
	// Tags is filled by Stat on backends that are Taggers; List leaves it nil
	// because fetching tags costs one request per object on S3.
	Tags map[string]string
}

// Reader is the read half of a Storage.
type Reader interface {
	// Open returns the object's bytes. The caller closes the reader. An absent
	// key is ErrNotFound (on Open itself, never later on Read).
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object at key, or returns ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn for every object whose key starts with prefix (a plain
	// string prefix, not only a directory), in lexical byte order of keys,
	// one call at a time from the calling goroutine. An error from fn stops
	// the listing and is returned as is. Objects being written (temp files,
	// incomplete uploads) are never listed.
	List(ctx context.Context, prefix string, fn func(Info) error) error
}

// Storage is a place backups are written to and read from. Implementations
// are safe for concurrent use by several goroutines; concurrent Puts to the
// same key leave one of them complete at the key.
type Storage interface {
	Reader

	// Put stores r's bytes at key, reading r to EOF. nil error: the complete
	// object is visible at key. Any error (including ctx cancelled and r
	// returning an error): nothing new is visible at key — a multipart upload
	// is aborted, a temp file removed — and an earlier object at key is
	// untouched. Put overwrites an existing object.
	Put(ctx context.Context, key string, r io.Reader, o PutOptions) (Info, error)
	// Delete removes the object at key. Deleting an absent key is not an
	// error, so Delete is idempotent.
	Delete(ctx context.Context, key string) error
	// ReadVersion returns the whole object at key, which must be a small
	// one (a manifest: more than max bytes is an error), and its version:
	// an opaque token that changes when a Put or PutIf stores other bytes
	// at key. Storing the same bytes again may leave it as it was, which a
	// read-modify-write cannot tell from no write and need not. An absent
	// key is ErrNotFound.
	ReadVersion(ctx context.Context, key string, max int64) (data []byte, version string, err error)
	// PutIf stores data at key only if the object there is still at
	// version (from ReadVersion), atomically with that check: if it was
	// replaced or deleted since, PutIf writes nothing and returns an error
	// matching ErrChanged. Of PutIf calls from one version, concurrent or
	// not, at most one succeeds, and a Put meanwhile fails them all. This
	// is what lets several writers update one manifest (verify, a failed
	// run's marking, scrub, retention) without losing each other's change:
	// read, change, PutIf, and on ErrChanged read again.
	PutIf(ctx context.Context, key string, data []byte, version string, o PutOptions) (Info, error)
	// Close releases the backend's resources. No other method may be called
	// after or during Close.
	Close() error
}

// Wrapper is a Storage that wraps another: a handle on a storage shared
// by a process (plugins), a layer that retries. Unwrap returns the storage
// it wraps, so that As finds the capabilities of the one underneath.
type Wrapper interface {
	Unwrap() Storage
}

// As returns st as a T, a capability (Tagger, Sweeper, KeySweeper,
// Lifecycler), from st itself or the first storage down its chain of
// Wrappers that has it. Callers use it instead of a type assertion, which
// a wrapper would defeat.
func As[T any](st Storage) (T, bool) {
	for st != nil {
		if t, ok := st.(T); ok {
			return t, true
		}
		w, ok := st.(Wrapper)
		if !ok {
			break
		}
		st = w.Unwrap()
	}
	var zero T
	return zero, false
}

// Tagger is a Storage that keeps string tags on objects.
type Tagger interface {
	// SetTags replaces the object's tags (nil or empty removes them).
	// ErrNotFound if there is no object at key.
	SetTags(ctx context.Context, key string, tags map[string]string) error
	// GetTags returns the object's tags, an empty non-nil map when it has
	// none, or ErrNotFound.
	GetTags(ctx context.Context, key string) (map[string]string, error)
}

// LifecycleRule expires objects by prefix and tags on the server side.
type LifecycleRule struct {
	ID string `yaml:"id" json:"id"`
	// Prefix is relative to the storage's own key space (an S3 storage with
	// a configured prefix adds it).
	Prefix string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	// Tags an object must all carry for the rule to apply.
	Tags map[string]string `yaml:"tags,omitempty" json:"tags,omitempty"`
	// ExpireAfterDays deletes matching objects this many days after creation;
	// 0 means no expiry.
	ExpireAfterDays int `yaml:"expireAfterDays,omitempty" json:"expireAfterDays,omitempty"`
	// AbortIncompleteAfterDays aborts multipart uploads left behind this many
	// days after they started; 0 means never. Only valid without Tags. AWS
	// S3 takes it; MinIO rejects it (it removes stale uploads on its own,
	// after 24 h by default: MINIO_API_STALE_UPLOADS_EXPIRY).
	AbortIncompleteAfterDays int `yaml:"abortIncompleteAfterDays,omitempty" json:"abortIncompleteAfterDays,omitempty"`
}

// Lifecycle is the set of rules a Lifecycler applies.
type Lifecycle struct {
	Rules []LifecycleRule `yaml:"rules" json:"rules"`
}

// Lifecycler is a Storage whose server expires objects itself (S3).
type Lifecycler interface {
	// SetLifecycle replaces the rules that apply inside this storage's key
	// space; rules of the bucket outside it are kept. An empty Lifecycle
	// removes this storage's rules.
	SetLifecycle(ctx context.Context, l Lifecycle) error
	// GetLifecycle returns the rules inside this storage's key space, in the
	// server's order; an empty Lifecycle when there are none.
	GetLifecycle(ctx context.Context) (Lifecycle, error)
}

// Sweeper is a Storage that can find and remove what interrupted Puts left
// behind (temp files, incomplete multipart uploads). Leftovers are never
// visible as objects; sweeping only reclaims space.
type Sweeper interface {
	// Incomplete lists the keys with prefix that have leftovers, in no
	// particular order, one entry per leftover. Some servers (MinIO) find
	// leftovers only when prefix is the exact key.
	Incomplete(ctx context.Context, prefix string) ([]string, error)
	// RemoveIncomplete removes the leftovers of keys with prefix started
	// before cutoff and returns how many it removed; the same prefix rule as
	// Incomplete applies. A cutoff in the past spares Puts still running.
	RemoveIncomplete(ctx context.Context, prefix string, cutoff time.Time) (int, error)
}

// KeySweeper is a Sweeper whose leftovers carry the key of the Put that
// left them (S3's incomplete multipart uploads), so that one key's can be
// removed without touching another Put's, running or not. Upload uses it
// to clean up at once after a Put the storage could not abort, while other
// uploads to the same storage go on. A storage whose leftovers carry no
// key (the filesystem's temp files, named by directory) is not one: its
// RemoveIncomplete would take the temp files of Puts running beside it.
type KeySweeper interface {
	Sweeper
	// RemoveIncompleteKey removes the leftovers of Puts of exactly key
	// (not of longer keys it is a prefix of) started before cutoff, and
	// returns how many it removed. Removing none is not an error.
	RemoveIncompleteKey(ctx context.Context, key string, cutoff time.Time) (int, error)
}

// CheckKey reports whether key is a valid object key: a relative path of
// non-empty '/'-separated segments, none of them "." or "..", with no
// backslash or NUL byte. The error matches ErrInvalidKey.
func CheckKey(key string) error {
	if err := checkPath(key); err != nil {
		return fmt.Errorf("key %q: %w: %s", key, ErrInvalidKey, err)
	}
	return nil
}

// CheckPrefix reports whether prefix may be passed to List: empty, or a key
// that may end with '/'.
func CheckPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := checkPath(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("prefix %q: %w: %s", prefix, ErrInvalidKey, err)
	}
	return nil
}

func checkPath(key string) error {
	switch {
	case key == "":
		return errors.New("empty")
	case strings.HasPrefix(key, "/"):
		return errors.New("absolute")
	case strings.ContainsAny(key, "\\\x00"):
		return errors.New("contains a backslash or NUL")
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return errors.New("empty segment")
		case ".", "..":
			return fmt.Errorf("segment %q", seg)
		}
	}
	return nil
}
