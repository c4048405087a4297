//go:build !unix

package filesystem

import "sync"

var mu sync.Mutex

// locked runs fn holding a lock of this process only: without flock(2),
// PutIf is atomic against the writers of this process, not of others.
func (s *FS) locked(fn func() error) error {
	mu.Lock()
	defer mu.Unlock()
	return fn()
}
