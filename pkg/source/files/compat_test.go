package files_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCompatTree makes the tree that testdata/v1-tree.tar.gz was made from:
// a sparse file, two names of one inode, a symlink and a directory, all with
// fixed modes and times, so the fixture can be compared with a fresh copy.
func writeCompatTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "d"), 0o755))
	f, err := os.Create(filepath.Join(dir, "d/sparse.img"))
	must(err)
	for _, off := range []int64{0, 512 << 10, 1<<20 - 4096} {
		_, err := f.WriteAt(bytes.Repeat([]byte{byte(off>>12) + 1, 'x'}, 2048), off)
		must(err)
	}
	must(f.Close())
	must(os.WriteFile(filepath.Join(dir, "d/one"), []byte("one inode, two names\n"), 0o640))
	must(os.Link(filepath.Join(dir, "d/one"), filepath.Join(dir, "two")))
	must(os.Symlink("d/one", filepath.Join(dir, "sym")))
	for _, p := range []string{"d/sparse.img", "d/one", "d"} {
		must(os.Chmod(filepath.Join(dir, p), map[string]os.FileMode{"d/sparse.img": 0o600, "d/one": 0o640, "d": 0o750}[p]))
	}
	old := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	for _, p := range []string{"d/sparse.img", "d/one", "d"} {
		must(os.Chtimes(filepath.Join(dir, p), old, old))
	}
}
