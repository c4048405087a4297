// Package sources proves the source plugins through the whole pipeline:
// trigger → snapshot → filter (zstd, age-encrypted AES-256-GCM) → upload to
// MinIO → verify → restore into a fresh target, against the machine's real
// MariaDB, PostgreSQL and Redis and a FerretDB of the test's own. It also
// proves that a failing dump leaves no backup: no object, no manifest and no
// incomplete multipart upload in the bucket.
package sources

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/upload"
)

// Environment variables the plans name for the MinIO credentials.
const (
	accessEnv = "BS_SOURCES_S3_ACCESS"
	secretEnv = "BS_SOURCES_S3_SECRET"
	destName  = "s3"
)

// partSize is the plans' S3 part size (the minimum), so that a dump of a
// few MiB already goes through a multipart upload.
const partSize = 5 << 20

// rig is one MinIO bucket, one age identity and one in-process backstream
// whose verify and restore stages hold the identity.
type rig struct {
	env       *harness.Env
	minio     *testenv.MinIOServer
	bucket    string
	recipient string
	identity  string // path of the identity file
	dir       string
}

// newRig starts MinIO and backstream for t. It sets process environment
// variables, so tests using it never run in parallel.
func newRig(t *testing.T) *rig { return newRigWrapped(t, nil) }

// newRigWrapped is newRig whose consumers' handlers go through wrap.
func newRigWrapped(t *testing.T, wrap func(consumer string, h bus.Handler) bus.Handler) *rig {
	t.Helper()
	m := testenv.MinIO(t)
	bucket := m.NewBucket(t, testenv.Unique("bs-src-"))
	t.Setenv(accessEnv, m.AccessKey)
	t.Setenv(secretEnv, m.SecretKey)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	idFile := filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.IdentityFile, c.Wrap = idFile, wrap }})
	return &rig{env: env, minio: m, bucket: bucket, recipient: id.Recipient().String(), identity: idFile, dir: dir}
}

