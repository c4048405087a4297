package metrics

import (
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
	events.BackupSucceeded, events.BackupFailed, events.BackupMissed,
	events.HookCompleted, events.SnapshotCompleted, events.UploadCompleted, events.VerifyCompleted,
	events.RetentionCompleted, events.RetentionFailed,
	events.RestoreSucceeded, events.RestoreFailed,
}

// Points maps one event to its points. It is pure: the same event (and run
// record) always gives the same points with the same timestamps, which is
// what makes a redelivered event overwrite its points rather than add to
// them. r is the event's run record, or nil when it is unknown; only
// backup.failed uses it (duration and trigger).
//
// The timestamp is the event's time, except where the payload carries a
// time fixed by the run record or the slot (backup.succeeded: started +
// durationMs; backup.missed: expectedBy), so that even an event re-announced
// after JetStream's duplicate window lands on the same point. A payload time
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
		return append(out, Point{MeasureRun, map[string]string{"plan": plan, "status": "succeeded", "trigger": trigger}, f, at}), nil
	case *events.BackupFailedData:
		trigger := "unknown"
		f := map[string]any{"error": d.Reason, "failed_stage": d.Stage}
		if r != nil {
			if r.Trigger != "" {
				trigger = r.Trigger
			}
			if !r.Created.IsZero() && at.After(r.Created) {
				f["duration_s"] = at.Sub(r.Created).Seconds()
			}
		}
		return []Point{
			{MeasureRun, map[string]string{"plan": plan, "status": "failed", "trigger": trigger}, f, at},
			{MeasureStage, map[string]string{"plan": plan, "stage": d.Stage, "status": "failed"}, map[string]any{"error": d.Reason}, at},
		}, nil
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
		return []Point{{MeasureStage, map[string]string{"plan": plan, "stage": "retention", "status": "failed"}, map[string]any{"error": d.Error}, at}}, nil
	case *events.RestoreSucceededData:
		return []Point{{MeasureRestore, map[string]string{"plan": plan, "status": "succeeded"},
			map[string]any{"duration_s": float64(d.DurationMs) / 1000, "bytes": d.Bytes}, at}}, nil
	case *events.RestoreFailedData:
		return []Point{{MeasureRestore, map[string]string{"plan": plan, "status": "failed"},
			map[string]any{"error": d.Error, "failed_stage": d.Stage}, at}}, nil
	}
	return nil, nil
}

// notAfter is t, or limit where t is later, in UTC.
func notAfter(t, limit time.Time) time.Time {
	if t.After(limit) {
		return limit.UTC()
	}
	return t.UTC()
}

func stagePoint(plan, stage string, ms int64, at time.Time) Point {
	return Point{MeasureStage, map[string]string{"plan": plan, "stage": stage, "status": "succeeded"},
		map[string]any{"duration_s": float64(ms) / 1000}, at}
}
