//go:build !unix

package filesystem

import "sync"

var processLocks sync.Map // root → *sync.Mutex

// locked runs fn holding a lock of this process only: without flock(2),
// PutIf is atomic against the writers of this process, not of others.
func (s *FS) locked(fn func() error) error {
	mu, _ := processLocks.LoadOrStore(s.root, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	return fn()
}
