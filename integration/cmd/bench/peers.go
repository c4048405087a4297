package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// bench peers: backstream measured side by side with the tools a user would
// pick instead (restic, kopia, and `zstd -1 | age | upload` with no
// framework), on the same data sets and the same MinIO, a bucket per tool
// and round, the tools taking turns within every round (issue #16).

// peersConfig is what one `bench peers` run measures.
type peersConfig struct {
	size         int64 // the generated set, and the target size of the dumps
	pgbenchScale int   // 0: derived from size
	tarDir       string
	rounds       int
	sets         []string
	tools        []string
	seed         int64
	bin          string
	keep         bool
	profile      string // serve's CPU and heap profiles of each backstream round go here
	profileSecs  int
}

var (
	allSets  = []string{"gen", "pgbench", "mariadb", "tar"}
	allTools = []string{"backstream", "restic", "kopia", "baseline"}
)

func peersCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c peersConfig
	size := fs.String("size", "1GiB", "size of the generated set, and the size the pgbench and MariaDB dumps aim at")
	fs.IntVar(&c.pgbenchScale, "pgbench-scale", 0, "pgbench -s for the pgbench dump (0: from --size, ~9.7 MB of dump per scale unit)")
	fs.StringVar(&c.tarDir, "tar-dir", "/usr/local/go/src", "directory whose tar is the source-tree set")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; in each every tool backs up, verifies and restores every set once, in turn")
	sets := fs.String("sets", strings.Join(allSets, ","), "data sets to measure: "+strings.Join(allSets, ","))
	tools := fs.String("tools", strings.Join(allTools, ","), "tools to measure: "+strings.Join(allTools, ","))
	fs.Int64Var(&c.seed, "seed", 1, "seed of the generated set and the MariaDB blobs")
	fs.StringVar(&c.bin, "bin", "", "directory holding backstream, minio, restic, kopia and age (default: bin/ of the repository)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temp dir (logs, data sets) and print its path")
	fs.StringVar(&c.profile, "profile", "", "write serve's CPU profile of each backstream round (from the trigger on, --profile-seconds long) and its heap profile at the end into this directory")
	fs.IntVar(&c.profileSecs, "profile-seconds", 2, "length of the CPU profile with --profile")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	var err error
	if c.size, err = parseSize(*size); err != nil || c.size == 0 {
		return fmt.Errorf("%w: --size: %v", errUsage, err)
	}
	if c.rounds < 1 {
		return fmt.Errorf("%w: --rounds: must be >= 1", errUsage)
	}
	if c.sets, err = pickList(*sets, allSets); err != nil {
		return fmt.Errorf("%w: --sets: %v", errUsage, err)
	}
	if c.tools, err = pickList(*tools, allTools); err != nil {
		return fmt.Errorf("%w: --tools: %v", errUsage, err)
	}
	if c.bin == "" {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		c.bin = filepath.Join(root, "bin")
	}
	return peers(ctx, c, stdout, stderr)
}

// pickList splits a comma-separated choice, keeping the order of all.
func pickList(s string, all []string) ([]string, error) {
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if !slices.Contains(all, v) {
			return nil, fmt.Errorf("%q is not one of %s", v, strings.Join(all, ","))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty")
	}
	slices.SortStableFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	return out, nil
}

// peerRound is one tool's backup, verify and restore of one set in one round.
type peerRound struct {
	plain int64 // plaintext bytes of the set
	// backup is the wall time to the stored point (backstream:
	// upload.completed; the others: their command's exit), verified to a
	// verified copy (backstream: backup.succeeded with verify on; restic:
	// backup + check --read-data; kopia: backup + snapshot verify of every
	// file; the baseline has no verify: 0).
	backup, verified, restore time.Duration
	// CPU of every process involved, MinIO included: to the stored point,
	// to verified, and of the restore.
	backupCPU, verifiedCPU, restoreCPU time.Duration
	// rss is the tool's peak resident set while backing up and verifying
	// (backstream: serve; baseline: its largest process), restoreRSS while
	// restoring.
	rss, restoreRSS int64
	stored          int64 // bytes in the tool's bucket after the backup
}

func (p peerRound) backupMBps() float64   { return mbps(p.plain, p.backup) }
func (p peerRound) verifiedMBps() float64 { return mbps(p.plain, p.verified) }
func (p peerRound) restoreMBps() float64  { return mbps(p.plain, p.restore) }

