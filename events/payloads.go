package events

import (
	"sort"
	"strconv"
	"time"
)

// Event types. The constant's name is the noun and the past-tense verb.
const (
	BackupRequested = TypePrefix + "backup.requested"
	BackupSucceeded = TypePrefix + "backup.succeeded"
	BackupFailed    = TypePrefix + "backup.failed"
	BackupMissed    = TypePrefix + "backup.missed"
	BackupCancelled = TypePrefix + "backup.cancelled"

	StepCompleted = TypePrefix + "step.completed"
	StepFailed    = TypePrefix + "step.failed"

	HookCompleted = TypePrefix + "hook.completed"
	HookFailed    = TypePrefix + "hook.failed"

	SnapshotStarted    = TypePrefix + "snapshot.started"
	SnapshotProgressed = TypePrefix + "snapshot.progressed"
	SnapshotCompleted  = TypePrefix + "snapshot.completed"
	SnapshotFailed     = TypePrefix + "snapshot.failed"

	FilterCompleted = TypePrefix + "filter.completed"
	FilterFailed    = TypePrefix + "filter.failed"

	UploadRequested  = TypePrefix + "upload.requested"
	UploadProgressed = TypePrefix + "upload.progressed"
	UploadCompleted  = TypePrefix + "upload.completed"
	UploadFailed     = TypePrefix + "upload.failed"

	VerifyCompleted = TypePrefix + "verify.completed"
	VerifyFailed    = TypePrefix + "verify.failed"

	RetentionCompleted = TypePrefix + "retention.completed"
	RetentionFailed    = TypePrefix + "retention.failed"

	CompensationCompleted = TypePrefix + "compensation.completed"
	CompensationFailed    = TypePrefix + "compensation.failed"

	RestoreRequested  = TypePrefix + "restore.requested"
	RestoreStarted    = TypePrefix + "restore.started"
	RestoreProgressed = TypePrefix + "restore.progressed"
	RestoreSucceeded  = TypePrefix + "restore.succeeded"
	RestoreFailed     = TypePrefix + "restore.failed"
	RestoreCancelled  = TypePrefix + "restore.cancelled"

	ScrubRequested = TypePrefix + "scrub.requested"
	ScrubCompleted = TypePrefix + "scrub.completed"
	ScrubFailed    = TypePrefix + "scrub.failed"

	DrillRequested = TypePrefix + "drill.requested"
	DrillSucceeded = TypePrefix + "drill.succeeded"
	DrillFailed    = TypePrefix + "drill.failed"
	DrillMissed    = TypePrefix + "drill.missed"
)

// Trigger kinds of a backup.requested.
const (
	TriggerSchedule = "schedule"
	TriggerCLI      = "cli"
	TriggerAPI      = "api"
	TriggerEvent    = "event"
)

// The data step names of a workflow.
const (
	StepSnapshot = "snapshot"
	StepRestore  = "restore"
)

var registry = map[string]func() Payload{
	BackupRequested:       func() Payload { return new(BackupRequestedData) },
	BackupSucceeded:       func() Payload { return new(BackupSucceededData) },
	BackupFailed:          func() Payload { return new(BackupFailedData) },
	BackupMissed:          func() Payload { return new(BackupMissedData) },
	BackupCancelled:       func() Payload { return new(BackupCancelledData) },
	StepCompleted:         func() Payload { return new(StepCompletedData) },
	StepFailed:            func() Payload { return new(StepFailedData) },
	HookCompleted:         func() Payload { return new(HookCompletedData) },
	HookFailed:            func() Payload { return new(HookFailedData) },
	SnapshotStarted:       func() Payload { return new(SnapshotStartedData) },
	SnapshotProgressed:    func() Payload { return new(ProgressData) },
	SnapshotCompleted:     func() Payload { return new(SnapshotCompletedData) },
	SnapshotFailed:        func() Payload { return new(SnapshotFailedData) },
	FilterCompleted:       func() Payload { return new(FilterCompletedData) },
	FilterFailed:          func() Payload { return new(FilterFailedData) },
	UploadProgressed:      func() Payload { return &ProgressData{typ: UploadProgressed} },
	UploadCompleted:       func() Payload { return new(UploadCompletedData) },
	UploadFailed:          func() Payload { return new(UploadFailedData) },
	VerifyCompleted:       func() Payload { return new(VerifyCompletedData) },
	VerifyFailed:          func() Payload { return new(VerifyFailedData) },
	RetentionCompleted:    func() Payload { return new(RetentionCompletedData) },
	RetentionFailed:       func() Payload { return new(RetentionFailedData) },
	CompensationCompleted: func() Payload { return new(CompensationCompletedData) },
	CompensationFailed:    func() Payload { return new(CompensationFailedData) },
	RestoreRequested:      func() Payload { return new(RestoreRequestedData) },
	RestoreStarted:        func() Payload { return new(RestoreStartedData) },
	RestoreProgressed:     func() Payload { return &ProgressData{typ: RestoreProgressed} },
	RestoreSucceeded:      func() Payload { return new(RestoreSucceededData) },
	RestoreFailed:         func() Payload { return new(RestoreFailedData) },
	RestoreCancelled:      func() Payload { return new(RestoreCancelledData) },
	UploadRequested:       func() Payload { return new(UploadRequestedData) },
	ScrubRequested:        func() Payload { return new(ScrubRequestedData) },
	ScrubCompleted:        func() Payload { return new(ScrubCompletedData) },
	ScrubFailed:           func() Payload { return new(ScrubFailedData) },
	DrillRequested:        func() Payload { return new(DrillRequestedData) },
	DrillSucceeded:        func() Payload { return new(DrillSucceededData) },
	DrillFailed:           func() Payload { return new(DrillFailedData) },
	DrillMissed:           func() Payload { return new(DrillMissedData) },
}

