package snapshot_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/snapshot"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// stream is what the filter's reader of a raw stream saw.
type stream struct {
	data    []byte
	sizes   []int
	trailer map[string]string
	err     error
}

// snap applies a plan whose source is the command argv, runs the snapshot
// stage on its backup.requested while a reader named as the filter reads
// the raw stream, and returns the stage's events and what the reader saw.
func snap(t *testing.T, chunkSize string, argv ...string) (*stage.Deps, string, []events.Event, stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = strconv.Quote(a)
	}
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: dump}
spec:
  source: {type: command, command: {argv: [%s]}}
  chunkSize: %s
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, strings.Join(quoted, ", "), chunkSize, t.TempDir()))
	id, req := requested(t, d, p)

	read := make(chan stream, 1)
	go func() {
		var s stream
		in, err := b.NewChunkReader(ctx, stage.DataKey(id), bus.KindRaw, bus.RawReader, d.DataFor(p))
		if err != nil {
			read <- stream{err: err}
			return
		}
		defer in.Close(ctx)
		for {
			c, err := in.Next(ctx)
			if err != nil {
				s.err = err
				read <- s
				return
			}
			s.data = append(s.data, c.Data...)
			s.sizes = append(s.sizes, len(c.Data))
			if err := c.Ack(); err != nil {
				s.err = err
				read <- s
				return
			}
			if c.Final {
				s.trailer = c.Trailer
				read <- s
				return
			}
		}
	}()
	out, err := snapshot.New(d).Consumers()[0].Handler(ctx, req)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return d, id, out, <-read
}

