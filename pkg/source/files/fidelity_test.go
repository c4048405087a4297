package files_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/files"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// sparseFile makes a file of size bytes with 4 KiB of data at each offset
// and holes elsewhere.
func sparseFile(t *testing.T, p string, size int64, offsets ...int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, off := range offsets {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1), 0, 'x', 0xff}, 1024), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// allocated is what p takes on disk.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// hashFile streams p through SHA-256.
func hashFile(t *testing.T, p string) (int64, string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return n, fmt.Sprintf("%x", h.Sum(nil))
}

// needHoles ends the test where the file system of dir does not keep holes
// (the backup then stores zeros, which is correct but not what is tested
// here): a skip, or a failure under BACKSTREAM_REQUIRE_ALL=1.
func needHoles(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, ".holes")
	sparseFile(t, p, 64<<20, 0)
	defer os.Remove(p)
	if allocated(t, p) >= 1<<20 {
		testenv.Missing(t, "a file system that keeps holes at %s", dir)
	}
}

func backup(t *testing.T, src string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := files.New(files.Config{Path: src}).Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func restore(t *testing.T, r io.Reader, dst string) {
	t.Helper()
	if err := files.New(files.Config{Path: dst}).Restore(context.Background(), r, source.RestoreOptions{Create: true}); err != nil {
		t.Fatal(err)
	}
}

// TestSparseRoundTrip backs up files with holes and checks that the stream
// does not carry the holes, that the restored files read the same, and that
// they are sparse again; memory stays far below the files' size.
func TestSparseRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "restored")
	needHoles(t, src)
	tests := []struct {
		name    string
		size    int64
		offsets []int64
	}{
		{"1 GiB with 12 KiB of data", 1 << 30, []int64{0, 512 << 20, 1<<30 - 4096}},
		{"ends in a hole", 64 << 20, []int64{1 << 20, 40 << 20}},
		{"starts with a hole", 8 << 20, []int64{8<<20 - 4096}},
		{"only a hole", 16 << 20, nil},
	}
	for _, tt := range tests {
		sparseFile(t, filepath.Join(src, tt.name), tt.size, tt.offsets...)
	}
	old := time.Date(2022, 2, 3, 4, 5, 6, 789, time.UTC)
	if err := os.Chtimes(filepath.Join(src, tests[0].name), old, old); err != nil {
		t.Fatal(err)
	}

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stream := backup(t, src)
	restore(t, bytes.NewReader(stream), dst)
	runtime.ReadMemStats(&after)

	if len(stream) > 1<<20 {
		t.Errorf("stream of %d bytes for 28 KiB of data: holes were stored", len(stream))
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Errorf("backup and restore allocated %d bytes for %d of files", alloc, int64(1<<30+88<<20))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, q := filepath.Join(src, tt.name), filepath.Join(dst, tt.name)
			wantN, want := hashFile(t, p)
			gotN, got := hashFile(t, q)
			if gotN != tt.size || wantN != tt.size || got != want {
				t.Fatalf("restored %d bytes %s, want %d bytes %s", gotN, got, wantN, want)
			}
			if a := allocated(t, q); a > int64(len(tt.offsets))*4096+64<<10 {
				t.Fatalf("restored file takes %d bytes on disk for %d bytes of data", a, len(tt.offsets)*4096)
			}
			fp, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			fq, err := os.Stat(q)
			if err != nil {
				t.Fatal(err)
			}
			if fq.Mode() != fp.Mode() {
				t.Fatalf("mode %v, want %v", fq.Mode(), fp.Mode())
			}
		})
	}
	fi, err := os.Stat(filepath.Join(dst, tests[0].name))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(old) {
		t.Fatalf("mtime %v, want %v", fi.ModTime(), old)
	}
}

