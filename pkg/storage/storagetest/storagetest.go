// Package storagetest is the conformance suite of storage.Storage. Every
// backend runs it against the real thing (a directory, a MinIO server); a
// backend passes only if it keeps the whole contract, including "nothing is
// visible at the key after a failed Put".
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/storage"
)

// LargeSize is the size of the suite's large object: several parts of the
// smallest S3 part size (5 MiB), so a backend under test should be set up
// with 5 MiB parts to exercise its multipart path.
const LargeSize = 40 << 20

// Run runs the suite. newStorage returns an empty storage for one subtest;
// it owns the cleanup (t.Cleanup) of whatever it starts, and Run closes the
// Storage it returns.
func Run(t *testing.T, newStorage func(t *testing.T) storage.Storage) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Storage)
	}{
		{"PutOpenStat", testPutOpenStat},
		{"Empty", testEmpty},
		{"Overwrite", testOverwrite},
		{"List", testList},
		{"ListStopsOnCallbackError", testListStop},
		{"Delete", testDelete},
		{"NotFound", testNotFound},
		{"BadKeys", testBadKeys},
		{"Large", testLarge},
		{"FailingReader", testFailingReader},
		{"CancelMidway", testCancelMidway},
		{"Tags", testTags},
		{"ConcurrentPuts", testConcurrentPuts},
		{"PutIf", testPutIf},
		{"PutIfLosesNoUpdate", testPutIfLosesNoUpdate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStorage(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// Data returns n deterministic pseudo-random bytes for seed.
func Data(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	r.Read(b)
	return b
}

func put(t *testing.T, s storage.Storage, key string, data []byte, o storage.PutOptions) storage.Info {
	t.Helper()
	info, err := s.Put(context.Background(), key, bytes.NewReader(data), o)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	if info.Key != key || info.Size != int64(len(data)) {
		t.Fatalf("put %s: info %+v, want key %s size %d", key, info, key, len(data))
	}
	return info
}

// Read returns the whole object at key, failing t if it cannot.
func Read(t testing.TB, s storage.Storage, key string) []byte {
	t.Helper()
	rc, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func wantContent(t *testing.T, s storage.Storage, key string, want []byte) {
	t.Helper()
	got := Read(t, s, key)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes, want the %d bytes put", key, len(got), len(want))
	}
}

func wantAbsent(t *testing.T, s storage.Storage, key string) {
	t.Helper()
	if info, err := s.Stat(context.Background(), key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat %s: %+v, %v; want ErrNotFound", key, info, err)
	}
}

func keys(t *testing.T, s storage.Storage, prefix string) []string {
	t.Helper()
	var out []string
	err := s.List(context.Background(), prefix, func(i storage.Info) error {
		out = append(out, i.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return out
}

// wantNoLeftovers checks a Sweeper has no temp file or incomplete upload for
// key.
func wantNoLeftovers(t *testing.T, s storage.Storage, key string) {
	t.Helper()
	sw, ok := s.(storage.Sweeper)
	if !ok {
		return
	}
	left, err := sw.Incomplete(context.Background(), key)
	if err != nil {
		t.Fatalf("incomplete: %v", err)
	}
	if len(left) > 0 {
		t.Fatalf("leftovers of a failed put: %q", left)
	}
}

func testPutOpenStat(t *testing.T, s storage.Storage) {
	data := Data(1, 100_000)
	put(t, s, "plans/orders/backup.bin", data, storage.PutOptions{ContentType: "application/octet-stream"})
	wantContent(t, s, "plans/orders/backup.bin", data)
	info, err := s.Stat(context.Background(), "plans/orders/backup.bin")
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if info.Key != "plans/orders/backup.bin" || info.Size != int64(len(data)) || info.Modified.IsZero() {
		t.Fatalf("stat: %+v", info)
	}
}

func testEmpty(t *testing.T, s storage.Storage) {
	put(t, s, "empty", nil, storage.PutOptions{})
	wantContent(t, s, "empty", nil)
	if got := keys(t, s, ""); !slices.Equal(got, []string{"empty"}) {
		t.Fatalf("list: %q", got)
	}
}

func testOverwrite(t *testing.T, s storage.Storage) {
	put(t, s, "k", Data(1, 1000), storage.PutOptions{})
	second := Data(2, 10)
	put(t, s, "k", second, storage.PutOptions{})
	wantContent(t, s, "k", second)
	if got := keys(t, s, ""); !slices.Equal(got, []string{"k"}) {
		t.Fatalf("list: %q", got)
	}
}

func testList(t *testing.T, s storage.Storage) {
	// Put out of order; '-' (0x2d) sorts before '/' (0x2f), so a-c comes
	// before a/b although a directory walk would meet a/ first.
	all := []string{"b", "a/b/c", "a-c", "a/b", "a/a", "ab", "a/b-x/y", "z/y/x/w"}
	for i, k := range all {
		if k == "a/b" {
			continue // a/b is a directory here (a/b/c); not both on a filesystem
		}
		put(t, s, k, Data(uint64(i), i), storage.PutOptions{})
	}
	tests := []struct {
		name   string
		prefix string
		want   []string
	}{
		{"all", "", []string{"a-c", "a/a", "a/b-x/y", "a/b/c", "ab", "b", "z/y/x/w"}},
		{"directory", "a/", []string{"a/a", "a/b-x/y", "a/b/c"}},
		{"partial name", "a/b", []string{"a/b-x/y", "a/b/c"}},
		{"string prefix", "a", []string{"a-c", "a/a", "a/b-x/y", "a/b/c", "ab"}},
		{"nested", "z/y/", []string{"z/y/x/w"}},
		{"exact key", "b", []string{"b"}},
		{"none", "nothing/", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keys(t, s, tt.prefix); !slices.Equal(got, tt.want) {
				t.Fatalf("list %q = %q, want %q", tt.prefix, got, tt.want)
			}
		})
	}
	var sizes []int64
	s.List(context.Background(), "a/a", func(i storage.Info) error {
		sizes = append(sizes, i.Size)
		return nil
	})
	if !slices.Equal(sizes, []int64{4}) {
		t.Fatalf("list a/a sizes %v, want [4]", sizes)
	}
}

func testListStop(t *testing.T, s storage.Storage) {
	for _, k := range []string{"x/1", "x/2", "x/3"} {
		put(t, s, k, []byte(k), storage.PutOptions{})
	}
	stop := errors.New("enough")
	n := 0
	err := s.List(context.Background(), "x/", func(storage.Info) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("list with failing callback: %v after %d calls; want the callback's error after 1", err, n)
	}
}

func testDelete(t *testing.T, s storage.Storage) {
	put(t, s, "d/1", []byte("one"), storage.PutOptions{})
	put(t, s, "d/2", []byte("two"), storage.PutOptions{})
	ctx := context.Background()
	for range 2 {
		if err := s.Delete(ctx, "d/1"); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if err := s.Delete(ctx, "never/was"); err != nil {
		t.Fatalf("delete absent: %v", err)
	}
	wantAbsent(t, s, "d/1")
	if got := keys(t, s, ""); !slices.Equal(got, []string{"d/2"}) {
		t.Fatalf("list after delete: %q", got)
	}
	if err := s.Delete(ctx, "d/2"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if got := keys(t, s, ""); len(got) != 0 {
		t.Fatalf("list after deleting all: %q", got)
	}
	put(t, s, "d/1", []byte("again"), storage.PutOptions{})
	wantContent(t, s, "d/1", []byte("again"))
}

func testNotFound(t *testing.T, s storage.Storage) {
	put(t, s, "dir/obj", []byte("x"), storage.PutOptions{})
	ctx := context.Background()
	for _, key := range []string{"absent", "dir", "dir/obj/below", "dir/ob"} {
		if rc, err := s.Open(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("open %s: %v, want ErrNotFound", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("stat %s: %v, want ErrNotFound", key, err)
		}
	}
}

func testBadKeys(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	for _, key := range []string{"", "/abs", "a//b", "a/", "..", "a/../b", "../a", "a/./b", ".", `a\b`} {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			_, err := s.Put(ctx, key, bytes.NewReader([]byte("x")), storage.PutOptions{})
			wantInvalid(t, "put", err)
			rc, err := s.Open(ctx, key)
			if rc != nil {
				rc.Close()
			}
			wantInvalid(t, "open", err)
			_, err = s.Stat(ctx, key)
			wantInvalid(t, "stat", err)
			wantInvalid(t, "delete", s.Delete(ctx, key))
		})
	}
	if err := s.List(ctx, "../", func(storage.Info) error { return nil }); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("list ../: %v, want ErrInvalidKey", err)
	}
	if got := keys(t, s, ""); len(got) != 0 {
		t.Fatalf("bad keys stored something: %q", got)
	}
}

func wantInvalid(t *testing.T, op string, err error) {
	t.Helper()
	if !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("%s: %v, want ErrInvalidKey", op, err)
	}
}

func testLarge(t *testing.T, s storage.Storage) {
	data := Data(3, LargeSize+12345)
	// A reader that hides its size and returns short reads, as a stream does.
	info, err := s.Put(context.Background(), "large", iotest.HalfReader(bytes.NewReader(data)), storage.PutOptions{})
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("put large: %+v, %v", info, err)
	}
	wantContent(t, s, "large", data)
	info, err = s.Stat(context.Background(), "large")
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("stat large: %+v, %v", info, err)
	}
}

// failingReader returns n bytes of data, then err.
type failingReader struct {
	data []byte
	n    int
	err  error
	// withData returns err with the last bytes, as io.Reader allows.
	withData bool
	// at is called once when n bytes have been read.
	at func()
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.withData && r.err != nil && r.n > 0 && r.n <= len(p) && r.n <= len(r.data) {
		n := copy(p, r.data[:r.n])
		r.n = 0
		return n, r.err
	}
	if r.n <= 0 {
		if r.at != nil {
			r.at()
			r.at = nil
		}
		if r.err != nil {
			return 0, r.err
		}
	}
	if len(p) > len(r.data) {
		p = p[:len(r.data)]
	}
	if r.n > 0 && len(p) > r.n {
		p = p[:r.n]
	}
	n := copy(p, r.data)
	r.n -= n
	return n, nil
}

func testFailingReader(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	old := []byte("the complete old object")
	put(t, s, "kept", old, storage.PutOptions{})
	boom := errors.New("dump exited 2")
	for _, tt := range []struct {
		name, key string
		n         int
		err       error
	}{
		{"before any byte", "fresh0", 0, boom},
		{"within the first part", "fresh1", 1 << 20, boom},
		{"after several parts", "fresh2", 17 << 20, boom},
		{"truncated stream", "fresh3", 7 << 20, io.ErrUnexpectedEOF},
		{"with the last byte of a part", "fresh4", 5 << 20, boom},
		{"over an existing object", "kept", 12 << 20, boom},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &failingReader{data: Data(4, 1<<20), n: tt.n, err: tt.err, withData: true}
			_, err := s.Put(ctx, tt.key, r, storage.PutOptions{})
			if !errors.Is(err, tt.err) {
				t.Fatalf("put with failing reader: %v, want the reader's error", err)
			}
			if tt.key == "kept" {
				wantContent(t, s, "kept", old)
			} else {
				wantAbsent(t, s, tt.key)
			}
			wantNoLeftovers(t, s, tt.key)
		})
	}
	if got := keys(t, s, ""); !slices.Equal(got, []string{"kept"}) {
		t.Fatalf("list after failed puts: %q", got)
	}
}