func perGB(d time.Duration, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return d.Seconds() / (float64(n) / 1e9)
}

// dataSet is one file every tool backs up.
type dataSet struct {
	name, path, what string
	size             int64
	sha              string
}

// peerRig is what every tool's runs share.
type peerRig struct {
	*rig
	pc     peersConfig
	client *minio.Client
	runs   int
}

func peers(ctx context.Context, pc peersConfig, stdout, stderr io.Writer) error {
	for _, t := range pc.tools {
		for _, b := range map[string][]string{"restic": {"restic"}, "kopia": {"kopia"}, "baseline": {"age"}}[t] {
			if _, err := os.Stat(filepath.Join(pc.bin, b)); err != nil {
				return fmt.Errorf("%s: %w (run make peers-tools)", filepath.Join(pc.bin, b), err)
			}
		}
		if t == "baseline" {
			if _, err := exec.LookPath("zstd"); err != nil {
				return fmt.Errorf("zstd: %w (run make peers-tools)", err)
			}
		}
	}
	dir, err := os.MkdirTemp("", "backstream-bench-peers-")
	if err != nil {
		return err
	}
	if pc.keep {
		fmt.Fprintln(stderr, "bench: temp dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	c := config{size: pc.size, seed: pc.seed, bin: pc.bin, source: "file", chunkSize: chunkSize, keep: pc.keep,
		profile: pc.profile, profileSeconds: pc.profileSecs}
	r, err := newRig(ctx, c, dir, stderr)
	if err != nil {
		return err
	}
	defer r.close()
	client, err := minio.New(r.minio.endpoint, &minio.Options{Creds: credentials.NewStaticV4(r.minio.access, r.minio.secret, "")})
	if err != nil {
		return fmt.Errorf("minio client: %w", err)
	}
	pr := &peerRig{rig: r, pc: pc, client: client}

	// Every set is made, fsynced and hashed before the first measurement,
	// so no writeback or database load runs beside one.
	var sets []dataSet
	for _, name := range pc.sets {
		ds, err := pr.makeSet(ctx, name)
		if err != nil {
			return fmt.Errorf("data set %s: %w", name, err)
		}
		sets = append(sets, ds)
	}
	syscall.Sync()

	res := peersResult{Machine: machine(), Versions: toolVersions(ctx, pc), Rounds: pc.rounds, Tools: pc.tools}
	res.Machine = append(res.Machine, [2]string{"disk: 1 GiB to a file, writeback behind, fsync", diskPersist(pr.dir, 1<<30)})
	for _, ds := range sets {
		sr := setResult{Name: ds.name, What: ds.what, Bytes: ds.size, runs: map[string][]peerRound{}}
		for round := range pc.rounds {
			for _, tool := range pc.tools {
				fmt.Fprintf(stderr, "peers: %s, round %d/%d, %s ...\n", ds.name, round+1, pc.rounds, tool)
				p, err := pr.measure(ctx, tool, ds)
				if err != nil {
					return fmt.Errorf("%s on %s, round %d: %w", tool, ds.name, round+1, err)
				}
				fmt.Fprintf(stderr, "peers: %s %s: backup %.1f MB/s, verified %.1f MB/s, restore %.1f MB/s, %.1f core-s/GB (verified %.1f), rss %.0f MiB, stored %s\n",
					ds.name, tool, p.backupMBps(), p.verifiedMBps(), p.restoreMBps(), perGB(p.backupCPU, p.plain), perGB(p.verifiedCPU, p.plain),
					float64(p.rss)/(1<<20), humanSize(p.stored))
				sr.runs[tool] = append(sr.runs[tool], p)
			}
		}
		res.Sets = append(res.Sets, sr)
	}
	res.summarize()
	return res.report(stdout)
}

// makeSet writes the named data set into the temp dir once.
func (pr *peerRig) makeSet(ctx context.Context, name string) (dataSet, error) {
	ds := dataSet{name: name}
	var err error
	switch name {
	case "gen":
		ds.what = "bench gen (pkg/datagen, seed " + fmt.Sprint(pr.pc.seed) + ")"
		ds.path, err = pr.dataFile(pr.pc.size)
	case "pgbench":
		ds.path, ds.what, err = pr.pgbenchDump(ctx)
	case "mariadb":
		ds.path, ds.what, err = pr.mariadbDump(ctx)
	case "tar":
		ds.path = filepath.Join(pr.dir, "source-tree.tar")
		ds.what = "tar of " + pr.pc.tarDir
		fmt.Fprintf(pr.log, "peers: writing %s ...\n", ds.what)
		err = runTo(ctx, ds.path, "tar", "-cf", "-", "-C", filepath.Dir(pr.pc.tarDir), filepath.Base(pr.pc.tarDir))
	}
	if err != nil {
		return ds, err
	}
	if err := syncFile(ds.path); err != nil {
		return ds, err
	}
	if ds.sha, ds.size, err = hashFile(ds.path); err != nil {
		return ds, err
	}
	fmt.Fprintf(pr.log, "peers: set %s: %s, %s\n", name, ds.what, humanSize(ds.size))
	return ds, nil
}

// runTo runs argv with its stdout written to path.
func runTo(ctx context.Context, path string, argv ...string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var errOut strings.Builder
	cmd.Stdout, cmd.Stderr = f, &errOut
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", argv[0], err, tailOf([]byte(errOut.String()), 2048))
	}
	return f.Close()
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// measure runs one tool's backup, verify and restore of ds in a fresh
// bucket, checks the restored bytes, and removes the bucket again (restic
// and kopia would otherwise deduplicate the next round against this one).
func (pr *peerRig) measure(ctx context.Context, tool string, ds dataSet) (peerRound, error) {
	pr.runs++
	b := fmt.Sprintf("%s-%s-%d", tool, ds.name, pr.runs)
	work := filepath.Join(pr.dir, b)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return peerRound{}, err
	}
	if err := pr.client.MakeBucket(ctx, b, minio.MakeBucketOptions{}); err != nil {
		return peerRound{}, fmt.Errorf("make bucket %s: %w", b, err)
	}
	defer func() {
		_ = pr.client.RemoveBucketWithOptions(context.WithoutCancel(ctx), b, minio.RemoveBucketOptions{ForceDelete: true})
		if !pr.pc.keep {
			_ = os.RemoveAll(work)
		}
		// The restored file's and MinIO's writeback must not run beside
		// the next measurement.
		syscall.Sync()
	}()
	out := filepath.Join(work, "restored")
	var p peerRound
	var err error
	switch tool {
	case "backstream":
		p, err = pr.backstreamRound(ctx, b, ds, out)
	case "restic":
		p, err = pr.resticRound(ctx, b, work, ds, out)
	case "kopia":
		p, err = pr.kopiaRound(ctx, b, work, ds, out)
	case "baseline":
		p, err = pr.baselineRound(ctx, b, work, ds, out)
	}
	if err != nil {
		return p, err
	}
	// A restore is done when its file is on disk. backstream's syncs the
	// file before it renames it into place; kopia's snapshot restore
	// (--flush-files is off by default), restic's dump and the baseline's
	// pipe leave it in the page cache: their restore time includes the
	// fsync of their file, so every tool is timed to the same end.
	synced := time.Now()
	if err := fsyncFile(out); err != nil {
		return p, fmt.Errorf("restored file: %w", err)
	}
	p.restore += time.Since(synced)
	sum, n, err := hashFile(out)
	if err != nil {
		return p, fmt.Errorf("restored file: %w", err)
	}
	if sum != ds.sha || n != ds.size {
		return p, fmt.Errorf("restored %d bytes with sha256 %s, want %d bytes with %s", n, sum, ds.size, ds.sha)
	}
	return p, nil
}

