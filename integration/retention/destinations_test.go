package retention

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/testenv"
	retstage "github.com/backstream/backstream/services/retention"
)

// twoRig is a plan with a fast local destination on the filesystem that
// keeps 2 backups and a remote one on MinIO that keeps 5 (the plan's own
// block, keepLast 1, is overridden by both), and the retention stage.
type twoRig struct {
	t     *testing.T
	minio *testenv.MinIOServer
	env   *harness.Env
	plan  *plan.Plan
	local storage.Storage
	s3    storage.Storage
	creds []string
}

func newTwoRig(t *testing.T) *twoRig {
	m := testenv.MinIO(t)
	bucket := m.NewBucket(t, "offsite")
	t.Setenv("RET_TEST_S3_ACCESS", m.AccessKey)
	t.Setenv("RET_TEST_S3_SECRET", m.SecretKey)
	r := &twoRig{t: t, minio: m, creds: []string{"RET_TEST_S3_ACCESS=" + m.AccessKey, "RET_TEST_S3_SECRET=" + m.SecretKey}}
	r.env = harness.Start(t, harness.Options{Services: []string{"retention"}})
	r.plan = r.env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: orders}
spec:
  source:
    type: command
    command: {argv: ["true"]}
  retention: {keepLast: 1}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %s}
      retention: {keepLast: 2}
    - name: s3
      type: s3
      s3:
        endpoint: %s
        bucket: %s
        insecure: true
        accessKey: {env: RET_TEST_S3_ACCESS}
        secretKey: {env: RET_TEST_S3_SECRET}
      retention: {keepLast: 5}