func sortStrings(s []string) { sort.Strings(s) }

// BackupRequestedData starts a backup run of a plan.
type BackupRequestedData struct {
	// Trigger is schedule, cli, api or event.
	Trigger string `json:"trigger"`
	// Slot is the scheduled time this run stands for (schedule triggers only).
	Slot *time.Time `json:"slot,omitempty"`
	// RequestedBy names the person or program, for the run's record.
	RequestedBy string `json:"requestedBy,omitempty"`
	// Reason is free text shown with the run.
	Reason string `json:"reason,omitempty"`
}

func (BackupRequestedData) EventType() string { return BackupRequested }

func (d BackupRequestedData) Validate() error {
	var p problems
	p.trigger(d.Trigger, d.Slot)
	return p.err()
}

// Destination result of a backup, as recorded in backup.succeeded.
type BackupObject struct {
	Destination string `json:"destination"`
	Key         string `json:"key"`
	ManifestKey string `json:"manifestKey"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// BackupSucceededData closes a verified backup run.
type BackupSucceededData struct {
	BackupID        string         `json:"backupId"`
	Bytes           int64          `json:"bytes"`
	StoredBytes     int64          `json:"storedBytes"`
	PlaintextSHA256 string         `json:"plaintextSha256"`
	Chunks          int64          `json:"chunks"`
	Started         time.Time      `json:"started"`
	DurationMs      int64          `json:"durationMs"`
	Source          string         `json:"source"`
	Trigger         string         `json:"trigger,omitempty"`
	Objects         []BackupObject `json:"objects"`
	// Degraded says the run held the copies spec.require asks for but not
	// one in every destination; Missing names the destinations without one.
	Degraded bool     `json:"degraded,omitempty"`
	Missing  []string `json:"missing,omitempty"`
}

func (BackupSucceededData) EventType() string { return BackupSucceeded }

func (d BackupSucceededData) Validate() error {
	var p problems
	p.required("backupId", d.BackupID)
	p.nonNegative("bytes", d.Bytes)
	p.nonNegative("storedBytes", d.StoredBytes)
	p.sha256("plaintextSha256", d.PlaintextSHA256)
	p.nonNegative("durationMs", d.DurationMs)
	p.required("source", d.Source)
	if len(d.Objects) == 0 {
		p.addf("objects: at least one stored object required")
	}
	for i, o := range d.Objects {
		p.name(idx("objects", i, "destination"), o.Destination)
		p.required(idx("objects", i, "key"), o.Key)
		p.required(idx("objects", i, "manifestKey"), o.ManifestKey)
		p.nonNegative(idx("objects", i, "size"), o.Size)
		p.sha256(idx("objects", i, "sha256"), o.SHA256)
	}
	return p.err()
}

// BackupFailedData ends a run that failed; Stage and Reason say where and why.
type BackupFailedData struct {
	// Stage is the service whose failure ended the run (snapshot, upload, hook,
	// watchdog, ...).
	Stage string `json:"stage"`
	// FailedStep is the workflow step that failed, when one did.
	FailedStep string `json:"failedStep,omitempty"`
	Reason     string `json:"reason"`
	// Cause is the id of the event that caused the failure, when one did.
	Cause string `json:"cause,omitempty"`
}

func (BackupFailedData) EventType() string { return BackupFailed }

func (d BackupFailedData) Validate() error {
	var p problems
	p.required("stage", d.Stage)
	p.required("reason", d.Reason)
	return p.err()
}

// BackupCancelledData ends a backup run an operator cancelled: its dump
// was stopped, its uploads aborted, and compensation undoes what its ops
// did. Cancelled is a phase of its own, neither success nor failure.
type BackupCancelledData struct {
	// By is who cancelled it (the CLI's user, the API's token name).
	By string `json:"by"`
	// Reason is what they said, if anything.
	Reason string `json:"reason,omitempty"`
	// Steps are the steps that were running when it was cancelled.
	Steps []string `json:"steps,omitempty"`
}

func (BackupCancelledData) EventType() string { return BackupCancelled }

func (d BackupCancelledData) Validate() error {
	var p problems
	p.required("by", d.By)
	return p.err()
}

// BackupMissedData says a plan's expected success did not arrive in time.
type BackupMissedData struct {
	// ExpectedBy is the end of the window (slot plus grace) that held no success.
	ExpectedBy time.Time `json:"expectedBy"`
	// Slot is the scheduled slot that was missed.
	Slot time.Time `json:"slot"`
	// LastSuccess is the time of the plan's newest success, if any.
	LastSuccess *time.Time `json:"lastSuccess,omitempty"`
}

func (BackupMissedData) EventType() string { return BackupMissed }

func (d BackupMissedData) Validate() error {
	var p problems
	p.missed(d.ExpectedBy, d.Slot)
	return p.err()
}

// missed is the rule of every missed-success payload (backup, drill): the
// window's end and its slot are required.
func (p *problems) missed(expectedBy, slot time.Time) {
	if expectedBy.IsZero() {
		p.addf("expectedBy: required")
	}
	if slot.IsZero() {
		p.addf("slot: required")
	}
}

// StepCompletedData says a workflow step ended well; the next step follows.
type StepCompletedData struct {
	Step       string `json:"step"`
	DurationMs int64  `json:"durationMs"`
}

func (StepCompletedData) EventType() string { return StepCompleted }

func (d StepCompletedData) Validate() error {
	var p problems
	p.required("step", d.Step)
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// StepFailedData says a workflow step failed, timed out or was abandoned.
type StepFailedData struct {
	Step   string `json:"step"`
	Reason string `json:"reason"`
	// TimedOut is set when the step outlived its deadline.
	TimedOut bool `json:"timedOut,omitempty"`
}

func (StepFailedData) EventType() string { return StepFailed }

func (d StepFailedData) Validate() error {
	var p problems
	p.required("step", d.Step)
	p.required("reason", d.Reason)
	return p.err()
}

// HookCompletedData says one hook op ran and succeeded.
type HookCompletedData struct {
	Hook string `json:"hook"`
	Op   string `json:"op"`
	// Inverse is set when the op ran as compensation for a failed run.
	Inverse    bool   `json:"inverse,omitempty"`
	DurationMs int64  `json:"durationMs"`
	OutputTail string `json:"outputTail,omitempty"`
}

func (HookCompletedData) EventType() string { return HookCompleted }

func (d HookCompletedData) Validate() error {
	var p problems
	p.name("hook", d.Hook)
	p.name("op", d.Op)
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// HookFailedData says one hook op failed.
type HookFailedData struct {
	Hook    string `json:"hook"`
	Op      string `json:"op"`
	Inverse bool   `json:"inverse,omitempty"`
	Error   string `json:"error"`
	// OnError is the policy applied: fail (the run fails) or continue.
	OnError    string `json:"onError"`
	TimedOut   bool   `json:"timedOut,omitempty"`
	ExitCode   *int   `json:"exitCode,omitempty"`
	DurationMs int64  `json:"durationMs"`
	OutputTail string `json:"outputTail,omitempty"`
}

func (HookFailedData) EventType() string { return HookFailed }

func (d HookFailedData) Validate() error {
	var p problems
	p.name("hook", d.Hook)
	p.name("op", d.Op)
	p.required("error", d.Error)
	if d.OnError != "fail" && d.OnError != "continue" {
		p.addf("onError: %q is not one of fail, continue", d.OnError)
	}
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// SnapshotStartedData opens a run's chunk stream.
type SnapshotStartedData struct {
	// Source is the source plugin type (command, mariadb, ...).
	Source string `json:"source"`
	// DataSubject is the NATS subject of the run's raw chunks.
	DataSubject string `json:"dataSubject"`
	ChunkSize   int64  `json:"chunkSize"`
}

func (SnapshotStartedData) EventType() string { return SnapshotStarted }

func (d SnapshotStartedData) Validate() error {
	var p problems
	p.required("source", d.Source)
	p.required("dataSubject", d.DataSubject)
	if d.ChunkSize <= 0 {
		p.addf("chunkSize: must be > 0, got %d", d.ChunkSize)
	}
	return p.err()
}

// ProgressData is a throttled progress report of a data step.
type ProgressData struct {
	typ         string
	Destination string `json:"destination,omitempty"`
	Bytes       int64  `json:"bytes"`
	Chunks      int64  `json:"chunks"`
	ElapsedMs   int64  `json:"elapsedMs"`
}

func (d ProgressData) EventType() string {
	if d.typ == "" {
		return SnapshotProgressed
	}
	return d.typ
}

// ForType returns a copy of d for a given progress event type
// (SnapshotProgressed, UploadProgressed or RestoreProgressed).
func (d ProgressData) ForType(typ string) *ProgressData { d.typ = typ; return &d }

func (d ProgressData) Validate() error {
	var p problems
	p.nonNegative("bytes", d.Bytes)
	p.nonNegative("chunks", d.Chunks)
	p.nonNegative("elapsedMs", d.ElapsedMs)
	return p.err()
}

// SnapshotCompletedData closes a run's chunk stream with the producer's result.
type SnapshotCompletedData struct {
	Source     string `json:"source"`
	Bytes      int64  `json:"bytes"`
	Chunks     int64  `json:"chunks"`
	SHA256     string `json:"sha256"`
	ExitStatus int    `json:"exitStatus"`
	DurationMs int64  `json:"durationMs"`
	// Describe is the plugin's description of what it backed up (databases,
	// server version, ...); never a secret.
	Describe map[string]string `json:"describe,omitempty"`
}

func (SnapshotCompletedData) EventType() string { return SnapshotCompleted }

func (d SnapshotCompletedData) Validate() error {
	var p problems
	p.required("source", d.Source)
	p.nonNegative("bytes", d.Bytes)
	p.nonNegative("chunks", d.Chunks)
	p.sha256("sha256", d.SHA256)
	if d.ExitStatus != 0 {
		p.addf("exitStatus: a completed snapshot exits 0, got %d", d.ExitStatus)
	}
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// SnapshotFailedData says the producer failed; no backup may come of the run.
type SnapshotFailedData struct {
	Source     string `json:"source"`
	Error      string `json:"error"`
	ExitStatus *int   `json:"exitStatus,omitempty"`
	StderrTail string `json:"stderrTail,omitempty"`
	Bytes      int64  `json:"bytes"`
}

func (SnapshotFailedData) EventType() string { return SnapshotFailed }

func (d SnapshotFailedData) Validate() error {
	var p problems
	p.required("source", d.Source)
	p.required("error", d.Error)
	p.nonNegative("bytes", d.Bytes)
	return p.err()
}

// FilterCompletedData says every chunk of a run was sealed.
type FilterCompletedData struct {
	// Chain is the filter chain, e.g. ["zstd", "aes-256-gcm"].
	Chain    []string `json:"chain"`
	Frames   int64    `json:"frames"`
	BytesIn  int64    `json:"bytesIn"`
	BytesOut int64    `json:"bytesOut"`
}

func (FilterCompletedData) EventType() string { return FilterCompleted }

func (d FilterCompletedData) Validate() error {
	var p problems
	p.nonNegative("frames", d.Frames)
	p.nonNegative("bytesIn", d.BytesIn)
	p.nonNegative("bytesOut", d.BytesOut)
	return p.err()
}

// FilterFailedData says sealing a run's chunks failed.
type FilterFailedData struct {
	Error string `json:"error"`
}

func (FilterFailedData) EventType() string { return FilterFailed }

func (d FilterFailedData) Validate() error {
	var p problems
	p.required("error", d.Error)
	return p.err()
}

// UploadCompletedData says a destination holds the complete object and its
// manifest.
type UploadCompletedData struct {
	Destination string `json:"destination"`
	Key         string `json:"key"`
	ManifestKey string `json:"manifestKey"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	DurationMs  int64  `json:"durationMs"`
}

