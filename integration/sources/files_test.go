package sources

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/source/sourcetest"
)

// writeTree makes a directory tree with nested and empty directories,
// random and text files, unicode names, modes (also setgid and executable),
// an old mtime and a relative symlink that stays inside.
func writeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "srv/www/uploads/2024"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.MkdirAll(filepath.Join(dir, "shared"), 0o2775))
	big := make([]byte, 6<<20+123)
	_, _ = rand.Read(big)
	must(os.WriteFile(filepath.Join(dir, "srv/www/uploads/2024/photo.bin"), big, 0o640))
	must(os.WriteFile(filepath.Join(dir, "srv/www/index.html"), bytes.Repeat([]byte("<p>Grüße 日本語 🚀</p>\n"), 20000), 0o644))
	must(os.WriteFile(filepath.Join(dir, "srv/Ünïcödé name.txt"), []byte("ünïcode name"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "srv/run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "shared/zero"), nil, 0o664))
	must(os.Symlink("www/uploads/2024/photo.bin", filepath.Join(dir, "srv/latest")))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(dir, "srv/www/index.html"), old, old))
}

// TestFiles backs up a directory tree with the files plugin through the
// pipeline and restores it with `backstream restore --into-source --target`
// into an empty directory: every entry, mode, size, digest, mtime and
// symlink comes back.
func TestFiles(t *testing.T) {
	r := newRig(t)
	src := t.TempDir()
	writeTree(t, src)
	want := sourcetest.ListTree(t, src)

	planFile := r.apply(t, "files-tree", fmt.Sprintf("    type: files\n    files:\n      path: %s\n", src))
	run := r.backup(t, "files-tree")
	r.mustSucceed(t, run)
	r.mustHaveBackup(t, run)
	t.Logf("backup %s: %d bytes of tar, %d stored", run.ID, run.Bytes, run.StoredBytes)

	target := t.TempDir()
	r.restoreCLI(t, planFile, "files-tree", run.ID, target)
	got := sourcetest.ListTree(t, target)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored tree differs:\nwant %q\ngot  %q", want, got)
	}
}
