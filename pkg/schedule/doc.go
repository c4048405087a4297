// Package schedule turns a plan's schedule into slots: the nominal instants a
// backup is due, with a per-plan jitter, missed-run handling and
// deterministic trigger ids. It is pure: every function takes the time it
// needs as an argument (or a Clock), never sleeps and never talks to NATS, so
// any number of scheduler replicas computing the same slots agree on them.
// Leases, KV state and publishing belong to the scheduler service.
//
// docs/schedule.md states the rules, including daylight saving time.
package schedule
