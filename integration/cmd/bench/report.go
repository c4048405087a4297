package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/backstream/backstream/pkg/writeback"
)

// summary is the bench's last line, for scripts.
type summary struct {
	E2EMBps          float64 `json:"e2e_mbps"`
	SlowestStage     string  `json:"slowest_stage"`
	SlowestStageMBps float64 `json:"slowest_stage_mbps"`
	Ratio            float64 `json:"ratio"`
	RSS1GMiB         float64 `json:"rss_1g_mib"`
	RSS4GMiB         float64 `json:"rss_4g_mib"`
	DataPlane        string  `json:"data_plane"`
	Key              string  `json:"key"`
}

func bench(ctx context.Context, c config, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "backstream-bench-")
	if err != nil {
		return err
	}
	if c.keep {
		fmt.Fprintln(stderr, "bench: temp dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	r, err := newRig(ctx, c, dir, stderr)
	if err != nil {
		return err
	}
	defer r.close()
	if c.source == "file" {
		// Every data file is written (and synced) before the first
		// measurement, so no run shares the disk with writeback.
		for _, size := range append([]int64{c.size}, c.rssSizes...) {
			if _, err := r.dataFile(size); err != nil {
				return err
			}
		}
	}

	// End-to-end runs and rounds of the stages alone take turns, so that
	// both see the same moods of a shared machine; each reports its best.
	// Noise only ever slows a run down, and neither side of the ratio must
	// be flattered by having been measured in a better moment than the other.
	var e2e []e2eResult
	var st []stageResult
	rounds := c.repeat
	if !c.skipStages {
		rounds = max(rounds, c.stageRepeat)
	}
	for i := range rounds {
		if i < c.repeat {
			res, err := r.pipeline(ctx, c.size)
			if err != nil {
				return err
			}
			e2e = append(e2e, res)
		}
		if !c.skipStages && i < c.stageRepeat {
			round, err := r.stages(ctx, min(c.stageSize, c.size))
			if err != nil {
				return err
			}
			st = bestStages(st, round)
		}
	}
	rss := map[int64][]int64{c.size: nil}
	for _, res := range e2e {
		rss[c.size] = append(rss[c.size], res.peakRSS)
	}
	for _, size := range c.rssSizes {
		if len(rss[size]) > 0 {
			continue
		}
		res, err := r.pipeline(ctx, size)
		if err != nil {
			return err
		}
		rss[size] = append(rss[size], res.peakRSS)
	}
	return report(stdout, c, e2e, rss, st)
}

// bestStages keeps, stage by stage, the faster of two rounds.
func bestStages(best, round []stageResult) []stageResult {
	if best == nil {
		return round
	}
	for i := range best {
		if round[i].bound() > best[i].bound() {
			best[i] = round[i]
		}
	}
	return best
}

func report(w io.Writer, c config, e2e []e2eResult, rss map[int64][]int64, st []stageResult) error {
	// One tabwriter per section, so a section's title does not widen the
	// columns of the others.
	section := func(title string, rows func(tw *tabwriter.Writer)) {
		fmt.Fprintln(w, title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		rows(tw)
		tw.Flush()
		fmt.Fprintln(w)
	}
	section("machine", func(tw *tabwriter.Writer) {
		for _, f := range machine() {
			fmt.Fprintf(tw, "  %s\t%s\n", f[0], f[1])
		}
	})

	best := slices.MaxFunc(e2e, func(a, b e2eResult) int { return cmpFloat(a.uploadMBps(), b.uploadMBps()) })
	section(fmt.Sprintf("end to end: %s, zstd fastest + aes-256-gcm -> s3 (MinIO), fresh serve per run, data plane %s, key %s; MB = 10^6 bytes of plaintext", humanSize(c.size), c.dataPlane, c.key), func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "  run\ttrigger->upload.completed\tMB/s (e2e)\ttrigger->backup.succeeded\tMB/s (with verify)\tstored\tratio\tpeak RSS")
		for i, res := range e2e {
			fmt.Fprintf(tw, "  %d\t%s\t%.1f\t%s\t%.1f\t%s\t%.2f\t%.0f MiB\n", i+1,
				res.upload.Round(time.Millisecond), res.uploadMBps(), res.total.Round(time.Millisecond), res.totalMBps(),
				humanSize(res.stored), float64(res.size)/float64(max(1, res.stored)), float64(res.peakRSS)/(1<<20))
		}
		fmt.Fprintln(tw, "  \t\t\t\t\t\t\t")
		fmt.Fprintln(tw, "  run\tcpu serve\tcpu source\tcpu minio\tcores busy\tcore-s per GB\tcpu verify\t")
		for i, res := range e2e {
			all := res.serveCPU + res.sourceCPU + res.minioCPU
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%.2f\t%.1f\t%s\t\n", i+1, res.serveCPU, res.sourceCPU, res.minioCPU,
				all.Seconds()/res.upload.Seconds(), res.cpuPerGB(), res.verifyCPU)
		}
		if len(e2e) > 1 {
			lo := slices.MinFunc(e2e, func(a, b e2eResult) int { return cmpFloat(a.uploadMBps(), b.uploadMBps()) })
			fmt.Fprintf(tw, "  best\t\t%.1f\t\t%.1f\t\t\t(e2e spread %.1f..%.1f)\n", best.uploadMBps(), best.totalMBps(), lo.uploadMBps(), best.uploadMBps())
		}
	})

	sizes := make([]int64, 0, len(rss))
	for s := range rss {
		sizes = append(sizes, s)
	}
	slices.Sort(sizes)
	section("peak RSS of the serve process (VmHWM; all services and the embedded NATS server)", func(tw *tabwriter.Writer) {
		for _, s := range sizes {
			if len(rss[s]) > 0 {
				fmt.Fprintf(tw, "  %s\t%.0f MiB\n", humanSize(s), float64(slices.Max(rss[s]))/(1<<20))
			}
		}
	})

	var slowest *stageResult
	if len(st) > 0 {
		section(fmt.Sprintf("stages alone, same data (%s), in this process", humanSize(st[0].in)), func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "  stage\tinput\tMB/s of input\tbound MB/s (plaintext)\tcores busy\tcore-s per GB\tnote")
			for i, s := range st {
				fmt.Fprintf(tw, "  %s\t%s\t%.0f\t%.0f\t%.2f\t%.1f\t%s\n", s.name, humanSize(s.in), s.mbps(), s.bound(), s.cores(), s.cpuPerGB(), s.note)
				if !s.insight && (slowest == nil || s.bound() < slowest.bound()) {
					slowest = &st[i]
				}
			}
		})
	}
	if len(st) > 0 {
		var stageCPU float64
		for _, s := range st {
			if !s.insight {
				stageCPU += s.cpuPerGB()
			}
		}
		fmt.Fprintf(w, "cpu budget: the pipeline spent %.1f core-s per GB to upload.completed (best run); the stages alone need %.1f core-s per GB together;\n"+
			"  on %d cores that caps e2e near %.0f MB/s, whatever the slowest stage alone does\n",
			best.cpuPerGB(), stageCPU, runtime.NumCPU(), float64(runtime.NumCPU())/best.cpuPerGB()*1000)
	}
	sum := summary{E2EMBps: round1(best.uploadMBps()), DataPlane: c.dataPlane, Key: c.key}
	if slowest != nil {
		sum.SlowestStage, sum.SlowestStageMBps = slowest.name, round1(slowest.bound())
		sum.Ratio = math.Round(best.uploadMBps()/slowest.bound()*1000) / 1000
		fmt.Fprintf(w, "slowest stage alone: %s at %.1f MB/s; e2e / slowest = %.2f (target >= 0.80)\n", slowest.name, slowest.bound(), sum.Ratio)
	}
	if v := rss[1<<30]; len(v) > 0 {
		sum.RSS1GMiB = math.Round(float64(slices.Max(v)) / (1 << 20))
	}
	if v := rss[4<<30]; len(v) > 0 {
		sum.RSS4GMiB = math.Round(float64(slices.Max(v)) / (1 << 20))
	}
	if sum.RSS1GMiB > 0 && sum.RSS4GMiB > 0 {
		fmt.Fprintf(w, "peak RSS 4GiB / 1GiB = %.2f (target <= 1.10, and under 256 MiB)\n", sum.RSS4GMiB/sum.RSS1GMiB)
	}
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// machine lists the facts that explain the figures: cores, CPU model, the
// instruction sets the hot paths use, and the load when the bench ran.
func machine() [][2]string {
	model, flags := "unknown", map[string]bool{}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "model name":
				model = strings.TrimSpace(v)
			case "flags":
				for _, f := range strings.Fields(v) {
					flags[f] = true
				}
			}
		}
	}
	yes := func(f string) string {
		if flags[f] {
			return "yes"
		}
		return "no"
	}
	load := "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return [][2]string{
		{"nproc", fmt.Sprint(runtime.NumCPU())},
		{"cpu", model},
		{"sha_ni", yes("sha_ni")},
		{"aes", yes("aes")},
		{"avx2", yes("avx2")},
		{"free page reporting", freePageReporting()},
		{"go", runtime.Version()},
		{"load (1 5 15 min, at the end)", load},
	}
}

