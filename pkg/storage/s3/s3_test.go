package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/s3"
	"github.com/backstream/backstream/pkg/storage/storagetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// config points at srv with secrets in the test's environment.
func config(t testing.TB, srv *testenv.MinIOServer, bucket string) s3.Config {
	t.Helper()
	env := envName(t.Name())
	t.Setenv("BS_S3_ACCESS_"+env, srv.AccessKey)
	t.Setenv("BS_S3_SECRET_"+env, srv.SecretKey)
	return s3.Config{
		Endpoint:    srv.Endpoint,
		Bucket:      bucket,
		AccessKey:   secret.Ref{Env: "BS_S3_ACCESS_" + env},
		SecretKey:   secret.Ref{Env: "BS_S3_SECRET_" + env},
		Insecure:    true,
		PartSize:    s3.MinPartSize,
		Concurrency: 3,
	}
}

func open(t testing.TB, c s3.Config) *s3.S3 {
	t.Helper()
	s, err := s3.Open(context.Background(), c)
	if err != nil {
		t.Fatalf("open s3: %v", err)
	}
	return s
}

// TestConformance runs the suite on one MinIO, each subtest in its own
// bucket, with and without a key prefix.
func TestConformance(t *testing.T) {
	srv := testenv.MinIO(t)
	for _, prefix := range []string{"", "team/backups"} {
		t.Run(fmt.Sprintf("prefix=%q", prefix), func(t *testing.T) {
			n := 0
			storagetest.Run(t, func(t *testing.T) storage.Storage {
				n++
				c := config(t, srv, fmt.Sprintf("conf-%d-%d", len(prefix), n))
				c.Prefix = prefix
				c.CreateBucket = true
				return open(t, c)
			})
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := s3.Config{Endpoint: "minio:9000", Bucket: "b", AccessKey: secret.Ref{Env: "A"}, SecretKey: secret.Ref{File: "/run/s"}}
	with := func(f func(*s3.Config)) s3.Config { c := ok; f(&c); return c }
	tests := []struct {
		name string
		give s3.Config
		want []string
	}{
		{"ok", ok, nil},
		{"empty", s3.Config{}, []string{"endpoint: required", "bucket: required", "accessKey: set one of", "secretKey: set one of"}},
		{"scheme", with(func(c *s3.Config) { c.Endpoint = "http://minio:9000" }), []string{"endpoint: host[:port]"}},
		{"small part", with(func(c *s3.Config) { c.PartSize = 1 << 20 }), []string{"partSize: must be"}},
		{"concurrency", with(func(c *s3.Config) { c.Concurrency = -1 }), []string{"concurrency: must be"}},
		{"prefix", with(func(c *s3.Config) { c.Prefix = "../x" }), []string{"prefix: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if (err == nil) != (len(tt.want) == 0) {
				t.Fatalf("Validate() = %v, want errors %q", err, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestMissingBucket(t *testing.T) {
	srv := testenv.MinIO(t)
	_, err := s3.Open(context.Background(), config(t, srv, "absent"))
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("open with absent bucket: %v", err)
	}
}

// endless yields data forever and counts what it handed out.
type endless struct {
	data []byte
	n    atomic.Int64
}

func (e *endless) Read(p []byte) (int, error) {
	n := copy(p, e.data)
	e.n.Add(int64(n))
	return n, nil
}

// MinIO killed in the middle of a streamed Put: Put returns an error (no
// hang) and after the restart nothing is visible at the key.
func TestServerKilledMidPut(t *testing.T) {
	srv := testenv.MinIO(t)
	bucket := srv.NewBucket(t, "killed")
	s := open(t, config(t, srv, bucket))
	defer s.Close()

	src := &endless{data: storagetest.Data(9, 1<<20)}
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(context.Background(), "run/backup.bin", src, storage.PutOptions{})
		done <- err
	}()
	// Kill once a few parts are on the wire.
	for src.n.Load() < 4*s3.MinPartSize {
		select {
		case err := <-done:
			t.Fatalf("put of an endless stream returned early: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	srv.Stop()
	// A generous guard against a hang, not a timing assertion: the client's
	// retries and timeouts end a Put on a dead server within seconds.
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("put succeeded with the server killed")
		}
		t.Logf("put on killed server: %v", err)
	case <-time.After(5 * time.Minute):
		t.Fatal("put hangs after the server was killed")
	}
	srv.Start()
	if _, err := s.Stat(context.Background(), "run/backup.bin"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat after restart: %v, want ErrNotFound", err)
	}
	// The upload the dead server could not abort is left incomplete
	// (invisible); the sweep removes it.
	left, err := s.Incomplete(context.Background(), "run/backup.bin")
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.RemoveIncomplete(context.Background(), "run/backup.bin", time.Now().Add(time.Minute))
	if err != nil || n != len(left) || n > 1 {
		t.Fatalf("remove incomplete: %d, %v; want %d", n, err, len(left))
	}
	if left, err := s.Incomplete(context.Background(), "run/backup.bin"); err != nil || len(left) != 0 {
		t.Fatalf("incomplete after sweep: %q, %v", left, err)
	}
}

func TestLifecycle(t *testing.T) {
	srv := testenv.MinIO(t)
	bucket := srv.NewBucket(t, "lifecycle")
	ctx := context.Background()
	c := config(t, srv, bucket)
	c.Prefix = "backups"
	s := open(t, c)
	defer s.Close()

	// A rule of someone else's in the same bucket must survive.
	other := open(t, config(t, srv, bucket))
	defer other.Close()
	foreign := storage.Lifecycle{Rules: []storage.LifecycleRule{{ID: "logs", Prefix: "logs/", ExpireAfterDays: 3}}}
	if err := other.SetLifecycle(ctx, foreign); err != nil {
		t.Fatalf("set foreign lifecycle: %v", err)
	}

	want := storage.Lifecycle{Rules: []storage.LifecycleRule{
		{ID: "daily", Tags: map[string]string{"cycle": "daily"}, ExpireAfterDays: 9},
		{ID: "weekly", Prefix: "orders/", Tags: map[string]string{"cycle": "weekly", "plan": "orders"}, ExpireAfterDays: 40},
		{ID: "plain", Prefix: "tmp/", ExpireAfterDays: 1},
	}}
	if err := s.SetLifecycle(ctx, want); err != nil {
		t.Fatalf("set lifecycle: %v", err)
	}
	got, err := s.GetLifecycle(ctx)
	if err != nil {
		t.Fatalf("get lifecycle: %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lifecycle read back\n got %+v\nwant %+v", got, want)
	}
	all, err := other.GetLifecycle(ctx)
	if err != nil || len(all.Rules) != 4 {
		t.Fatalf("bucket rules: %+v, %v; want the foreign rule and ours", all, err)
	}

	if err := s.SetLifecycle(ctx, storage.Lifecycle{}); err != nil {
		t.Fatalf("clear lifecycle: %v", err)
	}
	if got, err := s.GetLifecycle(ctx); err != nil || len(got.Rules) != 0 {
		t.Fatalf("lifecycle after clear: %+v, %v", got, err)
	}
	if got, err := other.GetLifecycle(ctx); err != nil || fmt.Sprint(got) != fmt.Sprint(foreign) {
		t.Fatalf("foreign rule after clear: %+v, %v", got, err)
	}
}

// Tags given to Put on a multipart upload arrive with the object.
func TestMultipartTags(t *testing.T) {
	srv := testenv.MinIO(t)
	s := open(t, config(t, srv, srv.NewBucket(t, "tags")))
	defer s.Close()
	ctx := context.Background()
	data := storagetest.Data(7, 3*s3.MinPartSize+1)
	tags := map[string]string{"cycle": "daily"}
	if _, err := s.Put(ctx, "big", bytes.NewReader(data), storage.PutOptions{Tags: tags, ContentType: "application/x-backstream"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetTags(ctx, "big")
	if err != nil || got["cycle"] != "daily" {
		t.Fatalf("tags: %v, %v", got, err)
	}
	oi, err := srv.Client(t).StatObject(ctx, "tags", "big", minio.StatObjectOptions{})
	if err != nil || oi.ContentType != "application/x-backstream" {
		t.Fatalf("content type: %q, %v", oi.ContentType, err)
	}
	rc, err := s.Open(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read back %d bytes, %v", len(b), err)
	}
}

func envName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, s)
}

// With the default part size, parts double every growEvery parts (2 here),
// so a stream of unknown size is not held to 10 000 small parts; every part
// but the last has its planned size and the object reads back whole.
func TestDefaultPartSizeGrows(t *testing.T) {
	s3.SetGrowEvery(t, 2)
	srv := testenv.MinIO(t)
	c := config(t, srv, srv.NewBucket(t, "grow"))
	c.PartSize, c.Concurrency = 0, 2
	s := open(t, c)
	defer s.Close()
	ctx := context.Background()
	const mib = 1 << 20
	want := []int64{8 * mib, 8 * mib, 16 * mib, 16 * mib, 32 * mib, 20*mib + 1}
	var size int64
	for _, n := range want {
		size += n
	}
	data := storagetest.Data(11, int(size))
	if _, err := s.Put(ctx, "grown", &onlyReader{bytes.NewReader(data)}, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	cl := srv.Client(t)
	for i, n := range want {
		o := minio.StatObjectOptions{}
		o.PartNumber = i + 1
		oi, err := cl.StatObject(ctx, "grow", "grown", o)
		if err != nil {
			t.Fatalf("part %d: %v", i+1, err)
		}
		if oi.Size != n {
			t.Errorf("part %d is %d bytes, want %d", i+1, oi.Size, n)
		}
	}
	rc, err := s.Open(ctx, "grown")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read back %d of %d bytes, %v", len(b), len(data), err)
	}
}

// onlyReader hides every method but Read, as a stream of unknown size.
type onlyReader struct{ r io.Reader }

func (o *onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestRemoveIncompleteKeySparesOtherKeys: the leftovers of one key go; an
// upload of a longer key it is a prefix of (AWS lists those for it) and
// one begun after the cutoff stay.
func TestRemoveIncompleteKeySparesOtherKeys(t *testing.T) {
	srv := testenv.MinIO(t)
	bucket := srv.NewBucket(t, "sweepkey")
	ctx := context.Background()
	st, err := s3.New(ctx, config(t, srv, bucket))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks := st.(storage.KeySweeper)
	core := minio.Core{Client: srv.Client(t)}
	for _, key := range []string{"run/backup.bin", "run/backup.bin.more"} {
		if _, err := core.NewMultipartUpload(ctx, bucket, key, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ks.RemoveIncompleteKey(ctx, "run/backup.bin", time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("with a cutoff before the uploads: removed %d, %v; want none", n, err)
	}
	if n, err := ks.RemoveIncompleteKey(ctx, "run/backup.bin", time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("removed %d, %v; want the one upload of run/backup.bin", n, err)
	}
	for key, want := range map[string]int{"run/backup.bin": 0, "run/backup.bin.more": 1} {
		if left, err := ks.Incomplete(ctx, key); err != nil || len(left) != want {
			t.Errorf("incomplete uploads of %s: %q, %v; want %d", key, left, err, want)
		}
	}
	if _, err := ks.RemoveIncompleteKey(ctx, "run/../x", time.Now()); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("a bad key: %v, want ErrInvalidKey", err)
	}
}

// TestRefusedCredentialsAreAccessDenied: a secret the server does not
// take, and an access key it does not know, are storage.ErrAccessDenied
// (what makes a serve open a shared storage again after a rotation).
func TestRefusedCredentialsAreAccessDenied(t *testing.T) {
	srv := testenv.MinIO(t)
	c := config(t, srv, "denied")
	c.CreateBucket = true
	open(t, c).Close()
	for _, tt := range []struct{ name, access, secret string }{
		{"wrong secret", srv.AccessKey, srv.SecretKey + "x"},
		{"unknown access key", "nobody-" + srv.AccessKey, srv.SecretKey},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(c.AccessKey.Env, tt.access)
			t.Setenv(c.SecretKey.Env, tt.secret)
			_, err := s3.Open(context.Background(), c)
			if !errors.Is(err, storage.ErrAccessDenied) {
				t.Errorf("open: %v, want ErrAccessDenied", err)
			}
		})
	}
}
