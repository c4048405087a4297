package sources

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
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
	writeTarOnly(t, src)
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
	checkTarOnly(t, target)
}

// sparseData is where writeTarOnly puts data in a 64 MiB file; the rest is holes.
var sparseData = []int64{0, 40 << 20}

// writeTarOnly adds what a tree keeps beyond names, modes and contents: a
// sparse file, a file with two names and a symlink with its own old mtime.
func writeTarOnly(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "vm"), 0o755))
	f, err := os.Create(filepath.Join(dir, "vm/disk.img"))
	must(err)
	for _, off := range sparseData {
		_, err := f.WriteAt(bytes.Repeat([]byte("data"), 1024), off)
		must(err)
	}
	must(f.Truncate(64 << 20))
	must(f.Close())
	must(os.Link(filepath.Join(dir, "srv/run.sh"), filepath.Join(dir, "vm/run-link.sh")))
	must(os.Symlink("disk.img", filepath.Join(dir, "vm/current")))
	// touch -h sets the link's own times (lutimes), as os.Chtimes cannot.
	if out, err := exec.Command("touch", "-h", "-d", symlinkTime.Format(time.RFC3339), filepath.Join(dir, "vm/current")).CombinedOutput(); err != nil {
		t.Fatalf("touch -h: %v: %s", err, out)
	}
}

var symlinkTime = time.Date(2019, 9, 9, 9, 9, 9, 0, time.UTC)

// checkTarOnly checks what ListTree does not see: the sparse file takes
// about its data on disk, the two names are one inode, the symlink kept its
// mtime.
func checkTarOnly(t *testing.T, dir string) {
	t.Helper()
	stat := func(name string) *syscall.Stat_t {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t)
	}
	if disk := stat("vm/disk.img").Blocks * 512; disk > 1<<20 {
		t.Errorf("vm/disk.img: %d bytes on disk for %d KiB of data", disk, 4*len(sparseData))
	}
	if a, b := stat("srv/run.sh"), stat("vm/run-link.sh"); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("srv/run.sh (inode %d, %d links) and vm/run-link.sh (inode %d) are not one file", a.Ino, a.Nlink, b.Ino)
	}
	fi, err := os.Lstat(filepath.Join(dir, "vm/current"))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(symlinkTime) {
		t.Errorf("vm/current: mtime %v, want %v", fi.ModTime(), symlinkTime)
	}
}
