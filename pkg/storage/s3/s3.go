// Package s3 is the storage backend on an S3-compatible server (MinIO, AWS
// S3, Ceph RGW …) through github.com/minio/minio-go/v7.
//
// Put streams: an object up to one part is a single PUT, a larger one a
// multipart upload of PartSize parts with at most Concurrency parts in
// flight, so a Put holds at most PartSize × Concurrency bytes of buffers
// whatever the object's size. With the default part size, parts double
// every growEvery parts, so a stream of unknown size is not capped at
// 10 000 small parts and only objects beyond 16 GiB hold larger buffers. Payloads are sent unsigned and without MD5 or
// CRC: backstream's frames are already authenticated and SHA-256 is the
// slowest thing on our CPUs, so the payload is never hashed a second time.
// A failed Put aborts its multipart upload; it must never complete an upload
// of a stream that did not end cleanly.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/backstream/backstream/pkg/ctxio"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
	"github.com/minio/minio-go/v7/pkg/tags"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
)

const (
	// MinPartSize is S3's smallest part (all but the last).
	MinPartSize = 5 << 20
	// MaxPartSize is S3's largest part.
	MaxPartSize = 5 << 30
	// DefaultPartSize is the first part size when Config.PartSize is 0: a
	// Put's buffers stay at 16 MiB with the default concurrency up to 2 000
	// parts (15.6 GiB stored), and the size doubles every growEvery parts
	// from there (31 GiB at 16 MiB, … 496 GiB stored at the 10 000th part).
	// An explicit PartSize stays fixed.
	DefaultPartSize = 8 << 20
	// DefaultConcurrency is the number of parts in flight when
	// Config.Concurrency is 0: one uploads while the next is read, which
	// keeps up with the pipeline against a nearby server; a far one wants
	// more (docs/storage.md).
	DefaultConcurrency = 2
	maxConcurrency     = 64
	// maxParts is S3's limit of parts per upload.
	maxParts = 10000
	// sweepAge is the age of incomplete uploads New removes: older than any
	// Put still running, we assume.
	sweepAge = 24 * time.Hour
	// abortTimeout bounds the abort of a failed upload, which runs even
	// when the Put's ctx is cancelled.
	abortTimeout = 30 * time.Second
)

