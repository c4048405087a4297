package control

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/storagetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// scrubOf publishes a scrub.requested of planName and waits for its
// result event.
func scrubOf(t *testing.T, env *harness.Env, planName string, req events.ScrubRequestedData) events.Event {
	t.Helper()
	id := events.NewID()
	req.Trigger = events.TriggerCLI
	e, err := events.New(env.Bus.Meta(planName, id, ""), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Bus.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	var out events.Event
	waitFor(t, "the scrub's result", func() bool {
		for _, ev := range env.Events(id) {
			if ev.Type() == events.ScrubCompleted || ev.Type() == events.ScrubFailed {
				out = ev
				return true
			}
		}
		return false
	})
	return out
}

// TestScrubRepairsAFlippedByteAndALostCopy: a backup stored in a
// filesystem destination and two real MinIO servers; one byte of the copy
// in minio-a is flipped and minio-b loses its copy altogether. The scrub
// reports both and repairs them from a verified copy; the next scrub is
// clean, and a restore reads minio-a's repaired copy byte for byte.
func TestScrubRepairsAFlippedByteAndALostCopy(t *testing.T) {
	ctx := context.Background()
	m1, m2 := testenv.MinIO(t), testenv.MinIO(t)
	b1, b2 := m1.NewBucket(t, "scrub-a"), m2.NewBucket(t, "scrub-b")
	t.Setenv("REQ_A_ACCESS", m1.AccessKey)
	t.Setenv("REQ_A_SECRET", m1.SecretKey)
	t.Setenv("REQ_B_ACCESS", m2.AccessKey)
	t.Setenv("REQ_B_SECRET", m2.SecretKey)
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	env.Apply(requirePlan("scrubbed", dir, "all", m1, m2, b1, b2) + "  scrub: {mode: full}\n")
	id := env.Trigger("scrubbed")
	if r := env.Wait(id, 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("backup run %s: %s", r.Phase, r.Error)
	}
	st := stores(t, dir, m1, m2, b1, b2)
	key := format.ObjectKey("scrubbed", id)
	good := storagetest.Read(t, st["local"], key)

	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x01
	if _, err := st["minio-a"].Put(ctx, key, bytes.NewReader(bad), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{key, format.ManifestKey("scrubbed", id)} {
		if err := st["minio-b"].Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	e := scrubOf(t, env, "scrubbed", events.ScrubRequestedData{})
	var d events.ScrubCompletedData
	if e.Type() != events.ScrubCompleted || e.DataAs(&d) != nil {
		t.Fatalf("scrub ended in %s: %s", e.Type(), e.Data())
	}
	if d.Status != events.ScrubRepaired || d.Mode != events.ScrubFull {
		t.Fatalf("scrub status %s mode %s, want repaired full: %s", d.Status, d.Mode, e.Data())
	}
	var got []string
	for _, x := range d.Damaged {
		if x.BackupID != id || x.RepairedFrom == "" || x.RepairedFrom == x.Destination {
			t.Errorf("damaged copy %+v", x)
		}
		got = append(got, x.Destination+" "+x.Problem)
	}
	sort.Strings(got)
	if strings.Join(got, ", ") != "minio-a corrupt, minio-b missing" {
		t.Fatalf("damaged %v, want minio-a corrupt and minio-b missing", got)
	}
	for name, s := range st {
		if !bytes.Equal(storagetest.Read(t, s, key), good) {
			t.Errorf("%s does not hold the good bytes after the scrub", name)
		}
		if m, err := backup.Find(ctx, s, "scrubbed/latest"); err != nil || m.BackupID != id {
			t.Errorf("%s: latest %q (%v), want the repaired backup", name, m.BackupID, err)
		}
	}
	if e := scrubOf(t, env, "scrubbed", events.ScrubRequestedData{}); !strings.Contains(string(e.Data()), `"status":"clean"`) {
		t.Errorf("the scrub after the repair: %s %s", e.Type(), e.Data())
	}
}