`, t.TempDir(), m.Endpoint, bucket))
	var err error
	if r.local, err = plugins.Default().Storage(context.Background(), r.plan, "local"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.local.Close() })
	if r.s3, err = plugins.Default().Storage(context.Background(), r.plan, "s3"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.s3.Close() })
	return r
}

// daily is n verified backups, one a day, the newest an hour ago, oldest
// first.
func daily(n int) []spec {
	end := time.Now().Add(-time.Hour).Truncate(time.Second)
	out := make([]spec, n)
	for i := range out {
		at := end.Add(time.Duration(i-n+1) * 24 * time.Hour)
		out[i] = spec{id: idAt(at, i), created: at, status: format.VerifyVerified}
	}
	return out
}

func writeTo(t *testing.T, st storage.Storage, bs []spec) {
	t.Helper()
	for _, b := range bs {
		if err := write(context.Background(), st, "orders", b); err != nil {
			t.Fatal(err)
		}
	}
}

// held lists the backup ids whose manifest st holds, and the verified ones.
func held(t *testing.T, st storage.Storage) (all, verified []string) {
	t.Helper()
	ms, bad, err := backup.List(context.Background(), st, "orders")
	if err != nil || len(bad) > 0 {
		t.Fatalf("list: %v %v", err, bad)
	}
	for _, m := range ms {
		all = append(all, m.BackupID)
		if m.Verify.Status == format.VerifyVerified {
			verified = append(verified, m.BackupID)
		}
	}
	slices.Sort(all)
	slices.Sort(verified)
	return all, verified
}

// succeed publishes backup.succeeded of backup id for dests and returns
// each destination's retention event.
func (r *twoRig) succeed(id string, dests ...string) map[string]events.Event {
	r.t.Helper()
	m := r.env.Bus.Meta("orders", id, "")
	m.ID = events.RunEventID(id, events.BackupSucceeded, "")
	d := events.BackupSucceededData{BackupID: id, PlaintextSHA256: strings.Repeat("0", 64), Source: "command", Started: time.Now().UTC()}
	for _, dest := range dests {
		d.Objects = append(d.Objects, events.BackupObject{Destination: dest, Key: format.ObjectKey("orders", id), ManifestKey: format.ManifestKey("orders", id), SHA256: strings.Repeat("0", 64)})
	}
	e, err := events.New(m, d)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.env.Bus.Publish(context.Background(), e); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out := map[string]events.Event{}
		for _, e := range r.env.Events(id) {
			for _, dest := range dests {
				if e.Type() == events.RetentionCompleted || e.Type() == events.RetentionFailed {
					if events.Step(e) == retstage.StepName(dest) {
						out[dest] = e
					}
				}
			}
		}
		if len(out) == len(dests) && idle(r.t, r.env.Bus) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("no retention events for %s: %v", id, harness.Types(r.env.Events(id)))
	return nil
}

func completed(t *testing.T, e events.Event) events.RetentionCompletedData {
	t.Helper()
	if e.Type() != events.RetentionCompleted {
		t.Fatalf("%s: %s", e.Type(), e.Data())
	}
	var d events.RetentionCompletedData
	if err := e.DataAs(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

func idsOf(bs []spec, idx ...int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, bs[i].id)
	}
	slices.Sort(out)
	return out
}

// lastCopies maps the backups kept as a last copy to their reason.
func lastCopies(d events.RetentionCompletedData) map[string]string {
	out := map[string]string{}
	for _, k := range d.Kept {
		if strings.HasPrefix(k.Reasons[0], retstage.LastCopyPrefix) {
			out[k.BackupID] = k.Reasons[0]
		}
	}
	return out
}

func TestEachDestinationKeepsItsOwnPolicy(t *testing.T) {
	r := newTwoRig(t)
	bs := daily(8)
	writeTo(t, r.local, bs)
	writeTo(t, r.s3, bs)

	got := r.succeed(bs[7].id, "local", "s3")
	loc, s3 := completed(t, got["local"]), completed(t, got["s3"])
	if k := ids(loc.Kept); !slices.Equal(k, idsOf(bs, 6, 7)) {
		t.Errorf("local kept %v, want the 2 newest", k)
	}
	if k := ids(s3.Kept); !slices.Equal(k, idsOf(bs, 3, 4, 5, 6, 7)) {
		t.Errorf("s3 kept %v, want the 5 newest", k)
	}
	if lc := lastCopies(loc); len(lc) > 0 {
		t.Errorf("last copies kept although s3 holds every backup: %v", lc)
	}
	// What the storages hold, as their servers list them.
	if all, _ := held(t, r.local); !slices.Equal(all, idsOf(bs, 6, 7)) {
		t.Errorf("local holds %v", all)
	}
	if all, _ := held(t, r.s3); !slices.Equal(all, idsOf(bs, 3, 4, 5, 6, 7)) {
		t.Errorf("s3 holds %v", all)
	}

	// The dry run reads the destination's policy too.
	out, code := harness.Run(t, t.TempDir(), r.creds, "retention", "orders", "--dry-run", "--destination", "s3", "--nats", r.env.URL)
	actions := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 3 {
			actions[f[3]]++
		}
	}
	if code != 0 || actions["keep"] != 5 || actions["remove"] != 0 {
		t.Errorf("dry run of s3 after the pass (exit %d): %v, want 5 kept and none removed:\n%s", code, actions, out)
	}
}

func TestTheLastVerifiedCopyIsKeptBeyondItsPolicy(t *testing.T) {
	r := newTwoRig(t)
	bs := daily(8)
	writeTo(t, r.local, bs)
	// The remote copy of bs[4] was lost (deleted behind backstream's back)
	// and that of bs[5] failed verification there: local holds the only
	// verified copies, and s3's keepLast 5 wants both.
	remote := slices.Clone(bs)
	remote[5].status = format.VerifyFailed
	remote = slices.Delete(remote, 4, 5)
	writeTo(t, r.s3, remote)

	got := r.succeed(bs[7].id, "local", "s3")
	loc, s3 := completed(t, got["local"]), completed(t, got["s3"])

	if k := ids(loc.Kept); !slices.Equal(k, idsOf(bs, 4, 5, 6, 7)) {
		t.Errorf("local kept %v, want the 2 newest and the 2 only verified copies", k)
	}
	lc := lastCopies(loc)
	for _, i := range []int{4, 5} {
		if !strings.Contains(lc[bs[i].id], "destination s3 has no") || !strings.Contains(lc[bs[i].id], "its policy keeps it") {
			t.Errorf("%s kept in local for %q, want the last-copy reason naming s3", bs[i].id, lc[bs[i].id])
		}
	}
	if len(lc) != 2 {
		t.Errorf("last copies %v, want 2", lc)
	}
	if r := ids(loc.Removed); !slices.Equal(r, idsOf(bs, 0, 1, 2, 3)) {
		t.Errorf("local removed %v: backups s3 holds verified, or nobody wants", r)
	}
	// s3 applies its own policy: its failed copy goes (an unverified copy
	// older than the newest verified), the oldest too, which local no
	// longer holds and whose policy lets it go.
	if r := ids(s3.Removed); !slices.Equal(r, idsOf(bs, 0, 5)) {
		t.Errorf("s3 removed %v", r)
	}
	if all, verified := held(t, r.local); !slices.Equal(all, idsOf(bs, 4, 5, 6, 7)) || !slices.Equal(verified, all) {
		t.Errorf("local holds %v (verified %v)", all, verified)
	}
	if all, _ := held(t, r.s3); !slices.Equal(all, idsOf(bs, 1, 2, 3, 6, 7)) {
		t.Errorf("s3 holds %v", all)
	}

	// Once a good copy is back in s3 (a replay copied it), local may let its
	// copy go at the next pass.
	writeTo(t, r.s3, bs[4:5])
	at := bs[7].created.Add(30 * time.Minute)
	next := spec{id: idAt(at, 100), created: at, status: format.VerifyVerified}
	writeTo(t, r.local, []spec{next})
	writeTo(t, r.s3, []spec{next})
	loc = completed(t, r.succeed(next.id, "local", "s3")["local"])
	if lc := lastCopies(loc); len(lc) != 1 || lc[bs[5].id] == "" {
		t.Errorf("after bs[4] came back to s3, last copies in local %v, want only bs[5]", lc)
	}
	if r := ids(loc.Removed); !slices.Contains(r, bs[4].id) {
		t.Errorf("local removed %v, want bs[4] gone now that s3 holds it", r)
	}
}

func TestAnUnreachableDestinationHoldsEveryLastCopy(t *testing.T) {
	r := newTwoRig(t)
	bs := daily(5)
	writeTo(t, r.local, bs)
	writeTo(t, r.s3, bs)
	r.minio.Stop()

	got := r.succeed(bs[4].id, "local", "s3")
	loc := completed(t, got["local"])
	if len(loc.Removed) != 0 {
		t.Errorf("local removed %v while s3 could not be listed", ids(loc.Removed))
	}
	lc := lastCopies(loc)
	for _, i := range []int{0, 1, 2} {
		if !strings.Contains(lc[bs[i].id], "destination s3 could not be listed") {
			t.Errorf("%s kept for %q, want s3 unreachable", bs[i].id, lc[bs[i].id])
		}
	}
	if got["s3"].Type() != events.RetentionFailed {
		t.Errorf("s3: %s, want retention.failed", got["s3"].Type())
	}
	if all, _ := held(t, r.local); len(all) != 5 {
		t.Errorf("local holds %d backups, want all 5", len(all))
	}
}
