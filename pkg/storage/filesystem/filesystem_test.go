package filesystem_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/storagetest"
)

func newFS(t *testing.T, dir string) storage.Storage {
	t.Helper()
	s, err := filesystem.New(context.Background(), filesystem.Config{Path: dir})
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return newFS(t, t.TempDir()) })
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		give filesystem.Config
		want string
	}{
		{"ok", filesystem.Config{Path: "/var/backups"}, ""},
		{"no path", filesystem.Config{}, "path: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if err := tt.give.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}

// A crash between create and rename leaves a temp file: List hides it and
// New removes it once it is an hour old, not before.
func TestStaleTempFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "p"), 0o750); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "p", ".tmp-123")
	fresh := filepath.Join(dir, "p", ".tmp-456")
	for _, f := range []string{stale, fresh, filepath.Join(dir, "p", "obj")} {
		if err := os.WriteFile(f, []byte("partial"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	s := newFS(t, dir)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp file still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatalf("fresh temp file removed: %v", err)
	}
	var got []string
	if err := s.List(context.Background(), "", func(i storage.Info) error {
		got = append(got, i.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"p/obj"}) {
		t.Fatalf("list = %q, want only p/obj", got)
	}
	left, err := s.(storage.Sweeper).Incomplete(context.Background(), "")
	if err != nil || !slices.Equal(left, []string{"p/"}) {
		t.Fatalf("incomplete = %q, %v; want [p/]", left, err)
	}
}

func TestReservedKeys(t *testing.T) {
	s := newFS(t, t.TempDir())
	for _, key := range []string{".tmp-x", "a/.tags-b", "a/.tmp-/c"} {
		_, err := s.Put(context.Background(), key, strings.NewReader("x"), storage.PutOptions{})
		if err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("put %s: %v, want a reserved-name error", key, err)
		}
	}
}

// Delete removes the directories it leaves empty, up to the root.
func TestDeleteRemovesEmptyDirs(t *testing.T) {
	dir := t.TempDir()
	s := newFS(t, dir)
	ctx := context.Background()
	if _, err := s.Put(ctx, "a/b/c", strings.NewReader("x"), storage.PutOptions{Tags: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a/b/c"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Fatalf("empty dir a left: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("root removed: %v", err)
	}
}

// TestAbortedPutLeavesNoEmptyDirs: the first object of a plan that fails
// mid-stream (a dump that died) leaves no empty plan directory, which a
// reader would list as a plan with no backups; a directory that holds
// something stays.
func TestAbortedPutLeavesNoEmptyDirs(t *testing.T) {
	dir := t.TempDir()
	s := newFS(t, dir)
	ctx := context.Background()
	dump := func() io.Reader {
		return io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(errors.New("dump died")))
	}
	if _, err := s.Put(ctx, "orders/01/obj", dump(), storage.PutOptions{}); err == nil {
		t.Fatal("a put of a reader that failed succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "orders")); !os.IsNotExist(err) {
		t.Errorf("an aborted first put left directory orders: %v", err)
	}
	if _, err := s.Put(ctx, "orders/kept", strings.NewReader("x"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "orders/02", dump(), storage.PutOptions{}); err == nil {
		t.Fatal("a put of a reader that failed succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "orders", "kept")); err != nil {
		t.Errorf("an aborted put removed what its directory held: %v", err)
	}
}

// TestOpenExistingCreatesNothing: a reader's typo is an error, not a new
// empty directory that then lists no backups.
func TestOpenExistingCreatesNothing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "typo")
	if _, err := filesystem.OpenExisting(filesystem.Config{Path: missing}); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("OpenExisting(%s): %v, want fs.ErrNotExist naming the path", missing, err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenExisting created %s (%v)", missing, err)
	}
	dir := t.TempDir()
	st, err := filesystem.OpenExisting(filesystem.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.List(context.Background(), "", func(storage.Info) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestNotAKeySweeper: a temp file carries no key, only its directory, so
// the filesystem cannot remove one Put's leftovers alone; upload's
// clean-up after a failed Put must not take it for a KeySweeper (its
// sweep would delete the temp files of uploads running beside it).
func TestNotAKeySweeper(t *testing.T) {
	s, err := filesystem.New(context.Background(), filesystem.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(storage.KeySweeper); ok {
		t.Fatal("the filesystem storage claims to sweep by key")
	}
}
