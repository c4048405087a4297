// Package retention tests the retention stage end to end on MinIO: backups
// are written with pkg/format and pkg/backup at injected times, then the
// stage runs once through a real backup.succeeded on an embedded NATS.
package retention

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/retention"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/testenv"
	retstage "github.com/backstream/backstream/services/retention"
)

const policyYAML = `{keepLast: 3, keepDaily: 9, keepWeekly: 5, keepMonthly: 12, keepQuarterly: 8, keepYearly: 10, keepTags: [pinned]}`

// rig is MinIO, a bucket, and backstream running the retention stage.
type rig struct {
	t      *testing.T
	minio  *testenv.MinIOServer
	bucket string
	env    *harness.Env
	st     storage.Storage
	plan   *plan.Plan
	creds  []string // environment a backstream child process needs
}

func planYAML(name, endpoint, bucket, retentionBlock string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
    type: command
    command: {argv: ["true"]}
  destinations:
    - name: s3
      type: s3
      s3:
        endpoint: %s
        bucket: %s
        insecure: true
        accessKey: {env: RET_TEST_S3_ACCESS}
        secretKey: {env: RET_TEST_S3_SECRET}
  schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
  retention: %s
`, name, endpoint, bucket, retentionBlock)
}

func newRig(t *testing.T, retentionBlock string) *rig {
	m := testenv.MinIO(t)
	r := &rig{t: t, minio: m, bucket: m.NewBucket(t, "backups")}
	t.Setenv("RET_TEST_S3_ACCESS", m.AccessKey)
	t.Setenv("RET_TEST_S3_SECRET", m.SecretKey)
	r.creds = []string{"RET_TEST_S3_ACCESS=" + m.AccessKey, "RET_TEST_S3_SECRET=" + m.SecretKey}
	r.env = harness.Start(t, harness.Options{Services: []string{"retention"}})
	r.plan = r.env.Apply(planYAML("orders", m.Endpoint, r.bucket, retentionBlock))
	st, err := plugins.Default().Storage(context.Background(), r.plan, "s3")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r.st = st
	return r
}

// spec describes one injected backup.
type spec struct {
	id      string
	created time.Time
	status  string // format.VerifyVerified, VerifyFailed or VerifyPending
	tags    map[string]string
}

// idAt is a backup id (ULID) for time t, unique by n.
func idAt(t time.Time, n int) string {
	var entropy [10]byte
	sum := sha256.Sum256([]byte(fmt.Sprint(n)))
	copy(entropy[:], sum[:])
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(t))
	_ = id.SetEntropy(entropy[:])
	return id.String()
}

// write stores a real backup object and its manifest for planName.
func write(ctx context.Context, st storage.Storage, planName string, b spec) error {
	s, err := format.NewSealer(b.id, format.Options{Compression: "none", Encryption: "none", ChunkSize: 1024})
	if err != nil {
		return err
	}
	data := []byte("backup " + b.id)
	var obj bytes.Buffer
	w := format.NewWriter(&obj, s, 1)
	if _, err := w.Write(data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	stats, err := format.Scan(bytes.NewReader(obj.Bytes()))
	if err != nil {
		return err
	}
	key := format.ObjectKey(planName, b.id)
	if _, err := st.Put(ctx, key, bytes.NewReader(obj.Bytes()), storage.PutOptions{}); err != nil {
		return err
	}
	plain := sha256.Sum256(data)
	m := format.Manifest{
		FormatVersion: format.Version, BackupID: b.id, Plan: planName, RunID: b.id, Trigger: events.TriggerSchedule,
		Created: b.created.UTC(), Started: b.created.UTC(), Finished: b.created.Add(time.Minute).UTC(),
		Source: format.Source{Type: "command"}, Chain: s.Chain(), ChunkSize: s.ChunkSize(), KeyWrap: s.KeyWrap(),
		Bytes: int64(len(data)), StoredBytes: stats.StoredBytes, Frames: stats.Frames,
		PlaintextSHA256: fmt.Sprintf("%x", plain), StoredSHA256: stats.StoredSHA256, ObjectKey: key,
		Verify: format.VerifyResult{Status: b.status}, Tags: b.tags,
	}
	if b.status != format.VerifyPending {
		m.Verify.Mode, m.Verify.At = format.VerifyModeCiphertext, b.created.Add(2*time.Minute).UTC()
	}
	if b.status == format.VerifyFailed {
		m.Verify.Error = "stored sha256 differs"
	}
	return backup.SaveManifest(ctx, st, m)
}

func (r *rig) writeAll(planName string, bs []spec) {
	r.t.Helper()
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(8)
	for _, b := range bs {
		g.Go(func() error { return write(ctx, r.st, planName, b) })
	}
	if err := g.Wait(); err != nil {
		r.t.Fatalf("write backups: %v", err)
	}
}

// put stores an object that is no backup of the plan.
func (r *rig) put(key, body string) {
	r.t.Helper()
	if _, err := r.st.Put(context.Background(), key, strings.NewReader(body), storage.PutOptions{}); err != nil {
		r.t.Fatal(err)
	}
}

// keys lists the whole bucket, as the server has it.
func (r *rig) keys() map[string]bool {
	r.t.Helper()
	out := map[string]bool{}
	for o := range r.minio.Client(r.t).ListObjects(context.Background(), r.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			r.t.Fatal(o.Err)
		}
		out[o.Key] = true
	}
	return out
}

// succeed publishes backup.succeeded for backup id as the verify stage
// would, with the event id the pipeline gives it (or a fresh one, which is
// what a replay is), and returns the retention event the stage emits.
func (r *rig) succeed(id string, replay bool) events.Event {
	r.t.Helper()
	ctx := context.Background()
	m := r.env.Bus.Meta("orders", id, "")
	m.ID = events.RunEventID(id, events.BackupSucceeded, "")
	if replay {
		m.ID = events.NewID()
	}
	e, err := events.New(m, events.BackupSucceededData{
		BackupID: id, PlaintextSHA256: strings.Repeat("0", 64), Source: "command", Started: time.Now().UTC(),
		Objects: []events.BackupObject{{Destination: "s3", Key: format.ObjectKey("orders", id), ManifestKey: format.ManifestKey("orders", id), SHA256: strings.Repeat("0", 64)}},
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.env.Bus.Publish(ctx, e); err != nil {
		r.t.Fatal(err)
	}
	return r.result(id)
}

// result polls the events stream for the run's retention event and waits
// until the retention consumer has nothing pending.
func (r *rig) result(id string) events.Event {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if idle(r.t, r.env.Bus) {
			for _, e := range r.env.Events(id) {
				if e.Type() == events.RetentionCompleted || e.Type() == events.RetentionFailed {
					return e
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("no retention event for %s: %v", id, harness.Types(r.env.Events(id)))
	return events.Event{}
}

// idle reports whether the retention consumer acknowledged everything.
func idle(t *testing.T, b *bus.Bus) bool {
	c, err := b.JS.Consumer(context.Background(), bus.EventsStream, "retention")
	if err != nil {
		return false
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending == 0 && info.NumAckPending == 0
}

func ids(ds []events.RetentionDecision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.BackupID
	}
	slices.Sort(out)
	return out
}

// history is n backups spread over two years up to end, at irregular
// intervals, a few failed or pinned.
func history(end time.Time, n int) []spec {
	rng := rand.New(rand.NewPCG(6, 400))
	span := 2 * 365 * 24 * time.Hour
	times := make([]time.Time, n)
	times[n-1] = end
	for i := range n - 1 {
		times[i] = end.Add(-span + time.Duration(rng.Int64N(int64(span))))
	}
	slices.SortFunc(times, time.Time.Compare)
	out := make([]spec, n)
	for i, t := range times {
		out[i] = spec{id: idAt(t, i), created: t.Truncate(time.Second), status: format.VerifyVerified}
		switch {
		case i == n-1:
		case i%37 == 5:
			out[i].status = format.VerifyFailed
		case i%53 == 7:
			out[i].tags = map[string]string{"pinned": "true"}
		}
	}
	return out
}

func engine(t *testing.T, pol retention.Policy, bs []spec, now time.Time) (kept, removed []string) {
	t.Helper()
	in := make([]retention.Backup, len(bs))
	for i, b := range bs {
		in[i] = retention.Backup{ID: b.id, Time: b.created, Tags: retstage.Tags(format.Manifest{Tags: b.tags}), Verified: b.status == format.VerifyVerified}
	}
	loc, _ := time.LoadLocation("Europe/Berlin")
	ds, err := retention.Apply(pol, in, now, loc)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Keep {
			kept = append(kept, d.Backup.ID)
		} else {
			removed = append(removed, d.Backup.ID)
		}
	}
	slices.Sort(kept)
	slices.Sort(removed)
	return kept, removed
}

func TestFourHundredBackupsOverTwoYears(t *testing.T) {
	r := newRig(t, policyYAML)
	end := time.Now().Add(-time.Hour).Truncate(time.Second)
	bs := history(end, 400)
	r.writeAll("orders", bs)
	// Things that are not backups of the plan, and must survive: another
	// plan's backups, files beside the backups, an object whose manifest is
	// not written yet (an upload in progress), a manifest that is not one.
	other := history(end, 5)
	for i := range other {
		other[i].id = idAt(other[i].created, 1000+i)
	}
	r.writeAll("other", other)
	r.put("README.txt", "hands off")
	r.put("orders/notes.txt", "not a backup")
	r.put(format.ObjectKey("orders", idAt(end.Add(-time.Minute), 9999)), "upload in progress")
	r.put("orders/garbage"+format.ManifestSuffix, "{not json")
	before := r.keys()

	e := r.succeed(bs[len(bs)-1].id, false)
	if e.Type() != events.RetentionCompleted {
		t.Fatalf("retention event %s: %s", e.Type(), e.Data())
	}
	var got events.RetentionCompletedData
	if err := e.DataAs(&got); err != nil {
		t.Fatal(err)
	}
	wantKept, wantRemoved := engine(t, r.plan.Spec.Retention.Policy, bs, time.Now())
	if !slices.Equal(ids(got.Kept), wantKept) || !slices.Equal(ids(got.Removed), wantRemoved) {
		t.Fatalf("stage kept %d removed %d; engine keeps %d removes %d", len(got.Kept), len(got.Removed), len(wantKept), len(wantRemoved))
	}
	if len(wantRemoved) < 300 || len(wantKept) < 30 {
		t.Fatalf("test setup: the policy should remove most of the history: kept %d removed %d", len(wantKept), len(wantRemoved))
	}
	t.Logf("400 backups: kept %d, removed %d", len(wantKept), len(wantRemoved))

	want := maps.Clone(before)
	for _, id := range wantRemoved {
		delete(want, format.ObjectKey("orders", id))
		delete(want, format.ManifestKey("orders", id))
	}
	after := r.keys()
	if !maps.Equal(after, want) {
		for k := range before {
			if after[k] != want[k] {
				t.Errorf("key %s: present %v, want %v", k, after[k], want[k])
			}
		}
		t.FailNow()
	}

	// The new backup is labelled with its cycles, in its manifest and its
	// object's tags.
	newest := bs[len(bs)-1]
	m, err := backup.LoadManifest(context.Background(), r.st, format.ManifestKey("orders", newest.id))
	if err != nil {
		t.Fatal(err)
	}
	var prev []time.Time
	for _, b := range bs[:len(bs)-1] {
		if b.status == format.VerifyVerified {
			prev = append(prev, b.created)
		}
	}
	loc, _ := time.LoadLocation("Europe/Berlin")
	wantCycles := retention.Cycles(newest.created, loc, prev)
	if !slices.Equal(m.Cycles, wantCycles) {
		t.Errorf("manifest cycles %v, want %v", m.Cycles, wantCycles)
	}
	for _, key := range []string{m.ObjectKey, format.ManifestKey("orders", newest.id)} {
		tags, err := r.st.(storage.Tagger).GetTags(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if tags[retention.CycleTag] != retention.MostSignificant(wantCycles) {
			t.Errorf("%s: tag %s=%q, want %q", key, retention.CycleTag, tags[retention.CycleTag], retention.MostSignificant(wantCycles))
		}
	}

	// A replay of the same success (a redelivery) removes nothing more.
	r.succeed(newest.id, true)
	if again := r.keys(); !maps.Equal(again, after) {
		t.Fatalf("a replayed backup.succeeded changed the bucket: %d keys, was %d", len(again), len(after))
	}
}

func TestNothingIsRemovedUnlessTheNewestBackupIsVerified(t *testing.T) {
	tests := []struct {
		name        string
		newest      string // status of a backup newer than the one that succeeded; "" for none
		succeeded   string // which backup's success runs retention: "last-verified" or "missing"
		wantType    string
		wantRemoved bool
	}{
		{name: "newest verified: policy applied", succeeded: "last-verified", wantType: events.RetentionCompleted, wantRemoved: true},
		{name: "newest failed: held", newest: format.VerifyFailed, succeeded: "last-verified", wantType: events.RetentionCompleted},
		{name: "newest pending: held", newest: format.VerifyPending, succeeded: "last-verified", wantType: events.RetentionCompleted},
		{name: "succeeded backup not in storage: failed", succeeded: "missing", wantType: events.RetentionFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, `{keepLast: 2}`)
			end := time.Now().Add(-time.Hour).Truncate(time.Second)
			var bs []spec
			for i := range 6 {
				at := end.Add(time.Duration(i-6) * 24 * time.Hour)
				bs = append(bs, spec{id: idAt(at, i), created: at, status: format.VerifyVerified})
			}
			trigger := bs[len(bs)-1].id
			if tt.newest != "" {
				bs = append(bs, spec{id: idAt(end, 99), created: end, status: tt.newest})
			}
			r.writeAll("orders", bs)
			if tt.succeeded == "missing" {
				trigger = idAt(end.Add(time.Minute), 100)
			}
			before := r.keys()
			e := r.succeed(trigger, false)
			if e.Type() != tt.wantType {
				t.Fatalf("event %s (%s), want %s", e.Type(), e.Data(), tt.wantType)
			}
			after := r.keys()
			if removed := len(after) < len(before); removed != tt.wantRemoved {
				t.Fatalf("removed something: %v, want %v (%d keys before, %d after)", removed, tt.wantRemoved, len(before), len(after))
			}
			if tt.wantRemoved {
				// keepLast 2: the two newest stay, with their manifests.
				if len(after) != 4 {
					t.Fatalf("%d keys left, want 4", len(after))
				}
				return
			}
			if e.Type() == events.RetentionCompleted {
				var d events.RetentionCompletedData
				_ = e.DataAs(&d)
				if len(d.Removed) != 0 || !strings.HasPrefix(d.Kept[len(d.Kept)-1].Reasons[0], retstage.HeldPrefix) {
					t.Fatalf("held outcome: removed %v, oldest kept for %v", d.Removed, d.Kept[len(d.Kept)-1].Reasons)
				}
			}
		})
	}
}

func TestLifecycleExportAppliesToMinIO(t *testing.T) {
	r := newRig(t, `{keepDaily: 9, keepWeekly: 5, keepMonthly: 12, keepQuarterly: 8, keepYearly: 10}`)
	want, err := retstage.Lifecycle(r.plan, "s3")
	if err != nil {
		t.Fatal(err)
	}
	// The days of the worked example in docs/retention.md.
	days := map[string]int{}
	for _, rule := range want.Rules {
		days[rule.Tags[retention.CycleTag]] = rule.ExpireAfterDays
	}
	if !maps.Equal(days, map[string]int{"daily": 10, "weekly": 42, "monthly": 403, "quarterly": 828, "yearly": 4026}) {
		t.Fatalf("expiry days %v", days)
	}

	// Through storage.Lifecycler.
	lc := r.st.(storage.Lifecycler)
	if err := lc.SetLifecycle(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	got, err := lc.GetLifecycle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !equalRules(got, want) {
		t.Fatalf("read back %+v, want %+v", got, want)
	}
	if err := lc.SetLifecycle(context.Background(), storage.Lifecycle{}); err != nil {
		t.Fatal(err)
	}

	// Through the CLI's output, as a user would import it (minio-go's
	// lifecycle.Configuration is what `mc ilm import` reads).
	client := r.minio.Client(t)
	for _, f := range []string{"json", "xml"} {
		out, code := harness.Run(t, t.TempDir(), r.creds, "retention", "export-lifecycle", "orders", "--format", f, "--nats", r.env.URL)
		if code != 0 {
			t.Fatalf("export-lifecycle --format %s: exit %d: %s", f, code, out)
		}
		cfg := lifecycle.NewConfiguration()
		if f == "json" {
			err = json.Unmarshal([]byte(out), cfg)
		} else {
			err = xml.Unmarshal([]byte(out), cfg)
		}
		if err != nil {
			t.Fatalf("%s output does not parse as a lifecycle configuration: %v\n%s", f, err, out)
		}
		if err := client.SetBucketLifecycle(context.Background(), r.bucket, cfg); err != nil {
			t.Fatalf("apply %s output: %v", f, err)
		}
		got, err := lc.GetLifecycle(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !equalRules(got, want) {
			t.Fatalf("%s: read back %+v, want %+v", f, got, want)
		}
	}
}

func equalRules(a, b storage.Lifecycle) bool {
	return slices.EqualFunc(a.Rules, b.Rules, func(x, y storage.LifecycleRule) bool {
		return x.ID == y.ID && x.Prefix == y.Prefix && x.ExpireAfterDays == y.ExpireAfterDays && maps.Equal(x.Tags, y.Tags)
	})
}

func TestDryRunPrintsTheDecisionTable(t *testing.T) {
	r := newRig(t, policyYAML)
	end := time.Now().Add(-time.Hour).Truncate(time.Second)
	bs := history(end, 60)
	r.writeAll("orders", bs)
	before := r.keys()
	out, code := harness.Run(t, t.TempDir(), r.creds, "retention", "orders", "--dry-run", "--nats", r.env.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	_, wantRemoved := engine(t, r.plan.Spec.Retention.Policy, bs, time.Now())
	var removed []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[3] == "remove" {
			removed = append(removed, f[0])
		}
	}
	slices.Sort(removed)
	if !slices.Equal(removed, wantRemoved) {
		t.Fatalf("dry run removes %d, engine %d:\n%s", len(removed), len(wantRemoved), out)
	}
	if !maps.Equal(r.keys(), before) {
		t.Fatal("a dry run changed the bucket")
	}
}
