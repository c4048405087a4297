package metrics

import (
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
)

// Measurement names, as documented in docs/metrics.md.
const (
	MeasureSuccess   = "backup_success"
	MeasureRun       = "backup_run"
	MeasureStage     = "backup_stage"
	MeasureRestore   = "restore_run"
	MeasureRetention = "retention"
	MeasureMissed    = "backup_missed"
	MeasureOwed      = "compensation_owed"
	MeasureScrub     = "backup_scrub"
	MeasureDrill     = "backup_drill"
)

// Point is one InfluxDB point. Measurement, Tags and Time identify it: a
// second write of the same point overwrites the first instead of adding one.
type Point struct {
	Measurement string
	Tags        map[string]string
	Fields      map[string]any
	Time        time.Time
}

// Types are the event types the metrics service consumes.
var Types = []string{
	events.BackupSucceeded, events.BackupFailed, events.BackupCancelled, events.BackupMissed,
	events.HookCompleted, events.SnapshotCompleted, events.UploadCompleted, events.VerifyCompleted,
	events.RetentionCompleted, events.RetentionFailed,
	events.RestoreSucceeded, events.RestoreFailed, events.RestoreCancelled,
	events.ScrubCompleted, events.ScrubFailed,
	events.DrillSucceeded, events.DrillFailed, events.DrillMissed,
}

// Statuses of backup_run and restore_run (the status tag and the status
// label of the run counters). Cancelled is an outcome of its own: an
// operator stopped the run, so it is neither a success (it covers no slot
// and sets no last-success time) nor a failure (it makes no failed stage).
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
	// StatusMissed is a drill slot that passed its grace without a
	// successful drill (backup_drill only; backup.missed has a measurement
	// of its own).
	StatusMissed = "missed"
)