// plan returns a plan named name whose source is sourceYAML (the lines
// under `source:`, indented by four spaces), compressed with zstd,
// encrypted to the rig's recipient and stored in the rig's bucket.
func (r *rig) plan(name, sourceYAML string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
%s
  filters:
    compression: zstd
    encryption:
      recipients: [%q]
  destinations:
    - name: %s
      type: s3
      s3:
        endpoint: %s
        bucket: %s
        insecure: true
        partSize: %d
        accessKey: {env: %s}
        secretKey: {env: %s}
  verify: {enabled: true}
  alert: {expectEvery: 24h}
`, name, strings.TrimRight(sourceYAML, "\n"), r.recipient, destName, r.minio.Endpoint, r.bucket, partSize, accessEnv, secretEnv)
}

// apply stores the plan and also writes it to a file (for the CLI's
// --plan-file), returning the file's path.
func (r *rig) apply(t *testing.T, name, sourceYAML string) string {
	t.Helper()
	text := r.plan(name, sourceYAML)
	p, err := plan.Parse(name+".yaml", []byte(text))
	if err != nil {
		t.Fatalf("parse plan: %v", err)
	}
	if _, err := r.env.Plans.Put(context.Background(), p); err != nil {
		t.Fatalf("apply plan: %v", err)
	}
	path := filepath.Join(r.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// backup triggers a backup of planName and waits until the run is final.
func (r *rig) backup(t *testing.T, planName string) *runs.Run {
	t.Helper()
	id := r.trigger(t, planName)
	return harness.WaitRun(t, r.env.Runs, id, 3*time.Minute)
}

// trigger requests a backup of planName and returns the run id.
func (r *rig) trigger(t *testing.T, planName string) string {
	t.Helper()
	id, err := stage.RequestBackup(context.Background(), r.env.Bus, r.env.Plans, planName, events.TriggerCLI, "sources-test", "")
	if err != nil {
		t.Fatalf("trigger %s: %v", planName, err)
	}
	return id
}

// mustSucceed fails the test unless run succeeded with a verified object.
func (r *rig) mustSucceed(t *testing.T, run *runs.Run) {
	t.Helper()
	if run.Phase != runs.Succeeded {
		t.Fatalf("run %s of %s: %s in %s: %s", run.ID, run.Plan, run.Phase, run.FailedStage, run.Error)
	}
	types := harness.Types(r.eventsUntil(t, run.ID, events.BackupSucceeded))
	for _, want := range []string{"snapshot.completed", "filter.completed", "upload.completed", "verify.completed", "backup.succeeded"} {
		if !contains(types, want) {
			t.Fatalf("run %s events %v lack %s", run.ID, types, want)
		}
	}
}

// restoreStage restores backupID of planName into target through the
// restore stage (restore.requested) and waits for the restore run.
func (r *rig) restoreStage(t *testing.T, planName, backupID, target string) *runs.Run {
	t.Helper()
	id, err := stage.RequestRestore(context.Background(), r.env.Bus, r.env.Plans, planName, events.RestoreRequestedData{
		BackupID: backupID, Destination: destName, Target: target, RequestedBy: "sources-test",
	})
	if err != nil {
		t.Fatalf("request restore: %v", err)
	}
	run := harness.WaitRun(t, r.env.Runs, id, 3*time.Minute)
	if run.Phase != runs.Succeeded {
		t.Fatalf("restore run %s: %s: %s", id, run.Phase, run.Error)
	}
	return run
}

// restoreCLI restores backupID with the real `backstream restore
// --into-source` from the plan file alone: no NATS, no catalog.
func (r *rig) restoreCLI(t *testing.T, planFile, planName, backupID, target string) {
	t.Helper()
	out, code := harness.Run(t, r.dir, nil, "restore", planName+"/"+backupID,
		"--plan-file", planFile, "--into-source", "--target", target, "--identity", r.identity)
	if code != 0 {
		t.Fatalf("backstream restore exit %d:\n%s", code, out)
	}
	t.Logf("backstream restore: %s", strings.TrimSpace(lastLine(out)))
}

// failure is what a failed backup run said.
type failure struct {
	run      *runs.Run
	reason   string // backup.failed reason
	snapshot events.SnapshotFailedData
	events   []events.Event
}

// mustFail fails the test unless run failed in the snapshot stage with a
// backup.failed and a snapshot.failed event, and left no backup: no
// object, no manifest and no incomplete multipart upload under the plan's
// keys, once the upload stage has finished with the run.
func (r *rig) mustFail(t *testing.T, run *runs.Run) failure {
	t.Helper()
	if run.Phase != runs.Failed {
		t.Fatalf("run %s of %s: %s, want failed", run.ID, run.Plan, run.Phase)
	}
	f := failure{run: run, events: r.eventsUntil(t, run.ID, events.BackupFailed)}
	var started, sawFailed, sawSnapFailed bool
	for _, e := range f.events {
		switch e.Type() {
		case events.SnapshotStarted:
			started = true
		case events.BackupFailed:
			var d events.BackupFailedData
			if err := e.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			f.reason, sawFailed = d.Reason, true
		case events.SnapshotFailed:
			if err := e.DataAs(&f.snapshot); err != nil {
				t.Fatal(err)
			}
			sawSnapFailed = true
		case events.BackupSucceeded, events.UploadCompleted, events.VerifyCompleted:
			t.Errorf("failed run %s has %s", run.ID, e.Type())
		}
	}
	if !sawFailed || !sawSnapFailed {
		t.Fatalf("run %s events %v: want backup.failed and snapshot.failed", run.ID, harness.Types(f.events))
	}
	if run.FailedStage != "snapshot" {
		t.Errorf("run %s failed in %q, want snapshot: %s", run.ID, run.FailedStage, run.Error)
	}
	if started {
		r.waitUploadDone(t, run.ID)
	}
	r.mustHaveNoBackup(t, run.Plan, run.ID)
	return f
}

// eventsUntil returns the run's events once one of type typ is among them:
// a stage publishes its event just after it wrote the run record that
// WaitRun sees.
func (r *rig) eventsUntil(t *testing.T, runID, typ string) []events.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := harness.RunEvents(t, r.env.Bus, runID)
		for _, e := range evs {
			if e.Type() == typ {
				return evs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s events %v lack %s", runID, harness.Types(evs), typ)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitUploadDone polls the failed run's record until its upload step, which
// aborts its multipart upload before it finishes, is no longer running.
func (r *rig) waitUploadDone(t *testing.T, runID string) {
	t.Helper()
	name := upload.StepName(destName)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		run, err := r.env.Runs.Get(context.Background(), runID)
		if err != nil {
			t.Fatal(err)
		}
		// A step absent from a failed run never starts (Claim skips once
		// the run failed), so it cannot write anything.
		if st := run.FindStep(name); st == nil || (st.Phase != runs.Running && st.Phase != runs.Pending) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	run, _ := r.env.Runs.Get(context.Background(), runID)
	t.Fatalf("run %s: step %s did not finish: %+v", runID, name, run.Steps)
}

// mustHaveNoBackup lists the bucket: nothing of planName may be there,
// neither an object nor a manifest, and no incomplete multipart upload of
// the run's object. (MinIO lists multipart uploads only for an exact
// object name, not for a prefix, so the key is asked for by name.)
func (r *rig) mustHaveNoBackup(t *testing.T, planName, runID string) {
	t.Helper()
	ctx := context.Background()
	c := r.minio.Client(t)
	for o := range c.ListObjects(ctx, r.bucket, minio.ListObjectsOptions{Prefix: planName + "/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list objects: %v", o.Err)
		}
		t.Errorf("failed backup left object %s (%d bytes)", o.Key, o.Size)
	}
	for u := range c.ListIncompleteUploads(ctx, r.bucket, format.ObjectKey(planName, runID), false) {
		if u.Err != nil {
			t.Fatalf("list incomplete uploads: %v", u.Err)
		}
		t.Errorf("failed backup left an incomplete multipart upload of %s (%s)", u.Key, u.UploadID)
	}
}

// waitIncompleteUpload polls MinIO until a multipart upload of the run's
// object is in progress and returns it.
func (r *rig) waitIncompleteUpload(t *testing.T, planName, runID string) minio.ObjectMultipartInfo {
	t.Helper()
	c := r.minio.Client(t)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		for u := range c.ListIncompleteUploads(context.Background(), r.bucket, format.ObjectKey(planName, runID), false) {
			if u.Err != nil {
				t.Fatalf("list incomplete uploads: %v", u.Err)
			}
			return u
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no multipart upload of %s began", format.ObjectKey(planName, runID))
	return minio.ObjectMultipartInfo{}
}

// mustHaveBackup checks that the run's object and manifest are in the bucket.
func (r *rig) mustHaveBackup(t *testing.T, run *runs.Run) {
	t.Helper()
	var keys []string
	for o := range r.minio.Client(t).ListObjects(context.Background(), r.bucket, minio.ListObjectsOptions{Prefix: run.Plan + "/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list objects: %v", o.Err)
		}
		keys = append(keys, o.Key)
	}
	for _, want := range []string{format.ObjectKey(run.Plan, run.ID), format.ManifestKey(run.Plan, run.ID)} {
		if !contains(keys, want) {
			t.Errorf("bucket holds %v, want %s", keys, want)
		}
	}
	obj, err := r.minio.Client(t).GetObject(context.Background(), r.bucket, format.ManifestKey(run.Plan, run.ID), minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	var m format.Manifest
	if err := json.NewDecoder(obj).Decode(&m); err != nil {
		t.Fatalf("read manifest: %v", err)
	}
	// zstd, then AES-256-GCM with the data key wrapped for the age
	// recipient, and verified by opening every frame with the identity.
	got := fmt.Sprintf("chain=%v wrap=%s verify=%s/%s", m.Chain, m.KeyWrap.Scheme, m.Verify.Status, m.Verify.Mode)
	if want := fmt.Sprintf("chain=[zstd aes-256-gcm] wrap=%s verify=verified/full", format.SchemeAgeX25519); got != want {
		t.Errorf("manifest: %s, want %s", got, want)
	}
}

// emptyBinDir is a directory without any program in it.
func emptyBinDir(t *testing.T) string { return t.TempDir() }

// script writes an executable shell script into dir.
func script(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/bash\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// link puts the real program name into dir.
func link(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Symlink(lookPath(t, name), filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	testenv.Missing(t, "%s not in PATH", name)
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// noSecret fails t when any event of the run carries secret.
func noSecret(t *testing.T, evs []events.Event, secret string) {
	t.Helper()
	for _, e := range evs {
		if strings.Contains(string(e.Data()), secret) {
			t.Errorf("event %s carries the secret", e.Type())
		}
	}
}
