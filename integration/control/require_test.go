package control

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/testenv"
)

// requirePlan backs up a dump of about 24 MiB over 3 s into a filesystem
// destination and two MinIO servers, needing `require` copies.
func requirePlan(name, dir, require string, m1, m2 *testenv.MinIOServer, b1, b2 string) string {
	dump := fmt.Sprintf(`echo dump >> %s; i=0; while [ $i -lt 60 ]; do head -c 400000 /dev/urandom; i=$((i+1)); sleep 0.05; done`, filepath.Join(dir, "dumps"))
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", %[2]q]}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %[3]s}}
    - name: minio-a
      type: s3
      s3: {endpoint: %[4]s, bucket: %[5]s, insecure: true, accessKey: {env: REQ_A_ACCESS}, secretKey: {env: REQ_A_SECRET}}
    - name: minio-b
      type: s3
      s3: {endpoint: %[6]s, bucket: %[7]s, insecure: true, accessKey: {env: REQ_B_ACCESS}, secretKey: {env: REQ_B_SECRET}}
  verify: {enabled: true}
  require: %[8]s
`, name, dump, filepath.Join(dir, "local"), m1.Endpoint, b1, m2.Endpoint, b2, require)
}

// stores opens the plan's three destinations.
func stores(t *testing.T, dir string, m1, m2 *testenv.MinIOServer, b1, b2 string) map[string]storage.Storage {
	t.Helper()
	ctx := context.Background()
	out := map[string]storage.Storage{}
	fs, err := filesystem.New(ctx, filesystem.Config{Path: filepath.Join(dir, "local")})
	if err != nil {
		t.Fatal(err)
	}
	out["local"] = fs
	for name, m := range map[string]struct {
		srv    *testenv.MinIOServer
		bucket string
		env    string
	}{"minio-a": {m1, b1, "REQ_A"}, "minio-b": {m2, b2, "REQ_B"}} {
		st, err := s3.New(ctx, s3.Config{Endpoint: m.srv.Endpoint, Bucket: m.bucket, Insecure: true,
			AccessKey: secret.Ref{Env: m.env + "_ACCESS"}, SecretKey: secret.Ref{Env: m.env + "_SECRET"}})
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		out[name] = st
	}
	t.Cleanup(func() {
		for _, st := range out {
			st.Close()
		}
	})
	return out
}

// TestRequireWithAMinIOKilledMidRun: of two real MinIO servers and a
// filesystem destination, one MinIO is killed while the run streams. With
// `require: all` the run fails and no destination holds anything that
// passes for a backup; with `require: any` it succeeds degraded, and once
// the MinIO is back the missing copy is replayed from a good one and
// verified.
func TestRequireWithAMinIOKilledMidRun(t *testing.T) {
	m1, m2 := testenv.MinIO(t), testenv.MinIO(t)
	b1, b2 := m1.NewBucket(t, "req-a"), m2.NewBucket(t, "req-b")
	t.Setenv("REQ_A_ACCESS", m1.AccessKey)
	t.Setenv("REQ_A_SECRET", m1.SecretKey)
	t.Setenv("REQ_B_ACCESS", m2.AccessKey)
	t.Setenv("REQ_B_SECRET", m2.SecretKey)
	env := harness.Start(t, harness.Options{})

	killMidRun := func(t *testing.T, id string) {
		t.Helper()
		waitStep(t, env, id, "upload:minio-b")
		time.Sleep(500 * time.Millisecond) // a few parts in
		m2.Stop()                          // each case starts it again once its run ended
	}

	t.Run("require all", func(t *testing.T) {
		dir := t.TempDir()
		env.Apply(requirePlan("req-all", dir, "all", m1, m2, b1, b2))
		id := env.Trigger("req-all")
		killMidRun(t, id)
		r := env.Wait(id, 2*time.Minute)
		if r.Phase != runs.Failed || !strings.Contains(r.Error, "minio-b") {
			t.Fatalf("run %s (%s), want failed for minio-b", r.Phase, r.Error)
		}
		m2.Start()
		for name, st := range stores(t, dir, m1, m2, b1, b2) {
			if m, err := backup.Find(context.Background(), st, "req-all/"+id); err == nil {
				t.Errorf("%s holds a backup of the failed run that passes for good: %+v", name, m.Verify)
			}
		}
	})

	t.Run("require any", func(t *testing.T) {
		dir := t.TempDir()
		env.Apply(requirePlan("req-any", dir, "any", m1, m2, b1, b2))
		id := env.Trigger("req-any")
		killMidRun(t, id)
		r := env.Wait(id, 2*time.Minute)
		if r.Phase != runs.Succeeded || !slices.Equal(r.Degraded, []string{"minio-b"}) {
			t.Fatalf("run %s degraded %v (%s), want succeeded missing minio-b", r.Phase, r.Degraded, r.Error)
		}
		m2.Start()
		out, code := harness.Run(t, dir, nil, "replay", id, "--destination", "minio-b", "--wait", "--nats", env.URL)
		if code != 0 || !strings.Contains(out, "whole again") {
			t.Fatalf("replay --destination minio-b: exit %d\n%s", code, out)
		}
		for name, st := range stores(t, dir, m1, m2, b1, b2) {
			if m, err := backup.Find(context.Background(), st, "req-any/latest"); err != nil || m.BackupID != id {
				t.Errorf("%s: latest %q (%v), want the run's backup, verified", name, m.BackupID, err)
			}
		}
		if n := dumps(t, dir); n != 1 {
			t.Errorf("the source command ran %d times, want 1", n)
		}
	})
}