// Points maps one event to its points. It is pure: the same event (and run
// record) always gives the same points with the same timestamps, which is
// what makes a redelivered event overwrite its points rather than add to
// them. r is the event's run record, or nil when it is unknown; only
// backup.failed, backup.cancelled and restore.cancelled use it (duration,
// trigger, and the time a cancellation took effect).
//
// The timestamp is the event's time, except where the payload or the run
// record fixes a time (backup.succeeded: started + durationMs;
// backup.missed and drill.missed: expectedBy; backup.cancelled and
// restore.cancelled: the record's finish when it says Cancelled), so that even an event
// re-announced after JetStream's duplicate window lands on the same point. A payload time
// is never later than the event's own: a run cannot have finished after the
// event announcing it was made, so a forged or garbled payload cannot put a
// point (or the last-success gauge) in the future. The bus refuses events
// whose time is beyond events.MaxClockSkew ahead.
func Points(e events.Event, r *runs.Run) ([]Point, error) {
	p, err := events.Decode(e)
	if err != nil {
		return nil, err
	}
	plan := e.Subject()
	at := e.Time().UTC()
	switch d := p.(type) {
	case *events.BackupSucceededData:
		at = notAfter(d.Started.Add(time.Duration(d.DurationMs)*time.Millisecond), at)
		var out []Point
		for _, o := range d.Objects {
			out = append(out, Point{MeasureSuccess, map[string]string{"plan": plan, "source": d.Source, "destination": o.Destination},
				map[string]any{"value": true}, at})
		}
		trigger := d.Trigger
		if trigger == "" {
			trigger = "unknown"
		}
		secs := float64(d.DurationMs) / 1000
		f := map[string]any{"duration_s": secs, "bytes_in": d.Bytes, "bytes_out": d.StoredBytes, "chunks": d.Chunks}
		if d.StoredBytes > 0 {
			f["ratio"] = float64(d.Bytes) / float64(d.StoredBytes)
		}
		if secs > 0 {
			f["throughput_bps"] = float64(d.Bytes) / secs
		}
		return append(out, Point{MeasureRun, map[string]string{"plan": plan, "status": StatusSucceeded, "trigger": trigger}, f, at}), nil
	case *events.BackupFailedData:
		f := map[string]any{"error": d.Reason, "failed_stage": d.Stage}
		trigger := fromRecord(r, at, f)
		return []Point{
			{MeasureRun, map[string]string{"plan": plan, "status": StatusFailed, "trigger": trigger}, f, at},
			{MeasureStage, map[string]string{"plan": plan, "stage": d.Stage, "status": StatusFailed}, map[string]any{"error": d.Reason}, at},
		}, nil
	case *events.BackupCancelledData:
		// No backup_stage point: no stage failed, and "failures by stage"
		// must not count an operator's decision.
		at = cancelledAt(r, at)
		f := cancelFields(d.By, d.Reason, d.Steps)
		trigger := fromRecord(r, at, f)
		return []Point{{MeasureRun, map[string]string{"plan": plan, "status": StatusCancelled, "trigger": trigger}, f, at}}, nil
	case *events.BackupMissedData:
		f := map[string]any{"value": 1, "slot": d.Slot.Unix()}
		if d.LastSuccess != nil {
			f["last_success"] = d.LastSuccess.Unix()
		}
		return []Point{{MeasureMissed, map[string]string{"plan": plan}, f, notAfter(d.ExpectedBy, at)}}, nil
	case *events.HookCompletedData:
		if d.Inverse {
			return nil, nil
		}
		return []Point{stagePoint(plan, "hook", d.DurationMs, at)}, nil
	case *events.SnapshotCompletedData:
		return []Point{stagePoint(plan, "snapshot", d.DurationMs, at)}, nil
	case *events.UploadCompletedData:
		return []Point{stagePoint(plan, "upload", d.DurationMs, at)}, nil
	case *events.VerifyCompletedData:
		return []Point{stagePoint(plan, "verify", d.DurationMs, at)}, nil
	case *events.RetentionCompletedData:
		return []Point{{MeasureRetention, map[string]string{"plan": plan, "destination": d.Destination},
			map[string]any{"kept": int64(len(d.Kept)), "removed": int64(len(d.Removed))}, at}}, nil
	case *events.RetentionFailedData:
		return []Point{{MeasureStage, map[string]string{"plan": plan, "stage": "retention", "status": StatusFailed}, map[string]any{"error": d.Error}, at}}, nil
	case *events.RestoreSucceededData:
		return []Point{{MeasureRestore, map[string]string{"plan": plan, "status": StatusSucceeded},
			map[string]any{"duration_s": float64(d.DurationMs) / 1000, "bytes": d.Bytes}, at}}, nil
	case *events.RestoreFailedData:
		return []Point{{MeasureRestore, map[string]string{"plan": plan, "status": StatusFailed},
			map[string]any{"error": d.Error, "failed_stage": d.Stage}, at}}, nil
	case *events.RestoreCancelledData:
		at = cancelledAt(r, at)
		f := cancelFields(d.By, d.Reason, d.Steps)
		fromRecord(r, at, f)
		return []Point{{MeasureRestore, map[string]string{"plan": plan, "status": StatusCancelled}, f, at}}, nil
	case *events.ScrubCompletedData:
		return scrubPoints(plan, d, at), nil
	case *events.ScrubFailedData:
		// No destination and no mode: the scrub never got that far.
		return []Point{{MeasureScrub, map[string]string{"plan": plan, "status": StatusFailed}, map[string]any{"error": d.Error}, at}}, nil
	case *events.DrillSucceededData:
		return []Point{{MeasureDrill, map[string]string{"plan": plan, "status": StatusSucceeded}, map[string]any{
			"success": int64(1), "bytes": d.Bytes, "rows": d.Rows, "restore_ms": d.RestoreMs, "check_ms": d.CheckMs,
			"duration_ms": d.DurationMs, "backup_id": d.BackupID, "destination": d.Destination}, at}}, nil
	case *events.DrillFailedData:
		f := map[string]any{"success": int64(0), "duration_ms": d.DurationMs, "error": d.Error}
		if d.BackupID != "" {
			f["backup_id"] = d.BackupID
		}
		if d.Destination != "" {
			f["destination"] = d.Destination
		}
		return []Point{{MeasureDrill, map[string]string{"plan": plan, "status": StatusFailed, "stage": d.Stage}, f, at}}, nil
	case *events.DrillMissedData:
		f := map[string]any{"success": int64(0), "slot": d.Slot.Unix()}
		if d.LastSuccess != nil {
			f["last_success"] = d.LastSuccess.Unix()
		}
		return []Point{{MeasureDrill, map[string]string{"plan": plan, "status": StatusMissed}, f, notAfter(d.ExpectedBy, at)}}, nil
	}
	return nil, nil
}