// fsyncFile flushes path's data to disk.
func fsyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// bucketSize is the bytes every object in bucket holds.
func (pr *peerRig) bucketSize(ctx context.Context, bucket string) (int64, error) {
	var n int64
	for o := range pr.client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			return 0, fmt.Errorf("list %s: %w", bucket, o.Err)
		}
		n += o.Size
	}
	return n, nil
}

// chainResult is a pipe of commands run to completion.
type chainResult struct {
	wall time.Duration
	cpu  time.Duration    // of every command (and the children each waited for)
	rss  map[string]int64 // peak RSS by step name
	// minioCPU is MinIO's CPU over the same wall time.
	minioCPU time.Duration
}

// step is one command of a chain.
type step struct {
	name string
	argv []string
	env  []string
}

// chain runs steps as a shell pipe (each one's stdout into the next one's
// stdin), the last one's stdout into outPath (or its log), and times it
// from the first start to the last exit. CPU and peak RSS of each step come
// from wait4's rusage — the same utime+stime /proc/PID/stat shows, read at
// the moment the process ends, and the VmHWM of the process (or of a child
// it waited for, whichever was larger); MinIO's from its /proc/PID/stat.
func (pr *peerRig) chain(ctx context.Context, logPath, outPath string, steps ...step) (chainResult, error) {
	res := chainResult{rss: map[string]int64{}}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return res, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s\n", time.Now().Format(time.RFC3339))
	var last io.Writer = logf
	if outPath != "" {
		f, err := os.Create(outPath)
		if err != nil {
			return res, err
		}
		defer f.Close()
		last = f
	}
	cmds := make([]*exec.Cmd, len(steps))
	var parentEnds []*os.File
	defer func() {
		for _, f := range parentEnds {
			f.Close()
		}
	}()
	for i, s := range steps {
		cmd := exec.CommandContext(ctx, s.argv[0], s.argv[1:]...)
		cmd.Env = append(os.Environ(), s.env...)
		cmd.Stderr = logf
		cmds[i] = cmd
		if i > 0 {
			r, w, err := os.Pipe()
			if err != nil {
				return res, err
			}
			parentEnds = append(parentEnds, r, w)
			cmds[i-1].Stdout, cmd.Stdin = w, r
		}
	}
	cmds[len(cmds)-1].Stdout = last
	minioBefore, err := readCPU(pr.minio.pid())
	if err != nil {
		return res, err
	}
	start := time.Now()
	for i, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			for _, c := range cmds[:i] {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
			return res, fmt.Errorf("start %s: %w", steps[i].name, err)
		}
	}
	// The parent's copies of the pipe ends must go, or no reader ever sees
	// the end of its input.
	for _, f := range parentEnds {
		f.Close()
	}
	parentEnds = nil
	var errs []error
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].name, err))
		}
		if ps := cmd.ProcessState; ps != nil {
			res.cpu += ps.UserTime() + ps.SystemTime()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				res.rss[steps[i].name] = ru.Maxrss << 10 // kB on Linux
			}
		}
	}
	res.wall = time.Since(start)
	minioAfter, err := readCPU(pr.minio.pid())
	if err != nil {
		return res, err
	}
	res.minioCPU = minioAfter.self - minioBefore.self
	if len(errs) > 0 {
		logf.Sync()
		b, _ := os.ReadFile(logPath)
		return res, fmt.Errorf("%w\n%s", errors.Join(errs...), tailOf(b, 4096))
	}
	return res, nil
}