// freePageReporting says whether the machine is a VM whose freed memory
// goes back to its host (virtio-balloon's free page reporting, feature bit
// 5 of device id 5). There, memory touched for the first time since it was
// freed is backed again by the host: writing a GiB into a fresh page cache
// costs ~2 s of kernel time on the bench machine instead of ~0.3, which
// every tool writing a restored file through the page cache pays
// (docs/bench.md, "Restored files written with writeback behind").
func freePageReporting() string {
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*")
	for _, d := range devs {
		id, err := os.ReadFile(filepath.Join(d, "device"))
		if err != nil || strings.TrimSpace(string(id)) != "0x0005" {
			continue
		}
		features, err := os.ReadFile(filepath.Join(d, "features"))
		if err != nil {
			return "unknown"
		}
		if f := strings.TrimSpace(string(features)); len(f) > 5 && f[5] == '1' {
			return "yes"
		}
		return "no"
	}
	return "no"
}

// diskPersist writes size bytes into a file in dir as a restore does
// (pkg/writeback, then fsync) and reports how fast they were on disk:
// every tool's restore is timed until its file is durable, so where the
// disk is slower than a tool decodes, its restore figure is the disk's
// (docs/bench.md, "Against peers on the session's last code, and a
// slower disk").
func diskPersist(dir string, size int64) string {
	f, err := os.CreateTemp(dir, "disk-probe-")
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>11) // not zeros: no file system may skip them
	}
	start := time.Now()
	w := writeback.New(f)
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := w.Write(buf); err != nil {
			return "unknown: " + err.Error()
		}
	}
	if err := f.Sync(); err != nil {
		return "unknown: " + err.Error()
	}
	d := time.Since(start)
	return fmt.Sprintf("%.0f MB/s (%s)", float64(size)/d.Seconds()/1e6, d.Round(time.Millisecond))
}