// requested makes a running backup run of plan p and the
// backup.requested the snapshot stage handles for it.
func requested(t *testing.T, d *stage.Deps, p *plan.Plan) (string, events.Event) {
	t.Helper()
	id := events.NewID()
	if _, err := d.Runs.Ensure(context.Background(), runs.Run{ID: id, Plan: p.Name(), Kind: runs.KindBackup, Phase: runs.Running}); err != nil {
		t.Fatal(err)
	}
	req, err := events.New(d.Bus.Meta(p.Name(), id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	return id, req
}

func types(out []events.Event) string {
	var got []string
	for _, e := range out {
		got = append(got, strings.TrimPrefix(e.Type(), events.TypePrefix))
	}
	return strings.Join(got, ",")
}

// TestSnapshotStreamsTheDumpInChunksWithItsDigest: a dump of many chunks
// and a rest reaches the stream's reader byte for byte in full chunks, and
// the trailer, snapshot.completed and the run record all carry its size,
// chunk count and SHA-256.
func TestSnapshotStreamsTheDumpInChunksWithItsDigest(t *testing.T) {
	const chunk = 64 << 10
	data, err := io.ReadAll(datagen.New(7, 40*chunk+4321))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dump")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, id, out, s := snap(t, "64KiB", "cat", file)
	if s.err != nil {
		t.Fatalf("read the raw stream: %v", s.err)
	}
	if !bytes.Equal(s.data, data) {
		t.Fatalf("the stream holds %d bytes that differ from the dump's %d", len(s.data), len(data))
	}
	for i, n := range s.sizes[:len(s.sizes)-1] {
		if n != chunk {
			t.Fatalf("chunk %d holds %d bytes, want %d", i, n, chunk)
		}
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	if end, err := bus.ParseRawEnd(s.trailer); err != nil || end.SHA256 != digest || end.Bytes != int64(len(data)) || end.Chunks != int64(len(s.sizes)) || end.Exit != 0 {
		t.Errorf("trailer %v (%+v, %v), want %d bytes in %d chunks with SHA-256 %s", s.trailer, end, err, len(data), len(s.sizes), digest)
	}
	if got := types(out); !strings.HasPrefix(got, "snapshot.completed") {
		t.Fatalf("events %s, want snapshot.completed first", got)
	}
	var done events.SnapshotCompletedData
	if err := out[0].DataAs(&done); err != nil {
		t.Fatal(err)
	}
	if done.SHA256 != digest || done.Bytes != int64(len(data)) {
		t.Errorf("snapshot.completed %+v, want %d bytes with SHA-256 %s", done, len(data), digest)
	}
	r, err := d.Runs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.SHA256 != digest || r.Bytes != int64(len(data)) {
		t.Errorf("run record says %d bytes with %s, want %d with %s", r.Bytes, r.SHA256, len(data), digest)
	}
}

// TestSnapshotOfAFailingDumpFailsTheStream: a dump that exits non-zero
// after several chunks ends the stream as failed for its reader (nothing
// downstream can take it for a whole dump), and the stage fails its step,
// with the exit status and stderr, and the run.
func TestSnapshotOfAFailingDumpFailsTheStream(t *testing.T) {
	d, id, out, s := snap(t, "64KiB", "sh", "-c", "head -c 1000000 /dev/zero; echo disk on fire >&2; exit 3")
	if !errors.Is(s.err, bus.ErrProducerFailed) {
		t.Fatalf("the reader saw %v after %d bytes, want the producer's failure", s.err, len(s.data))
	}
	if len(out) != 0 {
		t.Errorf("events %s returned, want none (a failure is published, not returned)", types(out))
	}
	r, err := d.Runs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	st := r.FindStep("snapshot")
	if r.Phase != runs.Failed || st == nil || st.Phase != runs.Failed || st.Bytes != 1000000 ||
		!strings.Contains(st.Error, "exit status 3") || !strings.Contains(st.Error, "disk on fire") {
		t.Errorf("run %s, step %+v: want both failed, with 1000000 bytes, the exit status and the stderr", r.Phase, st)
	}
}

// TestSnapshotStoppedByTheRunsEnd: the run ends elsewhere while its dump
// streams — an operator cancels it, or another stage fails it. The dump is
// killed, the stream's reader is told, and the step ends Cancelled with
// the operator's reason, or Failed naming the run's failure; either way
// with no snapshot.failed: the dump did not fail, and an alert on
// snapshot.failed must not fire on every cancel nor name the wrong cause
// (control's backup.cancelled, the failing stage's events say what
// happened).
func TestSnapshotStoppedByTheRunsEnd(t *testing.T) {
	tests := []struct {
		name      string
		end       runs.Request
		asker     string
		wantRun   runs.Phase
		wantStep  runs.Phase
		wantError string
	}{
		{"cancelled", runs.Request{Op: runs.OpCancel, Owner: "cli:test", Error: "wrong window"}, "admin",
			runs.Cancelled, runs.Cancelled, "wrong window"},
		{"failed by the upload", runs.Request{Op: runs.OpFail, Stage: "upload", Step: "upload:local", Error: "upload to local: disk full", Cause: "e1"}, "upload",
			runs.Failed, runs.Failed, "the run ended: Failed (upload to local: disk full)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stopped(t, tt.end, tt.asker, tt.wantRun, tt.wantStep, tt.wantError)
		})
	}
}

func stopped(t *testing.T, end runs.Request, asker string, wantRun, wantStep runs.Phase, wantError string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	dir := t.TempDir()
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: endless}
spec:
  source: {type: command, command: {argv: [sh, -c, "while :; do head -c 65536 /dev/zero; echo x > %s/tick; sleep 0.02; done"]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, dir, t.TempDir()))
	id, req := requested(t, d, p)
	published := make(chan *nats.Msg, 1024)
	sub, err := b.NC.ChanSubscribe(events.SubjectWildcard, published)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	read := make(chan error, 1)
	go func() {
		in, err := b.NewChunkReader(ctx, stage.DataKey(id), bus.KindRaw, bus.RawReader, d.DataFor(p))
		if err != nil {
			read <- err
			return
		}
		defer in.Close(ctx)
		for {
			c, err := in.Next(ctx)
			if err == nil {
				err = c.Ack()
			}
			if err != nil {
				read <- err
				return
			}
		}
	}()
	handled := make(chan error, 1)
	go func() {
		_, err := snapshot.New(d).Consumers()[0].Handler(ctx, req)
		handled <- err
	}()
	for {
		if _, err := os.Stat(filepath.Join(dir, "tick")); err == nil {
			break
		}
		select {
		case err := <-handled:
			t.Fatalf("the snapshot ended before the dump ran: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	end.Run = id
	if _, _, err := d.Owner.Ask(ctx, asker, end); err != nil {
		t.Fatal(err)
	}
	if err := <-handled; err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := <-read; !errors.Is(err, bus.ErrProducerFailed) {
		t.Errorf("the reader saw %v, want the producer's end", err)
	}
	r, err := d.Runs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	st := r.FindStep("snapshot")
	if r.Phase != wantRun || st == nil || st.Phase != wantStep || !strings.Contains(st.Error, wantError) || st.Bytes == 0 {
		t.Errorf("run %s, step %+v: want run %s, step %s naming %q, with the bytes dumped", r.Phase, st, wantRun, wantStep, wantError)
	}
	if err := b.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	for len(published) > 0 {
		m := <-published
		e, err := bus.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if events.RunID(e) != id {
			continue
		}
		// The run's own backup.failed is the failing stage's, announced
		// by control; after a cancel there is none.
		if e.Type() == events.SnapshotFailed || e.Type() == events.BackupFailed && wantRun == runs.Cancelled {
			t.Errorf("%s published", e.Type())
		}
		var bf events.BackupFailedData
		if e.Type() == events.BackupFailed && (e.DataAs(&bf) != nil || bf.Stage != "upload") {
			t.Errorf("backup.failed %+v, want the upload's", bf)
		}
	}
	tick, _ := os.Stat(filepath.Join(dir, "tick"))
	time.Sleep(200 * time.Millisecond)
	if again, _ := os.Stat(filepath.Join(dir, "tick")); !again.ModTime().Equal(tick.ModTime()) {
		t.Error("the dump still runs after the cancel")
	}
}
