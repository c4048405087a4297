// Package retention decides which backups of a plan to keep and which to
// remove. It is a pure engine: it reads a Policy, a list of backups and the
// current time, and returns one Decision per backup. It never talks to NATS or
// storage and never reads the wall clock; callers pass now and the plan's time
// zone.
//
// The count and within rules follow restic's `forget` (internal/restic/
// snapshot_policy.go), extended by calendar quarters and by backstream's rules
// about verification; docs/retention.md states them exactly.
package retention
