package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// peersResult is everything `bench peers` measured; its JSON is the last
// line of the output.
type peersResult struct {
	Machine  [][2]string       `json:"-"`
	Host     map[string]string `json:"machine"`
	Versions map[string]string `json:"versions"`
	Rounds   int               `json:"rounds"`
	Tools    []string          `json:"tools"`
	Sets     []setResult       `json:"sets"`
	Targets  []target          `json:"targets"`
}

// setResult is one data set's figures: per tool the medians over the
// rounds, and backstream's ratio to every other tool round by round.
type setResult struct {
	Name  string                 `json:"name"`
	What  string                 `json:"what"`
	Bytes int64                  `json:"bytes"`
	Tools map[string]toolFigures `json:"tools"`
	// Ratios are backstream ÷ the tool, one per round (the two measured
	// minutes apart in the same round).
	Ratios map[string]ratioFigures `json:"ratios"`
	runs   map[string][]peerRound
}

// toolFigures are medians over the rounds, except the peak RSS (the
// highest round: a memory limit must hold in every one) and the rounds'
// own figures for the record.
type toolFigures struct {
	BackupMBps       float64       `json:"backup_mbps"`
	VerifiedMBps     float64       `json:"verified_mbps,omitempty"`
	RestoreMBps      float64       `json:"restore_mbps"`
	BackupCPUPerGB   float64       `json:"backup_core_s_per_gb"`
	VerifiedCPUPerGB float64       `json:"verified_core_s_per_gb,omitempty"`
	RestoreCPUPerGB  float64       `json:"restore_core_s_per_gb"`
	PeakRSSMiB       float64       `json:"peak_rss_mib"`
	RestoreRSSMiB    float64       `json:"restore_rss_mib"`
	StoredBytes      int64         `json:"stored_bytes"`
	Rounds           []roundFigure `json:"rounds"`
}

type roundFigure struct {
	BackupMBps       float64 `json:"backup_mbps"`
	VerifiedMBps     float64 `json:"verified_mbps,omitempty"`
	RestoreMBps      float64 `json:"restore_mbps"`
	BackupCPUPerGB   float64 `json:"backup_core_s_per_gb"`
	VerifiedCPUPerGB float64 `json:"verified_core_s_per_gb,omitempty"`
	RestoreCPUPerGB  float64 `json:"restore_core_s_per_gb"`
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
	RestoreRSSMiB    float64 `json:"restore_rss_mib"`
	StoredBytes      int64   `json:"stored_bytes"`
}

// ratioFigures are backstream ÷ one tool per round. MB/s ratios above 1
// favour backstream; CPU, RSS and stored ratios below 1 do. A figure the
// tool lacks (the baseline's verify) has no ratios.
type ratioFigures struct {
	BackupMBps       []float64 `json:"backup_mbps"`
	VerifiedMBps     []float64 `json:"verified_mbps,omitempty"`
	RestoreMBps      []float64 `json:"restore_mbps"`
	VerifiedCPUPerGB []float64 `json:"verified_core_s_per_gb,omitempty"`
	Stored           []float64 `json:"stored"`
}

// target is one of issue #16's targets against the medians.
type target struct {
	Set   string  `json:"set"`
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	// AtLeast: Value must be >= Limit; otherwise <=.
	AtLeast bool `json:"at_least"`
	Met     bool `json:"met"`
}

