package main

import (
	"os"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		name string
		give string
		want int64
	}{
		{"bytes", "1000", 1000},
		{"bytes with unit", "1000B", 1000},
		{"kibibytes", "64KiB", 64 << 10},
		{"mebibytes", "256MiB", 256 << 20},
		{"gibibytes", "4GiB", 4 << 30},
		{"decimal megabytes", "5MB", 5e6},
		{"spaces", " 1 GiB ", 1 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSize(tt.give)
			if err != nil || got != tt.want {
				t.Fatalf("parseSize(%q) = %d, %v; want %d", tt.give, got, err, tt.want)
			}
		})
	}
}

func TestParseSizeRefuses(t *testing.T) {
	for _, give := range []string{"", "GiB", "-1", "1TiB", "one"} {
		if n, err := parseSize(give); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", give, n)
		}
	}
}

func TestProcReadersOnThisProcess(t *testing.T) {
	rss, err := peakRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("peakRSS = %d, %v", rss, err)
	}
	if _, err := readCPU(os.Getpid()); err != nil {
		t.Fatalf("readCPU: %v", err)
	}
}
