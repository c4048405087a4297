package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/backstream/backstream/pkg/storage"
)

// DefaultShareFor is how long a serve shares one opened storage: long
// enough that a run's stages (upload, verify, retention, each per
// destination) and every run of the next minutes open it once, short
// enough that a credential rotated in the file or variable a plan
// references is read again within minutes. Keep the old key valid that
// long after the new one is in place.
const DefaultShareFor = 5 * time.Minute

// Share makes Storage hand out shared storages: each destination
// configuration (backend type and block, as a plan writes it) is opened
// once and shared by every caller until it is older than shareFor; then
// the next caller opens it afresh, and the old one is closed when its last
// user closes it. Opening is what costs: a new connection, a bucket check
// and a sweep of stale uploads on S3, a walk of the whole tree on a
// filesystem. A process calls Share once, before any Storage, and Close
// when it stops; the returned function closes what is idle and the rest
// as it is released. Without Share, every Storage opens a new storage (the
// CLI's one-shot commands).
func (r *Registry) Share(shareFor time.Duration, now func() time.Time) (closeAll func() error) {
	r.shared = &shared{shareFor: shareFor, now: now, open: map[string]*sharedEntry{}}
	return r.shared.close
}

// shared is the set of open storages of a process.
type shared struct {
	shareFor time.Duration
	now      func() time.Time

	mu   sync.Mutex
	open map[string]*sharedEntry // by configuration
}

// sharedEntry is one opened storage and its users.
type sharedEntry struct {
	ready  chan struct{} // closed once the open ended (st or err set)
	st     storage.Storage
	err    error
	opened time.Time
	refs   int
	// retired: no longer handed out (too old, or the process stops);
	// closed when refs reaches 0.
	retired bool
}

// configKey identifies a destination's configuration: the same block
// opens the same storage, whichever plan names it. It holds references to
// secrets, never their values (a plan holds none), and stays in memory.
func configKey(typ string, config map[string]any) (string, error) {
	b, err := json.Marshal(config) // maps marshal in key order
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte(typ+"\x00"), b...))
	return string(sum[:]), nil
}

// get returns a handle on the storage of key, opening it with open when
// no caller has (or it retired). A caller that waited for another's open,
// which that caller's own end cut short, opens it itself.
func (s *shared) get(ctx context.Context, key string, open func(context.Context) (storage.Storage, error)) (storage.Storage, error) {
	for try := 1; ; try++ {
		st, waited, err := s.getOnce(ctx, key, open)
		if try < 4 && waited && err != nil && ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			continue // the opener's context ended, not ours
		}
		return st, err
	}
}

// getOnce is get's one try; waited says another caller opened it.
func (s *shared) getOnce(ctx context.Context, key string, open func(context.Context) (storage.Storage, error)) (_ storage.Storage, waited bool, _ error) {
	s.mu.Lock()
	s.retireOld()
	e := s.open[key]
	if e == nil {
		e = &sharedEntry{ready: make(chan struct{})}
		s.open[key] = e
		s.mu.Unlock()
		st, err := openSafely(ctx, open)
		s.mu.Lock()
		e.st, e.err, e.opened = st, err, s.now()
		if err != nil && s.open[key] == e {
			delete(s.open, key) // the next caller tries again
		}
		close(e.ready)
	} else {
		waited = true
		s.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, waited, ctx.Err()
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if e.err != nil {
		return nil, waited, e.err
	}
	e.refs++
	h := &handle{Storage: e.st, denied: func() { s.drop(key, e) }}
	h.release = func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		e.refs--
		if e.refs == 0 && e.retired {
			_ = e.st.Close()
		}
	}
	return h, waited, nil
}

// openSafely is open, with a panic of the backend made its error: the
// callers waiting for this open must not wait forever.
func openSafely(ctx context.Context, open func(context.Context) (storage.Storage, error)) (st storage.Storage, err error) {
	defer func() {
		if p := recover(); p != nil {
			st, err = nil, fmt.Errorf("open storage: panic: %v", p)
		}
	}()
	return open(ctx)
}

