package writeback

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

const supported = true

// flush starts writeback of the window at off, then waits for the window
// before it to be on disk and drops it from the page cache. A file that
// does not take range writeback (a pipe, a character device) turns the
// File into a plain writer, as does a file system that does not take it.
func (w *File) flush(off int64) error {
	fd := int(w.f.Fd())
	if err := unix.SyncFileRange(fd, off, Window, unix.SYNC_FILE_RANGE_WRITE); err != nil {
		if errors.Is(err, unix.ESPIPE) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
			w.disabled = true
			return nil
		}
		return &os.PathError{Op: "sync_file_range", Path: w.f.Name(), Err: err}
	}
	prev := off - Window
	if prev < w.start {
		return nil
	}
	if err := unix.SyncFileRange(fd, prev, Window, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
		return &os.PathError{Op: "sync_file_range", Path: w.f.Name(), Err: err}
	}
	// Advice only: a page that stays cached costs memory, not correctness.
	_ = unix.Fadvise(fd, prev, Window, unix.FADV_DONTNEED)
	return nil
}
