//go:build unix

package filesystem

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// locked runs fn holding an exclusive flock(2) on the root directory: the
// lock every rename into the tree and every removal of an object takes,
// so that PutIf's check and rename are one step to every writer of the
// directory, in this process and in others (flock locks open files, so
// two opens in one process exclude each other too). A filesystem without
// flock (some FUSE mounts) gets a lock of this process only: PutIf is then
// atomic against this process's writers, not another's.
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
	switch {
	case errors.Is(err, syscall.ENOLCK), errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.ENOSYS), errors.Is(err, syscall.EINVAL):
		mu := processLock(s.root)
		mu.Lock()
		defer mu.Unlock()
		return fn()
	case err != nil:
		return fmt.Errorf("lock %s: %w", s.root, err)
	}
	defer syscall.Flock(int(d.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	return fn()
}

var processLocks sync.Map // root → *sync.Mutex

// processLock is this process's lock of the tree at root.
func processLock(root string) *sync.Mutex {
	mu, _ := processLocks.LoadOrStore(root, new(sync.Mutex))
	return mu.(*sync.Mutex)
}