// retireOld stops handing out storages opened shareFor ago or earlier,
// closing those nobody uses. s.mu is held.
func (s *shared) retireOld() {
	now := s.now()
	for key, e := range s.open {
		select {
		case <-e.ready:
		default:
			continue // still opening
		}
		if now.Sub(e.opened) >= s.shareFor {
			delete(s.open, key)
			s.retire(e)
		}
	}
}

// drop stops handing out e (the server refused its credentials): the
// next caller opens the storage again, resolving the plan's secret
// references again.
func (s *shared) drop(key string, e *sharedEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[key] == e {
		delete(s.open, key)
		_ = s.retire(e) // its users hold it: closed at the last release
	}
}

// retire marks e retired and closes it if nobody uses it. s.mu is held.
func (s *shared) retire(e *sharedEntry) error {
	e.retired = true
	if e.refs == 0 && e.st != nil {
		return e.st.Close()
	}
	return nil
}

func (s *shared) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for key, e := range s.open {
		// One still opening is retired too: its opener's handle closes
		// it on release.
		delete(s.open, key)
		if err := s.retire(e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// handle is one user's hold on a shared storage: Close releases it (once),
// and the storage underneath stays open for the others. An operation the
// server refuses with storage.ErrAccessDenied (a key rotated and revoked)
// drops the storage from the share, so the next user opens it with the
// credentials as they are now.
type handle struct {
	storage.Storage
	release func()
	denied  func()
	once    sync.Once
}

func (h *handle) check(err error) {
	if errors.Is(err, storage.ErrAccessDenied) {
		h.denied()
	}
}

// Open implements storage.Storage.
func (h *handle) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := h.Storage.Open(ctx, key)
	h.check(err)
	return rc, err
}

// Stat implements storage.Storage.
func (h *handle) Stat(ctx context.Context, key string) (storage.Info, error) {
	info, err := h.Storage.Stat(ctx, key)
	h.check(err)
	return info, err
}

// List implements storage.Storage.
func (h *handle) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	err := h.Storage.List(ctx, prefix, fn)
	h.check(err)
	return err
}

// Put implements storage.Storage.
func (h *handle) Put(ctx context.Context, key string, r io.Reader, o storage.PutOptions) (storage.Info, error) {
	info, err := h.Storage.Put(ctx, key, r, o)
	h.check(err)
	return info, err
}

// Delete implements storage.Storage.
func (h *handle) Delete(ctx context.Context, key string) error {
	err := h.Storage.Delete(ctx, key)
	h.check(err)
	return err
}

// ReadVersion implements storage.Storage.
func (h *handle) ReadVersion(ctx context.Context, key string, max int64) ([]byte, string, error) {
	data, v, err := h.Storage.ReadVersion(ctx, key, max)
	h.check(err)
	return data, v, err
}

// PutIf implements storage.Storage.
func (h *handle) PutIf(ctx context.Context, key string, data []byte, version string, o storage.PutOptions) (storage.Info, error) {
	info, err := h.Storage.PutIf(ctx, key, data, version, o)
	h.check(err)
	return info, err
}

var _ storage.Wrapper = (*handle)(nil)

// Close implements storage.Storage: it releases this hold.
func (h *handle) Close() error {
	h.once.Do(h.release)
	return nil
}

// Unwrap implements storage.Wrapper.
func (h *handle) Unwrap() storage.Storage { return h.Storage }

// storageOf opens (or shares) destination d's storage.
func (r *Registry) storageOf(ctx context.Context, typ string, config map[string]any, decode func(any) error) (storage.Storage, error) {
	open := func(ctx context.Context) (storage.Storage, error) { return r.Storages.Open(ctx, typ, decode) }
	if r.shared == nil {
		return open(ctx)
	}
	key, err := configKey(typ, config)
	if err != nil {
		return nil, fmt.Errorf("%s config: %w", typ, err)
	}
	return r.shared.get(ctx, key, open)
}