func testCancelMidway(t *testing.T, s storage.Storage) {
	for _, tt := range []struct {
		name string
		n    int
	}{
		{"within the first part", 1 << 20},
		{"after several parts", 17 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The reader keeps producing after the cancel, as a dump would:
			// only ctx can stop the Put.
			r := &failingReader{data: Data(5, 1<<20), n: tt.n, at: cancel}
			_, err := s.Put(ctx, "cancelled", io.LimitReader(r, 1<<30), storage.PutOptions{})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("put with ctx cancelled midway: %v, want context.Canceled", err)
			}
			wantAbsent(t, s, "cancelled")
			wantNoLeftovers(t, s, "cancelled")
		})
	}
}

func testTags(t *testing.T, s storage.Storage) {
	tg, ok := s.(storage.Tagger)
	if !ok {
		t.Skip("storage has no tags")
	}
	ctx := context.Background()
	tags := map[string]string{"plan": "orders", "cycle": "daily"}
	put(t, s, "t/obj", []byte("x"), storage.PutOptions{Tags: tags})
	got, err := tg.GetTags(ctx, "t/obj")
	if err != nil || !maps.Equal(got, tags) {
		t.Fatalf("get tags after put: %v, %v; want %v", got, err, tags)
	}
	info, err := s.Stat(ctx, "t/obj")
	if err != nil || !maps.Equal(info.Tags, tags) {
		t.Fatalf("stat tags: %v, %v; want %v", info.Tags, err, tags)
	}
	weekly := map[string]string{"cycle": "weekly"}
	if err := tg.SetTags(ctx, "t/obj", weekly); err != nil {
		t.Fatalf("set tags: %v", err)
	}
	if got, err := tg.GetTags(ctx, "t/obj"); err != nil || !maps.Equal(got, weekly) {
		t.Fatalf("get tags after set: %v, %v; want %v", got, err, weekly)
	}
	// A new object at the key does not inherit the old one's tags.
	put(t, s, "t/obj", []byte("y"), storage.PutOptions{})
	if got, err := tg.GetTags(ctx, "t/obj"); err != nil || len(got) != 0 {
		t.Fatalf("tags after untagged overwrite: %v, %v; want none", got, err)
	}
	if _, err := tg.GetTags(ctx, "t/absent"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get tags of absent key: %v, want ErrNotFound", err)
	}
	if err := tg.SetTags(ctx, "t/absent", weekly); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("set tags of absent key: %v, want ErrNotFound", err)
	}
	if got := keys(t, s, ""); !slices.Equal(got, []string{"t/obj"}) {
		t.Fatalf("list shows tag storage: %q", got)
	}
}