// s3Env is the credentials in the variables the AWS SDKs, restic and kopia
// read — never in argv.
func (pr *peerRig) s3Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + pr.minio.access, "AWS_SECRET_ACCESS_KEY=" + pr.minio.secret}
}

func cat(path string) step { return step{name: "cat", argv: []string{"cat", path}} }

func (pr *peerRig) backstreamRound(ctx context.Context, bucket string, ds dataSet, out string) (peerRound, error) {
	p := peerRound{plain: ds.size}
	pr.rig.bucket = bucket
	e, err := pr.pipelineArgv(ctx, ds.size, fmt.Sprintf("[cat, %q]", ds.path))
	if err != nil {
		return p, err
	}
	p.backup, p.verified = e.upload, e.total
	p.backupCPU = e.serveCPU + e.sourceCPU + e.minioCPU
	p.verifiedCPU = p.backupCPU + e.verifyCPU + e.minioVerifyCPU
	p.rss = e.peakRSS
	if p.stored, err = pr.bucketSize(ctx, bucket); err != nil {
		return p, err
	}
	// Offline, as a user restores with the platform gone: the plan file
	// names the storage, the identity opens the data key.
	rc, err := pr.chain(ctx, filepath.Join(filepath.Dir(e.planFile), "restore.log"), "",
		step{name: "backstream", argv: []string{pr.backstrm, "restore", e.name + "/latest", "--plan-file", e.planFile, "--identity", pr.identity, "--to", out}, env: pr.env})
	if err != nil {
		return p, err
	}
	p.restore, p.restoreCPU, p.restoreRSS = rc.wall, rc.cpu+rc.minioCPU, rc.rss["backstream"]
	return p, nil
}

// peerPassword is the repository password of restic's and kopia's
// throwaway repositories, passed in their environment.
const peerPassword = "bench-peers-not-a-secret"

