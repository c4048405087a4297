// Package format defines the backstream object format: how one backup's bytes
// are cut into frames, compressed, sealed and laid out in storage, how the
// per-backup data key is wrapped for age recipients, a plan keyring or a
// passphrase, and the manifest that sits beside every object.
//
// An object is a header followed by frames. Each frame holds one chunk,
// compressed (none, snappy or zstd) and then sealed with AES-256-GCM under a
// STREAM nonce construction, so that a reader detects a frame that was
// flipped, reordered, dropped, duplicated or cut off, and an object that ends
// without its final frame. docs/format.md is the normative description; the
// vectors under testdata/vectors pin it down.
//
// The package is pure computation over io.Reader and io.Writer: it never talks
// to NATS or storage, never logs, and never writes a data key, identity or
// passphrase anywhere but into the sealed header as an age-wrapped blob.
// The one state it keeps is the process's cache of unlocked keyring
// identities (memory only), which makes scrypt run once per process and
// keyring instead of once per object.
package format
