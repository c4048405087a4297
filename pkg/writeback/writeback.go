// Package writeback writes large files without filling the page cache.
//
// A restore writes gigabytes into one file and makes it durable at the end.
// Written plainly, every byte first becomes a dirty page: the restore evicts
// whatever the machine had cached (the database it restores beside, other
// services' files) to make room, and its closing fsync then waits for all
// of it to reach the disk at once. A File starts the disk write of each
// window of bytes as soon as it is full, waits for the window before it to
// be on disk and drops that one from the cache, so at most a few windows
// are dirty or cached at any time, the disk works while the writer does,
// and the file's closing fsync has only the last windows left to write.
//
// On a virtual machine whose freed memory goes back to its host (virtio
// free page reporting), this is also where most of a plain restore's time
// went: every page of a fresh page cache is memory the host must back
// anew, about 2 s of kernel time per GiB measured on the bench machine
// against 0.4 s for the same GiB through a File (docs/bench.md).
package writeback

import (
	"io"
	"os"
)

// Window is how many bytes a File lets become dirty before it starts
// writing them out; two windows are in flight at most. 8 MiB measured as
// fast as 2 to 64 MiB on the bench machine.
const Window = 8 << 20

// File writes through to an *os.File, keeping its written bytes out of
// the page cache behind it. It is not safe for concurrent use. Write only
// appends: nothing else may move the file's offset while a File writes.
type File struct {
	f *os.File
	// start is the offset the File began at; off the offset after the
	// last write; started the end of the bytes whose writeback began;
	// off is never behind started.
	start, off, started int64
	// disabled: the platform or the file (a pipe, a device) does not take
	// range writeback, and the File is a plain writer.
	disabled bool
}

// New wraps f, which must be open for writing at its current offset.
func New(f *os.File) *File {
	off, err := f.Seek(0, io.SeekCurrent)
	return &File{f: f, start: off, off: off, started: off, disabled: err != nil || !supported}
}

// Write writes p to the file and starts, and waits out, writeback of
// whole windows behind it. An error writing back earlier bytes is
// returned here, as the file's Sync would return it.
func (w *File) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if err != nil || w.disabled {
		return n, err
	}
	for !w.disabled && w.off-w.started >= Window {
		if err := w.flush(w.started); err != nil {
			return n, err
		}
		w.started += Window
	}
	return n, nil
}

// ReadFrom copies r into the file in writes of up to 1 MiB (not the 32 KiB
// of io.Copy's default buffer); it is what io.Copy uses.
func (w *File) ReadFrom(r io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, make([]byte, 1<<20))
}
