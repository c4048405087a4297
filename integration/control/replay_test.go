package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/metrics"
)

const influxDB = "backstream"

// dumps counts the source command's invocations: each appends a line.
func dumps(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "dumps"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// successPoints counts plan's backup_success points in InfluxDB.
func successPoints(t *testing.T, s *testenv.InfluxServer, planName string) int {
	t.Helper()
	q := fmt.Sprintf(`SELECT count("value") FROM "backup_success" WHERE "plan" = '%s'`, planName)
	resp, err := http.Get(s.URL() + "/query?db=" + influxDB + "&q=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Results []struct {
			Series []struct {
				Values [][]any `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if len(out.Results) == 0 || len(out.Results[0].Series) == 0 || len(out.Results[0].Series[0].Values) == 0 {
		return 0
	}
	n, _ := out.Results[0].Series[0].Values[0][1].(float64)
	return int(n)
}

// count counts the events of type typ of run id.
func count(env *harness.Env, id, typ string) int {
	n := 0
	for _, e := range env.Events(id) {
		if e.Type() == typ {
			n++
		}
	}
	return n
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplayVerifyAfterTheStorageCameBack: MinIO stops while verify reads
// the backup, so verify gives up and the run fails; once MinIO is back,
// `backstream replay RUN --wait` verifies again and nothing else: the dump
// ran once across both attempts, the run succeeds with a verified backup,
// InfluxDB gets one success point, and retention runs once.
func TestReplayVerifyAfterTheStorageCameBack(t *testing.T) {
	minio := testenv.MinIO(t)
	bucket := minio.NewBucket(t, "replay")
	influx := testenv.InfluxDB(t)
	influx.CreateDatabase(t, influxDB)
	t.Setenv("REPLAY_S3_ACCESS", minio.AccessKey)
	t.Setenv("REPLAY_S3_SECRET", minio.SecretKey)

	// Verify's first delivery waits until the test stopped MinIO.
	reached, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) {
		c.Influx = metrics.InfluxConfig{URL: influx.URL(), Database: influxDB}
		c.Wrap = func(consumer string, h bus.Handler) bus.Handler {
			if consumer != "verify" {
				return h
			}
			return func(ctx context.Context, e events.Event) ([]events.Event, error) {
				if e.Type() == events.UploadCompleted {
					once.Do(func() { close(reached); <-proceed })
				}
				return h(ctx, e)
			}
		}
	}})
	dir := t.TempDir()
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: verified}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", "echo dump >> %s; head -c 3000000 /dev/urandom"]}
  destinations:
    - name: s3
      type: s3
      s3: {endpoint: %s, bucket: %s, insecure: true, accessKey: {env: REPLAY_S3_ACCESS}, secretKey: {env: REPLAY_S3_SECRET}}
  verify: {enabled: true}
  retention: {keepLast: 5}
`, filepath.Join(dir, "dumps"), minio.Endpoint, bucket))

	id := env.Trigger("verified")
	<-reached
	minio.Stop()
	close(proceed)
	r := env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Failed || r.FailedStage != "verify" {
		t.Fatalf("first attempt: %s in %q (%s), want failed in verify", r.Phase, r.FailedStage, r.Error)
	}
	t.Logf("first attempt failed: %s", r.Error)
	minio.Start()

	out, code := harness.Run(t, dir, nil, "replay", id, "--wait", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "attempt 2 starts at verify") || !strings.Contains(out, "backup succeeded") {
		t.Fatalf("backstream replay: exit %d\n%s", code, out)
	}
	r = env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Succeeded || r.CurrentAttempt() != 2 || len(r.Attempts) != 2 || r.Attempts[0].Phase != runs.Failed {
		t.Fatalf("run %s attempt %d attempts %+v", r.Phase, r.CurrentAttempt(), r.Attempts)
	}
	if !slices.Contains(r.Attempts[1].Reused, "upload:s3") || !r.Destinations["s3"].Verified {
		t.Errorf("the replay did not reuse the upload or left it unverified: %+v %+v", r.Attempts[1], r.Destinations["s3"])
	}
	if n := dumps(t, dir); n != 1 {
		t.Errorf("the source command ran %d times across both attempts, want 1", n)
	}
	waitFor(t, "the success point", func() bool { return successPoints(t, influx, "verified") >= 1 })
	time.Sleep(time.Second) // a second point would have come by now
	if n := successPoints(t, influx, "verified"); n != 1 {
		t.Errorf("InfluxDB holds %d success points of the run, want 1", n)
	}
	if n := count(env, id, events.RetentionCompleted); n != 1 {
		t.Errorf("retention ran %d times, want once", n)
	}
	if n := count(env, id, events.BackupSucceeded); n != 1 {
		t.Errorf("%d backup.succeeded, want 1", n)
	}
	// The run's own listing shows both attempts.
	out, code = harness.Run(t, dir, nil, "run", id, "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "ATTEMPT") || !strings.Contains(out, "verify") {
		t.Errorf("run %s:\n%s", id, out)
	}
}

// TestReplayAHookWhoseUnlockFailedOnce: the unlock after the snapshot
// fails once, which fails the run (its compensation unlocks); `replay`
// runs the unlock again and verifies the kept backup again, without a new
// dump, and the run succeeds with a backup that passes for a good one.
func TestReplayAHookWhoseUnlockFailedOnce(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	log := filepath.Join(dir, "ops.log")
	once := filepath.Join(dir, "unlock.failed-once")
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: unlocked}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", "echo dump >> %[1]s; head -c 200000 /dev/urandom"]}
  hooks:
    - name: db
      type: exec
      ops:
        - {name: lock, command: ["sh", "-c", "echo lock >> %[2]s"], inverseOp: unlock}
        - name: unlock
          command: ["sh", "-c", "if [ ! -f %[3]s ]; then touch %[3]s; echo unlock-failed >> %[2]s; exit 1; fi; echo unlock >> %[2]s"]
          retries: 0
  workflows:
    - {name: backup, sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %[4]s}}
  verify: {enabled: true}
  retention: {keepLast: 5}
