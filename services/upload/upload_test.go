package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
	"github.com/backstream/backstream/services/upload"
)

// The test plays the filter: it writes the sealed stream itself. The
// upload stage copies the stream's bytes without reading them and takes
// the manifest's figures from the trailer's meta alone, so a stream of
// arbitrary bytes with a meta of our choosing is the shortest way to make
// every byte and every manifest field exact (the filter's own tests and
// TestFramedBackupRestores cover a real backup through both stages).

// dests are the plan's destinations, in its order.
var dests = []string{"a", "b"}

// rig is the plan "up" with filesystem destinations a and b in dirs, and
// the stage dependencies over an embedded server.
type rig struct {
	t    *testing.T
	d    *stage.Deps
	p    *plan.Plan
	dirs map[string]string
}

func newRig(t *testing.T, dirA, dirB string) *rig {
	t.Helper()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	// A reader that waits for a chunk that never comes fails the test in
	// seconds, not after the default five minutes.
	d.Data.Stall = 15 * time.Second
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: up, labels: {team: db}}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  chunkSize: 64KiB
  destinations:
    - {name: a, type: filesystem, filesystem: {path: %s}}
    - {name: b, type: filesystem, filesystem: {path: %s}}
`, dirA, dirB))
	return &rig{t: t, d: d, p: p, dirs: map[string]string{"a": dirA, "b": dirB}}
}

// sealed is a sealed stream as the filter publishes it: the object in
// chunks of uneven size (the header first, then frames), and the meta its
// final chunk carries.
type sealed struct {
	chunks [][]byte
	meta   bus.SealedEnd
}

func newSealed() sealed {
	var chunks [][]byte
	for i, n := range []int{321, 64 << 10, 64<<10 + 40, 5000} {
		chunks = append(chunks, bytes.Repeat([]byte{byte('a' + i)}, n))
	}
	plain := sha256.Sum256([]byte("the dump"))
	return sealed{chunks: chunks, meta: bus.SealedEnd{
		Chain: []string{format.CompressionZstd}, ChunkSize: 256 << 10, KeyWrap: format.KeyWrap{Scheme: format.SchemeNone},
		Bytes: 1 << 20, Frames: 3, PlaintextSHA256: hex.EncodeToString(plain[:]),
		Source: "command", Describe: map[string]string{"argv": "echo hi"},
	}}
}

func (s sealed) object() []byte { return bytes.Join(s.chunks, nil) }

// writer opens run id's sealed stream for both destinations, as the
// filter does: a destination that gives up on its copy (its consumer
// deleted) stops only its own.
func (r *rig) writer(ctx context.Context, id string) *bus.ChunkWriter {
	r.t.Helper()
	w, err := r.d.Bus.NewChunkWriter(ctx, stage.DataKey(id), bus.KindSealed, dests, r.d.DataFor(r.p))
	if err != nil {
		r.t.Fatal(err)
	}
	w.IndependentReaders(nil)
	return w
}

// body writes every chunk of s but the last.
func (r *rig) body(ctx context.Context, w *bus.ChunkWriter, s sealed) {
	r.t.Helper()
	for _, c := range s.chunks[:len(s.chunks)-1] {
		if err := w.Write(ctx, c); err != nil {
			r.t.Fatal(err)
		}
	}
}

// end writes the last chunk of s with the trailer.
func (r *rig) end(ctx context.Context, w *bus.ChunkWriter, s sealed) {
	r.t.Helper()
	trailer, err := s.meta.Trailer()
	if err != nil {
		r.t.Fatal(err)
	}
	if err := w.Close(ctx, s.chunks[len(s.chunks)-1], trailer); err != nil {
		r.t.Fatal(err)
	}
}

// listener sees every event published on the bus, duplicates included:
// a core subscriber gets a republished event (a redelivery's, with its
// deterministic id) that the events stream deduplicates.
type listener struct {
	nc *nats.Conn
	ch chan *nats.Msg
}

func (r *rig) listen() *listener {
	r.t.Helper()
	l := &listener{nc: r.d.Bus.NC, ch: make(chan *nats.Msg, 1024)}
	sub, err := l.nc.ChanSubscribe(events.SubjectWildcard, l.ch)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// take returns the events published so far (since the last take) for
// run id. The stage publishes on this connection and waits for each
// publish to be stored, so after a round trip every one has arrived.
func (l *listener) take(t *testing.T, id string) []events.Event {
	t.Helper()
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for {
		select {
		case m := <-l.ch:
			e, err := bus.Decode(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			if events.RunID(e) == id {
				out = append(out, e)
			}
		default:
			return out
		}
	}
}

// handle runs the upload stage's handler on e and returns what it emitted:
// the events it returned after those it published (the stage publishes
// most itself, before it asks to settle or fail the run).
func (r *rig) handle(ctx context.Context, l *listener, id string, e events.Event) ([]events.Event, error) {
	r.t.Helper()
	res := <-r.start(ctx, e)
	return append(l.take(r.t, id), res.out...), res.err
}

// result is what the handler returned.
type result struct {
	out []events.Event
	err error
}

// start runs the upload stage's handler on e in the background, for a
// test that writes the stream or changes the run meanwhile.
func (r *rig) start(ctx context.Context, e events.Event) <-chan result {
	done := make(chan result, 1)
	go func() {
		out, err := upload.New(r.d).Consumers()[0].Handler(ctx, e)
		done <- result{out, err}
	}()
	return done
}

// ofType picks the events of type typ.
func ofType(evs []events.Event, typ string) []events.Event {
	var out []events.Event
	for _, e := range evs {
		if e.Type() == typ {
			out = append(out, e)
		}
	}
	return out
}

// completed decodes the upload.completed events by destination, with
// their ids; the duration is zeroed, as it is the clock's.
func completed(t *testing.T, evs []events.Event) (map[string]events.UploadCompletedData, map[string]string) {
	t.Helper()
	data, ids := map[string]events.UploadCompletedData{}, map[string]string{}
	for _, e := range ofType(evs, events.UploadCompleted) {
		var d events.UploadCompletedData
		if err := e.DataAs(&d); err != nil {
			t.Fatal(err)
		}
		if _, dup := data[d.Destination]; dup {
			t.Fatalf("two upload.completed for %s", d.Destination)
		}
		d.DurationMs = 0
		data[d.Destination], ids[d.Destination] = d, e.ID()
	}
	return data, ids
}

// files lists the regular files under dir, temp files included, as
// slash-separated paths relative to dir.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		out = append(out, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkCopy checks that dir holds exactly run id's object, byte for byte
// the sealed stream s, and its manifest, whose figures are the object's
// and the trailer's and whose verify result is verify (its time is not
// compared). It returns the manifest.
func (r *rig) checkCopy(dir, id string, s sealed, verify format.VerifyResult) format.Manifest {
	r.t.Helper()
	key, manifestKey := format.ObjectKey(r.p.Name(), id), format.ManifestKey(r.p.Name(), id)
	if got, want := files(r.t, dir), []string{key, manifestKey}; !slices.Equal(got, want) {
		r.t.Fatalf("%s holds %q, want %q", dir, got, want)
	}
	object, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key)))
	if err != nil {
		r.t.Fatal(err)
	}
	if !bytes.Equal(object, s.object()) {
		r.t.Fatalf("%s: the object holds %d bytes that are not the %d of the sealed stream", dir, len(object), len(s.object()))
	}
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(manifestKey)))
	if err != nil {
		r.t.Fatal(err)
	}
	m, err := format.UnmarshalManifest(data)
	if err != nil {
		r.t.Fatal(err)
	}
	stored := sha256.Sum256(object)
	want := format.Manifest{
		FormatVersion: format.Version, BackupID: id, Plan: r.p.Name(), RunID: id, Trigger: events.TriggerCLI,
		Source: format.Source{Type: s.meta.Source, Describe: s.meta.Describe}, Chain: s.meta.Chain, ChunkSize: s.meta.ChunkSize,
		KeyWrap: s.meta.KeyWrap, Bytes: s.meta.Bytes, StoredBytes: int64(len(object)), Frames: s.meta.Frames,
		PlaintextSHA256: s.meta.PlaintextSHA256, StoredSHA256: hex.EncodeToString(stored[:]), ObjectKey: key,
		Verify: verify, Tags: map[string]string{"team": "db"},
	}
	got := m
	got.Created, got.Started, got.Finished, got.Verify.At = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		r.t.Fatalf("%s: manifest\n%+v\nwant\n%+v", dir, got, want)
	}
	return m
}

// run reads run id's record.
func (r *rig) run(id string) *runs.Run {
	r.t.Helper()
	run, err := r.d.Runs.Get(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return run
}

// eventually waits up to ten seconds for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// uploadWhole writes a whole sealed stream for a new run and then runs
// the upload stage on it: the stream is durable, so this is the pipeline
// when the filter is ahead of the upload.
func (r *rig) uploadWhole(ctx context.Context, s sealed) (string, events.Event, *listener, []events.Event) {
	r.t.Helper()
	id, e := stagetest.StartBackup(r.t, r.d, r.p)
	w := r.writer(ctx, id)
	r.body(ctx, w, s)
	r.end(ctx, w, s)
	l := r.listen()
	out, err := r.handle(ctx, l, id, e)
	if err != nil {
		r.t.Fatalf("upload: %v", err)
	}
	return id, e, l, out
}

// TestUploadStoresTheStreamInEveryDestination: each destination gets the
// sealed stream byte for byte at the object key and, beside it, a manifest
// pending verify with the object's size and SHA-256 and the trailer's
// figures; an upload.completed per destination names them, and the run
// record holds each step succeeded with what it stored.
func TestUploadStoresTheStreamInEveryDestination(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRig(t, t.TempDir(), t.TempDir())
	s := newSealed()
	id, _, _, out := r.uploadWhole(ctx, s)

	sum := sha256.Sum256(s.object())
	want := runs.Destination{Phase: runs.Succeeded, Key: format.ObjectKey(r.p.Name(), id), ManifestKey: format.ManifestKey(r.p.Name(), id),
		Size: int64(len(s.object())), SHA256: hex.EncodeToString(sum[:])}
	run := r.run(id)
	data, ids := completed(t, out)
	for _, dest := range dests {
		r.checkCopy(r.dirs[dest], id, s, format.VerifyResult{Status: format.VerifyPending})
		wantData := events.UploadCompletedData{Destination: dest, Key: want.Key, ManifestKey: want.ManifestKey, Size: want.Size, SHA256: want.SHA256}
		if data[dest] != wantData {
			t.Errorf("upload.completed for %s: %+v, want %+v", dest, data[dest], wantData)
		}
		if wantID := events.RunEventID(id, events.UploadCompleted, upload.StepName(dest)); ids[dest] != wantID {
			t.Errorf("upload.completed for %s has id %q, want the deterministic %q", dest, ids[dest], wantID)
		}
		st := run.FindStep(upload.StepName(dest))
		if st == nil || st.Phase != runs.Succeeded || st.Bytes != want.Size {
			t.Errorf("step %s: %+v, want succeeded with %d bytes", upload.StepName(dest), st, want.Size)
		}
		if got := run.Destinations[dest]; got == nil || *got != want {
			t.Errorf("run record's destination %s: %+v, want %+v", dest, got, want)
		}
	}
	if len(data) != len(dests) {
		t.Errorf("upload.completed for %d destinations, want %d", len(data), len(dests))
	}
	if f := ofType(out, events.UploadFailed); len(f) != 0 {
		t.Errorf("%d upload.failed emitted", len(f))
	}
}

// TestUploadRedeliveredAfterSuccessStoresNothingAgain: snapshot.started
// handled again once both uploads succeeded (a redelivery) leaves the
// objects and manifests as they are (a rewrite would be a new file) and
// announces the uploads again with the same event ids, which the events
// stream deduplicates.
func TestUploadRedeliveredAfterSuccessStoresNothingAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRig(t, t.TempDir(), t.TempDir())
	id, e, l, first := r.uploadWhole(ctx, newSealed())
	stat := func() []os.FileInfo {
		var out []os.FileInfo
		for _, dest := range dests {
			for _, k := range []string{format.ObjectKey(r.p.Name(), id), format.ManifestKey(r.p.Name(), id)} {
				fi, err := os.Stat(filepath.Join(r.dirs[dest], filepath.FromSlash(k)))
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, fi)
			}
		}
		return out
	}
	before := stat()

	again, err := r.handle(ctx, l, id, e)
	if err != nil {
		t.Fatalf("upload again: %v", err)
	}
	for i, fi := range stat() {
		if !os.SameFile(fi, before[i]) || !fi.ModTime().Equal(before[i].ModTime()) {
			t.Errorf("%s was written again", fi.Name())
		}
	}
	firstData, firstIDs := completed(t, first)
	data, ids := completed(t, again)
	if !reflect.DeepEqual(ids, firstIDs) || !reflect.DeepEqual(data, firstData) {
		t.Errorf("again: upload.completed %v with ids %v, want %v with ids %v", data, ids, firstData, firstIDs)
	}
}

// TestUploadOfAFailedStreamLeavesNothing: a sealed stream that ends as
// failed midway (the filter or the dump failed, and says so) leaves
// nothing in either destination, not even a temp file, and the upload
// steps are skipped, not failed: the stage that failed fails the run, and
// the upload neither announces a failure of its own nor fails the run.
func TestUploadOfAFailedStreamLeavesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRig(t, t.TempDir(), t.TempDir())
	id, e := stagetest.StartBackup(t, r.d, r.p)
	w := r.writer(ctx, id)
	r.body(ctx, w, newSealed())
	if err := w.Fail(ctx, "filter: disk on fire"); err != nil {
		t.Fatal(err)
	}
	l := r.listen()
	out, err := r.handle(ctx, l, id, e)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	for _, dest := range dests {
		if got := files(t, r.dirs[dest]); len(got) != 0 {
			t.Errorf("destination %s holds %q, want nothing", dest, got)
		}
	}
	run := r.run(id)
	for _, dest := range dests {
		st := run.FindStep(upload.StepName(dest))
		if st == nil || st.Phase != runs.Skipped || !strings.Contains(st.Error, "disk on fire") {
			t.Errorf("step %s: %+v, want skipped with the producer's reason", upload.StepName(dest), st)
		}
	}
	if run.Phase != runs.Running {
		t.Errorf("run %s (%s: %s), want still running: the upload fails no run for a failed stream", run.Phase, run.FailedStage, run.Error)
	}
	for _, typ := range []string{events.UploadFailed, events.UploadCompleted, events.BackupFailed} {
		if n := len(ofType(out, typ)); n != 0 {
			t.Errorf("%d %s emitted, want none", n, typ)
		}
	}
}

// TestUploadToABrokenDestinationFailsOnlyItsCopy: destination b cannot be
// opened (its path lies under a regular file). Its step fails, with an
// upload.failed naming the cause, and so does the run, in upload. The
// destinations start together, so what a does is a race the run machine
// decides either way: if a claimed its step before b failed the run, the
// failure does not stop it — a stores the whole object, and since its
// stream ends only once the run has failed, its manifest is marked failed
// with the run's reason, as the stage promises for a copy kept for a
// replay; if b failed the run first, the claim of a finds a failed run
// and a is skipped, storing nothing. (With a real snapshot the question
// is moot for a failure during the dump: the failed run kills the dump.)
func TestUploadToABrokenDestinationFailsOnlyItsCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	file := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, t.TempDir(), filepath.Join(file, "backups"))
	s := newSealed()
	id, e := stagetest.StartBackup(t, r.d, r.p)
	w := r.writer(ctx, id)
	r.body(ctx, w, s)
	l := r.listen()
	done := r.start(ctx, e)
	eventually(t, "the run failed", func() bool { return r.run(id).Phase == runs.Failed })
	r.end(ctx, w, s)
	res := <-done
	if res.err != nil {
		t.Fatalf("upload: %v", res.err)
	}
	out := append(l.take(t, id), res.out...)

	const cause = "not a directory"
	run := r.run(id)
	if run.FailedStage != "upload" || !strings.HasPrefix(run.Error, "upload to b: ") || !strings.Contains(run.Error, file) ||
		!strings.Contains(run.Error, cause) {
		t.Errorf("run failed in %q: %q; want in upload, to b, naming %s and %q", run.FailedStage, run.Error, file, cause)
	}
	if st := run.FindStep(upload.StepName("b")); st == nil || st.Phase != runs.Failed || !strings.Contains(st.Error, cause) {
		t.Errorf("step %s: %+v, want failed with the cause", upload.StepName("b"), st)
	}
	failed := ofType(out, events.UploadFailed)
	var fd events.UploadFailedData
	if len(failed) != 1 || failed[0].DataAs(&fd) != nil || fd.Destination != "b" || !strings.Contains(fd.Error, file) ||
		!strings.Contains(fd.Error, cause) {
		t.Errorf("upload.failed %+v (of %d), want one for b naming %s and %q", fd, len(failed), file, cause)
	}
	data, _ := completed(t, out)
	switch st := run.FindStep(upload.StepName("a")); {
	case st != nil && st.Phase == runs.Succeeded:
		if len(data) != 1 || data["a"].Destination != "a" {
			t.Errorf("upload.completed %+v, want one, for a", data)
		}
		r.checkCopy(r.dirs["a"], id, s, format.VerifyResult{Status: format.VerifyFailed, Mode: format.VerifyModeCiphertext,
			Error: "run failed in upload: " + run.Error})
	case st == nil || st.Phase == runs.Skipped:
		if len(data) != 0 {
			t.Errorf("upload.completed %+v, want none: a was skipped", data)
		}
		if got := files(t, r.dirs["a"]); len(got) != 0 {
			t.Errorf("destination a holds %q, want nothing: it was skipped", got)
		}
	default:
		t.Errorf("step %s: %+v, want succeeded (it began before the run failed) or skipped (it had not)", upload.StepName("a"), st)
	}
}

// TestUploadOfACancelledRunRemovesTheObject: a run cancelled while its
// sealed stream is still open (both uploads have begun their objects)
// stops the uploads: neither destination keeps an object, a manifest or
// a temp file.
func TestUploadOfACancelledRunRemovesTheObject(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRig(t, t.TempDir(), t.TempDir())
	id, e := stagetest.StartBackup(t, r.d, r.p)
	w := r.writer(ctx, id)
	r.body(ctx, w, newSealed())
	l := r.listen()
	done := r.start(ctx, e)
	// A temp file is the object being written: the stream is open.
	for _, dest := range dests {
		eventually(t, "the upload to "+dest+" began its object", func() bool {
			f := files(t, r.dirs[dest])
			return len(f) == 1 && strings.HasPrefix(filepath.Base(f[0]), ".tmp-")
		})
	}
	if _, _, err := r.d.Owner.Ask(ctx, "admin", runs.Request{Op: runs.OpCancel, Run: id, Owner: "cli:test", Error: "changed my mind"}); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("upload: %v", res.err)
	}
	out := append(l.take(t, id), res.out...)
	for _, dest := range dests {
		if got := files(t, r.dirs[dest]); len(got) != 0 {
			t.Errorf("destination %s holds %q, want nothing", dest, got)
		}
	}
	// The steps end cancelled, naming the operator's reason (as a
	// snapshot stopped so does), and the run stays cancelled: no
	// destination failed, so nothing says one did (an alert on
	// upload.failed must not fire on every cancel).
	run := r.run(id)
	if run.Phase != runs.Cancelled || run.Error != "cancelled by cli:test: changed my mind" {
		t.Errorf("run %s: %q, want cancelled with the operator's reason", run.Phase, run.Error)
	}
	for _, dest := range dests {
		st := run.FindStep(upload.StepName(dest))
		if st == nil || st.Phase != runs.Cancelled || !strings.Contains(st.Error, "changed my mind") {
			t.Errorf("step %s: %+v, want cancelled, naming the operator's reason", upload.StepName(dest), st)
		}
	}
	for _, typ := range []string{events.UploadCompleted, events.UploadFailed, events.BackupFailed} {
		if n := len(ofType(out, typ)); n != 0 {
			t.Errorf("%d %s emitted, want none", n, typ)
		}
	}
}