// Config is the s3 backend's plugin block.
type Config struct {
	// Endpoint is host[:port] of the S3 API, without scheme.
	Endpoint string `yaml:"endpoint" json:"endpoint"`
	Bucket   string `yaml:"bucket" json:"bucket"`
	// Prefix is prepended to every key ("backups/" keeps this storage's
	// objects under backups/). A missing trailing '/' is added.
	Prefix    string     `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Region    string     `yaml:"region,omitempty" json:"region,omitempty"`
	AccessKey secret.Ref `yaml:"accessKey" json:"accessKey"`
	SecretKey secret.Ref `yaml:"secretKey" json:"secretKey"`
	// Insecure talks plain http instead of https.
	Insecure bool `yaml:"insecure,omitempty" json:"insecure,omitempty"`
	// PartSize in bytes of a multipart upload's parts, at least 5 MiB; 0
	// means 8 MiB, doubling every 2 000 parts.
	PartSize int64 `yaml:"partSize,omitempty" json:"partSize,omitempty"`
	// Concurrency is the number of parts uploaded at once by one Put; 0
	// means 2.
	Concurrency int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	// CreateBucket makes the bucket on New if it does not exist.
	CreateBucket bool `yaml:"createBucket,omitempty" json:"createBucket,omitempty"`
}

// Validate reports every problem of c, each with its field name.
func (c Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch {
	case c.Endpoint == "":
		add("endpoint", "required")
	case strings.Contains(c.Endpoint, "://") || strings.Contains(c.Endpoint, "/"):
		add("endpoint", "host[:port] without scheme or path, got %q (use insecure: true for http)", c.Endpoint)
	}
	if c.Bucket == "" {
		add("bucket", "required")
	}
	if c.Prefix != "" {
		if err := storage.CheckPrefix(c.Prefix); err != nil {
			add("prefix", "%v", err)
		}
	}
	if err := c.AccessKey.Validate(); err != nil {
		add("accessKey", "%v", err)
	}
	if err := c.SecretKey.Validate(); err != nil {
		add("secretKey", "%v", err)
	}
	if c.PartSize != 0 && (c.PartSize < MinPartSize || c.PartSize > MaxPartSize) {
		add("partSize", "must be 0 (8 MiB, growing) or between %d and %d bytes, got %d", MinPartSize, MaxPartSize, c.PartSize)
	}
	if c.Concurrency < 0 || c.Concurrency > maxConcurrency {
		add("concurrency", "must be between 0 (%d) and %d, got %d", DefaultConcurrency, maxConcurrency, c.Concurrency)
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	return c
}

// S3 is a Storage in one bucket, under an optional prefix.
type S3 struct {
	core   minio.Core
	bucket string
	prefix string
	part   int64
	grow   bool // the part size doubles every growEvery parts
	conc   int
	// bufs recycles part buffers between Puts; a Put takes at most conc.
	bufs sync.Pool
	tr   *http.Transport
}

var (
	_ storage.Storage    = (*S3)(nil)
	_ storage.Tagger     = (*S3)(nil)
	_ storage.Lifecycler = (*S3)(nil)
	_ storage.Sweeper    = (*S3)(nil)
	_ storage.KeySweeper = (*S3)(nil)
)

// New connects to the server, checks (or with CreateBucket makes) the
// bucket, and aborts incomplete uploads under the prefix older than a day,
// left by Puts whose own abort could not reach the server.
func New(ctx context.Context, c Config) (storage.Storage, error) {
	return Open(ctx, c)
}

// Open is New returning the concrete type, for callers that need S3's own
// methods.
func Open(ctx context.Context, c Config) (*S3, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	grow := c.PartSize == 0 // only the default part size grows
	c = c.withDefaults()
	access, err := c.AccessKey.Resolve()
	if err != nil {
		return nil, fmt.Errorf("s3 accessKey: %w", err)
	}
	secretKey, err := c.SecretKey.Resolve()
	if err != nil {
		return nil, fmt.Errorf("s3 secretKey: %w", err)
	}
	tr := transport(c.Concurrency)
	client, err := minio.New(c.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(access, secretKey, ""),
		Secure:    !c.Insecure,
		Region:    c.Region,
		Transport: tr,
		// minio-go retries network errors with a backoff capped at 1 s; five
		// tries bound a dead server's delay to seconds, not minutes.
		MaxRetries: 5,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	s := &S3{core: minio.Core{Client: client}, bucket: c.Bucket, prefix: c.Prefix, part: c.PartSize, grow: grow, conc: c.Concurrency, tr: tr}
	ok, err := client.BucketExists(ctx, c.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %s: %w", c.Bucket, translate(err))
	}
	if !ok {
		if !c.CreateBucket {
			return nil, fmt.Errorf("s3 bucket %s: does not exist (set createBucket to make it)", c.Bucket)
		}
		if err := client.MakeBucket(ctx, c.Bucket, minio.MakeBucketOptions{Region: c.Region}); err != nil {
			return nil, fmt.Errorf("s3 make bucket %s: %w", c.Bucket, translate(err))
		}
	}
	if n, err := s.RemoveIncomplete(ctx, "", time.Now().Add(-sweepAge)); err != nil {
		// Not fatal: the credentials may not allow listing uploads, and a
		// lifecycle rule (AbortIncompleteAfterDays) can do the same job.
		slog.WarnContext(ctx, "s3: sweep incomplete uploads", "bucket", c.Bucket, "prefix", c.Prefix, "err", err)
	} else if n > 0 {
		slog.InfoContext(ctx, "s3: aborted stale incomplete uploads", "bucket", c.Bucket, "prefix", c.Prefix, "count", n)
	}
	return s, nil
}

// transport bounds every wait on the network so that a dead or stalled
// server fails a call instead of hanging it.
func transport(conc int) *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 15 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   max(16, 2*conc),
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Counted from the end of the request body: how long the server may
		// think about a part before it answers.
		ResponseHeaderTimeout: 2 * time.Minute,
		DisableCompression:    true,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
}

func (s *S3) object(key string) string { return s.prefix + key }

// growEvery is how many parts of one size an upload with the default part
// size sends before the size doubles (a variable for the tests).
var growEvery = 2000

// partSize is the size of part num (1-based) of a multipart upload.
func (s *S3) partSize(num int) int {
	if !s.grow {
		return int(s.part)
	}
	shift := min((num-1)/growEvery, 10)
	return int(min(s.part<<shift, MaxPartSize))
}

// getBuf returns a buffer of n bytes; buffers of the first part size come
// from the pool shared by Puts.
func (s *S3) getBuf(n int) []byte {
	if int64(n) == s.part {
		if b, ok := s.bufs.Get().(*[]byte); ok {
			return *b
		}
	}
	return make([]byte, n)
}

// putBuf keeps b for later Puts if it has the first part size; the larger
// buffers of a long upload go with it.
func (s *S3) putBuf(b []byte) {
	if int64(len(b)) == s.part {
		s.bufs.Put(&b)
	}
}

// putOptions sends no MD5, no SHA-256 of the payload (UNSIGNED-PAYLOAD even
// over http, where minio-go would otherwise sign every chunk) and, since the
// client is not told the server takes trailing headers, no CRC either.
func putOptions(o storage.PutOptions) minio.PutObjectOptions {
	return minio.PutObjectOptions{
		ContentType:          o.ContentType,
		UserTags:             o.Tags,
		SendContentMd5:       false,
		DisableContentSha256: true,
	}
}

// Put implements storage.Storage. An object that fits in one part is one
// PUT, atomic on the server. A larger one is a multipart upload, completed
// only after r returned io.EOF and every part was stored; on any error the
// upload is aborted (and if the server cannot be reached for that, the
// parts stay invisible until RemoveIncomplete or a lifecycle rule reclaims
// them).
func (s *S3) Put(ctx context.Context, key string, r io.Reader, o storage.PutOptions) (storage.Info, error) {
	if err := storage.CheckKey(key); err != nil {
		return storage.Info{}, err
	}
	info, err := s.put(ctx, key, r, o)
	if err != nil {
		return storage.Info{}, fmt.Errorf("put %s: %w", key, err)
	}
	return info, nil
}

func (s *S3) put(ctx context.Context, key string, r io.Reader, o storage.PutOptions) (storage.Info, error) {
	r = ctxio.Reader(ctx, r)
	buf := s.getBuf(s.partSize(1))
	n, err := readFull(r, buf)
	switch {
	case err == io.EOF:
		defer s.putBuf(buf)
		up, err := s.core.PutObject(ctx, s.bucket, s.object(key), bytes.NewReader(buf[:n]), int64(n), "", "", putOptions(o))
		if err != nil {
			return storage.Info{}, translate(err)
		}
		return s.info(key, int64(n), up), nil
	case err != nil:
		s.putBuf(buf)
		return storage.Info{}, err
	}
	return s.putMultipart(ctx, key, r, buf, o)
}

// ReadVersion implements storage.Storage. The version is the object's
// ETag, as the GET that read the bytes returned it.
func (s *S3) ReadVersion(ctx context.Context, key string, max int64) ([]byte, string, error) {
	if err := storage.CheckKey(key); err != nil {
		return nil, "", err
	}
	rc, oi, _, err := s.core.GetObject(ctx, s.bucket, s.object(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", key, translate(err))
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	switch {
	case err != nil:
		return nil, "", fmt.Errorf("read %s: %w", key, err)
	case int64(len(data)) > max:
		return nil, "", fmt.Errorf("read %s: larger than %d bytes", key, max)
	case oi.ETag == "":
		return nil, "", fmt.Errorf("read %s: the server sent no ETag", key)
	}
	return data, oi.ETag, nil
}

// PutIf implements storage.Storage with a conditional PUT (If-Match: the
// ETag read): the server compares and stores in one step. A server that
// ignores If-Match would make it an unconditional Put; MinIO and AWS S3
// honour it (storagetest checks).
func (s *S3) PutIf(ctx context.Context, key string, data []byte, version string, o storage.PutOptions) (storage.Info, error) {
	if err := storage.CheckKey(key); err != nil {
		return storage.Info{}, err
	}
	opts := putOptions(o)
	opts.SetMatchETag(version)
	up, err := s.core.PutObject(ctx, s.bucket, s.object(key), bytes.NewReader(data), int64(len(data)), "", "", opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && (er.Code == "PreconditionFailed" || er.StatusCode == http.StatusPreconditionFailed || errors.Is(translate(err), storage.ErrNotFound)) {
			return storage.Info{}, fmt.Errorf("put %s: %w: %w", key, storage.ErrChanged, err)
		}
		return storage.Info{}, fmt.Errorf("put %s: %w", key, translate(err))
	}
	return s.info(key, int64(len(data)), up), nil
}

func (s *S3) info(key string, size int64, up minio.UploadInfo) storage.Info {
	mod := up.LastModified
	if mod.IsZero() {
		mod = time.Now()
	}
	return storage.Info{Key: key, Size: size, Modified: mod}
}

// putMultipart uploads first (a full part already read from r) and the rest
// of r. The reading goroutine fills a buffer while up to s.conc others upload;
// a buffer is reused once its part is stored, so no more than s.conc exist.
func (s *S3) putMultipart(ctx context.Context, key string, r io.Reader, first []byte, o storage.PutOptions) (_ storage.Info, err error) {
	obj := s.object(key)
	uploadID, err := s.core.NewMultipartUpload(ctx, s.bucket, obj, putOptions(o))
	if err != nil {
		s.putBuf(first)
		return storage.Info{}, fmt.Errorf("start upload: %w", translate(err))
	}
	defer func() {
		if err != nil {
			if aerr := s.abort(ctx, obj, uploadID); aerr != nil {
				err = errors.Join(err, aerr)
			}
		}
	}()

	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(gctx)
	free := make(chan []byte, s.conc)
	allocated := 1
	defer func() {
		// Recycle the buffers the finished uploads gave back.
		close(free)
		for b := range free {
			s.putBuf(b)
		}
	}()
	// acquire returns a buffer of n bytes: one a finished part gave back,
	// a new one while fewer than s.conc exist, or else the next one given
	// back. A buffer smaller than n (the part size grew) is replaced.
	acquire := func(n int) ([]byte, error) {
		var b []byte
		select {
		case b = <-free:
		default:
			if allocated < s.conc {
				allocated++
				return s.getBuf(n), nil
			}
			select {
			case b = <-free:
			case <-gctx.Done():
				return nil, gctx.Err()
			}
		}
		if len(b) < n {
			s.putBuf(b)
			b = s.getBuf(n)
		}
		return b[:n], nil
	}

	var mu sync.Mutex
	var parts []minio.CompletePart
	var size int64
	upload := func(num int, b []byte, n int) {
		size += int64(n)
		g.Go(func() error {
			p, err := s.core.PutObjectPart(gctx, s.bucket, obj, uploadID, num, bytes.NewReader(b[:n]), int64(n),
				minio.PutObjectPartOptions{DisableContentSha256: true})
			if err != nil {
				return fmt.Errorf("upload part %d: %w", num, translate(err))
			}
			mu.Lock()
			parts = append(parts, minio.CompletePart{PartNumber: num, ETag: p.ETag})
			mu.Unlock()
			free <- b
			return nil
		})
	}

	upload(1, first, len(first))
	for num := 2; ; num++ {
		b, aerr := acquire(s.partSize(num))
		if aerr != nil {
			// An upload failed (its error wins) or ctx is done.
			if werr := g.Wait(); werr != nil && ctx.Err() == nil {
				return storage.Info{}, werr
			}
			return storage.Info{}, context.Cause(ctx)
		}
		n, rerr := readFull(r, b)
		if rerr == io.EOF && n == 0 {
			free <- b
			break
		}
		if rerr != nil && rerr != io.EOF {
			free <- b
			cancel()
			g.Wait()
			return storage.Info{}, rerr
		}
		if num > maxParts {
			free <- b
			cancel()
			g.Wait()
			return storage.Info{}, fmt.Errorf("object larger than %d parts (the last of %d bytes)", maxParts, s.partSize(maxParts))
		}
		upload(num, b, n)
		if rerr == io.EOF { // that was the last, short part
			break
		}
	}
	if err := g.Wait(); err != nil {
		return storage.Info{}, err
	}
	// The last check before the object becomes visible.
	if err := ctx.Err(); err != nil {
		return storage.Info{}, err
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	up, err := s.core.CompleteMultipartUpload(ctx, s.bucket, obj, uploadID, parts, minio.PutObjectOptions{})
	if err != nil {
		return storage.Info{}, fmt.Errorf("complete upload: %w", translate(err))
	}
	return s.info(key, size, up), nil
}

// abort runs even when the Put's ctx is cancelled, bounded by abortTimeout.
func (s *S3) abort(ctx context.Context, obj, uploadID string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	err := s.core.AbortMultipartUpload(ctx, s.bucket, obj, uploadID)
	if err == nil || errors.Is(translate(err), storage.ErrNotFound) {
		return nil
	}
	return fmt.Errorf("abort upload %s (its parts stay invisible until swept): %w", uploadID, err)
}

// readFull fills buf from r. It returns a nil error for a full buffer, io.EOF
// when the stream ended after n bytes (n may be 0), and any other error as
// is, even with a full buffer. Unlike io.ReadFull it neither drops an error
// that came with the last bytes nor turns a reader's own
// io.ErrUnexpectedEOF (a truncated stream) into a clean end.
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Open implements storage.Storage.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := storage.CheckKey(key); err != nil {
		return nil, err
	}
	// Core.GetObject sends the request now, so an absent key fails here,
	// not on the first Read.
	rc, _, _, err := s.core.GetObject(ctx, s.bucket, s.object(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", key, translate(err))
	}
	return rc, nil
}

// Stat implements storage.Storage; Info.Tags holds the object's tags (one
// more request when it has any).
func (s *S3) Stat(ctx context.Context, key string) (storage.Info, error) {
	if err := storage.CheckKey(key); err != nil {
		return storage.Info{}, err
	}
	oi, err := s.core.StatObject(ctx, s.bucket, s.object(key), minio.StatObjectOptions{})
	if err != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", key, translate(err))
	}
	info := storage.Info{Key: key, Size: oi.Size, Modified: oi.LastModified, Tags: map[string]string{}}
	if oi.UserTagCount > 0 {
		if info.Tags, err = s.getTags(ctx, key); err != nil {
			return storage.Info{}, fmt.Errorf("stat %s: %w", key, err)
		}
	}
	return info, nil
}

// List implements storage.Storage. S3 lists keys in UTF-8 binary order,
// which is lexical byte order.
func (s *S3) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if err := storage.CheckPrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's listing goroutine when fn fails
	for oi := range s.core.Client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.object(prefix), Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("list %s: %w", prefix, translate(oi.Err))
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if strings.HasSuffix(key, "/") {
			continue // a "directory" marker made by another tool
		}
		if err := fn(storage.Info{Key: key, Size: oi.Size, Modified: oi.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Delete implements storage.Storage; S3 does not fail on an absent key.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	if err := s.core.RemoveObject(ctx, s.bucket, s.object(key), minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(translate(err), storage.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, translate(err))
	}
	return nil
}

// SetTags implements storage.Tagger. S3 allows 10 tags per object.
func (s *S3) SetTags(ctx context.Context, key string, t map[string]string) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	var err error
	if len(t) == 0 {
		err = s.core.RemoveObjectTagging(ctx, s.bucket, s.object(key), minio.RemoveObjectTaggingOptions{})
	} else {
		var ot *tags.Tags
		if ot, err = tags.NewTags(t, true); err != nil {
			return fmt.Errorf("set tags %s: %w", key, err)
		}
		err = s.core.PutObjectTagging(ctx, s.bucket, s.object(key), ot, minio.PutObjectTaggingOptions{})
	}
	if err != nil {
		return fmt.Errorf("set tags %s: %w", key, translate(err))
	}
	return nil
}

// GetTags implements storage.Tagger.
func (s *S3) GetTags(ctx context.Context, key string) (map[string]string, error) {
	if err := storage.CheckKey(key); err != nil {
		return nil, err
	}
	t, err := s.getTags(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("get tags %s: %w", key, err)
	}
	return t, nil
}

func (s *S3) getTags(ctx context.Context, key string) (map[string]string, error) {
	ot, err := s.core.GetObjectTagging(ctx, s.bucket, s.object(key), minio.GetObjectTaggingOptions{})
	if err != nil {
		return nil, translate(err)
	}
	m := ot.ToMap()
	if m == nil {
		m = map[string]string{}
	}
	return m, nil
}

// SetLifecycle implements storage.Lifecycler. It reads the bucket's
// configuration, replaces the rules whose prefix lies in this storage's
// prefix and writes it back; the bucket has one configuration, so two
// writers racing here can lose one's update.
func (s *S3) SetLifecycle(ctx context.Context, l storage.Lifecycle) error {
	cfg, err := s.bucketLifecycle(ctx)
	if err != nil {
		return fmt.Errorf("set lifecycle: %w", err)
	}
	rules := slices.DeleteFunc(cfg.Rules, func(r lifecycle.Rule) bool { return s.owns(r) })
	for i, r := range l.Rules {
		lr, err := s.toRule(r)
		if err != nil {
			return fmt.Errorf("set lifecycle: rules[%d]: %w", i, err)
		}
		rules = append(rules, lr)
	}
	cfg.Rules = rules
	if err := s.core.SetBucketLifecycle(ctx, s.bucket, cfg); err != nil {
		return fmt.Errorf("set lifecycle: %w", translate(err))
	}
	return nil
}

// GetLifecycle implements storage.Lifecycler.
func (s *S3) GetLifecycle(ctx context.Context) (storage.Lifecycle, error) {
	cfg, err := s.bucketLifecycle(ctx)
	if err != nil {
		return storage.Lifecycle{}, fmt.Errorf("get lifecycle: %w", err)
	}
	var l storage.Lifecycle
	for _, r := range cfg.Rules {
		if s.owns(r) {
			l.Rules = append(l.Rules, s.fromRule(r))
		}
	}
	return l, nil
}

func (s *S3) bucketLifecycle(ctx context.Context) (*lifecycle.Configuration, error) {
	cfg, err := s.core.GetBucketLifecycle(ctx, s.bucket)
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code == "NoSuchLifecycleConfiguration" {
		return lifecycle.NewConfiguration(), nil
	}
	if err != nil {
		return nil, translate(err)
	}
	return cfg, nil
}

func rulePrefix(r lifecycle.Rule) string {
	switch {
	case r.RuleFilter.And.Prefix != "" || len(r.RuleFilter.And.Tags) > 0:
		return r.RuleFilter.And.Prefix
	case r.RuleFilter.Prefix != "":
		return r.RuleFilter.Prefix
	}
	return r.Prefix
}

// owns reports whether a bucket rule lies in this storage's prefix (all of
// them without a prefix).
func (s *S3) owns(r lifecycle.Rule) bool { return strings.HasPrefix(rulePrefix(r), s.prefix) }

func (s *S3) toRule(r storage.LifecycleRule) (lifecycle.Rule, error) {
	switch {
	case r.ID == "":
		return lifecycle.Rule{}, errors.New("id: required")
	case r.ExpireAfterDays < 0 || r.AbortIncompleteAfterDays < 0:
		return lifecycle.Rule{}, errors.New("days must be >= 0")
	case r.ExpireAfterDays == 0 && r.AbortIncompleteAfterDays == 0:
		return lifecycle.Rule{}, errors.New("set expireAfterDays or abortIncompleteAfterDays")
	case r.AbortIncompleteAfterDays > 0 && len(r.Tags) > 0:
		return lifecycle.Rule{}, errors.New("abortIncompleteAfterDays cannot be combined with tags")
	}
	if r.Prefix != "" {
		if err := storage.CheckPrefix(r.Prefix); err != nil {
			return lifecycle.Rule{}, fmt.Errorf("prefix: %w", err)
		}
	}
	lr := lifecycle.Rule{ID: r.ID, Status: "Enabled"}
	prefix := s.prefix + r.Prefix
	switch {
	case len(r.Tags) == 1 && prefix == "":
		for k, v := range r.Tags {
			lr.RuleFilter.Tag = lifecycle.Tag{Key: k, Value: v}
		}
	case len(r.Tags) > 0:
		lr.RuleFilter.And.Prefix = prefix
		for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
			lr.RuleFilter.And.Tags = append(lr.RuleFilter.And.Tags, lifecycle.Tag{Key: k, Value: r.Tags[k]})
		}
	default:
		lr.RuleFilter.Prefix = prefix
	}
	lr.Expiration.Days = lifecycle.ExpirationDays(r.ExpireAfterDays)
	lr.AbortIncompleteMultipartUpload.DaysAfterInitiation = lifecycle.ExpirationDays(r.AbortIncompleteAfterDays)
	return lr, nil
}

func (s *S3) fromRule(r lifecycle.Rule) storage.LifecycleRule {
	out := storage.LifecycleRule{
		ID:                       r.ID,
		Prefix:                   strings.TrimPrefix(rulePrefix(r), s.prefix),
		ExpireAfterDays:          int(r.Expiration.Days),
		AbortIncompleteAfterDays: int(r.AbortIncompleteMultipartUpload.DaysAfterInitiation),
	}
	tagList := r.RuleFilter.And.Tags
	if !r.RuleFilter.Tag.IsEmpty() {
		tagList = append(tagList, r.RuleFilter.Tag)
	}
	for _, t := range tagList {
		if out.Tags == nil {
			out.Tags = map[string]string{}
		}
		out.Tags[t.Key] = t.Value
	}
	return out
}

// Incomplete implements storage.Sweeper: the keys with an incomplete
// multipart upload. MinIO lists uploads only for an exact key, not for a
// shorter prefix; AWS S3 takes any prefix.
func (s *S3) Incomplete(ctx context.Context, prefix string) ([]string, error) {
	if err := storage.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	var out []string
	for u := range s.core.ListIncompleteUploads(ctx, s.bucket, s.object(prefix), true) {
		if u.Err != nil {
			return nil, fmt.Errorf("list incomplete uploads: %w", translate(u.Err))
		}
		out = append(out, strings.TrimPrefix(u.Key, s.prefix))
	}
	return out, nil
}

// RemoveIncomplete implements storage.Sweeper. With MinIO's exact-key
// listing it removes only the uploads of the key named by prefix (see
// Incomplete); MinIO itself drops uploads older than 24 h, and on AWS a
// lifecycle rule with AbortIncompleteAfterDays is the server-side net.
func (s *S3) RemoveIncomplete(ctx context.Context, prefix string, cutoff time.Time) (int, error) {
	if err := storage.CheckPrefix(prefix); err != nil {
		return 0, err
	}
	return s.abortIncomplete(ctx, prefix, false, cutoff)
}

// RemoveIncompleteKey implements storage.KeySweeper: the incomplete
// uploads of key itself, also where the server lists longer keys for it
// (AWS takes any prefix).
func (s *S3) RemoveIncompleteKey(ctx context.Context, key string, cutoff time.Time) (int, error) {
	if err := storage.CheckKey(key); err != nil {
		return 0, err
	}
	return s.abortIncomplete(ctx, key, true, cutoff)
}

// abortIncomplete aborts the incomplete uploads the server lists for
// prefix (only those of prefix itself when exact) begun before cutoff.
func (s *S3) abortIncomplete(ctx context.Context, prefix string, exact bool, cutoff time.Time) (int, error) {
	n := 0
	for u := range s.core.ListIncompleteUploads(ctx, s.bucket, s.object(prefix), true) {
		if u.Err != nil {
			return n, fmt.Errorf("list incomplete uploads: %w", translate(u.Err))
		}
		if (exact && u.Key != s.object(prefix)) || !u.Initiated.Before(cutoff) {
			continue
		}
		if err := s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID); err != nil {
			return n, fmt.Errorf("abort upload of %s: %w", u.Key, translate(err))
		}
		n++
	}
	return n, nil
}

// Close implements storage.Storage: it drops idle connections.
func (s *S3) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}

// translate maps minio-go's errors to storage's sentinels, keeping the
// original in the chain.
func translate(err error) error {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case "NoSuchKey", "NoSuchUpload", "NoSuchTagSet":
			return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken":
			return fmt.Errorf("%w: %w", storage.ErrAccessDenied, err)
		}
		if er.StatusCode == http.StatusNotFound && er.Code != "NoSuchBucket" {
			return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
		}
	}
	return err
}