`, filepath.Join(dir, "dumps"), log, once, filepath.Join(dir, "backups")))

	id := env.Trigger("unlocked")
	r := env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Failed || !strings.HasPrefix(r.FailedStage, "hook") {
		t.Fatalf("first attempt: %s in %q (%s), want failed in the unlock", r.Phase, r.FailedStage, r.Error)
	}
	// The upload drained after the failure: the object is kept, marked failed.
	waitFor(t, "the upload to end", func() bool {
		r, _ := env.Runs.Get(context.Background(), id)
		st := r.FindStep("upload:local")
		return st != nil && st.Phase.Done()
	})

	out, code := harness.Run(t, dir, nil, "replay", id, "--wait", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "attempt 2 starts at hook:db/unlock") {
		t.Fatalf("backstream replay: exit %d\n%s", code, out)
	}
	r = env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("replayed run %s (%s)", r.Phase, r.Error)
	}
	if n := dumps(t, dir); n != 1 {
		t.Errorf("the source command ran %d times, want 1", n)
	}
	if n, m := count(env, id, events.BackupSucceeded), count(env, id, events.RetentionCompleted); n != 1 || m != 1 {
		t.Errorf("%d backup.succeeded and %d retention.completed, want one each", n, m)
	}
	// lock; the forward unlock failing; compensation's unlock; the replay's unlock.
	if got := opLog(t, dir); !slices.Equal(got, []string{"lock", "unlock-failed", "unlock", "unlock"}) {
		t.Errorf("ops ran %v", got)
	}
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: filepath.Join(dir, "backups")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if m, err := backup.Find(context.Background(), st, "unlocked/latest"); err != nil || m.BackupID != id {
		t.Errorf("latest is %q (%v), want the replayed run's backup, verified again", m.BackupID, err)
	}
}

// TestReplayRefusesWhatCannotBeReused: a run whose dump failed cannot be
// replayed from the snapshot (the bytes are gone); --from-start runs the
// whole workflow again as attempt 2 of the same run.
func TestReplayRefusesWhatCannotBeReused(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	flag := filepath.Join(dir, "dump.failed-once")
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: broken}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", "echo dump >> %[1]s; if [ ! -f %[2]s ]; then touch %[2]s; echo broken >&2; exit 3; fi; head -c 1000 /dev/urandom"]}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %[3]s}}
`, filepath.Join(dir, "dumps"), flag, filepath.Join(dir, "backups")))
	id := env.Trigger("broken")
	if r := env.Wait(id, time.Minute); r.Phase != runs.Failed {
		t.Fatalf("first attempt %s", r.Phase)
	}
	out, code := harness.Run(t, dir, nil, "replay", id, "--nats", env.URL)
	if code == 0 || !strings.Contains(out, "the bytes are gone") || !strings.Contains(out, "--from-start") {
		t.Fatalf("replay of a failed dump: exit %d\n%s", code, out)
	}
	out, code = harness.Run(t, dir, nil, "replay", id, "--from-start", "--wait", "-o", "json", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "attempt 2 starts at start") || !strings.Contains(out, `"runId": "`+id+`"`) || !strings.Contains(out, `"phase": "Succeeded"`) {
		t.Fatalf("replay --from-start -o json: exit %d, want the run's record as JSON\n%s", code, out)
	}
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Succeeded || r.CurrentAttempt() != 2 || dumps(t, dir) != 2 {
		t.Fatalf("run %s attempt %d dumps %d, want Succeeded at attempt 2 after 2 dumps", r.Phase, r.CurrentAttempt(), dumps(t, dir))
	}
}

