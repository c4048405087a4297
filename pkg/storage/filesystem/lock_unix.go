//go:build unix

package filesystem

import (
	"fmt"
	"os"
	"syscall"
)

// locked runs fn holding an exclusive flock(2) on the root directory: the
// lock every rename into the tree and every removal of an object takes,
// so that PutIf's check and rename are one step to every writer of the
// directory, in this process and in others (flock locks open files, so
// two opens in one process exclude each other too).
func (s *FS) locked(fn func() error) error {
	d, err := os.Open(s.root)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer d.Close()
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", s.root, err)
	}
	defer syscall.Flock(int(d.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	return fn()
}
