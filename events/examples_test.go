package events_test

import (
	"strings"
	"time"

	"github.com/backstream/backstream/events"
)

var (
	exampleTime = time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC)
	digestA     = strings.Repeat("a1", 32)
	digestB     = strings.Repeat("0f", 32)
	exitOne     = 1
)

// examples holds one valid payload per event type, with every field set, so
// that deleting or breaking any field is a meaningful mutation.
var examples = map[string]events.Payload{
	events.BackupRequested: events.BackupRequestedData{
		Trigger: events.TriggerSchedule, Slot: &exampleTime, RequestedBy: "schedule/main", Reason: "nightly",
	},
	events.BackupSucceeded: events.BackupSucceededData{
		BackupID: "01JNR4S7T0000000000000000A", Bytes: 1 << 20, StoredBytes: 1 << 19,
		PlaintextSHA256: digestA, Chunks: 4, Started: exampleTime, DurationMs: 1200,
		Source: "mariadb", Trigger: events.TriggerSchedule,
		Objects: []events.BackupObject{{
			Destination: "s3-main", Key: "orders-db/01JNR4S7.bsf", ManifestKey: "orders-db/01JNR4S7.manifest.json",
			Size: 1 << 19, SHA256: digestB,
		}},
		Degraded: true, Missing: []string{"s3-dr"},
	},
	events.BackupFailed: events.BackupFailedData{
		Stage: "snapshot", FailedStep: events.StepSnapshot, Reason: "mariadb-dump exited 2", Cause: "01JNR4S7T0000000000000000B",
	},
	events.BackupCancelled:  events.BackupCancelledData{By: "cli:alice", Reason: "wrong plan", Steps: []string{events.StepSnapshot, "filter"}},
	events.RestoreCancelled: events.RestoreCancelledData{BackupID: "01JNR4S7T0000000000000000A", By: "api:ops", Steps: []string{events.StepRestore}},
	events.BackupMissed: events.BackupMissedData{
		ExpectedBy: exampleTime.Add(time.Hour), Slot: exampleTime, LastSuccess: &exampleTime,
	},
	events.StepCompleted: events.StepCompletedData{Step: "db/lock", DurationMs: 15},
	events.StepFailed:    events.StepFailedData{Step: "db/lock", Reason: "deadline exceeded", TimedOut: true},
	events.HookCompleted: events.HookCompletedData{
		Hook: "db", Op: "lock", Inverse: true, DurationMs: 15, OutputTail: "locked",
	},
	events.HookFailed: events.HookFailedData{
		Hook: "db", Op: "lock", Inverse: true, Error: "exit status 1", OnError: "fail", TimedOut: true,
		ExitCode: &exitOne, DurationMs: 30, OutputTail: "permission denied",
	},
	events.SnapshotStarted: events.SnapshotStartedData{
		Source: "mariadb", DataSubject: "bs.data.raw.orders-db.01JNR4S7", ChunkSize: 256 << 10,
	},
	events.SnapshotProgressed: events.ProgressData{Destination: "s3-main", Bytes: 1 << 20, Chunks: 4, ElapsedMs: 900},
	events.SnapshotCompleted: events.SnapshotCompletedData{
		Source: "mariadb", Bytes: 1 << 20, Chunks: 4, SHA256: digestA, ExitStatus: 0, DurationMs: 1000,
		Describe: map[string]string{"server": "11.4.2-MariaDB", "databases": "orders"},
	},
	events.SnapshotFailed: events.SnapshotFailedData{
		Source: "mariadb", Error: "exit status 2", ExitStatus: &exitOne, StderrTail: "access denied", Bytes: 512,
	},
	events.FilterCompleted: events.FilterCompletedData{
		Chain: []string{"zstd", "aes-256-gcm"}, Frames: 4, BytesIn: 1 << 20, BytesOut: 1 << 19,
	},
	events.FilterFailed:     events.FilterFailedData{Error: "wrap data key: no recipients"},
	events.UploadProgressed: events.ProgressData{Destination: "s3-main", Bytes: 1 << 19, Chunks: 2, ElapsedMs: 400}.ForType(events.UploadProgressed),
	events.UploadRequested: events.UploadRequestedData{
		Destination: "s3-dr", From: "s3-main", Key: "orders-db/01JNR4S7.bsf", ManifestKey: "orders-db/01JNR4S7.manifest.json",
		Size: 1 << 19, SHA256: digestB,
	},
	events.UploadCompleted: events.UploadCompletedData{
		Destination: "s3-main", Key: "orders-db/01JNR4S7.bsf", ManifestKey: "orders-db/01JNR4S7.manifest.json",
		Size: 1 << 19, SHA256: digestB, DurationMs: 1100,
	},
	events.UploadFailed: events.UploadFailedData{Destination: "s3-main", Error: "put part 3: connection reset"},
	events.VerifyCompleted: events.VerifyCompletedData{
		Destination: "s3-main", Key: "orders-db/01JNR4S7.bsf", Size: 1 << 19, SHA256: digestB, Frames: 4,
		Mode: "full", PlaintextSHA256: digestA, DurationMs: 300,
	},
	events.VerifyFailed: events.VerifyFailedData{Destination: "s3-main", Key: "orders-db/01JNR4S7.bsf", Error: "frame 2: authentication failed"},
	events.RetentionCompleted: events.RetentionCompletedData{
		Destination: "s3-main",
		Kept:        []events.RetentionDecision{{BackupID: "01JNR4S7T0000000000000000A", Time: exampleTime, Reasons: []string{"daily 2026-03-01"}}},
		Removed:     []events.RetentionDecision{{BackupID: "01JM000000000000000000000A", Time: exampleTime.AddDate(0, -1, 0), Reasons: []string{"older than keepDaily"}}},
	},
	events.RetentionFailed:       events.RetentionFailedData{Destination: "s3-main", Error: "list objects: access denied"},
	events.CompensationCompleted: events.CompensationCompletedData{Ops: []string{"db/unlock"}},
	events.CompensationFailed:    events.CompensationFailedData{Op: "db/unlock", Undoes: "db/lock", Error: "exit status 1", Attempts: 4},
	events.RestoreRequested: events.RestoreRequestedData{
		BackupID: "latest", Destination: "s3-main", Target: "orders_restore", RequestedBy: "alice", FallbackOlder: true,
	},
	events.RestoreStarted: events.RestoreStartedData{
		BackupID: "01JNR4S7T0000000000000000A", Destination: "s3-main", Key: "orders-db/01JNR4S7.bsf", Size: 1 << 19,
	},
	events.RestoreProgressed: events.ProgressData{Destination: "s3-main", Bytes: 1 << 18, Chunks: 1, ElapsedMs: 100}.ForType(events.RestoreProgressed),
	events.RestoreSucceeded: events.RestoreSucceededData{
		BackupID: "01JNR4S7T0000000000000000A", Destination: "s3-main", Bytes: 1 << 20, SHA256: digestA, DurationMs: 2000,
	},
	events.RestoreFailed: events.RestoreFailedData{BackupID: "01JNR4S7T0000000000000000A", Stage: "restore", Error: "mariadb: exit status 1"},
	events.ScrubRequested: events.ScrubRequestedData{
		Trigger: events.TriggerSchedule, Slot: &exampleTime, RequestedBy: "schedule", Reason: "weekly", Mode: "full", Destination: "s3-dr",
	},
	events.ScrubCompleted: events.ScrubCompletedData{
		Mode: "full", Status: "repaired",
		Destinations: []events.ScrubDestination{{Destination: "s3-main", Checked: 12, Verified: 11, Corrupt: 1, Repaired: 1, Bytes: 12 << 20},
			{Destination: "s3-dr", Checked: 12, Verified: 12, Bytes: 12 << 20, Error: "list: slow down"}},
		Damaged: []events.ScrubDamage{{Destination: "s3-main", BackupID: "01JNR4S7T0000000000000000A", Problem: "corrupt",
			Error: "frame 2: crc mismatch", RepairedFrom: "s3-dr", RepairError: "none"}},
		DurationMs: 5400,
	},
	events.ScrubFailed:    events.ScrubFailedData{Error: "mode full: no key opens this plan's backups here"},
	events.DrillRequested: events.DrillRequestedData{Trigger: events.TriggerSchedule, Slot: &exampleTime, RequestedBy: "schedule", Reason: "monthly", BackupID: "latest"},
	events.DrillSucceeded: events.DrillSucceededData{
		BackupID: "01JNR4S7T0000000000000000A", Destination: "s3-main", Target: "bsdrill_orders_01jnr4s7", Bytes: 1 << 20,
		Rows: 3, RestoreMs: 900, CheckMs: 20, DurationMs: 1100,
	},
	events.DrillFailed: events.DrillFailedData{Stage: "check", Error: "the check returned no rows", BackupID: "01JNR4S7T0000000000000000A",
		Destination: "s3-main", Target: "bsdrill_orders_01jnr4s7", DurationMs: 1000},
	events.DrillMissed: events.DrillMissedData{ExpectedBy: exampleTime.Add(time.Hour), Slot: exampleTime, LastSuccess: &exampleTime},
}
