package metrics

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/runs"
)

func TestPoints(t *testing.T) {
	t0 := at("2026-01-01T10:00:00Z")
	meta := events.Meta{ID: "e1", Source: "backstream/test/x", Plan: "orders", RunID: "01JNR4S7T0000000000000000A", Time: t0.Add(time.Minute)}
	sha := strings.Repeat("a", 64)
	last := t0.Add(-time.Hour)
	tests := []struct {
		name string
		give events.Payload
		run  *runs.Run
		want []string // measurement{tags} fields @time
	}{
		{
			name: "backup.failed with its run record",
			give: events.BackupFailedData{Stage: "upload", Reason: "disk full"},
			run:  &runs.Run{Trigger: "schedule", Created: t0},
			want: []string{
				"backup_run{plan=orders,status=failed,trigger=schedule} duration_s,error,failed_stage @10:01:00",
				"backup_stage{plan=orders,stage=upload,status=failed} error @10:01:00",
			},
		},
		{
			name: "backup.failed without a run record",
			give: events.BackupFailedData{Stage: "watchdog", Reason: "stuck"},
			want: []string{
				"backup_run{plan=orders,status=failed,trigger=unknown} error,failed_stage @10:01:00",
				"backup_stage{plan=orders,stage=watchdog,status=failed} error @10:01:00",
			},
		},
		{
			name: "backup.cancelled lands on its record's finish, with its trigger and duration",
			give: events.BackupCancelledData{By: "cli:alice", Reason: "wrong plan", Steps: []string{events.StepSnapshot, "filter"}},
			run:  &runs.Run{Trigger: "cli", Created: t0, Finished: t0.Add(50 * time.Second), Phase: runs.Cancelled},
			want: []string{"backup_run{plan=orders,status=cancelled,trigger=cli} by,duration_s,reason,steps @10:00:50"},
		},
		{
			name: "backup.cancelled without a run record: no empty fields, no failed stage",
			give: events.BackupCancelledData{By: "api:ops"},
			want: []string{"backup_run{plan=orders,status=cancelled,trigger=unknown} by @10:01:00"},
		},
		{
			name: "backup.cancelled whose record does not say Cancelled lands on the event's time",
			give: events.BackupCancelledData{By: "api:ops", Steps: []string{events.StepSnapshot}},
			run:  &runs.Run{Trigger: "schedule", Created: t0, Finished: t0.Add(10 * time.Second), Phase: runs.Failed},
			want: []string{"backup_run{plan=orders,status=cancelled,trigger=schedule} by,duration_s,steps @10:01:00"},
		},
		{
			name: "backup.cancelled finished after the event was made lands on the event's time",
			give: events.BackupCancelledData{By: "api:ops"},
			run:  &runs.Run{Created: t0, Finished: t0.AddDate(73, 0, 0), Phase: runs.Cancelled},
			want: []string{"backup_run{plan=orders,status=cancelled,trigger=unknown} by,duration_s @10:01:00"},
		},
		{
			name: "backup.missed lands on expectedBy",
			give: events.BackupMissedData{Slot: t0, ExpectedBy: t0.Add(30 * time.Second), LastSuccess: &last},
			want: []string{"backup_missed{plan=orders} last_success,slot,value @10:00:30"},
		},
		{
			name: "backup.missed expected after the event was made lands on the event's time",
			give: events.BackupMissedData{Slot: t0, ExpectedBy: t0.Add(10 * time.Minute), LastSuccess: &last},
			want: []string{"backup_missed{plan=orders} last_success,slot,value @10:01:00"},
		},
		{
			name: "backup.succeeded finished after the event was made lands on the event's time",
			give: events.BackupSucceededData{BackupID: "run1", PlaintextSHA256: sha, Source: "command", Started: t0.AddDate(73, 0, 0), DurationMs: 1000,
				Objects: []events.BackupObject{{Destination: "a", Key: "k", ManifestKey: "m", SHA256: sha}}},
			want: []string{
				"backup_run{plan=orders,status=succeeded,trigger=unknown} bytes_in,bytes_out,chunks,duration_s,throughput_bps @10:01:00",
				"backup_success{destination=a,plan=orders,source=command} value @10:01:00",
			},
		},
		{
			name: "backup.succeeded lands on started + duration",
			give: events.BackupSucceededData{BackupID: "run1", Bytes: 100, StoredBytes: 25, PlaintextSHA256: sha, Chunks: 1, Started: t0, DurationMs: 2500,
				Source: "command", Trigger: "cli", Objects: []events.BackupObject{{Destination: "a", Key: "k", ManifestKey: "m", SHA256: sha}, {Destination: "b", Key: "k", ManifestKey: "m", SHA256: sha}}},
			want: []string{
				"backup_run{plan=orders,status=succeeded,trigger=cli} bytes_in,bytes_out,chunks,duration_s,ratio,throughput_bps @10:00:02",
				"backup_success{destination=a,plan=orders,source=command} value @10:00:02",
				"backup_success{destination=b,plan=orders,source=command} value @10:00:02",
			},
		},
		{
			name: "retention.completed",
			give: events.RetentionCompletedData{Destination: "a", Kept: []events.RetentionDecision{{BackupID: "x", Reasons: []string{"last"}}}},
			want: []string{"retention{destination=a,plan=orders} kept,removed @10:01:00"},
		},
		{
			name: "restore.failed",
			give: events.RestoreFailedData{Stage: "restore", Error: "bad key"},
			want: []string{"restore_run{plan=orders,status=failed} error,failed_stage @10:01:00"},
		},
		{
			name: "restore.cancelled with its run record",
			give: events.RestoreCancelledData{BackupID: "01JNR4S7T0000000000000000A", By: "api:ops", Reason: "wrong target", Steps: []string{events.StepRestore}},
			run:  &runs.Run{Kind: runs.KindRestore, Created: t0, Finished: t0.Add(20 * time.Second), Phase: runs.Cancelled},
			want: []string{"restore_run{plan=orders,status=cancelled} by,duration_s,reason,steps @10:00:20"},
		},
		{
			name: "restore.cancelled without a run record",
			give: events.RestoreCancelledData{By: "cli:bob"},
			want: []string{"restore_run{plan=orders,status=cancelled} by @10:01:00"},
		},
		{
			name: "scrub.completed: one point per destination, tagged with the scrub's status",
			give: events.ScrubCompletedData{Mode: events.ScrubFull, Status: events.ScrubDamaged, DurationMs: 9000, Destinations: []events.ScrubDestination{
				{Destination: "local", Checked: 3, Verified: 2, Corrupt: 1, Repaired: 1, Bytes: 300},
				{Destination: "s3", Checked: 3, Verified: 1, Corrupt: 1, Missing: 1},
				{Destination: "nas", Error: "list nas: connection refused"},
			}},
			want: []string{
				"backup_scrub{destination=local,mode=full,plan=orders,status=damaged} bytes,checked,corrupt,duration_ms,incomplete,missing,repaired,unrepaired,verified @10:01:00",
				"backup_scrub{destination=nas,mode=full,plan=orders,status=damaged} bytes,checked,corrupt,duration_ms,error,incomplete,missing,repaired,unrepaired,verified @10:01:00",
				"backup_scrub{destination=s3,mode=full,plan=orders,status=damaged} bytes,checked,corrupt,duration_ms,incomplete,missing,repaired,unrepaired,verified @10:01:00",
			},
		},
		{
			name: "scrub.failed",
			give: events.ScrubFailedData{Error: "full mode without a key"},
			want: []string{"backup_scrub{plan=orders,status=failed} error @10:01:00"},
		},
		{
			name: "drill.succeeded",
			give: events.DrillSucceededData{BackupID: "b1", Destination: "local", Target: "drill_x", Bytes: 10, Rows: 1, RestoreMs: 5, CheckMs: 1, DurationMs: 7},
			want: []string{"backup_drill{plan=orders,status=succeeded} backup_id,bytes,check_ms,destination,duration_ms,restore_ms,rows,success @10:01:00"},
		},
		{
			name: "drill.failed is tagged with its stage",
			give: events.DrillFailedData{Stage: events.DrillStageCheck, Error: "check: no rows", BackupID: "b1", Destination: "local", DurationMs: 7},
			want: []string{"backup_drill{plan=orders,stage=check,status=failed} backup_id,destination,duration_ms,error,success @10:01:00"},
		},
		{
			name: "drill.failed before a backup was chosen",
			give: events.DrillFailedData{Stage: events.DrillStagePrepare, Error: "no verified backup"},
			want: []string{"backup_drill{plan=orders,stage=prepare,status=failed} duration_ms,error,success @10:01:00"},
		},
		{
			name: "drill.missed lands on expectedBy",
			give: events.DrillMissedData{Slot: t0, ExpectedBy: t0.Add(30 * time.Second), LastSuccess: &last},
			want: []string{"backup_drill{plan=orders,status=missed} last_success,slot,success @10:00:30"},
		},
		{
			name: "drill.missed expected after the event was made lands on the event's time",
			give: events.DrillMissedData{Slot: t0, ExpectedBy: t0.Add(10 * time.Minute)},
			want: []string{"backup_drill{plan=orders,status=missed} slot,success @10:01:00"},
		},
		{
			name: "an inverse hook op is compensation, not a stage of the run",
			give: events.HookCompletedData{Hook: "db", Op: "unlock", Inverse: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := events.MustNew(meta, tt.give)
			pts, err := Points(e, tt.run)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pts {
				got = append(got, describe(p))
			}
			sort.Strings(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("points\n got %q\nwant %q", got, tt.want)
			}
			again, _ := Points(e, tt.run)
			if !reflect.DeepEqual(pts, again) {
				t.Errorf("a second delivery gives other points")
			}
		})
	}
}

