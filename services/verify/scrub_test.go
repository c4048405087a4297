package verify

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/stage/stagetest"
)

// scrubRig is a plan with filesystem destinations a, b and c, each its
// own directory, and the verify stage that scrubs them.
type scrubRig struct {
	t      *testing.T
	s      *Service
	d      *stage.Deps
	dirs   map[string]string
	stores map[string]storage.Storage
}

func newScrubRig(t *testing.T, extra string, dests ...string) *scrubRig {
	t.Helper()
	ctx := context.Background()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	rig := &scrubRig{t: t, s: New(d), d: d, dirs: map[string]string{}, stores: map[string]storage.Storage{}}
	var ds []string
	for _, name := range dests {
		dir := t.TempDir()
		rig.dirs[name] = dir
		ds = append(ds, fmt.Sprintf("{name: %s, type: filesystem, filesystem: {path: %s}}", name, dir))
		st, err := filesystem.New(ctx, filesystem.Config{Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		rig.stores[name] = st
	}
	p, err := plan.Parse("p.yaml", []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: scrubbed}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [%s]
%s`, strings.Join(ds, ", "), extra)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Plans.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	return rig
}

// backup stores one verified backup in each of dests (the same bytes in
// each, as a run writes them) and returns its id.
func (r *scrubRig) backup(dests ...string) string {
	r.t.Helper()
	ctx := context.Background()
	id := events.NewID()
	_, mk := storeBackup(r.t, r.stores[dests[0]], "scrubbed", id)
	m, err := backup.LoadManifest(ctx, r.stores[dests[0]], mk)
	if err != nil {
		r.t.Fatal(err)
	}
	m.Verify = format.VerifyResult{Status: format.VerifyVerified, Mode: format.VerifyModeFull, At: time.Now().UTC()}
	for _, d := range dests {
		if d != dests[0] {
			if _, _, err := backup.Copy(ctx, r.stores[dests[0]], r.stores[d], m); err != nil {
				r.t.Fatal(err)
			}
		}
		if err := backup.SaveManifest(ctx, r.stores[d], m); err != nil {
			r.t.Fatal(err)
		}
	}
	return id
}

// object is the path of a backup's object in dest's directory.
func (r *scrubRig) object(dest, id string) string {
	return filepath.Join(r.dirs[dest], filepath.FromSlash(format.ObjectKey("scrubbed", id)))
}

// flip flips one byte in the middle of dest's copy of id.
func (r *scrubRig) flip(dest, id string) {
	r.t.Helper()
	b, err := os.ReadFile(r.object(dest, id))
	if err != nil {
		r.t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(r.object(dest, id), b, 0o600); err != nil {
		r.t.Fatal(err)
	}
}

// scrub handles one scrub.requested and returns its single result event.
func (r *scrubRig) scrub(req events.ScrubRequestedData) events.Event {
	r.t.Helper()
	if req.Trigger == "" {
		req.Trigger = events.TriggerCLI
	}
	id := events.NewID()
	e, err := events.New(r.d.Bus.Meta("scrubbed", id, ""), req)
	if err != nil {
		r.t.Fatal(err)
	}
	out, err := r.s.handleScrub(context.Background(), e)
	if err != nil {
		r.t.Fatal(err)
	}
	if len(out) != 1 {
		r.t.Fatalf("scrub returned %d events, want 1", len(out))
	}
	if events.RunID(out[0]) != id {
		r.t.Errorf("result runid %s, want the scrub's id %s", events.RunID(out[0]), id)
	}
	return out[0]
}

func (r *scrubRig) completed(req events.ScrubRequestedData) events.ScrubCompletedData {
	r.t.Helper()
	e := r.scrub(req)
	if e.Type() != events.ScrubCompleted {
		r.t.Fatalf("scrub ended in %s: %s", e.Type(), e.Data())
	}
	var d events.ScrubCompletedData
	if err := e.DataAs(&d); err != nil {
		r.t.Fatal(err)
	}
	return d
}

func (r *scrubRig) bytes(dest, id string) []byte {
	r.t.Helper()
	rc, err := r.stores[dest].Open(context.Background(), format.ObjectKey("scrubbed", id))
	if err != nil {
		r.t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *scrubRig) manifest(dest, id string) format.Manifest {
	r.t.Helper()
	m, err := backup.LoadManifest(context.Background(), r.stores[dest], format.ManifestKey("scrubbed", id))
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

func counts(d events.ScrubCompletedData) map[string]string {
	out := map[string]string{}
	for _, x := range d.Destinations {
		out[x.Destination] = fmt.Sprintf("checked=%d verified=%d corrupt=%d missing=%d repaired=%d", x.Checked, x.Verified, x.Corrupt, x.Missing, x.Repaired)
	}
	return out
}

func TestScrubOfGoodCopiesIsClean(t *testing.T) {
	r := newScrubRig(t, "", "a", "b")
	r.backup("a", "b")
	r.backup("a", "b")
	d := r.completed(events.ScrubRequestedData{})
	if d.Status != events.ScrubClean || d.Mode != events.ScrubCiphertext || len(d.Damaged) != 0 {
		t.Fatalf("got %+v", d)
	}
	want := "checked=2 verified=2 corrupt=0 missing=0 repaired=0"
	for dest, got := range counts(d) {
		if got != want {
			t.Errorf("%s: %s, want %s", dest, got, want)
		}
	}
}

// TestScrubRepairsAFlippedByteFromAnotherCopy: one byte flipped in a's
// copy is found, and the copy is replaced by b's verified bytes.
func TestScrubRepairsAFlippedByteFromAnotherCopy(t *testing.T) {
	for _, mode := range []string{events.ScrubCiphertext, events.ScrubFull} {
		t.Run(mode, func(t *testing.T) {
			r := newScrubRig(t, "", "a", "b")
			good := r.backup("a", "b")
			id := r.backup("a", "b")
			r.flip("a", id)
			d := r.completed(events.ScrubRequestedData{Mode: mode})
			if d.Status != events.ScrubRepaired || d.Mode != mode {
				t.Fatalf("status %s mode %s, want repaired %s: %+v", d.Status, d.Mode, mode, d)
			}
			if len(d.Damaged) != 1 || d.Damaged[0].Destination != "a" || d.Damaged[0].BackupID != id ||
				d.Damaged[0].Problem != events.CopyCorrupt || d.Damaged[0].RepairedFrom != "b" {
				t.Fatalf("damaged %+v", d.Damaged)
			}
			if got := counts(d)["a"]; got != "checked=2 verified=1 corrupt=1 missing=0 repaired=1" {
				t.Errorf("a: %s", got)
			}
			if !bytes.Equal(r.bytes("a", id), r.bytes("b", id)) {
				t.Error("a's copy is not b's bytes after the repair")
			}
			if m := r.manifest("a", id); m.Verify.Status != format.VerifyVerified {
				t.Errorf("a's repaired manifest says %+v", m.Verify)
			}
			if m := r.manifest("a", good); m.Verify.Status != format.VerifyVerified {
				t.Errorf("a's good copy's manifest says %+v", m.Verify)
			}
			if again := r.completed(events.ScrubRequestedData{Mode: mode}); again.Status != events.ScrubClean {
				t.Errorf("the scrub after the repair: %+v", again)
			}
		})
	}
}

// TestScrubRestoresAMissingObjectAndFillsADestination: an object deleted
// under its manifest, and a backup a destination never got (its
// retention keeps everything), are both copied in.
func TestScrubRestoresAMissingObjectAndFillsADestination(t *testing.T) {
	r := newScrubRig(t, "", "a", "b", "c")
	gone := r.backup("a", "b", "c")
	never := r.backup("a", "b")
	if err := os.Remove(r.object("b", gone)); err != nil {
		t.Fatal(err)
	}
	d := r.completed(events.ScrubRequestedData{})
	if d.Status != events.ScrubRepaired {
		t.Fatalf("status %s: %+v", d.Status, d)
	}
	got := map[string]string{}
	for _, x := range d.Damaged {
		got[x.Destination+"/"+x.BackupID] = x.Problem + " from " + x.RepairedFrom
	}
	want := map[string]string{"b/" + gone: "missing from a", "c/" + never: "missing from a"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("damaged %v, want %v", got, want)
	}
	for _, dest := range []string{"b", "c"} {
		for _, id := range []string{gone, never} {
			if m := r.manifest(dest, id); m.Verify.Status != format.VerifyVerified {
				t.Errorf("%s/%s: %+v", dest, id, m.Verify)
			}
		}
	}
}

// TestScrubLeavesWhatRetentionRemoved: a destination whose own retention
// would not keep a backup is not "missing" it.
func TestScrubLeavesWhatRetentionRemoved(t *testing.T) {
	r := newScrubRig(t, "", "a", "b")
	ctx := context.Background()
	p, err := r.d.Plans.Get(ctx, "scrubbed")
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Destinations[1].Retention = &plan.Retention{}
	p.Spec.Destinations[1].Retention.KeepLast = 1
	if _, err := r.d.Plans.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	r.backup("a")
	r.backup("a", "b")
	if d := r.completed(events.ScrubRequestedData{}); d.Status != events.ScrubClean {
		t.Fatalf("status %s: %+v", d.Status, d)
	}
}

// TestScrubMarksAnUnrepairableCopyFailed: with no other copy, a damaged
// copy cannot be repaired; its manifest is marked failed, so latest no
// longer picks it, and the scrub says damaged.
func TestScrubMarksAnUnrepairableCopyFailed(t *testing.T) {
	r := newScrubRig(t, "", "a")
	older := r.backup("a")
	id := r.backup("a")
	r.flip("a", id)
	d := r.completed(events.ScrubRequestedData{})
	if d.Status != events.ScrubDamaged || len(d.Damaged) != 1 || d.Damaged[0].RepairedFrom != "" || d.Damaged[0].RepairError == "" {
		t.Fatalf("got %+v", d)
	}
	if m := r.manifest("a", id); !backup.Failed(m) || !strings.Contains(m.Verify.Error, "scrub") {
		t.Errorf("the damaged copy's manifest says %+v", m.Verify)
	}
	m, err := backup.Find(context.Background(), r.stores["a"], "scrubbed/latest")
	if err != nil || m.BackupID != older {
		t.Errorf("latest is %s (%v), want the older good backup %s", m.BackupID, err, older)
	}
}

func TestScrubWithRepairOffOnlyReports(t *testing.T) {
	r := newScrubRig(t, "  scrub: {repair: false}\n", "a", "b")
	id := r.backup("a", "b")
	r.flip("b", id)
	d := r.completed(events.ScrubRequestedData{})
	if d.Status != events.ScrubDamaged || len(d.Damaged) != 1 || !strings.Contains(d.Damaged[0].RepairError, "repair: false") {
		t.Fatalf("got %+v", d)
	}
	if !backup.Failed(r.manifest("b", id)) {
		t.Error("the damaged copy still passes for a backup")
	}
}

// TestScrubOfOneDestinationRepairsFromAnother: scrubbing b alone reads a
// only as the source of the repair.
func TestScrubOfOneDestinationRepairsFromAnother(t *testing.T) {
	r := newScrubRig(t, "", "a", "b")
	id := r.backup("a", "b")
	r.flip("b", id)
	d := r.completed(events.ScrubRequestedData{Destination: "b"})
	if len(d.Destinations) != 1 || d.Destinations[0].Destination != "b" || d.Status != events.ScrubRepaired {
		t.Fatalf("got %+v", d)
	}
	if !bytes.Equal(r.bytes("a", id), r.bytes("b", id)) {
		t.Error("b was not repaired from a")
	}
}

// TestScrubOfAnUnreachableDestinationIsIncomplete: a destination whose
// path is taken by a file cannot be listed; the others are scrubbed.
func TestScrubOfAnUnreachableDestinationIsIncomplete(t *testing.T) {
	r := newScrubRig(t, "", "a", "b")
	r.backup("a", "b")
	if err := os.RemoveAll(r.dirs["b"]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.dirs["b"], []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := r.completed(events.ScrubRequestedData{})
	if d.Status != events.ScrubIncomplete {
		t.Fatalf("status %s: %+v", d.Status, d)
	}
	for _, x := range d.Destinations {
		if (x.Error != "") != (x.Destination == "b") {
			t.Errorf("%s: error %q", x.Destination, x.Error)
		}
	}
}

func TestScrubRefusals(t *testing.T) {
	r := newScrubRig(t, "", "a")
	e := r.scrub(events.ScrubRequestedData{Destination: "nowhere"})
	if e.Type() != events.ScrubFailed || !strings.Contains(string(e.Data()), `destination \"nowhere\"`) {
		t.Errorf("unknown destination: %s %s", e.Type(), e.Data())
	}
	id := events.NewID()
	ev, err := events.New(r.d.Bus.Meta("gone", id, ""), events.ScrubRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.s.handleScrub(context.Background(), ev)
	if err != nil || len(out) != 1 || out[0].Type() != events.ScrubFailed {
		t.Errorf("unknown plan: %v %v", out, err)
	}
}
