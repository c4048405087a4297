//go:build unix

package files

import (
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// inode identifies a file across its names.
type inode struct{ dev, ino uint64 }

// linkID returns the inode of a file with more than one name; ok is false
// for a file with one name, which needs no bookkeeping.
func linkID(info fs.FileInfo) (id inode, ok bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || st.Nlink < 2 {
		return inode{}, false
	}
	return inode{uint64(st.Dev), uint64(st.Ino)}, true
}

// lchtimes sets the times of name itself, not of what it links to
// (os.Root.Chtimes follows symlinks). name's parents are plain directories
// (checkParents), and the directory is opened through root.
func lchtimes(root *os.Root, name string, t time.Time) error {
	dir, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer dir.Close()
	ts, err := unix.TimeToTimespec(t)
	if err != nil {
		return err
	}
	rc, err := dir.SyscallConn()
	if err != nil {
		return err
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		uerr = unix.UtimesNanoAt(int(fd), path.Base(name), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		return err
	}
	if uerr != nil {
		return &fs.PathError{Op: "lutimes", Path: name, Err: uerr}
	}
	return nil
}