func (UploadCompletedData) EventType() string { return UploadCompleted }

func (d UploadCompletedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.required("key", d.Key)
	p.required("manifestKey", d.ManifestKey)
	p.nonNegative("size", d.Size)
	p.sha256("sha256", d.SHA256)
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// UploadRequestedData asks the upload stage to store a run's backup in
// Destination by copying it from another destination that holds it (From):
// a replay of a destination whose upload failed, with no new dump.
type UploadRequestedData struct {
	Destination string `json:"destination"`
	From        string `json:"from"`
	// Key, ManifestKey, Size and SHA256 are the copy in From.
	Key         string `json:"key"`
	ManifestKey string `json:"manifestKey"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

func (UploadRequestedData) EventType() string { return UploadRequested }

func (d UploadRequestedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.name("from", d.From)
	p.required("key", d.Key)
	p.required("manifestKey", d.ManifestKey)
	p.nonNegative("size", d.Size)
	p.sha256("sha256", d.SHA256)
	if d.Destination != "" && d.Destination == d.From {
		p.addf("from: must be another destination than %q", d.Destination)
	}
	return p.err()
}

// UploadFailedData says a destination could not store the object; nothing
// that looks like a backup was left there.
type UploadFailedData struct {
	Destination string `json:"destination"`
	Error       string `json:"error"`
}

func (UploadFailedData) EventType() string { return UploadFailed }

func (d UploadFailedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.required("error", d.Error)
	return p.err()
}

// VerifyCompletedData says a stored object was read back and matched its manifest.
type VerifyCompletedData struct {
	Destination string `json:"destination"`
	Key         string `json:"key"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	Frames      int64  `json:"frames"`
	// Mode is "full" when every frame was opened and the plaintext digest
	// checked, "ciphertext" when no identity was at hand.
	Mode            string `json:"mode"`
	PlaintextSHA256 string `json:"plaintextSha256,omitempty"`
	DurationMs      int64  `json:"durationMs"`
}

func (VerifyCompletedData) EventType() string { return VerifyCompleted }

func (d VerifyCompletedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.required("key", d.Key)
	p.nonNegative("size", d.Size)
	p.sha256("sha256", d.SHA256)
	p.nonNegative("frames", d.Frames)
	switch d.Mode {
	case "full":
		p.sha256("plaintextSha256", d.PlaintextSHA256)
	case "ciphertext":
	default:
		p.addf("mode: %q is not one of full, ciphertext", d.Mode)
	}
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// VerifyFailedData says a stored object did not match its manifest.
type VerifyFailedData struct {
	Destination string `json:"destination"`
	Key         string `json:"key"`
	Error       string `json:"error"`
}

func (VerifyFailedData) EventType() string { return VerifyFailed }

func (d VerifyFailedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.required("error", d.Error)
	return p.err()
}

// RetentionDecision is one backup's fate under a policy.
type RetentionDecision struct {
	BackupID string    `json:"backupId"`
	Time     time.Time `json:"time"`
	Reasons  []string  `json:"reasons,omitempty"`
}

// RetentionCompletedData lists what a destination kept and removed, and why.
type RetentionCompletedData struct {
	Destination string              `json:"destination"`
	Kept        []RetentionDecision `json:"kept"`
	Removed     []RetentionDecision `json:"removed"`
}

func (RetentionCompletedData) EventType() string { return RetentionCompleted }

func (d RetentionCompletedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	for i, k := range d.Kept {
		p.required(idx("kept", i, "backupId"), k.BackupID)
		if len(k.Reasons) == 0 {
			p.addf("%s: a kept backup needs a reason", idx("kept", i, "reasons"))
		}
	}
	for i, r := range d.Removed {
		p.required(idx("removed", i, "backupId"), r.BackupID)
	}
	return p.err()
}

// RetentionFailedData says retention could not apply its policy.
type RetentionFailedData struct {
	Destination string `json:"destination"`
	Error       string `json:"error"`
}

func (RetentionFailedData) EventType() string { return RetentionFailed }

func (d RetentionFailedData) Validate() error {
	var p problems
	p.name("destination", d.Destination)
	p.required("error", d.Error)
	return p.err()
}

// CompensationCompletedData says a failed run owes no inverse op any more:
// every inverse op due completed, in compensation's first pass or in a
// later retry. It comes once per run.
type CompensationCompletedData struct {
	// Ops are the inverse ops run, newest first, as "hook/op".
	Ops []string `json:"ops"`
}

func (CompensationCompletedData) EventType() string { return CompensationCompleted }

func (d CompensationCompletedData) Validate() error { return nil }

// CompensationFailedData says an inverse op still failed after its retries:
// the op it undoes may still hold (a lock, a quiesce) until a later retry
// completes it (then compensation.completed) or an operator acts.
type CompensationFailedData struct {
	// Op is the inverse op still owed, as "hook/op".
	Op string `json:"op"`
	// Undoes is the op whose effect may still hold, as "hook/op".
	Undoes string `json:"undoes,omitempty"`
	// Error is the last attempt's error.
	Error string `json:"error"`
	// Attempts counts the runs of Op for this debt so far, retries included.
	Attempts int `json:"attempts"`
	// NextRetry is when Op is tried again automatically; absent once no
	// automatic retry follows (the hook's compensationDeadline passed).
	NextRetry *time.Time `json:"nextRetry,omitempty"`
}

func (CompensationFailedData) EventType() string { return CompensationFailed }

func (d CompensationFailedData) Validate() error {
	var p problems
	p.required("op", d.Op)
	p.required("error", d.Error)
	if d.Attempts < 1 {
		p.addf("attempts: must be >= 1, got %d", d.Attempts)
	}
	return p.err()
}

// RestoreRequestedData starts a restore run of a backup of a plan.
type RestoreRequestedData struct {
	// BackupID names the backup (its run id); "latest" picks the newest
	// backup verified in at least one destination.
	BackupID string `json:"backupId"`
	// Destination is read first; when its copy fails its checks the
	// restore starts again from the next destination (plan order) holding
	// a copy of the same backup.
	Destination string `json:"destination"`
	// Target overrides where the plan's source restores to (a file path, a
	// database name); empty restores to the plan's source.
	Target      string `json:"target,omitempty"`
	RequestedBy string `json:"requestedBy,omitempty"`
	// Create makes the target database or directory when it is missing.
	Create bool `json:"create,omitempty"`
	// Clean removes what is in the target's way first (drops the database,
	// empties the directory).
	Clean bool `json:"clean,omitempty"`
	// FallbackOlder lets the restore go on to the previous verified
	// backups, newest first, once every copy of the chosen one failed.
	FallbackOlder bool `json:"fallbackOlder,omitempty"`
}

func (RestoreRequestedData) EventType() string { return RestoreRequested }

func (d RestoreRequestedData) Validate() error {
	var p problems
	p.required("backupId", d.BackupID)
	p.name("destination", d.Destination)
	return p.err()
}

// RestoreStartedData says a restore run began reading its backup.
type RestoreStartedData struct {
	BackupID    string `json:"backupId"`
	Destination string `json:"destination"`
	Key         string `json:"key"`
	Size        int64  `json:"size"`
}

func (RestoreStartedData) EventType() string { return RestoreStarted }

func (d RestoreStartedData) Validate() error {
	var p problems
	p.required("backupId", d.BackupID)
	p.name("destination", d.Destination)
	p.required("key", d.Key)
	p.nonNegative("size", d.Size)
	return p.err()
}

// RestoreSucceededData says the restored plaintext matched the backup's digest.
type RestoreSucceededData struct {
	BackupID string `json:"backupId"`
	// Destination is the destination whose copy was restored (a restore
	// that fell back names the copy it used).
	Destination string `json:"destination,omitempty"`
	Bytes       int64  `json:"bytes"`
	SHA256      string `json:"sha256"`
	DurationMs  int64  `json:"durationMs"`
}

func (RestoreSucceededData) EventType() string { return RestoreSucceeded }

func (d RestoreSucceededData) Validate() error {
	var p problems
	p.required("backupId", d.BackupID)
	p.nonNegative("bytes", d.Bytes)
	p.sha256("sha256", d.SHA256)
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// RestoreFailedData says a restore run failed.
type RestoreFailedData struct {
	BackupID string `json:"backupId,omitempty"`
	Stage    string `json:"stage"`
	Error    string `json:"error"`
}

func (RestoreFailedData) EventType() string { return RestoreFailed }

func (d RestoreFailedData) Validate() error {
	var p problems
	p.required("stage", d.Stage)
	p.required("error", d.Error)
	return p.err()
}

// RestoreCancelledData ends a restore run an operator cancelled; the
// target may hold a partial restore.
type RestoreCancelledData struct {
	BackupID string   `json:"backupId,omitempty"`
	By       string   `json:"by"`
	Reason   string   `json:"reason,omitempty"`
	Steps    []string `json:"steps,omitempty"`
}

func (RestoreCancelledData) EventType() string { return RestoreCancelled }

func (d RestoreCancelledData) Validate() error {
	var p problems
	p.required("by", d.By)
	return p.err()
}

// trigger is the trigger rule of every request (backup, scrub,
// drill): one of the trigger kinds, with a slot when scheduled.
func (p *problems) trigger(trigger string, slot *time.Time) {
	switch trigger {
	case TriggerSchedule:
		if slot == nil {
			p.addf("slot: required when trigger is %q", TriggerSchedule)
		}
	case TriggerCLI, TriggerAPI, TriggerEvent:
	case "":
		p.addf("trigger: required")
	default:
		p.addf("trigger: %q is not one of schedule, cli, api, event", trigger)
	}
}

// Scrub modes: what a scrub checks of every stored copy.
const (
	// ScrubCiphertext checks size, stored SHA-256 and every frame's CRC;
	// it needs no key.
	ScrubCiphertext = "ciphertext"
	// ScrubFull also opens every frame and compares the plaintext
	// SHA-256; it needs the key that opens the backups.
	ScrubFull = "full"
)

// ScrubRequestedData asks for a scrub of a plan's stored backups: every
// copy in every destination (or one) read back and checked again, and a
// damaged or missing copy repaired from a verified one. The event's runid
// is the scrub's id; a scrub is not a run of the runs bucket.
type ScrubRequestedData struct {
	// Trigger is schedule, cli, api or event.
	Trigger string `json:"trigger"`
	// Slot is the scheduled time this scrub stands for (schedule only).
	Slot *time.Time `json:"slot,omitempty"`
	// RequestedBy names the person or program.
	RequestedBy string `json:"requestedBy,omitempty"`
	// Reason is free text.
	Reason string `json:"reason,omitempty"`
	// Mode overrides the plan's scrub mode: full or ciphertext.
	Mode string `json:"mode,omitempty"`
	// Destination limits the scrub to one destination (the others are
	// still read as sources of repairs).
	Destination string `json:"destination,omitempty"`
}

func (ScrubRequestedData) EventType() string { return ScrubRequested }

func (d ScrubRequestedData) Validate() error {
	var p problems
	p.trigger(d.Trigger, d.Slot)
	if d.Mode != "" && d.Mode != ScrubFull && d.Mode != ScrubCiphertext {
		p.addf("mode: %q is not one of full, ciphertext", d.Mode)
	}
	if d.Destination != "" {
		p.name("destination", d.Destination)
	}
	return p.err()
}

// Scrub outcomes, worst first.
const (
	// ScrubDamaged: a damaged or missing copy could not be repaired.
	ScrubDamaged = "damaged"
	// ScrubIncomplete: a destination could not be scrubbed (unreachable,
	// not listable); nothing found was left damaged.
	ScrubIncomplete = "incomplete"
	// ScrubRepaired: damage was found and every damaged copy repaired.
	ScrubRepaired = "repaired"
	// ScrubClean: every copy checked passed.
	ScrubClean = "clean"
)

// Problems a scrub finds with a copy.
const (
	// CopyCorrupt: the copy fails a check (size, digest, CRC, frame
	// authentication, plaintext digest) or its manifest cannot be read.
	CopyCorrupt = "corrupt"
	// CopyMissing: a backup verified elsewhere that the destination should
	// hold under its own retention policy is not there (or only its
	// manifest is).
	CopyMissing = "missing"
)

// ScrubDestination is what a scrub found in one destination.
type ScrubDestination struct {
	Destination string `json:"destination"`
	// Checked counts the copies read back; Verified those that passed.
	Checked  int64 `json:"checked"`
	Verified int64 `json:"verified"`
	// Corrupt and Missing count the damaged copies; Repaired those of
	// them repaired from a verified copy in another destination.
	Corrupt  int64 `json:"corrupt"`
	Missing  int64 `json:"missing"`
	Repaired int64 `json:"repaired"`
	// Bytes is what was read back.
	Bytes int64 `json:"bytes"`
	// Error says why the destination could not be scrubbed (or not fully).
	Error string `json:"error,omitempty"`
}

// ScrubDamage is one damaged copy.
type ScrubDamage struct {
	Destination string `json:"destination"`
	BackupID    string `json:"backupId"`
	// Problem is corrupt or missing.
	Problem string `json:"problem"`
	// Error is what the check found.
	Error string `json:"error,omitempty"`
	// RepairedFrom names the destination whose verified copy replaced it;
	// empty when it was not repaired.
	RepairedFrom string `json:"repairedFrom,omitempty"`
	// RepairError says why a repair failed or was not tried.
	RepairError string `json:"repairError,omitempty"`
}

// MaxScrubDamage bounds ScrubCompletedData.Damaged; the counts per
// destination stay exact.
const MaxScrubDamage = 100

// ScrubCompletedData is the result of a scrub.
type ScrubCompletedData struct {
	// Mode is full or ciphertext.
	Mode string `json:"mode"`
	// Status is damaged, incomplete, repaired or clean.
	Status       string             `json:"status"`
	Destinations []ScrubDestination `json:"destinations"`
	// Damaged lists damaged copies (at most MaxScrubDamage).
	Damaged    []ScrubDamage `json:"damaged,omitempty"`
	DurationMs int64         `json:"durationMs"`
}

func (ScrubCompletedData) EventType() string { return ScrubCompleted }

func (d ScrubCompletedData) Validate() error {
	var p problems
	if d.Mode != ScrubFull && d.Mode != ScrubCiphertext {
		p.addf("mode: %q is not one of full, ciphertext", d.Mode)
	}
	switch d.Status {
	case ScrubDamaged, ScrubIncomplete, ScrubRepaired, ScrubClean:
	default:
		p.addf("status: %q is not one of damaged, incomplete, repaired, clean", d.Status)
	}
	if len(d.Destinations) == 0 {
		p.addf("destinations: at least one required")
	}
	for i, ds := range d.Destinations {
		p.name(idx("destinations", i, "destination"), ds.Destination)
		for f, v := range map[string]int64{"checked": ds.Checked, "verified": ds.Verified, "corrupt": ds.Corrupt,
			"missing": ds.Missing, "repaired": ds.Repaired, "bytes": ds.Bytes} {
			p.nonNegative(idx("destinations", i, f), v)
		}
	}
	if len(d.Damaged) > MaxScrubDamage {
		p.addf("damaged: at most %d entries, got %d", MaxScrubDamage, len(d.Damaged))
	}
	for i, c := range d.Damaged {
		p.name(idx("damaged", i, "destination"), c.Destination)
		p.required(idx("damaged", i, "backupId"), c.BackupID)
		if c.Problem != CopyCorrupt && c.Problem != CopyMissing {
			p.addf("%s: %q is not one of corrupt, missing", idx("damaged", i, "problem"), c.Problem)
		}
	}
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// ScrubFailedData says a scrub could not run at all (its plan is gone,
// full mode without a key); a scrub that ran reports scrub.completed,
// whatever it found.
type ScrubFailedData struct {
	Error string `json:"error"`
}

func (ScrubFailedData) EventType() string { return ScrubFailed }

func (d ScrubFailedData) Validate() error {
	var p problems
	p.required("error", d.Error)
	return p.err()
}

// DrillRequestedData asks for a fire drill of a plan: its backup restored
// into a scratch target made for the drill, the plan's check run on it,
// the target removed. The event's runid is the drill's id.
type DrillRequestedData struct {
	// Trigger is schedule, cli, api or event.
	Trigger string `json:"trigger"`
	// Slot is the scheduled time this drill stands for (schedule only).
	Slot        *time.Time `json:"slot,omitempty"`
	RequestedBy string     `json:"requestedBy,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	// BackupID names the backup to drill; empty means latest.
	BackupID string `json:"backupId,omitempty"`
}

func (DrillRequestedData) EventType() string { return DrillRequested }

func (d DrillRequestedData) Validate() error {
	var p problems
	p.trigger(d.Trigger, d.Slot)
	return p.err()
}

// DrillSucceededData says a drill restored a backup into its scratch
// target, the check passed and the target was removed.
type DrillSucceededData struct {
	BackupID string `json:"backupId"`
	// Destination is the destination whose copy was restored.
	Destination string `json:"destination"`
	// Target is the scratch target (database name, directory).
	Target string `json:"target"`
	// Bytes is the plaintext restored.
	Bytes int64 `json:"bytes"`
	// Rows is how many rows the check's SQL returned (0 for a command).
	Rows int64 `json:"rows"`
	// RestoreMs, CheckMs and DurationMs time the restore, the check and
	// the whole drill.
	RestoreMs  int64 `json:"restoreMs"`
	CheckMs    int64 `json:"checkMs"`
	DurationMs int64 `json:"durationMs"`
}

func (DrillSucceededData) EventType() string { return DrillSucceeded }

func (d DrillSucceededData) Validate() error {
	var p problems
	p.required("backupId", d.BackupID)
	p.name("destination", d.Destination)
	p.required("target", d.Target)
	p.nonNegative("bytes", d.Bytes)
	p.nonNegative("rows", d.Rows)
	p.nonNegative("restoreMs", d.RestoreMs)
	p.nonNegative("checkMs", d.CheckMs)
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// Drill stages, where a drill failed.
const (
	DrillStagePrepare = "prepare" // choosing the backup, making the scratch target
	DrillStageRestore = "restore"
	DrillStageCheck   = "check"
	DrillStageCleanup = "cleanup" // removing the scratch target
)

// DrillFailedData says a drill failed, and where.
type DrillFailedData struct {
	// Stage is prepare, restore, check or cleanup.
	Stage       string `json:"stage"`
	Error       string `json:"error"`
	BackupID    string `json:"backupId,omitempty"`
	Destination string `json:"destination,omitempty"`
	// Target is the scratch target; after a failed cleanup it may still
	// exist and is named here for an operator to remove.
	Target     string `json:"target,omitempty"`
	DurationMs int64  `json:"durationMs"`
}

func (DrillFailedData) EventType() string { return DrillFailed }

func (d DrillFailedData) Validate() error {
	var p problems
	switch d.Stage {
	case DrillStagePrepare, DrillStageRestore, DrillStageCheck, DrillStageCleanup:
	case "":
		p.addf("stage: required")
	default:
		p.addf("stage: %q is not one of prepare, restore, check, cleanup", d.Stage)
	}
	p.required("error", d.Error)
	if d.Destination != "" {
		p.name("destination", d.Destination)
	}
	p.nonNegative("durationMs", d.DurationMs)
	return p.err()
}

// DrillMissedData says a plan's drill did not succeed in time: its drill
// schedule's slot plus grace passed with no drill.succeeded.
type DrillMissedData struct {
	// ExpectedBy is the end of the window (slot plus grace) that held no success.
	ExpectedBy time.Time `json:"expectedBy"`
	// Slot is the drill slot that was missed.
	Slot time.Time `json:"slot"`
	// LastSuccess is the time of the plan's newest successful drill, if any.
	LastSuccess *time.Time `json:"lastSuccess,omitempty"`
}

func (DrillMissedData) EventType() string { return DrillMissed }

func (d DrillMissedData) Validate() error {
	var p problems
	p.missed(d.ExpectedBy, d.Slot)
	return p.err()
}

func idx(list string, i int, field string) string {
	return list + "[" + strconv.Itoa(i) + "]." + field
}
