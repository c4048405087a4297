// Command bench measures backstream end to end against a real MinIO: it
// starts bin/minio and a `bin/backstream serve` child process, backs up a
// seeded, about 2:1 compressible data set (pkg/datagen, written to a file
// before the runs and streamed by cat, or produced live by its own `gen`
// subcommand) through zstd fastest + AES-256-GCM into S3, and reports the
// end-to-end rate, the serve process's peak RSS, and the rate of every
// stage measured alone in this process on the same data. The last line of
// its output is one JSON object for scripts (see docs/bench.md).
//
//	bench [--size 1GiB] [--rss-sizes 1GiB,4GiB] [--repeat 3] [--source file|gen]
//	      [--data-plane auto|jetstream] [--stage-size 256MiB] [--stage-repeat 3]
//	bench gen --size N [--seed S]
//	bench peers [--size 1GiB] [--rounds 3] [--sets gen,pgbench,mariadb,tar] [--tools backstream,restic,kopia,baseline]
//	bench s3 put|get BUCKET KEY
//
// bench peers measures backstream side by side with restic, kopia and
// `zstd -1 | age | upload` (peers.go); bench s3 is that baseline's upload
// and download.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		code := 1
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
			code = 2
		}
		os.Exit(code)
	}
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "gen":
			return genCmd(args[1:], stdout, stderr)
		case "peers":
			return peersCmd(ctx, args[1:], stdout, stderr)
		case "s3":
			return s3Cmd(ctx, args[1:], os.Stdin, stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	size := fs.String("size", "1GiB", "plaintext size of the end-to-end backup")
	rss := fs.String("rss-sizes", "1GiB,4GiB", "comma-separated sizes to sample the serve process's peak RSS at, each on a fresh serve (empty: none)")
	chunk := fs.String("chunk-size", "256KiB", "the plan's spec.chunkSize for the end-to-end runs (the stages alone always use 256KiB)")
	frame := fs.String("frame-size", "0", "the plan's spec.filters.frameSize for the end-to-end runs (0: unset, the plan's default)")
	partSize := fs.String("s3-part-size", "0", "the destination's s3 partSize for the end-to-end runs (0: the plugin's default, 8MiB doubling every 2000 parts)")
	fs.IntVar(&c.s3Concurrency, "s3-concurrency", 0, "the destination's s3 concurrency for the end-to-end runs (0: the plugin's default, 4)")
	stageSize := fs.String("stage-size", "256MiB", "size of the in-memory data set each stage is measured on alone")
	fs.Int64Var(&c.seed, "seed", 1, "seed of the generated data set")
	fs.IntVar(&c.stageRepeat, "stage-repeat", 3, "rounds of the stages alone, taking turns with the end-to-end runs (each stage's best is reported)")
	fs.IntVar(&c.repeat, "repeat", 3, "end-to-end runs at --size, taking turns with the rounds of the stages (best is reported, with the spread)")
	fs.StringVar(&c.bin, "bin", "", "directory holding backstream and minio (default: bin/ of the repository)")
	fs.StringVar(&c.profile, "profile", "", "write serve's CPU profile of each end-to-end run (from the trigger on, --profile-seconds long) and its heap profile at the end into this directory")
	fs.IntVar(&c.profileSeconds, "profile-seconds", 10, "length of the CPU profile with --profile")
	fs.StringVar(&c.source, "source", "file", "the plan's source: file (the data set written to a file before the run, streamed by cat) or gen (generated while the run reads it)")
	fs.StringVar(&c.key, "key", "recipient", "how the end-to-end plan encrypts: recipient (an age X25519 recipient; serve verifies with the identity) or passphrase (the plan keyring; serve verifies with the passphrase)")
	fs.StringVar(&c.dataPlane, "data-plane", "auto", "serve's --data-plane for the end-to-end runs: auto (chunks in memory between the stages of the one serve) or jetstream (through the embedded server's chunk streams)")
	fs.BoolVar(&c.skipStages, "skip-stages", false, "measure only end to end")
	fs.BoolVar(&c.keep, "keep", false, "keep the temp dir (logs, stores) and print its path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	var err error
	if c.size, err = parseSize(*size); err != nil {
		return fmt.Errorf("%w: --size: %v", errUsage, err)
	}
	if c.chunkSize, err = parseSize(*chunk); err != nil {
		return fmt.Errorf("%w: --chunk-size: %v", errUsage, err)
	}
	if c.frameSize, err = parseSize(*frame); err != nil {
		return fmt.Errorf("%w: --frame-size: %v", errUsage, err)
	}
	if c.s3PartSize, err = parseSize(*partSize); err != nil {
		return fmt.Errorf("%w: --s3-part-size: %v", errUsage, err)
	}
	if c.stageSize, err = parseSize(*stageSize); err != nil {
		return fmt.Errorf("%w: --stage-size: %v", errUsage, err)
	}
	if strings.TrimSpace(*rss) != "" {
		for _, s := range strings.Split(*rss, ",") {
			n, err := parseSize(s)
			if err != nil {
				return fmt.Errorf("%w: --rss-sizes: %v", errUsage, err)
			}
			c.rssSizes = append(c.rssSizes, n)
		}
	}
	if c.source != "file" && c.source != "gen" {
		return fmt.Errorf("%w: --source: %q is not file or gen", errUsage, c.source)
	}
	if c.key != "recipient" && c.key != "passphrase" {
		return fmt.Errorf("%w: --key: %q is not recipient or passphrase", errUsage, c.key)
	}
	if c.dataPlane != "auto" && c.dataPlane != "jetstream" {
		return fmt.Errorf("%w: --data-plane: %q is not auto or jetstream", errUsage, c.dataPlane)
	}
	if c.stageRepeat < 1 {
		return fmt.Errorf("%w: --stage-repeat: must be >= 1", errUsage)
	}
	if c.repeat < 1 {
		return fmt.Errorf("%w: --repeat: must be >= 1", errUsage)
	}
	if c.bin == "" {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		c.bin = filepath.Join(root, "bin")
	}
	return bench(ctx, c, stdout, stderr)
}

// config is what one bench run measures.
type config struct {
	size           int64
	seed           int64
	repeat         int
	stageRepeat    int
	rssSizes       []int64
	stageSize      int64
	chunkSize      int64
	frameSize      int64 // 0: the plan leaves it unset
	s3PartSize     int64
	s3Concurrency  int
	bin            string
	profile        string
	profileSeconds int
	source         string // file | gen
	dataPlane      string // serve --data-plane: auto | jetstream
	key            string // recipient | passphrase
	skipStages     bool
	keep           bool
}

// parseSize reads "1GiB", "256MiB", "64KiB", "1000B" or a bare byte count.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a count of bytes, KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// humanSize prints n in the unit that reads best.
func humanSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<30:
		return fmt.Sprintf("%.2fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%dB", n)
}

// repoRoot is the directory holding go.work, found from the working
// directory upwards (make bench runs in integration/).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.work) not found above the working directory; pass --bin")
		}
		dir = parent
	}
}