func (pr *peerRig) resticRound(ctx context.Context, bucket, work string, ds dataSet, out string) (peerRound, error) {
	p := peerRound{plain: ds.size}
	restic := filepath.Join(pr.pc.bin, "restic")
	env := append(pr.s3Env(), "RESTIC_REPOSITORY=s3:http://"+pr.minio.endpoint+"/"+bucket, "RESTIC_PASSWORD="+peerPassword,
		"RESTIC_CACHE_DIR="+filepath.Join(work, "cache"))
	logPath := filepath.Join(work, "restic.log")
	// The repository is made once per bucket, as a user makes it once.
	if _, err := pr.chain(ctx, logPath, "", step{name: "restic", argv: []string{restic, "init"}, env: env}); err != nil {
		return p, err
	}
	b, err := pr.chain(ctx, logPath, "", cat(ds.path),
		step{name: "restic", argv: []string{restic, "backup", "--stdin", "--stdin-filename", "data", "--quiet"}, env: env})
	if err != nil {
		return p, err
	}
	p.backup, p.backupCPU, p.rss = b.wall, b.cpu+b.minioCPU, b.rss["restic"]
	if p.stored, err = pr.bucketSize(ctx, bucket); err != nil {
		return p, err
	}
	// check --read-data reads every pack back and checks every blob's
	// hash: the counterpart of backstream's full verify.
	v, err := pr.chain(ctx, logPath, "", step{name: "restic", argv: []string{restic, "check", "--read-data"}, env: env})
	if err != nil {
		return p, err
	}
	p.verified, p.verifiedCPU, p.rss = b.wall+v.wall, p.backupCPU+v.cpu+v.minioCPU, max(p.rss, v.rss["restic"])
	r, err := pr.chain(ctx, logPath, out, step{name: "restic", argv: []string{restic, "dump", "latest", "/data"}, env: env})
	if err != nil {
		return p, err
	}
	p.restore, p.restoreCPU, p.restoreRSS = r.wall, r.cpu+r.minioCPU, r.rss["restic"]
	return p, nil
}

func (pr *peerRig) kopiaRound(ctx context.Context, bucket, work string, ds dataSet, out string) (peerRound, error) {
	p := peerRound{plain: ds.size}
	kopia := filepath.Join(pr.pc.bin, "kopia")
	env := append(pr.s3Env(), "KOPIA_PASSWORD="+peerPassword, "KOPIA_CONFIG_PATH="+filepath.Join(work, "kopia.config"),
		"KOPIA_CACHE_DIRECTORY="+filepath.Join(work, "cache"), "KOPIA_LOG_DIR="+filepath.Join(work, "logs"),
		"KOPIA_CHECK_FOR_UPDATES=false")
	logPath := filepath.Join(work, "kopia.log")
	// Made once per bucket, with the compression issue #16 measured kopia
	// at (its default is none).
	if _, err := pr.chain(ctx, logPath, "", step{name: "kopia", argv: []string{kopia, "repository", "create", "s3",
		"--bucket", bucket, "--endpoint", pr.minio.endpoint, "--disable-tls"}, env: env}); err != nil {
		return p, err
	}
	if _, err := pr.chain(ctx, logPath, "", step{name: "kopia", argv: []string{kopia, "policy", "set", "--global", "--compression", "zstd-fastest"}, env: env}); err != nil {
		return p, err
	}
	b, err := pr.chain(ctx, logPath, "", cat(ds.path),
		step{name: "kopia", argv: []string{kopia, "snapshot", "create", "--stdin-file", "data", "--no-progress", filepath.Join(work, "src")}, env: env})
	if err != nil {
		return p, err
	}
	p.backup, p.backupCPU, p.rss = b.wall, b.cpu+b.minioCPU, b.rss["kopia"]
	if p.stored, err = pr.bucketSize(ctx, bucket); err != nil {
		return p, err
	}
	// Verifying 100% of the files reads every file's contents back.
	v, err := pr.chain(ctx, logPath, "", step{name: "kopia", argv: []string{kopia, "snapshot", "verify", "--verify-files-percent", "100"}, env: env})
	if err != nil {
		return p, err
	}
	p.verified, p.verifiedCPU, p.rss = b.wall+v.wall, p.backupCPU+v.cpu+v.minioCPU, max(p.rss, v.rss["kopia"])
	id, err := kopiaSnapshotID(ctx, kopia, env)
	if err != nil {
		return p, err
	}
	// The snapshot's root is a directory holding the one file "data".
	restoreDir := filepath.Join(work, "restore")
	r, err := pr.chain(ctx, logPath, "", step{name: "kopia", argv: []string{kopia, "snapshot", "restore", id, restoreDir}, env: env})
	if err != nil {
		return p, err
	}
	if err := os.Rename(filepath.Join(restoreDir, "data"), out); err != nil {
		return p, fmt.Errorf("kopia restore: %w", err)
	}
	p.restore, p.restoreCPU, p.restoreRSS = r.wall, r.cpu+r.minioCPU, r.rss["kopia"]
	return p, nil
}

