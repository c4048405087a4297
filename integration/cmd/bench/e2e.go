package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/datagen"
)

const (
	bucket    = "bench"
	accessEnv = "BENCH_S3_ACCESS_KEY"
	secretEnv = "BENCH_S3_SECRET_KEY"
	// passEnv holds the plan's passphrase with --key passphrase.
	passEnv = "BENCH_PASSPHRASE"
)

// rig is what every end-to-end run shares: MinIO, the key pair, the
// binaries and the temp dir.
type rig struct {
	c         config
	dir       string
	self      string // this program, whose gen subcommand is the source
	backstrm  string
	minio     *minioServer
	identity  string // identity file for serve --identity
	recipient string
	// encryption is the plan's filters.encryption; keyArgs give serve
	// what verify opens it with.
	encryption string
	keyArgs    []string
	env        []string
	runs       int
	log        io.Writer
	// bucket is where the plans put their backups: bench for make bench, a
	// fresh one per tool and round for bench peers.
	bucket string
}

// e2eResult is one backup through a fresh serve process.
type e2eResult struct {
	// name is the run's plan, planFile its YAML (kept for an offline
	// restore after serve has stopped).
	name, planFile string
	size           int64
	stored         int64
	upload         time.Duration // trigger → upload.completed
	total          time.Duration // trigger → backup.succeeded
	peakRSS        int64
	// uploadRSS is the peak RSS up to upload.completed, before verify.
	uploadRSS int64
	// CPU time spent from the trigger to upload.completed by serve itself,
	// by its source command (cat, or the generator with --source gen) and by
	// MinIO; and by serve from upload.completed to backup.succeeded (verify).
	serveCPU, sourceCPU, minioCPU, verifyCPU time.Duration
	// minioVerifyCPU is MinIO's CPU from upload.completed to
	// backup.succeeded: verify reads the stored object back.
	minioVerifyCPU time.Duration
}

// cpuPerGB is the CPU time of every process of the pipeline per 10^9
// plaintext bytes, trigger to upload.completed.
func (r e2eResult) cpuPerGB() float64 {
	return (r.serveCPU + r.sourceCPU + r.minioCPU).Seconds() / (float64(r.size) / 1e9)
}

func (r e2eResult) uploadMBps() float64 { return mbps(r.size, r.upload) }
func (r e2eResult) totalMBps() float64  { return mbps(r.size, r.total) }

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}

func newRig(ctx context.Context, c config, dir string, log io.Writer) (*rig, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	r := &rig{c: c, dir: dir, self: self, backstrm: filepath.Join(c.bin, "backstream"), log: log, bucket: bucket}
	for _, b := range []string{r.backstrm, filepath.Join(c.bin, "minio")} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s: %w (run make build tools)", b, err)
		}
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, fmt.Errorf("age identity: %w", err)
	}
	r.identity, r.recipient = filepath.Join(dir, "identity.txt"), id.Recipient().String()
	if err := os.WriteFile(r.identity, []byte(id.String()+"\n"), 0o600); err != nil {
		return nil, err
	}
	r.encryption = fmt.Sprintf("{type: aes-256-gcm, recipients: [%q]}", r.recipient)
	r.keyArgs = []string{"--identity", r.identity}
	if c.key == "passphrase" {
		// The plan seals with its keyring and serve's verify unlocks it
		// once with the passphrase, which reaches both through the
		// environment, never argv.
		pass := make([]byte, 16)
		if _, err := rand.Read(pass); err != nil {
			return nil, err
		}
		r.env = append(r.env, passEnv+"="+hex.EncodeToString(pass))
		r.encryption = fmt.Sprintf("{type: aes-256-gcm, passphrase: {env: %s}}", passEnv)
		r.keyArgs = []string{"--passphrase-env", passEnv}
	}
	m, err := startMinIO(ctx, filepath.Join(c.bin, "minio"), dir)
	if err != nil {
		return nil, err
	}
	r.minio = m
	r.env = append(r.env, accessEnv+"="+m.access, secretEnv+"="+m.secret)
	client, err := minio.New(m.endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.access, m.secret, "")})
	if err != nil {
		m.stop(5 * time.Second)
		return nil, fmt.Errorf("minio client: %w", err)
	}
	if err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		m.stop(5 * time.Second)
		return nil, fmt.Errorf("make bucket: %w", err)
	}
	return r, nil
}

func (r *rig) close() { r.minio.stop(10 * time.Second) }

