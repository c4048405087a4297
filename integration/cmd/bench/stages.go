package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/datagen"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/s3"
)

// chunkSize is the pipeline's default chunk.
const chunkSize = format.DefaultChunkSize

// stageResult is one stage measured alone.
type stageResult struct {
	name string
	// in is the bytes the stage processed, plain the plaintext bytes they
	// stand for: a stage that sees compressed data moves more plaintext
	// per byte.
	in, plain int64
	d         time.Duration
	cpu       time.Duration // CPU time of this process during the stage
	note      string
	// insight marks a figure that is not a pipeline stage (the sealer on
	// all cores); it is never the slowest stage.
	insight bool
	// plainShare is plaintext over everything this stage carries in the
	// pipeline (JetStream carries raw and sealed chunks): bound = rate of
	// plain × plainShare. 0 means 1.
	plainShare float64
}

func (s stageResult) mbps() float64 { return mbps(s.in, s.d) }

// cpuPerGB is the stage's CPU time per 10^9 plaintext bytes of the
// pipeline (JetStream carries the sealed bytes as well).
func (s stageResult) cpuPerGB() float64 {
	share := s.plainShare
	if share == 0 {
		share = 1
	}
	return s.cpu.Seconds() / (float64(s.plain) / 1e9) / share
}

// cores is how many cores the stage kept busy on average.
func (s stageResult) cores() float64 { return s.cpu.Seconds() / s.d.Seconds() }

// selfCPU is this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bound is the plaintext rate the pipeline could reach were this stage its
// only limit.
func (s stageResult) bound() float64 {
	b := mbps(s.plain, s.d)
	if s.plainShare > 0 {
		b *= s.plainShare
	}
	return b
}