func testConcurrentPuts(t *testing.T, s storage.Storage) {
	const n = 8
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			data := Data(uint64(100+i), 1<<20+i)
			_, err := s.Put(context.Background(), fmt.Sprintf("c/%02d", i), bytes.NewReader(data), storage.PutOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent put: %v", err)
	}
	for i := range n {
		wantContent(t, s, fmt.Sprintf("c/%02d", i), Data(uint64(100+i), 1<<20+i))
	}
	if got := keys(t, s, "c/"); len(got) != n {
		t.Fatalf("list: %d keys, want %d", len(got), n)
	}
}

// testPutIf: a conditional write stores only over the version it was
// read as; a PutIf or Put since, or a Delete, makes it fail with
// ErrChanged and leaves what is there.
func testPutIf(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	if _, _, err := s.ReadVersion(ctx, "m/absent", 1<<10); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("read version of an absent key: %v, want ErrNotFound", err)
	}
	if _, _, err := s.ReadVersion(ctx, "../m", 1<<10); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("read version of a bad key: %v, want ErrInvalidKey", err)
	}
	if _, err := s.PutIf(ctx, "../m", []byte("x"), "v", storage.PutOptions{}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("put-if of a bad key: %v, want ErrInvalidKey", err)
	}
	put(t, s, "m/1", []byte("first"), storage.PutOptions{})
	if _, _, err := s.ReadVersion(ctx, "m/1", 3); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("read version of an object larger than max: %v, want an error saying so", err)
	}
	data, v1, err := s.ReadVersion(ctx, "m/1", 1<<10)
	if err != nil || string(data) != "first" || v1 == "" {
		t.Fatalf("read version: %q %q %v", data, v1, err)
	}

	info, err := s.PutIf(ctx, "m/1", []byte("second"), v1, storage.PutOptions{ContentType: "application/json", Tags: map[string]string{"k": "v"}})
	if err != nil || info.Key != "m/1" || info.Size != 6 {
		t.Fatalf("put-if over the version read: %+v %v", info, err)
	}
	wantContent(t, s, "m/1", []byte("second"))
	if tg, ok := s.(storage.Tagger); ok {
		if tags, err := tg.GetTags(ctx, "m/1"); err != nil || tags["k"] != "v" {
			t.Errorf("put-if's tags: %v %v", tags, err)
		}
	}
	_, v2, err := s.ReadVersion(ctx, "m/1", 1<<10)
	if err != nil || v2 == v1 {
		t.Fatalf("version after put-if: %q (was %q), %v; want a new one", v2, v1, err)
	}
	if _, err := s.PutIf(ctx, "m/1", []byte("stale"), v1, storage.PutOptions{}); !errors.Is(err, storage.ErrChanged) {
		t.Errorf("put-if over a version replaced by put-if: %v, want ErrChanged", err)
	}
	wantContent(t, s, "m/1", []byte("second"))

	put(t, s, "m/1", []byte("third, by put"), storage.PutOptions{})
	if _, err := s.PutIf(ctx, "m/1", []byte("stale"), v2, storage.PutOptions{}); !errors.Is(err, storage.ErrChanged) {
		t.Errorf("put-if over a version replaced by put: %v, want ErrChanged", err)
	}
	wantContent(t, s, "m/1", []byte("third, by put"))

	_, v3, err := s.ReadVersion(ctx, "m/1", 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "m/1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "m/1", []byte("stale"), v3, storage.PutOptions{}); !errors.Is(err, storage.ErrChanged) {
		t.Errorf("put-if over a deleted object: %v, want ErrChanged", err)
	}
	if _, err := s.Stat(ctx, "m/1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a failed put-if left an object: %v", err)
	}
	if k := keys(t, s, "m/"); len(k) != 0 {
		t.Errorf("keys left under m/: %v", k)
	}
}

// testPutIfLosesNoUpdate: writers that read, change and write back with
// PutIf, reading again on ErrChanged, lose none of each other's changes:
// a counter incremented by each of them ends at their sum.
func testPutIfLosesNoUpdate(t *testing.T, s storage.Storage) {
	ctx := context.Background()
	const writers, each = 6, 8
	put(t, s, "counter", []byte("0"), storage.PutOptions{})
	var g errgroup.Group
	for range writers {
		g.Go(func() error {
			for range each {
				for {
					data, v, err := s.ReadVersion(ctx, "counter", 64)
					if err != nil {
						return err
					}
					var n int
					if _, err := fmt.Sscan(string(data), &n); err != nil {
						return fmt.Errorf("counter %q: %w", data, err)
					}
					_, err = s.PutIf(ctx, "counter", []byte(fmt.Sprint(n+1)), v, storage.PutOptions{})
					if err == nil {
						break
					}
					if !errors.Is(err, storage.ErrChanged) {
						return err
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	wantContent(t, s, "counter", []byte(fmt.Sprint(writers*each)))
}