func (r *rig) plan(name string, argv string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
    type: command
    command: {argv: %s}
  filters:
    compression: zstd
    level: fastest%s
    encryption: %s
  destinations:
    - name: minio
      type: s3
      s3:
        endpoint: %s
        bucket: %s
        insecure: true
        accessKey: {env: %s}
        secretKey: {env: %s}
        partSize: %d
        concurrency: %d
  chunkSize: %d
  verify: {enabled: true}
`, name, argv, frameSizeLine(r.c.frameSize), r.encryption, r.minio.endpoint, r.bucket, accessEnv, secretEnv, r.c.s3PartSize, r.c.s3Concurrency, r.c.chunkSize)
}

// frameSizeLine is the plan's filters.frameSize line for --frame-size, or
// nothing to leave the plan's default.
func frameSizeLine(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("\n    frameSize: %d", n)
}

// sourceArgv is the plan's source command for size bytes of the data set,
// as a YAML flow sequence.
func (r *rig) sourceArgv(size int64) (string, error) {
	if r.c.source == "gen" {
		return fmt.Sprintf("[%q, gen, --size, %q, --seed, %q]", r.self, strconv.FormatInt(size, 10), strconv.FormatInt(r.c.seed, 10)), nil
	}
	f, err := r.dataFile(size)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("[cat, %q]", f), nil
}

// dataFile writes size bytes of the data set to a file once, for every run
// of that size: the source then only streams it (cat), as a dump streams
// from a data service, and the generator's CPU is not taken from the
// pipeline it measures.
func (r *rig) dataFile(size int64) (string, error) {
	path := filepath.Join(r.dir, fmt.Sprintf("data-%d-seed%d.bin", size, r.c.seed))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	fmt.Fprintf(r.log, "e2e: writing %s of the data set to %s ...\n", humanSize(size), path)
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.CopyBuffer(f, datagen.New(r.c.seed, size), make([]byte, 1<<20)); err != nil {
		return "", fmt.Errorf("write data set: %w", err)
	}
	// Synced, so its writeback does not run beside a measurement.
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("write data set: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write data set: %w", err)
	}
	return path, os.Rename(path+".tmp", path)
}

// backstream runs the backstream CLI to completion, its output kept in the
// run's log.
func (r *rig) backstream(ctx context.Context, logPath string, args ...string) error {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, r.backstrm, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("backstream %s: %w\n%s", strings.Join(args, " "), err, tailOf(b, 4096))
	}
	return nil
}

func tailOf(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// pipeline backs up size bytes through a fresh serve process and times it
// from the start of `backstream trigger` to the arrival of the run's
// upload.completed and backup.succeeded events.
func (r *rig) pipeline(ctx context.Context, size int64) (e2eResult, error) {
	argv, err := r.sourceArgv(size)
	if err != nil {
		return e2eResult{size: size}, err
	}
	return r.pipelineArgv(ctx, size, argv)
}

// pipelineArgv is pipeline with the plan's source command given (a YAML flow
// sequence producing size bytes).
func (r *rig) pipelineArgv(ctx context.Context, size int64, argv string) (e2eResult, error) {
	r.runs++
	name := fmt.Sprintf("bench-%d", r.runs)
	dir := filepath.Join(r.dir, name)
	res := e2eResult{name: name, planFile: filepath.Join(dir, "plan.yaml"), size: size}
	fmt.Fprintf(r.log, "e2e %s: %s through a fresh serve ...\n", name, humanSize(size))
	sp, err := startServe(ctx, r.backstrm, dir, r.keyArgs, r.c.dataPlane, r.c.profile != "", r.env)
	if err != nil {
		return res, err
	}
	defer func() {
		sp.stop(30 * time.Second)
		if !r.c.keep {
			_ = os.RemoveAll(filepath.Join(dir, "data"))
		}
	}()
	planFile := res.planFile
	if err := os.WriteFile(planFile, []byte(r.plan(name, argv)), 0o644); err != nil {
		return res, err
	}
	cliLog := filepath.Join(dir, "cli.log")
	if err := r.backstream(ctx, cliLog, "plan", "apply", "-f", planFile, "--nats", sp.natsURL, "--nats-nkey", sp.nkey); err != nil {
		return res, err
	}

	nkey, err := nats.NkeyOptionFromSeed(sp.nkey)
	if err != nil {
		return res, err
	}
	nc, err := nats.Connect(sp.natsURL, nats.Name("bench"), nkey)
	if err != nil {
		return res, fmt.Errorf("connect %s: %w", sp.natsURL, err)
	}
	defer nc.Close()
	var mu sync.Mutex
	seen := map[string]time.Time{}
	var succeeded events.BackupSucceededData
	var serveAtUpload, minioAtUpload cpuTimes
	var uploadRSS int64
	done := make(chan struct{})
	sub, err := nc.Subscribe(events.SubjectRoot+".*.*."+name, func(m *nats.Msg) {
		at := time.Now()
		e, err := bus.Decode(m.Data)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if _, ok := seen[e.Type()]; ok {
			return
		}
		seen[e.Type()] = at
		if e.Type() == events.UploadCompleted {
			serveAtUpload, _ = readCPU(sp.pid())
			uploadRSS, _ = peakRSS(sp.pid())
			minioAtUpload, _ = readCPU(r.minio.pid())
		}
		if e.Type() == events.BackupSucceeded {
			_ = e.DataAs(&succeeded)
			close(done)
		}
	})
	if err != nil {
		return res, fmt.Errorf("subscribe events: %w", err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return res, fmt.Errorf("subscribe events: %w", err)
	}

	minioBefore, err := readCPU(r.minio.pid())
	if err != nil {
		return res, err
	}
	serveBefore, err := readCPU(sp.pid())
	if err != nil {
		return res, err
	}
	profiled := make(chan error, 1)
	if r.c.profile != "" {
		go func() {
			profiled <- sp.fetchProfile(ctx, fmt.Sprintf("profile?seconds=%d", r.c.profileSeconds), filepath.Join(r.c.profile, name+".cpu.prof"))
		}()
	} else {
		profiled <- nil
	}
	start := time.Now()
	if err := r.backstream(ctx, cliLog, "trigger", name, "--wait", "--nats", sp.natsURL, "--nats-nkey", sp.nkey); err != nil {
		return res, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(time.Minute):
		return res, fmt.Errorf("run of %s succeeded but its backup.succeeded event never reached the bench", name)
	}
	mu.Lock()
	up, ok := seen[events.UploadCompleted]
	end := seen[events.BackupSucceeded]
	mu.Unlock()
	if !ok {
		return res, fmt.Errorf("run of %s: no upload.completed event seen", name)
	}
	if succeeded.Bytes != size {
		return res, fmt.Errorf("run of %s stored %d plaintext bytes, want %d", name, succeeded.Bytes, size)
	}
	res.stored, res.upload, res.total = succeeded.StoredBytes, up.Sub(start), end.Sub(start)
	if res.peakRSS, err = peakRSS(sp.pid()); err != nil {
		return res, err
	}
	serveEnd, err := readCPU(sp.pid())
	if err != nil {
		return res, err
	}
	minioEnd, err := readCPU(r.minio.pid())
	if err != nil {
		return res, err
	}
	mu.Lock()
	res.minioVerifyCPU = minioEnd.self - minioAtUpload.self
	res.serveCPU = serveAtUpload.self - serveBefore.self
	res.sourceCPU = serveAtUpload.children - serveBefore.children
	res.minioCPU = minioAtUpload.self - minioBefore.self
	res.verifyCPU = serveEnd.self - serveAtUpload.self
	res.uploadRSS = uploadRSS
	mu.Unlock()
	if r.c.profile != "" {
		if err := sp.fetchProfile(ctx, "heap", filepath.Join(r.c.profile, name+".heap.prof")); err != nil {
			return res, err
		}
		if err := <-profiled; err != nil {
			return res, err
		}
	}
	fmt.Fprintf(r.log, "e2e %s: upload.completed after %s (%.1f MB/s), backup.succeeded after %s (%.1f MB/s), stored %s, peak RSS %.0f MiB (%.0f MiB before verify), cpu to upload.completed: serve %s source %s minio %s; verify %s\n",
		name, res.upload.Round(time.Millisecond), res.uploadMBps(), res.total.Round(time.Millisecond), res.totalMBps(),
		humanSize(res.stored), float64(res.peakRSS)/(1<<20), float64(res.uploadRSS)/(1<<20), res.serveCPU, res.sourceCPU, res.minioCPU, res.verifyCPU)
	mu.Lock()
	fmt.Fprintf(r.log, "e2e %s: events after the trigger: %s\n", name, timeline(seen, start))
	mu.Unlock()
	return res, nil
}

// timeline lists event types by arrival, each with its time since start:
// where a run's fixed costs go (trigger to snapshot.started, snapshot's
// end to upload.completed) shows in the log of every e2e run.
func timeline(seen map[string]time.Time, start time.Time) string {
	types := make([]string, 0, len(seen))
	for t := range seen {
		types = append(types, t)
	}
	sort.Slice(types, func(i, j int) bool { return seen[types[i]].Before(seen[types[j]]) })
	parts := make([]string, len(types))
	for i, t := range types {
		parts[i] = fmt.Sprintf("%s %s", strings.TrimPrefix(t, "io.backstream."), seen[t].Sub(start).Round(time.Millisecond))
	}
	return strings.Join(parts, ", ")
}