func figure(p peerRound) roundFigure {
	return roundFigure{
		BackupMBps: round1(p.backupMBps()), VerifiedMBps: round1(p.verifiedMBps()), RestoreMBps: round1(p.restoreMBps()),
		BackupCPUPerGB: round2(perGB(p.backupCPU, p.plain)), VerifiedCPUPerGB: round2(perGB(p.verifiedCPU, p.plain)),
		RestoreCPUPerGB: round2(perGB(p.restoreCPU, p.plain)),
		PeakRSSMiB:      math.Round(float64(p.rss) / (1 << 20)), RestoreRSSMiB: math.Round(float64(p.restoreRSS) / (1 << 20)),
		StoredBytes: p.stored,
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// median of xs (the mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func collect[T any](rs []roundFigure, f func(roundFigure) T) []T {
	out := make([]T, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

// summarize turns the rounds into medians, ratios and targets.
func (res *peersResult) summarize() {
	res.Host = map[string]string{}
	for _, kv := range res.Machine {
		res.Host[kv[0]] = kv[1]
	}
	for i := range res.Sets {
		s := &res.Sets[i]
		s.Tools = map[string]toolFigures{}
		for tool, runs := range s.runs {
			rs := collect2(runs, figure)
			stored := collect(rs, func(r roundFigure) float64 { return float64(r.StoredBytes) })
			s.Tools[tool] = toolFigures{
				BackupMBps:       round1(median(collect(rs, func(r roundFigure) float64 { return r.BackupMBps }))),
				VerifiedMBps:     round1(median(collect(rs, func(r roundFigure) float64 { return r.VerifiedMBps }))),
				RestoreMBps:      round1(median(collect(rs, func(r roundFigure) float64 { return r.RestoreMBps }))),
				BackupCPUPerGB:   round2(median(collect(rs, func(r roundFigure) float64 { return r.BackupCPUPerGB }))),
				VerifiedCPUPerGB: round2(median(collect(rs, func(r roundFigure) float64 { return r.VerifiedCPUPerGB }))),
				RestoreCPUPerGB:  round2(median(collect(rs, func(r roundFigure) float64 { return r.RestoreCPUPerGB }))),
				PeakRSSMiB:       slices.Max(collect(rs, func(r roundFigure) float64 { return r.PeakRSSMiB })),
				RestoreRSSMiB:    slices.Max(collect(rs, func(r roundFigure) float64 { return r.RestoreRSSMiB })),
				StoredBytes:      int64(median(stored)),
				Rounds:           rs,
			}
		}
		bs, ok := s.Tools["backstream"]
		if !ok {
			continue
		}
		s.Ratios = map[string]ratioFigures{}
		for tool, tf := range s.Tools {
			if tool == "backstream" {
				continue
			}
			var rf ratioFigures
			for k := range min(len(bs.Rounds), len(tf.Rounds)) {
				a, b := bs.Rounds[k], tf.Rounds[k]
				rf.BackupMBps = append(rf.BackupMBps, ratio(a.BackupMBps, b.BackupMBps))
				rf.RestoreMBps = append(rf.RestoreMBps, ratio(a.RestoreMBps, b.RestoreMBps))
				rf.Stored = append(rf.Stored, ratio(float64(a.StoredBytes), float64(b.StoredBytes)))
				if b.VerifiedMBps > 0 {
					rf.VerifiedMBps = append(rf.VerifiedMBps, ratio(a.VerifiedMBps, b.VerifiedMBps))
					rf.VerifiedCPUPerGB = append(rf.VerifiedCPUPerGB, ratio(a.VerifiedCPUPerGB, b.VerifiedCPUPerGB))
				}
			}
			s.Ratios[tool] = rf
		}
		res.Targets = append(res.Targets, setTargets(s)...)
	}
}

func collect2(runs []peerRound, f func(peerRound) roundFigure) []roundFigure {
	out := make([]roundFigure, len(runs))
	for i, r := range runs {
		out[i] = f(r)
	}
	return out
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return math.Round(a/b*1000) / 1000
}

// setTargets are issue #16's targets that this set's medians can be held
// to: speed, CPU and size against kopia, restic and the baseline on the
// generated set and the pgbench dump; serve's memory on every set; hex
// dumps against zstd -1 on the MariaDB set.
func setTargets(s *setResult) []target {
	bs := s.Tools["backstream"]
	var out []target
	add := func(name string, value, limit float64, atLeast bool) {
		value = math.Round(value*1000) / 1000
		met := value <= limit
		if atLeast {
			met = value >= limit
		}
		out = append(out, target{Set: s.Name, Name: name, Value: value, Limit: limit, AtLeast: atLeast, Met: met})
	}
	kopia, hasKopia := s.Tools["kopia"]
	restic, hasRestic := s.Tools["restic"]
	base, hasBase := s.Tools["baseline"]
	if s.Name == "gen" || s.Name == "pgbench" {
		if hasKopia {
			add("verified MB/s ÷ kopia's", ratio(bs.VerifiedMBps, kopia.VerifiedMBps), 1.3, true)
		}
		if hasRestic {
			add("verified MB/s ÷ restic's", ratio(bs.VerifiedMBps, restic.VerifiedMBps), 1.5, true)
		}
		if hasBase {
			add("upload.completed MB/s ÷ baseline's", ratio(bs.BackupMBps, base.BackupMBps), 0.9, true)
		}
		if hasKopia {
			add("core-s per GB with verify ÷ kopia's", ratio(bs.VerifiedCPUPerGB, kopia.VerifiedCPUPerGB), 0.8, false)
			add("stored ÷ kopia's", ratio(float64(bs.StoredBytes), float64(kopia.StoredBytes)), 1.0, false)
			add("restore MB/s ÷ kopia's", ratio(bs.RestoreMBps, kopia.RestoreMBps), 2.0, true)
		}
		if hasRestic {
			add("restore MB/s ÷ restic's", ratio(bs.RestoreMBps, restic.RestoreMBps), 1.5, true)
		}
	}
	if s.Name == "mariadb" && hasBase {
		add("stored ÷ zstd -1 | age (hex data)", ratio(float64(bs.StoredBytes), float64(base.StoredBytes)), 1.05, false)
	}
	add("serve peak RSS MiB (recipient)", bs.PeakRSSMiB, 128, false)
	return out
}

func (res *peersResult) report(w io.Writer) error {
	section := func(title string, rows func(tw *tabwriter.Writer)) {
		fmt.Fprintln(w, title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		rows(tw)
		tw.Flush()
		fmt.Fprintln(w)
	}
	section("machine", func(tw *tabwriter.Writer) {
		for _, f := range res.Machine {
			fmt.Fprintf(tw, "  %s\t%s\n", f[0], f[1])
		}
	})
	section("versions", func(tw *tabwriter.Writer) {
		keys := make([]string, 0, len(res.Versions))
		for k := range res.Versions {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", k, res.Versions[k])
		}
	})
	for _, s := range res.Sets {
		section(fmt.Sprintf("%s: %s, %s; medians of %d interleaved rounds; MB = 10^6 bytes of plaintext; CPU includes MinIO's", s.Name, s.What, humanSize(s.Bytes), res.Rounds), func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "  tool\tbackup MB/s\tverified MB/s\trestore MB/s\tcore-s/GB backup\tverified\trestore\tpeak RSS\trestore RSS\tstored\tratio")
			for _, tool := range res.Tools {
				tf, ok := s.Tools[tool]
				if !ok {
					continue
				}
				verified, vcpu := "-", "-"
				if tf.VerifiedMBps > 0 {
					verified, vcpu = fmt.Sprintf("%.1f", tf.VerifiedMBps), fmt.Sprintf("%.1f", tf.VerifiedCPUPerGB)
				}
				fmt.Fprintf(tw, "  %s\t%.1f %s\t%s\t%.1f %s\t%.1f\t%s\t%.1f\t%.0f MiB\t%.0f MiB\t%s\t%.2f\n", tool,
					tf.BackupMBps, spread(tf.Rounds, func(r roundFigure) float64 { return r.BackupMBps }), verified,
					tf.RestoreMBps, spread(tf.Rounds, func(r roundFigure) float64 { return r.RestoreMBps }),
					tf.BackupCPUPerGB, vcpu, tf.RestoreCPUPerGB, tf.PeakRSSMiB, tf.RestoreRSSMiB,
					humanSize(tf.StoredBytes), float64(s.Bytes)/float64(max(1, tf.StoredBytes)))
			}
		})
		if len(s.Ratios) > 0 {
			section(fmt.Sprintf("%s: backstream ÷ tool, round by round (MB/s: > 1 is faster; cpu, stored: < 1 is less)", s.Name), func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "  tool\tbackup MB/s\tverified MB/s\trestore MB/s\tcore-s/GB verified\tstored")
				for _, tool := range res.Tools {
					rf, ok := s.Ratios[tool]
					if !ok {
						continue
					}
					fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", tool, floats(rf.BackupMBps), floats(rf.VerifiedMBps), floats(rf.RestoreMBps), floats(rf.VerifiedCPUPerGB), floats(rf.Stored))
				}
			})
		}
	}
	if len(res.Targets) > 0 {
		section("issue #16 targets, on the medians above", func(tw *tabwriter.Writer) {
			for _, t := range res.Targets {
				op, verdict := "<=", "not met"
				if t.AtLeast {
					op = ">="
				}
				if t.Met {
					verdict = "met"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%.3g\t%s %.3g\t%s\n", t.Set, t.Name, t.Value, op, t.Limit, verdict)
			}
		})
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// spread is "(lo–hi)" over the rounds, or "" for one round.
func spread(rs []roundFigure, f func(roundFigure) float64) string {
	if len(rs) < 2 {
		return ""
	}
	xs := collect(rs, f)
	return fmt.Sprintf("(%.0f–%.0f)", slices.Min(xs), slices.Max(xs))
}

func floats(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}
