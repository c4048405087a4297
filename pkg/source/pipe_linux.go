package source

import (
	"os"

	"golang.org/x/sys/unix"
)

// pipeSize is what a dump's stdout pipe is grown to: Linux's default of
// 64 KiB makes a fast dump and its reader take turns every 64 KiB, a
// context switch and a short read each; 1 MiB (the unprivileged maximum,
// /proc/sys/fs/pipe-max-size) lets both run and every read fill a chunk.
const pipeSize = 1 << 20

// growPipe asks for a larger pipe buffer. It is a hint: a failure leaves the
// default, which is only slower.
func growPipe(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize)
	})
}