func describe(p Point) string {
	var tags, fields []string
	for k, v := range p.Tags {
		tags = append(tags, k+"="+v)
	}
	for k := range p.Fields {
		fields = append(fields, k)
	}
	sort.Strings(tags)
	sort.Strings(fields)
	return fmt.Sprintf("%s{%s} %s @%s", p.Measurement, strings.Join(tags, ","), strings.Join(fields, ","), p.Time.Format("15:04:05"))
}

// TestCancelledFields checks the values a cancellation's point carries,
// which TestPoints only names.
func TestCancelledFields(t *testing.T) {
	t0 := at("2026-01-01T10:00:00Z")
	meta := events.Meta{ID: "e1", Source: "backstream/test/x", Plan: "orders", RunID: "01JNR4S7T0000000000000000A", Time: t0.Add(time.Minute)}
	e := events.MustNew(meta, events.BackupCancelledData{By: "cli:alice", Reason: "wrong plan", Steps: []string{events.StepSnapshot, "filter"}})
	pts, err := Points(e, &runs.Run{Trigger: "cli", Created: t0, Finished: t0.Add(50 * time.Second), Phase: runs.Cancelled})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"by": "cli:alice", "reason": "wrong plan", "steps": events.StepSnapshot + ",filter", "duration_s": 50.0}
	if len(pts) != 1 || !reflect.DeepEqual(pts[0].Fields, want) {
		t.Errorf("points %+v, want one with fields %v", pts, want)
	}
}

