package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/backstream/backstream/pkg/storage/s3"
)

// s3EndpointEnv names the MinIO `bench s3` talks to; the keys come from
// accessEnv and secretEnv, never argv.
const s3EndpointEnv = "BENCH_S3_ENDPOINT"

// s3PartSize and s3Concurrency are backstream's s3 plugin defaults (its
// first part size: the baseline's uploads never reach the 2 000 parts
// where backstream's default grows), so the baseline's upload moves its
// bytes the way the pipeline's does.
const (
	s3PartSize    = s3.DefaultPartSize
	s3Concurrency = s3.DefaultConcurrency
)

// s3Cmd is the upload and download of the no-framework baseline:
//
//	bench s3 put BUCKET KEY < data
//	bench s3 get BUCKET KEY > data
func s3Cmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench s3", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 3 || (fs.Arg(0) != "put" && fs.Arg(0) != "get") {
		return fmt.Errorf("%w: bench s3 put|get BUCKET KEY", errUsage)
	}
	endpoint := os.Getenv(s3EndpointEnv)
	if endpoint == "" {
		return fmt.Errorf("%w: bench s3: %s is not set", errUsage, s3EndpointEnv)
	}
	client, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv(accessEnv), os.Getenv(secretEnv), "")})
	if err != nil {
		return fmt.Errorf("s3 client: %w", err)
	}
	bucket, key := fs.Arg(1), fs.Arg(2)
	if fs.Arg(0) == "put" {
		// Size unknown (-1): minio-go buffers PartSize bytes per part,
		// up to NumThreads parts in flight, as backstream's s3 plugin does.
		_, err := client.PutObject(ctx, bucket, key, stdin, -1, minio.PutObjectOptions{
			PartSize: s3PartSize, NumThreads: s3Concurrency, ConcurrentStreamParts: true, ContentType: "application/octet-stream",
		})
		if err != nil {
			return fmt.Errorf("s3 put %s/%s: %w", bucket, key, err)
		}
		return nil
	}
	obj, err := client.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return fmt.Errorf("s3 get %s/%s: %w", bucket, key, err)
	}
	defer obj.Close()
	w := bufio.NewWriterSize(stdout, 1<<20)
	if _, err := io.CopyBuffer(w, obj, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("s3 get %s/%s: %w", bucket, key, err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("s3 get %s/%s: %w", bucket, key, err)
	}
	return nil
}
