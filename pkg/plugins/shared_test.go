package plugins_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	sourceall "github.com/backstream/backstream/pkg/source/all"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/registry"
)

// counted is a filesystem storage that counts how often the backend
// opened and closed one; failNext makes the next open fail.
type counted struct {
	opens, closes atomic.Int32
	failNext      atomic.Bool
	// hold, when set, makes an open wait for it (or its context's end);
	// entered tells an open started.
	hold    chan struct{}
	entered chan struct{}
	// deny makes the storages' Puts refused as a revoked key is.
	deny atomic.Bool
}

type countedStorage struct {
	storage.Storage
	c      *counted
	closed atomic.Bool
}

func (s *countedStorage) Close() error {
	if s.closed.Swap(true) {
		return errors.New("closed twice")
	}
	s.c.closes.Add(1)
	return s.Storage.Close()
}

func (s *countedStorage) Unwrap() storage.Storage { return s.Storage }

func (s *countedStorage) Put(ctx context.Context, key string, r io.Reader, o storage.PutOptions) (storage.Info, error) {
	if s.c.deny.Load() {
		return storage.Info{}, fmt.Errorf("put %s: %w: the key was revoked", key, storage.ErrAccessDenied)
	}
	return s.Storage.Put(ctx, key, r, o)
}

func (c *counted) backend() registry.Backend {
	decode := func(d registry.Decode) (filesystem.Config, error) {
		var fc filesystem.Config
		return fc, d(&fc)
	}
	return registry.Backend{
		Name:  "counted",
		Check: func(d registry.Decode) error { _, err := decode(d); return err },
		New: func(ctx context.Context, d registry.Decode) (storage.Storage, error) {
			fc, err := decode(d)
			if err != nil {
				return nil, err
			}
			if c.entered != nil {
				c.entered <- struct{}{}
			}
			if c.hold != nil {
				select {
				case <-c.hold:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			time.Sleep(10 * time.Millisecond) // as an open costs: others arrive meanwhile
			if c.failNext.Swap(false) {
				return nil, errors.New("server unreachable")
			}
			st, err := filesystem.New(ctx, fc)
			if err != nil {
				return nil, err
			}
			c.opens.Add(1)
			return &countedStorage{Storage: st, c: c}, nil
		},
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func sharedRegistry(t *testing.T) (*plugins.Registry, *counted, *clock, func() error) {
	c := &counted{}
	reg := &plugins.Registry{Sources: sourceall.Registry(), Storages: registry.New(c.backend())}
	clk := &clock{t: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	return reg, c, clk, reg.Share(time.Minute, clk.now)
}

func twoDestinations(t *testing.T, reg *plugins.Registry, name, dirA, dirB string) *plan.Plan {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source: {type: files, files: {path: /srv}}
  destinations:
    - {name: a, type: counted, counted: {path: %s}}
    - {name: b, type: counted, counted: {path: %s}}
`, name, dirA, dirB)
	p, err := plan.Parse(name+".yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(reg); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSharedStoragesOpenEachConfigurationOnce: after Share, every caller
// of one destination configuration (of any plan, at once) uses one opened
// storage; another configuration opens its own; capabilities are found
// through the handle; a handle's Close leaves the storage open for the
// others.
func TestSharedStoragesOpenEachConfigurationOnce(t *testing.T) {
	ctx := context.Background()
	reg, c, _, closeAll := sharedRegistry(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	p := twoDestinations(t, reg, "one", dirA, dirB)
	q := twoDestinations(t, reg, "other", dirA, t.TempDir()) // a: the same block as p's a

	var g errgroup.Group
	for i := range 8 {
		g.Go(func() error {
			pl := p
			if i%2 == 1 {
				pl = q
			}
			st, err := reg.Storage(ctx, pl, "a")
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.Put(ctx, fmt.Sprintf("k/%d", i), strings.NewReader("x"), storage.PutOptions{}); err != nil {
				return err
			}
			if _, ok := storage.As[storage.Tagger](st); !ok {
				return errors.New("no Tagger through the handle")
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := c.opens.Load(); n != 1 {
		t.Errorf("8 concurrent users of one configuration opened it %d times, want once", n)
	}
	if n := c.closes.Load(); n != 0 {
		t.Errorf("closing the handles closed the shared storage %d times", n)
	}
	st, err := reg.Storage(ctx, p, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil { // a second Close of a handle is harmless
		t.Fatal(err)
	}
	if n := c.opens.Load(); n != 2 {
		t.Errorf("another configuration: %d opens in all, want 2", n)
	}
	if err := closeAll(); err != nil {
		t.Fatal(err)
	}
	if n := c.closes.Load(); n != 2 {
		t.Errorf("closing the process's storages closed %d, want 2", n)
	}
}

// TestSharedStoragesAreOpenedAgainAfterShareFor: a storage older than
// shareFor is not handed out again (a credential in a referenced file may
// have changed): the next caller opens a new one, and the old one is
// closed when its last user lets go, not under it.
func TestSharedStoragesAreOpenedAgainAfterShareFor(t *testing.T) {
	ctx := context.Background()
	reg, c, clk, closeAll := sharedRegistry(t)
	p := twoDestinations(t, reg, "one", t.TempDir(), t.TempDir())
	held, err := reg.Storage(ctx, p, "a")
	if err != nil {
		t.Fatal(err)
	}
	clk.add(time.Minute)
	fresh, err := reg.Storage(ctx, p, "a")
	if err != nil {
		t.Fatal(err)
	}
	if n := c.opens.Load(); n != 2 {
		t.Fatalf("after shareFor: %d opens, want 2", n)
	}
	if n := c.closes.Load(); n != 0 {
		t.Fatalf("the old storage was closed under its user (%d closes)", n)
	}
	if _, err := held.Put(ctx, "still/works", strings.NewReader("x"), storage.PutOptions{}); err != nil {
		t.Fatalf("the old storage's user: %v", err)
	}
	held.Close()
	if n := c.closes.Load(); n != 1 {
		t.Errorf("the old storage's last user let go: %d closes, want 1", n)
	}
	fresh.Close()
	if err := closeAll(); err != nil {
		t.Fatal(err)
	}
	if n := c.closes.Load(); n != 2 {
		t.Errorf("at the end: %d closes, want 2", n)
	}
}

// TestASharedStorageThatFailedToOpenIsOpenedAgain: a failed open (the
// server down) is not kept: the next caller tries again.
func TestASharedStorageThatFailedToOpenIsOpenedAgain(t *testing.T) {
	ctx := context.Background()
	reg, c, _, closeAll := sharedRegistry(t)
	defer closeAll()
	p := twoDestinations(t, reg, "one", t.TempDir(), t.TempDir())
	c.failNext.Store(true)
	if _, err := reg.Storage(ctx, p, "a"); err == nil {
		t.Fatal("the failing open succeeded")
	}
	st, err := reg.Storage(ctx, p, "a")
	if err != nil {
		t.Fatalf("the next open: %v", err)
	}
	st.Close()
}

// TestWithoutShareEveryStorageIsItsOwn: the CLI's one-shot commands open
// and close their storage themselves.
func TestWithoutShareEveryStorageIsItsOwn(t *testing.T) {
	ctx := context.Background()
	c := &counted{}
	reg := &plugins.Registry{Sources: sourceall.Registry(), Storages: registry.New(c.backend())}
	p := twoDestinations(t, reg, "one", t.TempDir(), t.TempDir())
	for range 2 {
		st, err := reg.Storage(ctx, p, "a")
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if o, cl := c.opens.Load(), c.closes.Load(); o != 2 || cl != 2 {
		t.Errorf("unshared: %d opens, %d closes, want 2 and 2", o, cl)
	}
}

// TestAWaiterOpensItselfWhenTheOpenersContextEnds: a caller waiting for
// another's open of the same storage does not inherit that caller's end
// (its event was cancelled, its handler stopped): it opens the storage
// itself.
func TestAWaiterOpensItselfWhenTheOpenersContextEnds(t *testing.T) {
	reg, c, _, closeAll := sharedRegistry(t)
	defer closeAll()
	p := twoDestinations(t, reg, "one", t.TempDir(), t.TempDir())
	c.hold, c.entered = make(chan struct{}), make(chan struct{}, 2)
	openerCtx, cancel := context.WithCancel(context.Background())
	openerErr := make(chan error, 1)
	go func() {
		_, err := reg.Storage(openerCtx, p, "a")
		openerErr <- err
	}()
	<-c.entered
	waiter := make(chan error, 1)
	go func() {
		st, err := reg.Storage(context.Background(), p, "a")
		if err == nil {
			st.Close()
		}
		waiter <- err
	}()
	time.Sleep(20 * time.Millisecond) // the waiter is waiting (if not, it opens on its own: the same outcome)
	cancel()
	if err := <-openerErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled opener: %v, want context.Canceled", err)
	}
	select {
	case <-c.entered: // the waiter's own open
	case err := <-waiter:
		t.Fatalf("the waiter ended with the opener: %v, want its own open", err)
	}
	close(c.hold)
	if err := <-waiter; err != nil {
		t.Errorf("the waiter: %v, want its own open", err)
	}
}

// TestASharedStorageRefusedItsCredentialsIsOpenedAgain: a storage whose
// server refuses its credentials (a key rotated and the old one revoked)
// leaves the share at once: the next user opens it again, reading the
// credentials as they are now, instead of failing for the rest of
// shareFor.
func TestASharedStorageRefusedItsCredentialsIsOpenedAgain(t *testing.T) {
	ctx := context.Background()
	reg, c, _, closeAll := sharedRegistry(t)
	defer closeAll()
	p := twoDestinations(t, reg, "one", t.TempDir(), t.TempDir())
	st, err := reg.Storage(ctx, p, "a")
	if err != nil {
		t.Fatal(err)
	}
	c.deny.Store(true)
	if _, err := st.Put(ctx, "k", strings.NewReader("x"), storage.PutOptions{}); !errors.Is(err, storage.ErrAccessDenied) {
		t.Fatalf("put with a revoked key: %v, want ErrAccessDenied", err)
	}
	c.deny.Store(false)
	again, err := reg.Storage(ctx, p, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if n := c.opens.Load(); n != 2 {
		t.Errorf("after a refusal: %d opens, want the storage opened again", n)
	}
	if _, err := again.Put(ctx, "k", strings.NewReader("x"), storage.PutOptions{}); err != nil {
		t.Errorf("put on the storage opened again: %v", err)
	}
	st.Close()
	if n := c.closes.Load(); n != 1 {
		t.Errorf("the refused storage's last user let go: %d closes, want 1", n)
	}
}