// stages measures every stage of the data path alone, in this process, on
// the same seeded data: one core each unless said otherwise.
func (r *rig) stages(ctx context.Context, size int64) ([]stageResult, error) {
	var out []stageResult
	fmt.Fprintf(r.log, "stages: measuring each alone on %s ...\n", humanSize(size))

	// generator: datagen into 256 KiB reads, as `bench gen` does.
	plain := make([]byte, size)
	cpu0, start := selfCPU(), time.Now()
	g := datagen.New(r.c.seed, size)
	for off := 0; off < len(plain); off += chunkSize {
		if _, err := io.ReadFull(g, plain[off:min(off+chunkSize, len(plain))]); err != nil {
			return nil, fmt.Errorf("generator: %w", err)
		}
	}
	out = append(out, stageResult{name: "generator (datagen)", in: size, plain: size, d: time.Since(start), cpu: selfCPU() - cpu0, note: "1 core"})
	var chunks [][]byte
	for off := 0; off < len(plain); off += chunkSize {
		chunks = append(chunks, plain[off:min(off+chunkSize, len(plain))])
	}

	// compression: zstd fastest per chunk, no encryption.
	zs, err := format.NewSealer("bench-zstd", format.Options{Compression: format.CompressionZstd, ZstdLevel: format.ZstdFastest, Encryption: format.EncryptionNone})
	if err != nil {
		return nil, err
	}
	compressed := make([][]byte, len(chunks))
	arena := make([]byte, 0, len(chunks)*zs.MaxFrameLen())
	cpu0, start = selfCPU(), time.Now()
	for i, c := range chunks {
		off := len(arena)
		arena, err = zs.Seal(arena, uint64(i), i == len(chunks)-1, c)
		if err != nil {
			return nil, fmt.Errorf("compress: %w", err)
		}
		compressed[i] = arena[off+16:] // the body, past the frame header
	}
	d, cpu := time.Since(start), selfCPU()-cpu0
	var zbytes int64
	for _, c := range compressed {
		zbytes += int64(len(c))
	}
	ratio := float64(size) / float64(zbytes)
	out = append(out, stageResult{name: "compression (zstd fastest)", in: size, plain: size, d: d, cpu: cpu, note: fmt.Sprintf("1 core, ratio %.2f", ratio)})

	// encryption: AES-256-GCM of the compressed chunks, no compression.
	es, err := format.NewSealer("bench-aes", format.Options{Compression: format.CompressionNone, Encryption: format.EncryptionAESGCM, Recipients: []string{r.recipient}})
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, es.MaxFrameLen())
	cpu0, start = selfCPU(), time.Now()
	for i, c := range compressed {
		if buf, err = es.Seal(buf[:0], uint64(i), i == len(compressed)-1, c); err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
	}
	out = append(out, stageResult{name: "encryption (aes-256-gcm)", in: zbytes, plain: size, d: time.Since(start), cpu: selfCPU() - cpu0, note: "1 core, of the compressed chunks"})

	// hashing: SHA-256 of the plaintext, as snapshot does.
	cpu0, start = selfCPU(), time.Now()
	h := sha256.New()
	for _, c := range chunks {
		h.Write(c)
	}
	_ = h.Sum(nil)
	out = append(out, stageResult{name: "hashing (sha-256)", in: size, plain: size, d: time.Since(start), cpu: selfCPU() - cpu0, note: "1 core, of the plaintext"})

	// the sealer as the filter runs it: compress+encrypt on every core.
	full, err := format.NewSealer("bench-full", format.Options{Compression: format.CompressionZstd, ZstdLevel: format.ZstdFastest, Encryption: format.EncryptionAESGCM, Recipients: []string{r.recipient}})
	if err != nil {
		return nil, err
	}
	frames := make([][]byte, len(chunks))
	workers := runtime.GOMAXPROCS(0)
	next := make(chan int)
	cpu0, start = selfCPU(), time.Now()
	var eg errgroup.Group
	for range workers {
		eg.Go(func() error {
			for i := range next {
				f, err := full.Seal(make([]byte, 0, full.MaxFrameLen()), uint64(i), i == len(chunks)-1, chunks[i])
				if err != nil {
					return err
				}
				frames[i] = f
			}
			return nil
		})
	}
	for i := range chunks {
		next <- i
	}
	close(next)
	if err := eg.Wait(); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	d, cpu = time.Since(start), selfCPU()-cpu0
	object := bytes.NewBuffer(make([]byte, 0, int(zbytes)+len(chunks)*64+4096))
	object.Write(full.Header())
	for _, f := range frames {
		object.Write(f)
	}
	frames = nil
	stored := int64(object.Len())
	out = append(out, stageResult{name: "sealer, all cores", in: size, plain: size, d: d, cpu: cpu, insight: true, note: fmt.Sprintf("%d workers, zstd fastest + aes-256-gcm as the filter runs it", workers)})

	// MinIO upload of the sealed object from memory, as upload's Put does.
	for _, kv := range [][2]string{{accessEnv, r.minio.access}, {secretEnv, r.minio.secret}} {
		if err := os.Setenv(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	st, err := s3.Open(ctx, s3.Config{Endpoint: r.minio.endpoint, Bucket: bucket, Insecure: true,
		AccessKey: secret.Ref{Env: accessEnv}, SecretKey: secret.Ref{Env: secretEnv}})
	if err != nil {
		return nil, err
	}
	m0, err := readCPU(r.minio.pid())
	if err != nil {
		return nil, err
	}
	cpu0, start = selfCPU(), time.Now()
	if _, err := st.Put(ctx, "stage/upload", bytes.NewReader(object.Bytes()), storage.PutOptions{ContentType: "application/vnd.backstream.object"}); err != nil {
		st.Close()
		return nil, fmt.Errorf("upload: %w", err)
	}
	d, cpu = time.Since(start), selfCPU()-cpu0
	m1, err := readCPU(r.minio.pid())
	if err != nil {
		return nil, err
	}
	cpu += m1.self - m0.self // the server's share: it stands for MinIO's cost in the pipeline
	_ = st.Delete(ctx, "stage/upload")
	st.Close()
	out = append(out, stageResult{name: "minio upload (s3 Put)", in: stored, plain: size, d: d, cpu: cpu, note: fmt.Sprintf("default part size and concurrency, %s sealed; cores include the MinIO server", humanSize(stored))})
	object = nil

	// JetStream: raw chunks through ChunkWriter/ChunkReader on an embedded
	// server over a real connection, default window.
	js, err := r.jetstream(ctx, chunks)
	if err != nil {
		return nil, err
	}
	js.plainShare = float64(size) / float64(size+stored)
	js.note = fmt.Sprintf("write+read in one process; the pipeline carries raw and sealed chunks, so its bound is x%.2f", js.plainShare)
	out = append(out, js)
	runtime.GC()
	return out, nil
}

// jetstream times the chunks through one chunk stream, writer and reader
// running at once, from the first write to the final chunk read.
func (r *rig) jetstream(ctx context.Context, chunks [][]byte) (stageResult, error) {
	var res stageResult
	dir := filepath.Join(r.dir, "stage-nats")
	defer os.RemoveAll(dir)
	srv, err := bus.StartServer(bus.ServerConfig{Port: -1, StoreDir: dir, AuthDir: filepath.Join(dir, "auth")})
	if err != nil {
		return res, err
	}
	defer srv.Shutdown()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// In-process connections, as serve uses for its embedded server.
	wb, err := bus.Connect(ctx, srv.URL(), "bench-writer", bus.Config{InProcess: srv}, quiet)
	if err != nil {
		return res, err
	}
	defer wb.Close()
	rb, err := bus.Connect(ctx, srv.URL(), "bench-reader", bus.Config{InProcess: srv}, quiet)
	if err != nil {
		return res, err
	}
	defer rb.Close()
	const runID = "01BENCHSTAGE0000000000000"
	w, err := wb.NewChunkWriter(ctx, runID, bus.KindRaw, []string{"reader"}, bus.DataOptions{})
	if err != nil {
		return res, err
	}
	rd, err := rb.NewChunkReader(ctx, runID, bus.KindRaw, "reader", bus.DataOptions{})
	if err != nil {
		return res, err
	}
	var total int64
	for _, c := range chunks {
		total += int64(len(c))
	}
	var got int64
	var wg sync.WaitGroup
	var readErr error
	cpu0, start := selfCPU(), time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := rd.Next(ctx)
			if err != nil {
				readErr = err
				return
			}
			got += int64(len(c.Data))
			if err := c.Ack(); err != nil {
				readErr = err
				return
			}
			if c.Final {
				return
			}
		}
	}()
	var werr error
	for _, c := range chunks[:len(chunks)-1] {
		if werr = w.Write(ctx, c); werr != nil {
			break
		}
	}
	if werr == nil {
		werr = w.Close(ctx, chunks[len(chunks)-1], map[string]string{"Bytes": fmt.Sprint(total)})
	}
	wg.Wait()
	d, cpu := time.Since(start), selfCPU()-cpu0
	_ = rd.Close(ctx)
	if werr != nil {
		return res, fmt.Errorf("jetstream write: %w", werr)
	}
	if readErr != nil {
		return res, fmt.Errorf("jetstream read: %w", readErr)
	}
	if got != total {
		return res, fmt.Errorf("jetstream: read %d bytes, wrote %d", got, total)
	}
	return stageResult{name: "jetstream (chunk write+read)", in: total, plain: total, d: d, cpu: cpu}, nil
}
