package writeback_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/backstream/backstream/pkg/writeback"
)

// Behind a File only the last windows stay in the page cache: written
// plainly, all 64 MiB of this file would be cached (and dirty) until long
// after the writes.
func TestFileKeepsItsBytesOutOfThePageCache(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err == nil && fs.Type == unix.TMPFS_MAGIC {
		t.Skip("the temp dir is on tmpfs, whose pages are the file: nothing to write back")
	}
	path := filepath.Join(dir, "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 * writeback.Window
	w := writeback.New(f)
	block := bytes.Repeat([]byte{0xa5}, 1<<20)
	for range size / len(block) {
		if _, err := w.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if cached := residentBytes(t, f, size); cached > 3*writeback.Window {
		t.Fatalf("%d MiB of the %d MiB written are in the page cache; at most %d MiB may be", cached>>20, size>>20, 3*writeback.Window>>20)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// residentBytes counts the bytes of f's first size bytes that are in the
// page cache.
func residentBytes(t *testing.T, f *os.File, size int) int {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (size+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		if v&1 != 0 {
			n += page
		}
	}
	return n
}