// TestRequireAnySucceedsDegradedAndTheMissingCopyIsReplayed: with
// `require: any`, a destination that cannot be written does not fail the
// run: it succeeds degraded, its backup.succeeded names the missing copy,
// and `replay --destination` later writes that copy from the good one (no
// new dump, no second success) until the run is whole.
func TestRequireAnySucceedsDegradedAndTheMissingCopyIsReplayed(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	blocked := filepath.Join(dir, "second")
	if err := os.WriteFile(blocked, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: anyone}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", "echo dump >> %[1]s; head -c 2000000 /dev/urandom"]}
  destinations:
    - {name: first, type: filesystem, filesystem: {path: %[2]s}}
    - {name: second, type: filesystem, filesystem: {path: %[3]s}}
  verify: {enabled: true}
  require: any
`, filepath.Join(dir, "dumps"), filepath.Join(dir, "first"), blocked))
	id := env.Trigger("anyone")
	r := env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Succeeded || !slices.Equal(r.Degraded, []string{"second"}) {
		t.Fatalf("run %s degraded %v (%s), want Succeeded missing second", r.Phase, r.Degraded, r.Error)
	}
	var ok *events.BackupSucceededData
	for _, e := range env.Events(id) {
		if e.Type() == events.BackupSucceeded {
			d, err := events.DecodeAs[events.BackupSucceededData](e)
			if err != nil {
				t.Fatal(err)
			}
			ok = &d
		}
	}
	if ok == nil || !ok.Degraded || !slices.Equal(ok.Missing, []string{"second"}) || len(ok.Objects) != 1 || ok.Objects[0].Destination != "first" {
		t.Fatalf("backup.succeeded %+v, want degraded, missing second, one object in first", ok)
	}
	if err := os.Remove(blocked); err != nil {
		t.Fatal(err)
	}
	out, code := harness.Run(t, dir, nil, "replay", id, "--destination", "second", "--wait", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "attempt 2 starts at upload:second") || !strings.Contains(out, "whole again") {
		t.Fatalf("backstream replay --destination: exit %d\n%s", code, out)
	}
	r, err := env.Runs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != runs.Succeeded || len(r.Degraded) != 0 || !r.Destinations["second"].Verified {
		t.Fatalf("run %s degraded %v second %+v, want whole", r.Phase, r.Degraded, r.Destinations["second"])
	}
	if n, m := dumps(t, dir), count(env, id, events.BackupSucceeded); n != 1 || m != 1 {
		t.Errorf("%d dumps and %d backup.succeeded, want one each", n, m)
	}
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: blocked})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if m, err := backup.Find(context.Background(), st, "anyone/latest"); err != nil || m.BackupID != id {
		t.Errorf("second: latest %q (%v), want the run's backup, verified", m.BackupID, err)
	}
}