// TestSparseStreamTruncated cuts a stream holding sparse entries at every
// block and inside blocks: none may restore as complete.
func TestSparseStreamTruncated(t *testing.T) {
	src := t.TempDir()
	needHoles(t, src)
	sparseFile(t, filepath.Join(src, "a"), 4<<20, 0, 2<<20)
	sparseFile(t, filepath.Join(src, "b"), 4<<20, 1<<20)
	stream := backup(t, src)
	restore(t, bytes.NewReader(stream), t.TempDir())
	for n := 0; n < len(stream); n += 256 + n%7 {
		err := files.New(files.Config{Path: t.TempDir()}).Restore(context.Background(), bytes.NewReader(stream[:n]), source.RestoreOptions{})
		if err == nil {
			t.Fatalf("stream cut at %d of %d bytes restored as complete", n, len(stream))
		}
	}
}

// TestSparseInterop checks the format against GNU tar both ways: tar
// extracts our sparse entries with their holes, and we restore what tar
// writes in its PAX and old GNU sparse formats with holes.
func TestSparseInterop(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		testenv.Missing(t, "GNU tar: %v", err)
	}
	if out, err := exec.Command(tarBin, "--version").Output(); err != nil || !strings.Contains(string(out), "GNU tar") {
		testenv.Missing(t, "GNU tar: %s is another tar", tarBin)
	}
	src := t.TempDir()
	needHoles(t, src)
	if err := os.Mkdir(filepath.Join(src, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("long-name-", 12) // past ustar's 100 bytes
	sparseFile(t, filepath.Join(src, "d", long), 256<<20, 4096, 100<<20)
	sparseFile(t, filepath.Join(src, "tail"), 32<<20, 0)
	_, want1 := hashFile(t, filepath.Join(src, "d", long))
	_, want2 := hashFile(t, filepath.Join(src, "tail"))
	check := func(t *testing.T, dir string) {
		t.Helper()
		for _, c := range []struct{ name, want string }{{"d/" + long, want1}, {"tail", want2}} {
			p := filepath.Join(dir, c.name)
			if _, got := hashFile(t, p); got != c.want {
				t.Fatalf("%s: content differs", c.name)
			}
			if a := allocated(t, p); a > 1<<20 {
				t.Fatalf("%s takes %d bytes on disk", c.name, a)
			}
		}
	}

	t.Run("tar extracts ours", func(t *testing.T) {
		dst := t.TempDir()
		cmd := exec.Command(tarBin, "-xf", "-", "-C", dst)
		cmd.Stdin = bytes.NewReader(backup(t, src))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
		check(t, dst)
	})
	for _, format := range []string{"pax", "gnu"} {
		t.Run("we restore tar --sparse --format="+format, func(t *testing.T) {
			out, err := exec.Command(tarBin, "-cf", "-", "--sparse", "--format="+format, "-C", src, "d", "tail").Output()
			if err != nil {
				t.Fatalf("tar: %v", err)
			}
			dst := t.TempDir()
			restore(t, bytes.NewReader(out), dst)
			check(t, dst)
		})
	}
}

// TestHardLinks stores a file with three names in the tree once and restores
// the names as links of one inode; a file whose other name is outside the
// tree is an ordinary file.
func TestHardLinks(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	body := bytes.Repeat([]byte("shared "), 10000)
	must(os.WriteFile(filepath.Join(src, "a"), body, 0o640))
	must(os.Link(filepath.Join(src, "a"), filepath.Join(src, "b")))
	must(os.Link(filepath.Join(src, "a"), filepath.Join(src, "sub/c")))
	must(os.WriteFile(filepath.Join(src, "alone"), []byte("alone"), 0o600))
	must(os.Link(filepath.Join(src, "alone"), filepath.Join(base, "outside")))

	stream := backup(t, src)
	regs, links := 0, 0
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(err)
		switch h.Typeflag {
		case tar.TypeReg:
			regs++
		case tar.TypeLink:
			links++
		}
	}
	if regs != 2 || links != 2 || len(stream) > 2*len(body) {
		t.Fatalf("%d files and %d links in %d bytes, want 2 and 2 and the shared content once", regs, links, len(stream))
	}

	restore(t, bytes.NewReader(stream), dst)
	st := func(name string) *syscall.Stat_t {
		fi, err := os.Lstat(filepath.Join(dst, name))
		must(err)
		return fi.Sys().(*syscall.Stat_t)
	}
	a := st("a")
	for _, name := range []string{"b", "sub/c"} {
		if s := st(name); s.Ino != a.Ino || s.Dev != a.Dev {
			t.Fatalf("%s is inode %d, a is %d", name, s.Ino, a.Ino)
		}
	}
	if a.Nlink != 3 {
		t.Fatalf("a has %d links, want 3", a.Nlink)
	}
	if s := st("alone"); s.Nlink != 1 {
		t.Fatalf("alone has %d links, want 1", s.Nlink)
	}
	if want, got := sourcetest.ListTree(t, src), sourcetest.ListTree(t, dst); strings.Join(want, "\n") != strings.Join(got, "\n") {
		t.Fatalf("restored tree differs:\nwant\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}

// TestSymlinkAndDirTimes restores a symlink's own mtime and directories'
// mtimes after what is written into them (a file, a symlink, a hard link, a
// subdirectory).
func TestSymlinkAndDirTimes(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "restored")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d/e"), 0o755))
	must(os.WriteFile(filepath.Join(src, "d/f"), []byte("f"), 0o644))
	must(os.Link(filepath.Join(src, "d/f"), filepath.Join(src, "d/e/hard")))
	must(os.Symlink("f", filepath.Join(src, "d/sym")))
	must(os.Symlink("nowhere", filepath.Join(src, "dangling")))
	times := map[string]time.Time{
		"d/sym":    time.Date(2019, 1, 1, 0, 0, 1, 123456789, time.UTC),
		"dangling": time.Date(2018, 5, 6, 7, 8, 9, 0, time.UTC),
		"d/f":      time.Date(2020, 3, 4, 5, 6, 7, 0, time.UTC),
		"d/e":      time.Date(2017, 1, 2, 3, 4, 5, 600, time.UTC),
		"d":        time.Date(2016, 7, 8, 9, 10, 11, 0, time.UTC),
	}
	for _, name := range []string{"d/sym", "dangling", "d/f", "d/e", "d"} { // children first
		ts, err := unix.TimeToTimespec(times[name])
		must(err)
		must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, name), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	restore(t, bytes.NewReader(backup(t, src)), dst)
	for name, want := range times {
		fi, err := os.Lstat(filepath.Join(dst, name))
		must(err)
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v, want %v", name, fi.ModTime().UTC(), want)
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "dangling")); err != nil || l != "nowhere" {
		t.Fatalf("dangling -> %q, %v", l, err)
	}
}

// TestOldArchiveRestores restores testdata/v1-tree.tar.gz, written by the
// files source before it kept holes and hard links (commit b4ce591, from
// writeCompatTree): it must restore the same tree, the hard link as a copy
// and the sparse file with its zeros.
func TestOldArchiveRestores(t *testing.T) {
	f, err := os.Open("testdata/v1-tree.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	restore(t, zr, dst)
	want := t.TempDir()
	writeCompatTree(t, want)
	if w, g := sourcetest.ListTree(t, want), sourcetest.ListTree(t, dst); strings.Join(w, "\n") != strings.Join(g, "\n") {
		t.Fatalf("restored tree differs:\nwant\n%s\ngot\n%s", strings.Join(w, "\n"), strings.Join(g, "\n"))
	}
	fi, err := os.Stat(filepath.Join(dst, "d"))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC); !fi.ModTime().Equal(want) {
		t.Fatalf("d: mtime %v, want %v", fi.ModTime(), want)
	}
}

// TestConformanceSparseLinks runs the source suite on a tree with a sparse
// file, a hard link and a symlink.
func TestConformanceSparseLinks(t *testing.T) {
	src := t.TempDir()
	writeCompatTree(t, src)
	s := files.New(files.Config{Path: src})
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dst := filepath.Join(t.TempDir(), "restored")
			return s, source.RestoreOptions{Target: dst, Create: true}, func(t *testing.T) {
				want, got := sourcetest.ListTree(t, src), sourcetest.ListTree(t, dst)
				if strings.Join(want, "\n") != strings.Join(got, "\n") {
					t.Fatalf("restored tree differs:\nwant\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
				}
			}
		},
	})
}
