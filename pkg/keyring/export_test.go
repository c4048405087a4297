package keyring

// Made is how many keyrings s made (each one scrypt run).
func Made(s *Store) int64 { return s.made.Load() }
