package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		give string
		want cpuTimes
	}{
		{
			name: "plain name",
			give: "4242 (minio) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 130 7 3 20 0 12 0 500 100000 2000 18446744073709551615",
			want: cpuTimes{self: 3800 * time.Millisecond, children: 100 * time.Millisecond},
		},
		{
			name: "name with spaces and parentheses",
			give: "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 300 400 20 0 1 0 1 1 1 1",
			want: cpuTimes{self: 30 * time.Millisecond, children: 7 * time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.give))
			if err != nil || got != tt.want {
				t.Fatalf("parseStat = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestParseStatRefuses(t *testing.T) {
	for _, give := range []string{"", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 eleven 12 13 14 15"} {
		if got, err := parseStat([]byte(give)); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", give, got)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		give []float64
		want float64
	}{
		{"none", nil, 0},
		{"one", []float64{3}, 3},
		{"odd, unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 10}, 3.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.give); got != tt.want {
				t.Fatalf("median(%v) = %v, want %v", tt.give, got, tt.want)
			}
		})
	}
}

func TestPickListKeepsCanonicalOrder(t *testing.T) {
	got, err := pickList("kopia, backstream,kopia", allTools)
	if err != nil || strings.Join(got, ",") != "backstream,kopia" {
		t.Fatalf("pickList = %v, %v; want [backstream kopia]", got, err)
	}
	if _, err := pickList("borg", allTools); err == nil {
		t.Fatal("pickList accepted an unknown tool")
	}
	if _, err := pickList(" , ", allTools); err == nil {
		t.Fatal("pickList accepted an empty list")
	}
}

// round makes one measured round of 1 GB with the given seconds.
func round(backup, verified, restore float64, cpu float64, rssMiB, stored int64) peerRound {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	return peerRound{plain: 1e9, backup: sec(backup), verified: sec(verified), restore: sec(restore),
		backupCPU: sec(cpu), verifiedCPU: sec(cpu * 1.5), restoreCPU: sec(cpu / 2),
		rss: rssMiB << 20, restoreRSS: 50 << 20, stored: stored}
}

func TestPeersReportEndsWithJSON(t *testing.T) {
	res := peersResult{
		Machine:  [][2]string{{"nproc", "2"}},
		Versions: map[string]string{"restic": "restic 0.18.1"},
		Rounds:   3,
		Tools:    []string{"backstream", "kopia", "baseline"},
		Sets: []setResult{{Name: "gen", What: "bench gen", Bytes: 1e9, runs: map[string][]peerRound{
			// backstream: 10 s, 5 s, 20 s to stored: median 10 s = 100 MB/s.
			"backstream": {round(10, 12, 4, 10, 120, 500e6), round(5, 6, 4, 10, 130, 500e6), round(20, 24, 4, 10, 110, 500e6)},
			"kopia":      {round(10, 20, 8, 12, 170, 400e6), round(10, 20, 8, 12, 170, 400e6), round(10, 20, 8, 12, 170, 400e6)},
			"baseline":   {round(8, 0, 4, 9, 70, 480e6), round(8, 0, 4, 9, 70, 480e6), round(8, 0, 4, 9, 70, 480e6)},
		}}},
	}
	res.summarize()
	var out bytes.Buffer
	if err := res.report(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	var got struct {
		Machine map[string]string `json:"machine"`
		Sets    []struct {
			Name   string                 `json:"name"`
			Tools  map[string]toolFigures `json:"tools"`
			Ratios map[string]ratioFigures
		} `json:"sets"`
		Targets []target `json:"targets"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out.String())
	}
	if got.Machine["nproc"] != "2" || len(got.Sets) != 1 {
		t.Fatalf("JSON = %+v", got)
	}
	bs := got.Sets[0].Tools["backstream"]
	if bs.BackupMBps != 100 || bs.PeakRSSMiB != 130 || bs.StoredBytes != 500e6 || len(bs.Rounds) != 3 {
		t.Errorf("backstream figures = %+v; want median 100 MB/s, the highest RSS 130 MiB, 500e6 stored, 3 rounds", bs)
	}
	if bs.VerifiedCPUPerGB != 15 {
		t.Errorf("backstream verified core-s per GB = %v, want 15", bs.VerifiedCPUPerGB)
	}
	k := got.Sets[0].Ratios["kopia"]
	if want := []float64{1, 2, 0.5}; !equalFloats(k.BackupMBps, want) {
		t.Errorf("per-round backup ratios to kopia = %v, want %v", k.BackupMBps, want)
	}
	if b := got.Sets[0].Ratios["baseline"]; len(b.VerifiedMBps) != 0 || len(b.BackupMBps) != 3 {
		t.Errorf("ratios to the baseline = %+v; want backup ratios and no verified ones (it has no verify)", b)
	}
	met := map[string]bool{}
	for _, tg := range got.Targets {
		met[tg.Name] = tg.Met
	}
	wantMet := map[string]bool{
		"verified MB/s ÷ kopia's":             true,  // 1e9/12 s vs 1e9/20 s: 1.67 >= 1.3
		"upload.completed MB/s ÷ baseline's":  false, // 100 vs 125: 0.8 < 0.9
		"core-s per GB with verify ÷ kopia's": false, // 15 vs 18: 0.83 > 0.8
		"stored ÷ kopia's":                    false,
		"restore MB/s ÷ kopia's":              true, // 4 s vs 8 s: 2.0
		"serve peak RSS MiB (recipient)":      false,
	}
	for name, want := range wantMet {
		if m, ok := met[name]; !ok || m != want {
			t.Errorf("target %q: met = %v (present %v), want %v", name, m, ok, want)
		}
	}
	if !strings.Contains(out.String(), "1.00 2.00 0.50") {
		t.Errorf("the table lacks the per-round ratios:\n%s", out.String())
	}
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWriteBlobSQL(t *testing.T) {
	var out bytes.Buffer
	const total = 10 << 20
	if err := writeBlobSQL(&out, total, 1); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.HasPrefix(s, "CREATE TABLE blobs") {
		t.Fatalf("no CREATE TABLE first: %.80q", s)
	}
	hexDigits := 0
	for _, stmt := range strings.Split(strings.TrimSpace(s), ";\n")[1:] {
		if len(stmt) >= 16<<20 {
			t.Errorf("statement of %d bytes, over max_allowed_packet", len(stmt))
		}
		for _, v := range strings.Split(stmt, ",0x")[1:] {
			hexDigits += strings.IndexByte(v, ')')
		}
	}
	if hexDigits != 2*total {
		t.Errorf("blobs hold %d hex digits, want %d", hexDigits, 2*total)
	}
	var again bytes.Buffer
	_ = writeBlobSQL(&again, total, 1)
	if !bytes.Equal(out.Bytes(), again.Bytes()) {
		t.Error("the same seed wrote different SQL")
	}
}

// TestDiskPersistLeavesNothing: the disk probe of the machine section
// reports a rate and removes its file.
func TestDiskPersistLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	got := diskPersist(dir, 20<<20)
	if !regexp.MustCompile(`^[0-9]+ MB/s \([0-9.]+m?s\)$`).MatchString(got) {
		t.Errorf("diskPersist = %q, want \"N MB/s (duration)\"", got)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left %d files behind", len(left))
	}
}
