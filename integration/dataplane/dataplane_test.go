// Package dataplane tests the streaming data plane end to end: every filter
// chain through the whole pipeline, restore from storage alone, tampering,
// failing sources and a storage that dies mid-upload.
package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/restore"
)

const chunk = 64 << 10

type keyring struct {
	identity   *age.X25519Identity
	idFile     string
	passphrase string
}

func newKeyring(t *testing.T) keyring {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "identity.txt")
	if err := os.WriteFile(file, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyring{identity: id, idFile: file, passphrase: "correct horse battery staple"}
}

// writeSource writes a data file of size bytes for a `cat` source.
func writeSource(t *testing.T, size int64) (path, digest string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), fmt.Sprintf("src-%d.bin", size))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), datagen.New(size, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path, hex.EncodeToString(h.Sum(nil))
}

func plan(name, source, compression, encryption, destination string, extra string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
%s
  chunkSize: 64KiB
  filters:
    compression: %s
%s
  destinations:
%s
%s`, name, indent(source, 4), compression, indent(encryption, 4), indent(destination, 4), extra)
}

func indent(s string, n int) string {
	if s == "" {
		return ""
	}
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = pad + lines[i]
	}
	return strings.Join(lines, "\n")
}

func fsDest(dir string) string {
	return fmt.Sprintf("- name: local\n  type: filesystem\n  filesystem: {path: %s}", dir)
}

func catSource(path string) string {
	return fmt.Sprintf("type: command\ncommand: {argv: [cat, %q]}\nallowEmpty: true", path)
}

// TestRoundTripEveryChainAndSize runs every filter chain and size through
// the whole pipeline on both data planes: in memory between the stages of
// one serve (auto), and through JetStream's chunk streams (jetstream).
func TestRoundTripEveryChainAndSize(t *testing.T) {
	keys := newKeyring(t)
	t.Setenv("BS_TEST_PASSPHRASE", keys.passphrase)
	sizes := []int64{0, 1, chunk - 1, chunk, chunk + 1, 50 << 20}
	sources := map[int64][2]string{}
	for _, size := range sizes {
		p, d := writeSource(t, size)
		sources[size] = [2]string{p, d}
	}
	for _, plane := range []string{app.DataPlaneAuto, app.DataPlaneJetStream} {
		t.Run(plane, func(t *testing.T) {
			env := harness.Start(t, harness.Options{Config: func(c *app.Config) {
				c.IdentityFile = keys.idFile
				c.PassphraseEnv = "BS_TEST_PASSPHRASE"
				c.DataPlane = plane
			}})
			roundTrips(t, env, keys, sizes, sources)
		})
	}
}

func roundTrips(t *testing.T, env *harness.Env, keys keyring, sizes []int64, sources map[int64][2]string) {
	encryptions := []struct{ name, block string }{
		{"none", ""},
		{"x25519", fmt.Sprintf("encryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient())},
		{"passphrase", "encryption: {type: aes-256-gcm, passphrase: {env: BS_TEST_PASSPHRASE}}"},
	}
	storeDir := t.TempDir()
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	fk := format.Keys{Identities: []age.Identity{keys.identity}, Passphrase: keys.passphrase}
	for _, comp := range []string{"none", "snappy", "zstd"} {
		for _, enc := range encryptions {
			name := fmt.Sprintf("rt-%s-%s", comp, enc.name)
			for _, size := range sizes {
				t.Run(fmt.Sprintf("%s/%s/%d", comp, enc.name, size), func(t *testing.T) {
					src := sources[size]
					env.Apply(plan(name, catSource(src[0]), comp, enc.block, fsDest(storeDir), ""))
					id := env.Trigger(name)
					r := env.Wait(id, 2*time.Minute)
					if r.Phase != runs.Succeeded {
						t.Fatalf("run %s: %s: %s", id, r.Phase, r.Error)
					}
					if mode := r.Destinations["local"].VerifyMode; mode != format.VerifyModeFull {
						t.Errorf("verify mode %q, want full (the service holds the keys)", mode)
					}
					m, err := backup.Find(context.Background(), st, name+"/"+id)
					if err != nil {
						t.Fatal(err)
					}
					var out bytes.Buffer
					h := sha256.New()
					stats, err := restore.Stream(context.Background(), st, m, fk, func(r io.Reader) error {
						_, err := io.Copy(io.MultiWriter(h, &out), r)
						return err
					})
					if err != nil {
						t.Fatalf("restore: %v", err)
					}
					if got := hex.EncodeToString(h.Sum(nil)); got != src[1] || stats.Bytes != size {
						t.Fatalf("restored %d bytes sha %s, source %d bytes sha %s", stats.Bytes, got, size, src[1])
					}
				})
			}
		}
	}
}

// frames returns the offsets of the frames of an object.
func frames(t *testing.T, obj []byte) (headerLen int, offsets []int) {
	t.Helper()
	_, raw, err := format.ReadHeader(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	off := len(raw)
	for off < len(obj) {
		offsets = append(offsets, off)
		off += 16 + int(binary.BigEndian.Uint32(obj[off:off+4]))
	}
	return len(raw), offsets
}

func TestTamperedBackupsFailToRestoreAndLeaveNoFile(t *testing.T) {
	keys := newKeyring(t)
	t.Setenv("BS_TEST_PASSPHRASE", keys.passphrase)
	env := harness.Start(t, harness.Options{})
	storeDir := t.TempDir()
	src, _ := writeSource(t, 5*chunk+123)
	// One chunk per frame: the damage below is placed by frame.
	env.Apply(plan("tamper", catSource(src), "zstd",
		fmt.Sprintf("frameSize: 64KiB\nencryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient()), fsDest(storeDir), ""))
	env.Apply(plan("tamperpw", catSource(src), "zstd",
		"frameSize: 64KiB\nencryption: {type: aes-256-gcm, passphrase: {env: BS_TEST_PASSPHRASE}}", fsDest(storeDir), ""))
	id := env.Trigger("tamper")
	if r := env.Wait(id, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run: %s", r.Error)
	}
	pwID := env.Trigger("tamperpw")
	if r := env.Wait(pwID, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run: %s", r.Error)
	}
	objPath := filepath.Join(storeDir, "tamper", id+".bsf")
	good, err := os.ReadFile(objPath)
	if err != nil {
		t.Fatal(err)
	}
	_, offs := frames(t, good)
	if len(offs) != 6 {
		t.Fatalf("object has %d frames, want 6", len(offs))
	}
	wrongID, _ := age.GenerateX25519Identity()
	wrongFile := filepath.Join(t.TempDir(), "wrong.txt")
	_ = os.WriteFile(wrongFile, []byte(wrongID.String()+"\n"), 0o600)

	swap := func(b []byte) []byte {
		out := append([]byte{}, b[:offs[1]]...)
		out = append(out, b[offs[2]:offs[3]]...)
		out = append(out, b[offs[1]:offs[2]]...)
		return append(out, b[offs[3]:]...)
	}
	tests := []struct {
		name    string
		damage  func([]byte) []byte
		args    []string
		message string
	}{
		{"flipped byte", func(b []byte) []byte { b[offs[2]+40] ^= 1; return b }, nil, "frame 2"},
		{"dropped frame", func(b []byte) []byte { return append(b[:offs[3]:offs[3]], b[offs[4]:]...) }, nil, "frame 3"},
		{"two frames swapped", swap, nil, "frame 1"},
		{"truncated", func(b []byte) []byte { return b[:offs[5]] }, nil, "without the final frame"},
		{"wrong identity", func(b []byte) []byte { return b }, []string{"--identity", wrongFile}, "identity"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			damaged := tc.damage(append([]byte{}, good...))
			if err := os.WriteFile(objPath, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(objPath, good, 0o600)
			out := filepath.Join(t.TempDir(), "restored.bin")
			args := []string{"restore", "tamper/" + id, "--fs", storeDir, "--to", out}
			if tc.args == nil {
				args = append(args, "--identity", keys.idFile)
			} else {
				args = append(args, tc.args...)
			}
			msg, code := harness.Run(t, storeDir, nil, args...)
			if code == 0 {
				t.Fatalf("restore of a damaged backup exited 0:\n%s", msg)
			}
			if !strings.Contains(msg, tc.message) {
				t.Errorf("restore message does not name %q:\n%s", tc.message, msg)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), "*")); len(left) != 0 {
				t.Errorf("a failed restore left files: %v", left)
			}
		})
	}
	t.Run("wrong passphrase", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "restored.bin")
		msg, code := harness.Run(t, storeDir, []string{"BS_WRONG=not the passphrase"}, "restore", "tamperpw/"+pwID, "--fs", storeDir, "--to", out, "--passphrase-env", "BS_WRONG")
		if code == 0 || !strings.Contains(msg, "passphrase") {
			t.Fatalf("restore with a wrong passphrase: exit %d:\n%s", code, msg)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("a failed restore left %s", out)
		}
	})
	t.Run("intact with the right key", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "restored.bin")
		msg, code := harness.Run(t, storeDir, nil, "restore", "tamper/"+id, "--fs", storeDir, "--to", out, "--identity", keys.idFile)
		if code != 0 {
			t.Fatalf("restore exit %d:\n%s", code, msg)
		}
	})
}

func minioPlan(t *testing.T, srv *testenv.MinIOServer, bucket, name, source, extra string) string {
	t.Setenv("BS_MINIO_ACCESS", srv.AccessKey)
	t.Setenv("BS_MINIO_SECRET", srv.SecretKey)
	dest := fmt.Sprintf(`- name: minio
  type: s3
  s3:
    endpoint: %s
    bucket: %s
    insecure: true
    partSize: 5242880
    accessKey: {env: BS_MINIO_ACCESS}
    secretKey: {env: BS_MINIO_SECRET}`, srv.Endpoint, bucket)
	return plan(name, source, "zstd", "", dest, extra)
}

// bucketIsEmpty checks that nothing — no object, no manifest, no incomplete
// multipart upload — is left for a plan. The run fails as soon as its first
// stage does, while upload may still be aborting, so leftovers get a bounded
// while to go away.
func bucketIsEmpty(t *testing.T, srv *testenv.MinIOServer, bucket, prefix, key string) {
	t.Helper()
	c := srv.Client(t)
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			left = append(left, fmt.Sprintf("object %s (%d bytes)", o.Key, o.Size))
		}
		for u := range c.ListIncompleteUploads(ctx, bucket, key, true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			left = append(left, fmt.Sprintf("incomplete multipart upload %s %s", u.Key, u.UploadID))
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left in the bucket after the run failed: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestFailingSourceAbortsTheUploadAndLeavesNothing(t *testing.T) {
	srv := testenv.MinIO(t)
	srv.NewBucket(t, "fail")
	env := harness.Start(t, harness.Options{})
	tests := []struct {
		name, source, want string
	}{
		{"exit 3 after 10 MiB", `type: command
command: {argv: ["sh", "-c", "head -c 10485760 /dev/urandom; echo 'disk on fire' >&2; exit 3"]}`, "exit status 3"},
		{"empty dump", `type: command
command: {argv: ["true"]}`, "dump is empty"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("failing-%d", i)
			env.Apply(minioPlan(t, srv, "fail", name, tc.source, ""))
			id := env.Trigger(name)
			r := env.Wait(id, time.Minute)
			if r.Phase != runs.Failed || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("run: phase %s error %q, want Failed naming %q", r.Phase, r.Error, tc.want)
			}
			var failed *events.BackupFailedData
			for _, e := range env.Events(id) {
				if e.Type() == events.BackupFailed {
					failed, _ = events.DecodeAs[*events.BackupFailedData](e)
				}
			}
			if failed == nil || !strings.Contains(failed.Reason, tc.want) {
				t.Fatalf("backup.failed %+v does not name %q", failed, tc.want)
			}
			bucketIsEmpty(t, srv, "fail", name+"/", format.ObjectKey(name, id))
		})
	}
}

func TestMinIOKilledMidUploadLeavesNoBackup(t *testing.T) {
	srv := testenv.MinIO(t)
	srv.NewBucket(t, "kill")
	env := harness.Start(t, harness.Options{})
	// A source slow enough that MinIO dies while parts are in flight.
	env.Apply(minioPlan(t, srv, "kill", "killed", `type: command
command: {argv: ["sh", "-c", "for i in $(seq 1 40); do head -c 1048576 /dev/urandom; sleep 0.1; done"]}`, ""))
	id := env.Trigger("killed")
	waitFor(t, "the upload to be under way", func() bool {
		r, err := env.Runs.Get(context.Background(), id)
		return err == nil && r.FindStep("upload:minio") != nil && r.FindStep("upload:minio").Phase == runs.Running
	})
	time.Sleep(1500 * time.Millisecond) // let a few parts go out: not a timing assertion
	srv.Stop()
	r := env.Wait(id, 3*time.Minute)
	if r.Phase == runs.Succeeded {
		t.Fatalf("a run succeeded with its storage killed mid-upload")
	}
	if !strings.Contains(r.Error, "upload") {
		t.Errorf("run failed with %q, want the upload named", r.Error)
	}
	// The storage could not abort the multipart upload while it was dead:
	// upload remembers the key, and the next upload to the destination
	// sweeps it once the storage is back.
	sweep := "sweep.killed.minio." + id
	waitFor(t, "upload to remember the leftover it could not abort", func() bool {
		_, err := env.Bus.Leases.Get(context.Background(), sweep)
		return err == nil
	})
	srv.Start()
	st := s3Storage(t, srv, "kill")
	key := format.ObjectKey("killed", id)
	if _, err := st.Stat(context.Background(), key); err == nil {
		t.Fatalf("an object is visible at %s after the failed upload", key)
	}
	if left, err := st.(storage.Sweeper).Incomplete(context.Background(), key); err != nil || len(left) == 0 {
		t.Fatalf("expected the killed upload to be left incomplete, got %v %v", left, err)
	}
	next := env.Trigger("killed")
	if r := env.Wait(next, 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("the next run after MinIO came back: %s %s", r.Phase, r.Error)
	}
	if left, err := st.(storage.Sweeper).Incomplete(context.Background(), key); err != nil || len(left) != 0 {
		t.Fatalf("the next upload did not sweep the leftover multipart upload of %s: %v %v", key, left, err)
	}
	if _, err := env.Bus.Leases.Get(context.Background(), sweep); err == nil {
		t.Fatalf("the sweep record %s outlived the sweep", sweep)
	}
	bucketHolds(t, srv, "kill", "killed/", format.ObjectKey("killed", next), format.ManifestKey("killed", next))
}

// waitFor polls cond for a bounded while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bucketHolds checks the objects under prefix are exactly keys.
func bucketHolds(t *testing.T, srv *testenv.MinIOServer, bucket, prefix string, keys ...string) {
	t.Helper()
	var got []string
	for o := range srv.Client(t).ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		got = append(got, o.Key)
	}
	if strings.Join(got, ",") != strings.Join(keys, ",") {
		t.Fatalf("bucket holds %v, want %v", got, keys)
	}
}

func s3Storage(t *testing.T, srv *testenv.MinIOServer, bucket string) storage.Storage {
	t.Helper()
	st, err := s3.New(context.Background(), s3.Config{
		Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true,
		AccessKey: secret.Ref{Env: "BS_MINIO_ACCESS"}, SecretKey: secret.Ref{Env: "BS_MINIO_SECRET"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestVerifyWithoutAKeyChecksCiphertextAndSaysSo(t *testing.T) {
	keys := newKeyring(t)
	env := harness.Start(t, harness.Options{}) // no identity: verify cannot open frames
	storeDir := t.TempDir()
	src, _ := writeSource(t, 3*chunk)
	env.Apply(plan("cipheronly", catSource(src), "zstd",
		fmt.Sprintf("encryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient()), fsDest(storeDir), ""))
	id := env.Trigger("cipheronly")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("run: %s", r.Error)
	}
	var verified *events.VerifyCompletedData
	for _, e := range env.Events(id) {
		if e.Type() == events.VerifyCompleted {
			verified, _ = events.DecodeAs[*events.VerifyCompletedData](e)
		}
	}
	if verified == nil || verified.Mode != format.VerifyModeCiphertext {
		t.Fatalf("verify.completed %+v, want mode ciphertext", verified)
	}
	st, _ := filesystem.New(context.Background(), filesystem.Config{Path: storeDir})
	m, err := backup.Find(context.Background(), st, "cipheronly/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Verify.Status != format.VerifyVerified || m.Verify.Mode != format.VerifyModeCiphertext {
		t.Fatalf("manifest verify %+v, want verified in ciphertext mode", m.Verify)
	}
}

func TestRestoreRunInsideThePlatform(t *testing.T) {
	keys := newKeyring(t)
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.IdentityFile = keys.idFile }})
	storeDir := t.TempDir()
	src, digest := writeSource(t, 7*chunk+5)
	target := filepath.Join(t.TempDir(), "restored.bin")
	source := fmt.Sprintf("type: command\ncommand: {argv: [cat, %q], restoreArgv: [sh, -c, 'cat > %s']}", src, target)
	enc := fmt.Sprintf("encryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient())
	env.Apply(plan("inplace", source, "zstd", enc, fsDest(storeDir), ""))
	id := env.Trigger("inplace")
	if r := env.Wait(id, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("backup: %s", r.Error)
	}
	restoreID, err := requestRestore(env, "inplace", events.RestoreRequestedData{BackupID: "latest", Destination: "local"})
	if err != nil {
		t.Fatal(err)
	}
	r := env.Wait(restoreID, time.Minute)
	if r.Phase != runs.Succeeded || r.Kind != runs.KindRestore || r.BackupID != id {
		t.Fatalf("restore run: kind %s phase %s backup %s error %q", r.Kind, r.Phase, r.BackupID, r.Error)
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != digest {
		t.Fatal("restored file differs from the source")
	}
	types := strings.Join(harness.Types(env.Events(restoreID)), ",")
	for _, want := range []string{"restore.requested", "restore.started", "restore.succeeded"} {
		if !strings.Contains(types, want) {
			t.Errorf("restore run events %s lack %s", types, want)
		}
	}

	// A restore of a backup that does not exist fails with the reason.
	badID, err := requestRestore(env, "inplace", events.RestoreRequestedData{BackupID: "01NOSUCHBACKUP0000000000000", Destination: "local"})
	if err != nil {
		t.Fatal(err)
	}
	if r := env.Wait(badID, time.Minute); r.Phase != runs.Failed || !strings.Contains(r.Error, "not found") {
		t.Fatalf("restore of a missing backup: phase %s error %q", r.Phase, r.Error)
	}
}

func requestRestore(env *harness.Env, planName string, req events.RestoreRequestedData) (string, error) {
	id := events.NewID()
	e, err := events.New(env.Bus.Meta(planName, id, ""), req)
	if err != nil {
		return "", err
	}
	return id, env.Bus.Publish(context.Background(), e)
}

func TestRunFailingAfterItsUploadLeavesNoGoodBackup(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	storeDir := t.TempDir()
	src, _ := writeSource(t, 9*chunk)
	extra := `  hooks:
    - name: post
      type: exec
      ops:
        - name: boom
          command: ["sh", "-c", "sleep 0.5; echo post-backup check failed >&2; exit 1"]
  workflows:
    - name: backup
      sequence: [snapshot, {hook: post/boom}]
`
	env.Apply(plan("latefail", catSource(src), "zstd", "", fsDest(storeDir), extra))
	id := env.Trigger("latefail")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "post-backup check failed") {
		t.Fatalf("run: phase %s error %q, want Failed by the post hook", r.Phase, r.Error)
	}
	st, _ := filesystem.New(context.Background(), filesystem.Config{Path: storeDir})
	deadline := time.Now().Add(30 * time.Second)
	for {
		good, _, err := backup.List(context.Background(), st, "latefail")
		if err != nil {
			t.Fatal(err)
		}
		var passing []string
		for _, m := range good {
			if m.Verify.Status != format.VerifyFailed {
				passing = append(passing, m.BackupID+":"+m.Verify.Status)
			}
		}
		if len(passing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a failed run left backups that are not marked failed: %v", passing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
