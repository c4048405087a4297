package testenv_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/pkg/testenv"
)

func TestMinIOStopStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := testenv.MinIO(t)
	bucket := s.NewBucket(t, "testenv")
	c := s.Client(t)
	if _, err := c.PutObject(ctx, bucket, "k", bytes.NewReader([]byte("hello")), 5, minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	s.Stop()
	if _, err := c.BucketExists(ctx, bucket); err == nil {
		t.Fatal("bucket reachable after Stop")
	}
	s.Start()
	o, err := c.GetObject(ctx, bucket, "k", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil || string(b) != "hello" {
		t.Fatalf("after restart read %q, %v; want hello", b, err)
	}
}

func TestMinIOParallelServers(t *testing.T) {
	t.Parallel()
	a, b := testenv.MinIO(t), testenv.MinIO(t)
	if a.Endpoint == b.Endpoint {
		t.Fatalf("two servers share %s", a.Endpoint)
	}
	a.NewBucket(t, "one")
	b.NewBucket(t, "one")
}
