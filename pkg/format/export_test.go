package format

// ScryptUnlocks returns how many times a keyring unlock ran scrypt in this
// process: tests count unlocks with it instead of timing them.
func ScryptUnlocks() int64 { return scryptUnlocks.Load() }

// ForgetKeyrings empties the process's keyring cache, as a new process
// starts with none.
func ForgetKeyrings() {
	keyrings.mu.Lock()
	defer keyrings.mu.Unlock()
	clear(keyrings.m)
}