// scrubPoints are a scrub's points, one per destination it reports on, all
// at the event's time and tagged with the scrub's overall status. Each
// carries that destination's own counts, so the newest point of a
// destination says what the newest scrub of it found even when a later
// scrub was limited to another destination.
func scrubPoints(plan string, d *events.ScrubCompletedData, at time.Time) []Point {
	out := make([]Point, 0, len(d.Destinations))
	for _, ds := range d.Destinations {
		f := map[string]any{
			"checked": ds.Checked, "verified": ds.Verified, "corrupt": ds.Corrupt, "missing": ds.Missing,
			"repaired": ds.Repaired, "unrepaired": max(ds.Corrupt+ds.Missing-ds.Repaired, 0), "bytes": ds.Bytes,
			"duration_ms": d.DurationMs, "incomplete": int64(0),
		}
		if ds.Error != "" {
			f["incomplete"], f["error"] = int64(1), ds.Error
		}
		out = append(out, Point{MeasureScrub, map[string]string{"plan": plan, "destination": ds.Destination, "mode": d.Mode, "status": d.Status}, f, at})
	}
	return out
}

// fromRecord adds what the run record r knows of a run that ended at at
// without a success (duration_s: creation to end) to f and returns the
// run's trigger, "unknown" without a record.
func fromRecord(r *runs.Run, at time.Time, f map[string]any) string {
	if r == nil {
		return "unknown"
	}
	if !r.Created.IsZero() && at.After(r.Created) {
		f["duration_s"] = at.Sub(r.Created).Seconds()
	}
	if r.Trigger == "" {
		return "unknown"
	}
	return r.Trigger
}

// cancelledAt is when a cancelled run ended: its record's finish, which a
// cancellation announced again (control does on a repeated cancel, maybe
// after the duplicate window) shares with the first announcement; at, the
// event's time, without a record that says Cancelled.
func cancelledAt(r *runs.Run, at time.Time) time.Time {
	if r == nil || r.Phase != runs.Cancelled || r.Finished.IsZero() {
		return at
	}
	return notAfter(r.Finished, at)
}

// cancelFields are the fields of a cancelled run: who cancelled it, and
// the reason and the running steps (comma-separated) when there are any.
// Empty ones are left out rather than written as empty strings.
func cancelFields(by, reason string, steps []string) map[string]any {
	f := map[string]any{"by": by}
	if reason != "" {
		f["reason"] = reason
	}
	if len(steps) > 0 {
		f["steps"] = strings.Join(steps, ",")
	}
	return f
}

// notAfter is t, or limit where t is later, in UTC.
func notAfter(t, limit time.Time) time.Time {
	if t.After(limit) {
		return limit.UTC()
	}
	return t.UTC()
}

func stagePoint(plan, stage string, ms int64, at time.Time) Point {
	return Point{MeasureStage, map[string]string{"plan": plan, "stage": stage, "status": StatusSucceeded},
		map[string]any{"duration_s": float64(ms) / 1000}, at}
}