// TestScrubFields checks the counts a scrub's points carry, which
// TestPoints only names: unrepaired is what a destination's damage left
// after its repairs, and incomplete flags a destination that could not be
// scrubbed.
func TestScrubFields(t *testing.T) {
	meta := events.Meta{ID: "e1", Source: "backstream/test/x", Plan: "orders", RunID: "01JNR4S7T0000000000000000A", Time: at("2026-01-01T10:00:00Z")}
	e := events.MustNew(meta, events.ScrubCompletedData{Mode: events.ScrubCiphertext, Status: events.ScrubDamaged, DurationMs: 9000, Destinations: []events.ScrubDestination{
		{Destination: "local", Checked: 4, Verified: 1, Corrupt: 2, Missing: 1, Repaired: 1, Bytes: 400},
		{Destination: "nas", Error: "list nas: connection refused"},
	}})
	pts, err := Points(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"checked": int64(4), "verified": int64(1), "corrupt": int64(2), "missing": int64(1), "repaired": int64(1), "unrepaired": int64(2),
			"bytes": int64(400), "duration_ms": int64(9000), "incomplete": int64(0)},
		{"checked": int64(0), "verified": int64(0), "corrupt": int64(0), "missing": int64(0), "repaired": int64(0), "unrepaired": int64(0),
			"bytes": int64(0), "duration_ms": int64(9000), "incomplete": int64(1), "error": "list nas: connection refused"},
	}
	if len(pts) != len(want) {
		t.Fatalf("%d points, want %d", len(pts), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(pts[i].Fields, want[i]) {
			t.Errorf("%s: fields %v, want %v", pts[i].Tags["destination"], pts[i].Fields, want[i])
		}
	}
}