// kopiaSnapshotID is the id of the only snapshot in the repository.
func kopiaSnapshotID(ctx context.Context, kopia string, env []string) (string, error) {
	cmd := exec.CommandContext(ctx, kopia, "snapshot", "list", "--all", "--json")
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kopia snapshot list: %w", err)
	}
	var snaps []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &snaps); err != nil {
		return "", fmt.Errorf("kopia snapshot list: %w", err)
	}
	if len(snaps) != 1 || snaps[0].ID == "" {
		return "", fmt.Errorf("kopia snapshot list: %d snapshots, want 1", len(snaps))
	}
	return snaps[0].ID, nil
}

// baselineRound is what a user gets with no framework: the distribution's
// zstd at level 1, age to the same recipient, and a multipart upload with a
// fixed part size (this program's `s3 put`, minio-go, the part size and
// concurrency of backstream's s3 plugin); restored by get | age -d | zstd -d.
func (pr *peerRig) baselineRound(ctx context.Context, bucket, work string, ds dataSet, out string) (peerRound, error) {
	p := peerRound{plain: ds.size}
	age := filepath.Join(pr.pc.bin, "age")
	env := []string{s3EndpointEnv + "=" + pr.minio.endpoint, accessEnv + "=" + pr.minio.access, secretEnv + "=" + pr.minio.secret}
	logPath := filepath.Join(work, "baseline.log")
	b, err := pr.chain(ctx, logPath, "", cat(ds.path),
		step{name: "zstd", argv: []string{"zstd", "-1", "-c", "-q"}},
		step{name: "age", argv: []string{age, "-r", pr.recipient}},
		step{name: "put", argv: []string{pr.self, "s3", "put", bucket, "data.zst.age"}, env: env})
	if err != nil {
		return p, err
	}
	p.backup, p.backupCPU = b.wall, b.cpu+b.minioCPU
	p.rss = max(b.rss["zstd"], b.rss["age"], b.rss["put"])
	if p.stored, err = pr.bucketSize(ctx, bucket); err != nil {
		return p, err
	}
	r, err := pr.chain(ctx, logPath, out,
		step{name: "get", argv: []string{pr.self, "s3", "get", bucket, "data.zst.age"}, env: env},
		step{name: "age", argv: []string{age, "-d", "-i", pr.identity}},
		step{name: "zstd", argv: []string{"zstd", "-d", "-c", "-q"}})
	if err != nil {
		return p, err
	}
	p.restore, p.restoreCPU = r.wall, r.cpu+r.minioCPU
	p.restoreRSS = max(r.rss["zstd"], r.rss["age"], r.rss["get"])
	return p, nil
}

// toolVersions names what was measured.
func toolVersions(ctx context.Context, pc peersConfig) map[string]string {
	v := map[string]string{}
	try := func(name string, argv ...string) {
		b, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		v[name] = strings.TrimSpace(line)
	}
	try("backstream", filepath.Join(pc.bin, "backstream"), "version")
	for _, t := range pc.tools {
		switch t {
		case "restic":
			try("restic", filepath.Join(pc.bin, "restic"), "version")
		case "kopia":
			// Built from its module directory, kopia calls itself
			// "v0-unofficial"; the pin install-peers.sh wrote says which
			// version it is.
			if b, err := os.ReadFile(filepath.Join(pc.bin, ".kopia.version")); err == nil {
				v["kopia"] = "kopia " + strings.TrimSpace(string(b))
			} else {
				try("kopia", filepath.Join(pc.bin, "kopia"), "--version")
			}
		case "baseline":
			try("zstd", "zstd", "--version")
			try("age", filepath.Join(pc.bin, "age"), "--version")
			v["age"] = "age " + v["age"]
		}
	}
	try("minio", filepath.Join(pc.bin, "minio"), "--version")
	return v
}
